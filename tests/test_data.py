"""`aa-train prepare` and `--data`: folders of videos and images → shards → base training, checked against the
rendered clips that went in."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aa_runtime.errors import AAError
from aa_runtime.poses import render_skeleton
from aa_train.data import (DataSpec, PrepareDataConfig, TrainingData, caption_table, load_training_data, parse_data,
                           prepare_data)
from aa_runtime.poses import sidecar_path
from aa_train.preprocess import crop_clip, drop_outside, square_crop_box
from aa_world.clips import ClipSpec, render_clip, write_clip

SHARED_CLIP = Path(__file__).resolve().parents[2] / "shared" / "media" / "pedestrians-5f.mp4"


def spec(seed: int, motion: str = "wave", frames: int = 8) -> ClipSpec:
    return ClipSpec(identity_seed=seed, scene="beach", scene_seed=seed, motion=motion, objects=(), frames=frames,
                    fps=8.0, width=96, height=80, seed=seed)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Videos captioned four ways (metadata.jsonl, WebVid CSV, .txt, none), a still image and a broken file; each
    world video with its sidecar (poses and masks), so no annotator model runs."""
    root = tmp_path_factory.mktemp("media")
    clips = {}
    for name, seed in (("meta/a.mp4", 1), ("web/7/123.mp4", 2), ("b.mp4", 3), ("plain.mp4", 4)):
        clips[name] = render_clip(spec(seed))
        write_clip(clips[name], root / name)
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "meta/a.mp4", "text": "a woman waving"}) + "\n")
    (root / "web.csv").write_text("videoid,name,page_dir\n123,a man on a beach,web/7\n")
    (root / "b.txt").write_text("someone dancing\n")
    (root / "broken.mp4").write_bytes(b"not a video at all")
    return root, clips


def expected_clip(frames, keypoints, masks, size: int):
    """The crop the preparation should make of a rendered window: from its ground-truth poses and masks."""
    h, w = frames.shape[1:3]
    keypoints = drop_outside(keypoints, w, h)
    box = square_crop_box(masks, keypoints, w, h)
    return crop_clip(frames, keypoints, masks, box, size)


def test_parse_data_specs_and_their_errors(tmp_path):
    assert parse_data(["world:40", f"shards:{tmp_path}@0.25"]) == (
        DataSpec("world", "40", 1.0), DataSpec("shards", str(tmp_path), 0.25))
    for bad, says in (("world", "use world:N"), ("frames:3", "use world:N"), (f"videos:{tmp_path}/x", "not a folder"),
                      ("world:4@-1", "positive weight"), ("world:4@x", "must be a number")):
        with pytest.raises(AAError, match=says) as e:
            parse_data([bad])
        assert "\n" not in str(e.value)


def _load(shards, tmp_path, size=32, frames=4):
    """A prepared folder as the base trainer reads it: (clips, still flags)."""
    data = load_training_data([f"shards:{shards}"], size, frames, 8.0, tmp_path / "cache", log=lambda *_: None)
    return data.clips, data.still


def test_captions_from_metadata_csv_and_txt(folder):
    root, _ = folder
    table = caption_table(root)
    assert table["meta/a.mp4"] == "a woman waving" and table["web/7/123.mp4"] == "a man on a beach"


