"""Video write → read keeps frames, size and fps; bad inputs are one line."""
import numpy as np
import pytest

from aa_runtime.errors import AAError
from aa_runtime.video import read_video, side_by_side, write_video


def _clip(frames=6, h=48, w=64):
    """Smooth colour gradients drifting one pixel a frame: uint8 (F, H, W, 3)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = [np.stack([128 + 100 * np.sin((x + i) / 9), 128 + 100 * np.cos(y / 7), 255 * (x + y) / (h + w)], -1)
           for i in range(frames)]
    return np.stack(out).round().astype(np.uint8)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_write_read_round_trip(tmp_path, suffix):
    frames = _clip()
    path = write_video(tmp_path / f"v{suffix}", frames, fps=12)
    clip = read_video(path)
    assert clip.frames.shape == frames.shape
    assert clip.fps == pytest.approx(12, rel=0.05)
    # H.264 at crf 17 on blocky content: small error; gif is palette-quantised
    assert np.abs(clip.frames.astype(int) - frames).mean() < (4 if suffix == ".mp4" else 12)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_odd_size_is_padded_to_even(tmp_path):
    clip = read_video(write_video(tmp_path / "odd.mp4", _clip(3, 40, 48)[:, :33, :47], 8))
    assert clip.frames.shape[1:3] == (34, 48)


def test_folder_of_images(tmp_path):
    from PIL import Image

    for i, f in enumerate(_clip(3)):
        Image.fromarray(f).save(tmp_path / f"{i:03d}.png")
    clip = read_video(tmp_path, default_fps=5)
    assert clip.frames.shape == (3, 48, 64, 3) and clip.fps == 5
    np.testing.assert_array_equal(clip.frames, _clip(3))


def test_unreadable_and_empty(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(AAError, match="cannot be decoded"):
        read_video(bad)
    with pytest.raises(AAError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AAError, match="holds no images"):
        read_video(tmp_path / "empty")
    with pytest.raises(AAError, match=r"uint8 \(F, H, W, 3\)"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8), 8)


def test_side_by_side():
    a, b = _clip(2), _clip(2)[:, ::-1]
    out = side_by_side(a, b)
    assert out.shape == (2, 48, 128, 3)
    np.testing.assert_array_equal(out[:, :, 64:], b)


def test_outputs_get_umask_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = write_video(tmp_path / "p.mp4", _clip(2), 8)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_safetensors_outputs_get_umask_permissions(tmp_path):
    import os

    import torch

    from aa_runtime.adapters import adapter_metadata, save_adapter

    A = {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q": torch.zeros(2, 4)}
    B = {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q": torch.zeros(4, 2)}
    meta = adapter_metadata(identifier="<me>", class_word="man", rank=2, alpha=2.0, base_fingerprint="0" * 16,
                            bone_lengths={}, training={})
    umask = os.umask(0o022)
    try:
        path = save_adapter(tmp_path / "me.safetensors", A, B, meta)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_the_same_frames_always_give_the_same_mp4(tmp_path):
    """The identity job trains on the decoded reference video, so writing it must be reproducible. x264's
    macroblock-tree rate control (as PyAV bundles it) quantised B-frames differently from one encode of the same
    frames to the next (here 2-7 distinct files in 40 writes), which made two identity runs in one process train
    on different pixels; write_video turns it off."""
    from aa_world.clips import ClipSpec, render_clip

    frames = render_clip(ClipSpec(identity_seed=1000, scene="indoor room", scene_seed=0, motion="turn", frames=24,
                                  fps=8.0, width=64, height=64, seed=0)).frames
    first = write_video(tmp_path / "a.mp4", frames, 8).read_bytes()
    decoded = read_video(tmp_path / "a.mp4").frames
    for i in range(40):
        path = write_video(tmp_path / f"{i}.mp4", frames, 8)
        assert path.read_bytes() == first, f"write {i} differs"
    np.testing.assert_array_equal(read_video(path).frames, decoded)
