"""Identity preprocessing: sidecar ground truth through the crop, mediapipe on real footage, errors, cache,
preview, and the SAM / DWPose plumbing (hand-made arrays and tiny ONNX stand-ins: no weights here)."""
from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aa_runtime.errors import AAError, MissingDependencyError
from aa_runtime.poses import COLORS, PoseSequence, bone_lengths, load_annotations, sidecar_path
from aa_runtime.video import write_video
from aa_train import backends as bk
from aa_train.preprocess import (IdentityData, PrepareConfig, crop_clip, prepare_identity, resample_indices,
                                 square_crop_box, write_preview)
from aa_world.captions import class_caption, identity_caption
from aa_world.clips import ClipSpec, render_clip, write_clip

# ../shared beside the clone (CI), else the workspace's shared folder (a clone made elsewhere)
PEDESTRIANS = next((p for p in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared"))
                    if (p / "media" / "pedestrians-5f.mp4").is_file()), Path("../shared")) / "media" / "pedestrians-5f.mp4"
SPEC = ClipSpec(identity_seed=5, scene="beach", scene_seed=1, motion="wave", objects=(("balloon", "yellow"),),
                frames=8, fps=8.0, width=96, height=80, seed=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic clip written with its sidecar: (clip, video path)."""
    clip = render_clip(SPEC)
    path = write_clip(clip, tmp_path_factory.mktemp("world") / "ref.mp4")
    return clip, path


def cfg(video, tmp_path, **kw) -> PrepareConfig:
    return PrepareConfig(video=video, token="<me>", class_word="man", cache_dir=tmp_path / "cache", **kw)


def expected_mask(mask: np.ndarray, box, res: int) -> np.ndarray:
    """Ground truth mask (H, W) sampled at the crop's output pixel centres (nearest), zeros outside the frame."""
    x0, y0, side = box
    c = (np.arange(res) + 0.5) * side / res - 0.5
    xs, ys = np.round(x0 + c).astype(int), np.round(y0 + c).astype(int)
    h, w = mask.shape
    ok = (ys[:, None] >= 0) & (ys[:, None] < h) & (xs[None] >= 0) & (xs[None] < w)
    return ok & mask[np.clip(ys, 0, h - 1)[:, None], np.clip(xs, 0, w - 1)[None]]


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ================================================================================================ sidecar
@pytest.mark.parametrize("res", [64, 128])
def test_sidecar_matches_ground_truth_after_crop(world, tmp_path, res):
    clip, video = world
    data = prepare_identity(cfg(video, tmp_path, resolution=res))
    src = data.source
    assert (src["pose_backend"], src["mask_backend"]) == ("sidecar", "sidecar")
    assert data.frames.shape == (8, res, res, 3) and data.masks.shape == (8, res, res) and data.fps == 8.0
    x0, y0, side = src["crop_box"]
    # the crop holds every visible keypoint and every mask pixel, with the margin on the longer side
    vis = clip.keypoints[..., 2] > 0
    assert clip.keypoints[..., 0][vis].min() >= x0 and clip.keypoints[..., 0][vis].max() <= x0 + side
    # keypoints: exactly the affine crop mapping (the sidecar stores 3 decimals)
    s = res / side
    want = clip.keypoints.copy()
    want[..., 0] = (want[..., 0] - x0) * s
    want[..., 1] = (want[..., 1] - y0) * s
    np.testing.assert_allclose(data.keypoints, want, atol=2e-3 * s)
    # masks: IoU with the ground truth resampled on the crop grid
    ious = [iou(m, expected_mask(g, (x0, y0, side), res)) for m, g in zip(data.masks, clip.masks)]
    assert min(ious) >= 0.95, ious
    # frames: the mp4 decode is lossy, but the crop must show the same picture as the ground truth
    gt_frames, _, _ = crop_clip(clip.frames, clip.keypoints, clip.masks, (x0, y0, side), res)
    assert np.abs(data.frames.astype(float) - gt_frames).mean() < 6.0
    # captions: the world's identity caption, and the class caption without the token
    assert data.caption == identity_caption("<me>", "man", "wave", "beach", [("balloon", "yellow")])
    assert data.class_caption == class_caption("man", "wave", "beach", [("balloon", "yellow")])
    assert "<me>" not in data.class_caption
    np.testing.assert_allclose(data.bone_lengths, bone_lengths(PoseSequence(want, res, res, 8.0)), atol=1e-3)


def test_fps_resampling_and_max_frames(world, tmp_path):
    clip, video = world
    data = prepare_identity(cfg(video, tmp_path, fps=4.0, max_frames=3))
    assert data.source["frame_indices"] == [0, 2, 4] and data.fps == 4.0
    x0, y0, side = data.source["crop_box"]
    np.testing.assert_allclose(data.keypoints[:, :, 0], (clip.keypoints[[0, 2, 4], :, 0] - x0) * 64 / side,
                               atol=2e-3 * 64 / side)
    # a rate above the video's is capped at the video's (no invented frames)
    assert prepare_identity(cfg(video, tmp_path, fps=30.0)).fps == 8.0


def test_resample_indices():
    assert resample_indices(10, 30.0, 8.0, 32).tolist() == [0, 3, 7]
    assert resample_indices(5, 5.0, 5.0, 32).tolist() == [0, 1, 2, 3, 4]
    assert resample_indices(100, 8.0, 8.0, 6).tolist() == [0, 1, 2, 3, 4, 5]


def test_square_crop_box_margin_and_padding():
    masks = np.zeros((2, 50, 100), bool)
    masks[0, 10:30, 40:50] = True  # 10 wide, 20 tall
    kp = np.zeros((2, 18, 3), np.float32)
    x0, y0, side = square_crop_box(masks, kp, 100, 50)
    assert side == 26 and (x0, y0) == (32, 7)  # 20 · 1.3, centred on (45, 20)
    masks[1, 0:50, 0:10] = True  # person touching the left edge: the square slides inside the frame
    x0, y0, side = square_crop_box(masks, kp, 100, 50)
    assert (x0, y0, side) == (0, -8, 65)  # taller than the frame: padded vertically, not shrunk
    frames = np.zeros((2, 50, 100, 3), np.uint8)
    frames[:, -1] = 200  # the bottom row is replicated into the padding
    out, _, m = crop_clip(frames, kp, masks, (x0, y0, side), 65)
    assert (out[1, -1] == 200).all() and not m[:, -7:].any()


def test_cache_hit_skips_backends(world, tmp_path, monkeypatch):
    _, video = world
    first = prepare_identity(cfg(video, tmp_path))
    assert first.source["cache_hit"] is False

    def boom(*a, **k):
        raise AssertionError("a backend ran on a cache hit")

    monkeypatch.setattr(bk, "load_sidecar", boom)
    second = prepare_identity(cfg(video, tmp_path))
    assert second.source["cache_hit"] is True
    for name in ("frames", "keypoints", "masks", "bone_lengths"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert (second.caption, second.class_caption, second.fps) == (first.caption, first.class_caption, first.fps)
    # a setting that changes the result is a miss (the backend runs); the cache dir holds no temp folders
    with pytest.raises(AssertionError, match="backend ran"):
        prepare_identity(cfg(video, tmp_path, resolution=32))
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []
    # the saved folder round-trips on its own
    back = IdentityData.load(Path(second.source["cache_dir"]))
    np.testing.assert_array_equal(back.masks, first.masks)


def test_cache_key_covers_the_sidecar_mask_files(tmp_path):
    clip = render_clip(SPEC)
    video = write_clip(clip, tmp_path / "world" / "ref.mp4")
    first = prepare_identity(cfg(video, tmp_path))
    # edit one mask PNG only (the JSON is unchanged): the cache must miss and the edited mask must come through
    png = video.parent / load_annotations(sidecar_path(video)).masks[3]
    m = np.asarray(Image.open(png).convert("L")).copy()
    m[:, : m.shape[1] // 2] = 0  # erase the left half of the person
    Image.fromarray(m).save(png)
    second = prepare_identity(cfg(video, tmp_path))
    assert (first.source["cache_hit"], second.source["cache_hit"]) == (False, False)
    assert second.masks[3].sum() < first.masks[3].sum()


def test_preview_png(world, tmp_path):
    _, video = world
    data = prepare_identity(cfg(video, tmp_path))
    path = write_preview(data, tmp_path / "out" / "me.annotations.png")
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 192, 4 * 192, 3)  # 8 frames, 4 columns
    flat = img.reshape(-1, 3)
    for c in (COLORS[0], COLORS[1]):  # nose and neck joints drawn at full colour
        assert (np.abs(flat.astype(int) - c).sum(1) == 0).any()
    # the mask is tinted green: the person's pixels are greener than in the plain frame
    tile = img[:192, :192].astype(int)
    m = np.asarray(Image.fromarray(data.masks[0]).resize((192, 192), Image.Resampling.NEAREST))
    plain = np.asarray(Image.fromarray(data.frames[0]).resize((192, 192), Image.Resampling.NEAREST)).astype(int)
    assert (tile[m][:, 1] - plain[m][:, 1]).mean() > 20


# ============================================================================================== mediapipe
def test_mediapipe_on_real_street_footage(tmp_path):
    data = prepare_identity(cfg(PEDESTRIANS, tmp_path, resolution=128, min_person_fraction=0.2))
    assert data.source["pose_backend"] == "mediapipe" and data.source["original_size"] == [960, 540]
    assert len(data.frames) >= 1 and data.caption == "a photo of <me> man"
    kp = data.keypoints
    vis = kp[..., 2] > 0
    assert (kp[..., :2][vis] >= 0).all() and (kp[..., :2][vis] <= 128).all()
    for f in range(len(kp)):  # upright: head above neck above hips above ankles, where seen
        if vis[f, [0, 1, 8, 10]].all():
            assert kp[f, 0, 1] < kp[f, 1, 1] < kp[f, 8, 1] < kp[f, 10, 1]
    # the mask covers the tracked person: most visible keypoints fall on it
    on = [data.masks[f, min(int(y), 127), min(int(x), 127)] for f in range(len(kp))
          for (x, y, c) in kp[f] if c > 0]
    assert np.mean(on) > 0.6 and 0.05 < data.masks.mean() < 0.8


def test_mediapipe_on_astronaut_photo_clip(tmp_path):
    from skimage.data import astronaut

    img = astronaut()  # (512, 512, 3)
    frames = np.stack([img[8 * i:8 * i + 448, 4 * i:4 * i + 448] for i in range(6)])
    video = write_video(tmp_path / "astronaut.mp4", frames, 6.0)
    data = prepare_identity(cfg(video, tmp_path, resolution=96))
    assert data.source["mask_backend"] == "mediapipe" and len(data.frames) == 6
    kp = data.keypoints
    assert (kp[:, [0, 1, 2, 5], 2] > 0).all()  # nose, neck, both shoulders
    nose, rs, ls = kp[:, 0, :2], kp[:, 2, :2], kp[:, 5, :2]
    assert (nose[:, 1] < rs[:, 1]).all() and (nose[:, 1] < ls[:, 1]).all()  # the head above the shoulders
    assert (rs[:, 0] < nose[:, 0]).all() and (nose[:, 0] < ls[:, 0]).all()  # facing us: right shoulder on the left
    assert ((ls[:, 0] - rs[:, 0]) > 0.25 * 96).all()
    x0, y0, side = data.source["crop_box"]
    nose_src = nose * side / 96 + [x0, y0]  # back in video pixels: the face in the photo is near (220, 120)
    assert np.all(np.abs(nose_src - [[220 - 4 * i, 120 - 8 * i] for i in range(6)]) < 25)


# ================================================================================================= errors
def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_no_person_found(tmp_path):
    video = write_video(tmp_path / "blank.mp4", np.full((4, 96, 96, 3), (90, 140, 200), np.uint8), 8.0)
    with pytest.raises(AAError) as e:
        prepare_identity(cfg(video, tmp_path))
    assert "no person found in 4 of 4 frames (100 %)" in one_line(e)
    noise = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    with pytest.raises(AAError, match=r"no person found in 3 of 3 frames"):
        prepare_identity(cfg(write_video(tmp_path / "noise.mp4", noise, 8.0), tmp_path))


def test_too_few_frames(world, tmp_path):
    clip, _ = world
    video = write_video(tmp_path / "one.mp4", clip.frames[:1], 8.0)
    with pytest.raises(AAError) as e:
        prepare_identity(cfg(video, tmp_path))
    msg = one_line(e)
    assert "1 frame(s)" in msg and "at least 2 frames" in msg


def test_unreadable_and_missing_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    with pytest.raises(AAError) as e:
        prepare_identity(cfg(bad, tmp_path))
    assert "cannot be decoded" in one_line(e)
    with pytest.raises(AAError, match="does not exist"):
        cfg(tmp_path / "nope.mp4", tmp_path)


@pytest.mark.parametrize("kw, match", [
    ({"resolution": 60}, "resolution"), ({"max_frames": 1}, "max_frames"),
    ({"pose_backend": "openpose"}, "pose_backend"),
    ({"captioner": "blip"}, "captioner"), ({"min_person_fraction": 0}, "min_person_fraction"),
    ({"fps": -1.0}, "fps"),
])
def test_config_checks(world, tmp_path, kw, match):
    with pytest.raises(AAError, match=match):
        cfg(world[1], tmp_path, **kw)


def test_sidecar_requested_but_absent(tmp_path, world):
    video = write_video(tmp_path / "plain.mp4", world[0].frames, 8.0)
    with pytest.raises(AAError, match=r"plain\.aa\.json does not exist"):
        cfg(video, tmp_path, pose_backend="sidecar")


# ==================================================================================================== SAM
def test_sam_input_checks(world, tmp_path, monkeypatch):
    with pytest.raises(AAError) as e:
        cfg(world[1], tmp_path, mask_backend="sam")
    assert "sam_vit_b_01ec64.pth from the segment-anything release" in one_line(e)
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    ckpt.write_bytes(b"0")
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # not installed
    with pytest.raises(MissingDependencyError) as e:
        prepare_identity(cfg(world[1], tmp_path, mask_backend="sam", sam_checkpoint=ckpt))
    assert "animate-anywhere[real]" in one_line(e) and "segment-anything" in str(e.value)


def test_sam_is_prompted_with_the_keypoint_box(world, tmp_path, monkeypatch):
    """A stand-in `segment_anything` (same API) that answers each box prompt with the filled box."""
    clip, video = world
    calls = []

    class Predictor:
        def __init__(self, model):
            self.image = None

        def set_image(self, image, image_format="RGB"):
            self.image = image

        def predict(self, box=None, multimask_output=True):
            calls.append(np.array(box))
            m = np.zeros(self.image.shape[:2], bool)
            x0, y0, x1, y1 = np.round(box).astype(int)
            m[y0:y1 + 1, x0:x1 + 1] = True
            return m[None], np.ones(1), None

    class Model:
        def to(self, device):
            return self

        def eval(self):
            return self

    registry = {"vit_b": lambda checkpoint: Model()}
    fake = types.SimpleNamespace(sam_model_registry=registry, SamPredictor=Predictor)
    monkeypatch.setitem(sys.modules, "segment_anything", fake)
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    ckpt.write_bytes(b"0")
    data = prepare_identity(cfg(video, tmp_path, mask_backend="sam", sam_checkpoint=ckpt))
    assert data.source["mask_backend"] == "sam" and len(calls) == 8
    for box, kp in zip(calls, clip.keypoints):
        xy = kp[kp[:, 2] > 0, :2]
        assert (box[:2] <= xy.min(0)).all() and (box[2:] >= np.minimum(xy.max(0), [95, 79])).all()
    assert data.masks.any((1, 2)).all()


# ================================================================================================= DWPose
def test_dwpose_missing_files_named(world, tmp_path):
    with pytest.raises(AAError) as e:
        cfg(world[1], tmp_path, pose_backend="dwpose", dwpose_det=tmp_path / "x.onnx")
    msg = one_line(e)
    assert "yolox_l.onnx" in msg and "dw-ll_ucoco_384.onnx" in msg and "dwpose_pose=None" in msg


def test_coco17_to_openpose18():
    kp = np.stack([np.arange(17) * 10.0, 100 + np.arange(17.0)], -1).astype(np.float32)  # (17, 2)
    scores = np.full(17, 0.9, np.float32)
    scores[9] = 0.1  # left wrist below threshold
    out = bk.coco17_to_openpose18(kp, scores)
    assert out.shape == (18, 3)
    # OpenPose order: nose, neck, r_sho, r_elb, r_wri, l_sho, l_elb, l_wri, r_hip, r_knee, r_ank, l_hip, l_knee,
    # l_ank, r_eye, l_eye, r_ear, l_ear ← COCO: 0, (5+6)/2, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3
    coco = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for op, c in enumerate(coco):
        if c is None:
            np.testing.assert_allclose(out[1, :2], (kp[5] + kp[6]) / 2)
        elif c == 9:
            assert (out[op] == 0).all()
        else:
            np.testing.assert_allclose(out[op], [*kp[c], 0.9])
    scores[6] = 0.2  # one shoulder missing → no neck
    assert bk.coco17_to_openpose18(kp, scores)[1, 2] == 0


def test_simcc_decode_inverts_the_affine_crop():
    """Points of the image → model-input pixels (the warp) → SimCC peaks at 2× → decoded back to the image."""
    box = np.array([100.0, 40.0, 220.0, 400.0])
    center, scale = bk.box_center_scale(box)
    scale = bk.fix_aspect_ratio(scale, 288 / 384)
    np.testing.assert_allclose(scale[0] / scale[1], 288 / 384)
    M = bk.warp_matrix(center, scale, (288, 384))
    np.testing.assert_allclose(M @ [*center, 1], [144, 192])  # box centre → input centre
    pts = np.array([[130.0, 60.0], [160.0, 220.0], [210.0, 390.0]])
    inp = (M @ np.c_[pts, np.ones(3)].T).T  # (3, 2) model-input pixels
    sx, sy = np.zeros((3, 576), np.float32), np.zeros((3, 768), np.float32)
    bins_x, bins_y = np.arange(576), np.arange(768)
    for k, (x, y) in enumerate(inp):
        sx[k] = np.exp(-0.5 * (bins_x - np.round(2 * x)) ** 2)  # peaks on the nearest half-pixel bin
        sy[k] = 0.8 * np.exp(-0.5 * (bins_y - np.round(2 * y)) ** 2)
    kp, score = bk.simcc_decode(sx, sy, center, scale)
    px = scale[0] / 288  # one input pixel in image pixels
    np.testing.assert_allclose(kp, pts, atol=0.25 * px + 1e-3)  # bins are half an input pixel
    np.testing.assert_allclose(score, 0.8, atol=1e-3)  # min of the two axis maxima
    sx[1] = -1.0  # no evidence → score 0
    assert bk.simcc_decode(sx, sy, center, scale)[1][1] == 0


def _const_onnx(path: Path, in_shape, outputs: dict[str, np.ndarray]) -> Path:
    """An ONNX model that ignores its image input and returns constants (stand-ins for the DWPose files)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_c"))
        nodes.append(helper.make_node("Add", [f"{name}_c", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "const", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_dwpose_backend_end_to_end_with_stand_in_models(tmp_path):
    """Detector decode (grid, stride, exp sizes, letterbox ratio, NMS, largest person) and pose decode wired
    through onnxruntime sessions, checked against the geometry computed by hand."""
    # detector: two overlapping person anchors on the stride-32 grid and one small person elsewhere
    pred = np.zeros((1, 8400, 85), np.float32)
    pred[..., 4] = 0.0

    def anchor(gx, gy, cx, cy, w, h, score):
        i = 80 * 80 + 40 * 40 + gy * 20 + gx
        pred[0, i, :4] = [cx / 32 - gx, cy / 32 - gy, np.log(w / 32), np.log(h / 32)]
        pred[0, i, 4], pred[0, i, 5] = score, 1.0

    anchor(10, 9, 330, 300, 120, 360, 0.95)  # in letterbox pixels
    anchor(11, 9, 334, 302, 118, 356, 0.90)  # suppressed by NMS
    anchor(2, 2, 70, 70, 40, 60, 0.5)  # a smaller, less certain person: not the one kept
    det = _const_onnx(tmp_path / "yolox_l.onnx", [1, 3, 640, 640], {"dets": pred})
    # pose model: peaks for nose (0), shoulders (5, 6) and hips (11, 12) at fixed input pixels
    sx, sy = np.full((1, 133, 576), -1.0, np.float32), np.full((1, 133, 768), -1.0, np.float32)
    where = {0: (144, 60), 5: (180, 120), 6: (108, 120), 11: (170, 250), 12: (118, 250)}
    for k, (x, y) in where.items():
        sx[0, k, 2 * x], sy[0, k, 2 * y] = 0.9, 0.9
    pose = _const_onnx(tmp_path / "dw-ll_ucoco_384.onnx", [1, 3, 384, 288], {"simcc_x": sx, "simcc_y": sy})

    model = bk.DWPose(det, pose)
    frames = np.zeros((2, 320, 320, 3), np.uint8)  # letterbox ratio 2
    boxes = model.boxes(frames[0])
    np.testing.assert_allclose(boxes, [[135, 60, 195, 240], [25, 20, 45, 50]], atol=1e-3)
    out = model(frames)  # (2, 18, 3)
    center, scale = bk.box_center_scale(boxes[0])
    scale = bk.fix_aspect_ratio(scale, 288 / 384)
    img = lambda x, y: np.array([x, y]) / [288, 384] * scale + center - scale / 2  # noqa: E731
    np.testing.assert_allclose(out[0, 0, :2], img(*where[0]), atol=1e-3)  # nose
    np.testing.assert_allclose(out[0, 2, :2], img(*where[6]), atol=1e-3)  # r_shoulder ← COCO 6
    np.testing.assert_allclose(out[0, 1, :2], (img(*where[5]) + img(*where[6])) / 2, atol=1e-3)  # neck
    np.testing.assert_allclose(out[0, 8, :2], img(*where[12]), atol=1e-3)  # r_hip ← COCO 12
    assert (out[0, [3, 4, 6, 7], 2] == 0).all() and np.array_equal(out[0], out[1])


def test_one_cache_root_for_identity_and_onnx(monkeypatch, tmp_path):
    from aa_runtime.backends import OnnxRuntimeBackend
    from aa_runtime.errors import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AA_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root("identity") == tmp_path / "home" / ".cache" / "animate-anywhere" / "identity"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "animate-anywhere"
    monkeypatch.setenv("AA_CACHE_DIR", str(tmp_path / "aa"))
    default = next(f.default_factory for f in dataclasses.fields(PrepareConfig) if f.name == "cache_dir")
    assert default() == tmp_path / "aa" / "identity"
    assert OnnxRuntimeBackend(unet=torch.nn.Identity()).cache_dir == tmp_path / "aa"