def test_prepare_writes_shards_that_round_trip_the_clips(folder, tmp_path):
    root, clips = folder
    out = tmp_path / "shards"
    cfg = PrepareDataConfig(data=(f"videos:{root}",), output=out, size=32, frames=4, fps=8.0, clips_per_video=2,
                            clips_per_shard=3)
    index = prepare_data(cfg, log=lambda *_: None)
    # 4 videos × 2 windows of 4 frames; the broken file is rejected with its reason, nothing else is
    assert index["counts"]["clips"] == 8 and index["counts"]["files"] == 5
    assert [r["file"] for r in index["rejected"]] == ["0/broken.mp4"] and "unreadable" in index["rejected"][0]["reason"]
    assert all(s["clips"] >= 3 or s is index["shards"][-1] for s in index["shards"] if s["file"])  # whole files each
    got, still = _load(out, tmp_path)
    assert not still.any() and got.frames.shape == (8, 4, 32, 32, 3) and got.parts.max() == 0
    names = [json.loads(str(np.load(out / s["file"])["sources"])) for s in index["shards"] if s["file"]]
    sources = [x for row in names for x in row]
    captions = dict(zip(sources, got.captions))
    assert captions["0/meta/a.mp4#0"] == "a woman waving" and captions["0/web/7/123.mp4#4"] == "a man on a beach"
    assert captions["0/b.mp4#0"] == "someone dancing"
    assert captions["0/plain.mp4#0"] == clips["plain.mp4"].caption  # the sidecar's (a world clip's full caption)
    # frames, masks and skeletons equal the ground-truth crop of each window (the sidecar's poses and masks; the
    # video codec changes pixels by a few levels)
    for i, src in enumerate(sources):
        name, lo = src[2:].rsplit("#", 1)
        lo = int(lo)
        clip = clips[name]
        f, kp, m = expected_clip(clip.frames[lo:lo + 4], clip.keypoints[lo:lo + 4], clip.masks[lo:lo + 4], 32)
        assert np.array_equal(got.masks[i], m), src
        assert np.abs(got.frames[i].astype(int) - f.astype(int)).mean() < 6, src
        skel = np.stack([render_skeleton(k, 32, 32) for k in kp])
        assert np.array_equal(got.skeletons[i], skel), src


def test_rerun_skips_finished_files_and_refuses_other_settings(folder, tmp_path):
    root, _ = folder
    out = tmp_path / "shards"
    cfg = PrepareDataConfig(data=(f"videos:{root}",), output=out, size=32, frames=4, clips_per_video=1,
                            clips_per_shard=2)
    first = prepare_data(cfg, log=lambda *_: None)
    files = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    again = prepare_data(cfg, log=lambda *_: None)
    assert again["counts"] == first["counts"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == files  # nothing rewritten
    with pytest.raises(AAError, match="other settings"):
        prepare_data(PrepareDataConfig(data=(f"videos:{root}",), output=out, size=48, frames=4), log=lambda *_: None)


def test_images_become_still_clips_the_video_stage_never_draws(folder, tmp_path):
    root, clips = folder
    pics = tmp_path / "pics"
    pics.mkdir()
    clip = clips["b.mp4"]
    from PIL import Image

    Image.fromarray(clip.frames[0]).save(pics / "p.png")
    (pics / "p.txt").write_text("a still person")  # no sidecar: MediaPipe finds the person
    index = prepare_data(PrepareDataConfig(data=(f"images:{pics}", f"videos:{root}"), output=tmp_path / "s", size=32,
                                           frames=4, clips_per_video=1), log=lambda *_: None)
    assert index["counts"]["clips"] == 5
    got, still = _load(tmp_path / "s", tmp_path)
    k = int(np.flatnonzero(still)[0])
    assert still.sum() == 1 and got.captions[k] == "a still person"
    assert (got.frames[k] == got.frames[k][:1]).all()  # one frame, repeated
    data = TrainingData(got, still, [(0, 1, 1.0), (1, 5, 1.0)], "k", [])
    rng = np.random.default_rng(0)
    assert k not in set(data.draw(rng, 200, video=True))
    assert k in set(data.draw(rng, 200, video=False))


def test_mixed_sources_are_drawn_in_their_weights():
    from aa_train.world_data import WorldClips

    n = 40
    clips = WorldClips(np.zeros((n, 1, 1, 1, 3), np.uint8), np.zeros((n, 1, 1, 1, 3), np.uint8),
                       np.zeros((n, 1, 1, 1), bool), [""] * n, np.zeros((n, 1, 1, 1), np.uint8), [[]] * n)
    data = TrainingData(clips, np.zeros(n, bool), [(0, 10, 0.8), (10, 40, 0.2)], "k", [])
    rows = data.draw(np.random.default_rng(1), 1000, video=True)
    share = (rows < 10).mean()
    assert abs(share - 0.8) < 0.04  # binomial sd over 1,000 draws ≈ 0.013: 3 sd
    one = TrainingData(clips, np.zeros(n, bool), [(0, 40, 1.0)], "k", [])
    assert np.array_equal(one.draw(np.random.default_rng(2), 7, video=False),
                          np.random.default_rng(2).integers(0, n, 7))  # one source draws as training always did


def test_prepare_refuses_bad_settings_in_one_line(tmp_path):
    for kw, says in (({"data": ("world:4",)}, "reads videos:DIR"), ({"size": 30}, "multiple of 16"),
                     ({"min_person_fraction": 0}, "fraction")):
        args = {"data": (f"videos:{tmp_path}",), "output": tmp_path / "o", **kw}
        with pytest.raises(AAError, match=says) as e:
            PrepareDataConfig(**args)
        assert "\n" not in str(e.value)


def test_real_clip_through_mediapipe(tmp_path):
    if not SHARED_CLIP.is_file():
        pytest.skip(f"{SHARED_CLIP} is not present (../shared/media)")
    pytest.importorskip("mediapipe")
    vids = tmp_path / "v"
    vids.mkdir()
    shutil.copy(SHARED_CLIP, vids / "walk.mp4")
    index = prepare_data(PrepareDataConfig(data=(f"videos:{vids}",), output=tmp_path / "s", size=32, frames=4,
                                           min_person_fraction=0.5), log=lambda *_: None)
    got, _ = _load(tmp_path / "s", tmp_path)
    assert index["counts"]["clips"] == 1 and got.masks.any() and got.skeletons.any()


def test_shards_mixed_with_the_world_are_joined_on_disk_one_shard_at_a_time(folder, tmp_path, monkeypatch):
    """With shards among the sources the joined clips live in a memory-mapped folder of the cache: rows equal to
    each source's own clips in order (world part labels and spans kept, zero labels for shard rows), written
    once (a second load reads the same folder), and the shards are read one at a time, never all together."""
    import aa_train.data as data_mod
    from aa_train.world_data import WorldSource, render_world

    root, _ = folder
    out = tmp_path / "s"
    prepare_data(PrepareDataConfig(data=(f"videos:{root}",), output=out, size=32, frames=4, clips_per_video=2,
                                   clips_per_shard=3), log=lambda *_: None)
    shards, _ = _load(out, tmp_path / "alone")
    n = len(shards.captions)
    held, peak = [], [0]
    blocks = data_mod.shard_blocks

    def counted(*a):
        for block in blocks(*a):
            held.append(len(block["captions"]))
            peak[0] = max(peak[0], len(block["captions"]))
            yield block

    monkeypatch.setattr(data_mod, "shard_blocks", counted)
    data = load_training_data([f"shards:{out}", "world:2@0.5"], 32, 4, 8.0, tmp_path / "cache", log=lambda *_: None)
    world = render_world(WorldSource(2, 32, 4, 8.0), tmp_path / "cache")
    clips = data.clips
    assert isinstance(clips.frames, np.memmap) and clips.frames.shape == (n + 2, 4, 32, 32, 3)
    assert len(held) >= 2 and sum(held) == n and peak[0] < n  # one shard at a time
    assert np.array_equal(clips.frames[:n], shards.frames) and np.array_equal(clips.frames[n:], world.frames)
    assert np.array_equal(clips.skeletons[n:], world.skeletons) and np.array_equal(clips.masks[:n], shards.masks)
    assert not clips.parts[:n].any() and np.array_equal(clips.parts[n:], world.parts)
    assert clips.captions == shards.captions + world.captions and clips.spans[n:] == world.spans
    assert data.sources == [(0, n, 1.0), (n, n + 2, 0.5)] and not data.still.any()
    folders = list((tmp_path / "cache").glob("clips-*"))
    assert len(folders) == 1 and not list((tmp_path / "cache").glob(".clips-*"))
    written = {p.name: p.stat().st_mtime_ns for p in folders[0].iterdir()}
    held.clear()
    again = load_training_data([f"shards:{out}", "world:2@0.5"], 32, 4, 8.0, tmp_path / "cache", log=lambda *_: None)
    assert not held and {p.name: p.stat().st_mtime_ns for p in folders[0].iterdir()} == written  # read, not rewritten
    assert np.array_equal(again.clips.frames, clips.frames) and again.key == data.key
    assert isinstance(shards.parts, np.ndarray) and shards.parts.strides == (0, 0, 0, 0)  # shards alone: a zero view


def test_base_trains_from_shards_mixed_with_the_world(folder, tmp_path, tiny_bundle):
    from aa_train.cli import main

    root, _ = folder
    runner = CliRunner()
    res = runner.invoke(main, ["prepare", "--data", f"videos:{root}", "-o", str(tmp_path / "s"), "--size", "64",
                               "--frames", "2", "--clips-per-video", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["base", "--data", f"shards:{tmp_path / 's'}", "--data", "world:2@0.5", "-o",
                               str(tmp_path / "b"), "--work-dir", str(tmp_path / "w"), "--frames", "2",
                               "--stages", "image,video", "--image-steps", "2", "--video-steps", "1",
                               "--image-batch", "2", "--video-batch", "1", "--warmup", "1", "--init",
                               str(tiny_bundle)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "b" / "aa_bundle.json").read_text())["provenance"]["data"]
    assert [d["kind"] for d in data] == ["shards", "world"] and data[0]["clips"] == 4
    # the GPU check's report reads the same bundle: each stage's samples/s and seconds
    from benchmarks.base_training import report, write

    result = report(tmp_path / "b", None, "cpu")
    assert set(result["stages"]) == {"image", "video"}
    assert all(s["samples_per_s"] > 0 and s["seconds"] > 0 for s in result["stages"].values())
    md = write(result, "base_training_test", tmp_path / "results")[1].read_text()
    assert "| image | 2 |" in md and "| video | 1 |" in md
    res = runner.invoke(main, ["base", "--data", f"videos:{root}", "-o", str(tmp_path / "c")])
    assert res.exit_code == 2 and "aa-train prepare --data videos:" in res.output


def test_base_from_sd15_weights_trains_the_pose_channels_with_the_text_encoder_frozen(sd15, tmp_path):
    """`--init SD15 --motion-module MM`: the 8-channel UNet whose pose half starts at zero (test_model pins its
    zero-pose output to the 4-channel model's), a frozen text encoder by default, and a bundle that loads."""
    import torch

    from aa_runtime.model import load_base
    from aa_train.base import BaseTrainConfig, train_base

    root, motion = sd15
    cfg = BaseTrainConfig(output=tmp_path / "b", data="world:2", stages=("image", "video"), work_dir=tmp_path / "w",
                          size=32, frames=2, image_steps=3, video_steps=1, image_batch=2, video_batch=1, warmup=1,
                          lr=1e-2, init=str(root), motion_module=str(motion))
    start = load_base(root, motion)
    assert start.unet.conv_in.weight.shape[1] == 8 and not start.unet.conv_in.weight[:, 4:].any()
    train_base(cfg, log=lambda *_: None)
    out = load_base(tmp_path / "b")
    assert out.unet.conv_in.weight[:, 4:].abs().sum() > 0  # the pose half trained
    for (k, a), (_, b) in zip(start.text_encoder.state_dict().items(), out.text_encoder.state_dict().items()):
        assert torch.equal(a.half().float(), b), k  # frozen (the bundle stores fp16)
    with pytest.raises(AAError, match="--init"):
        BaseTrainConfig(output=tmp_path / "c", motion_module=str(motion))
