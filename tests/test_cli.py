"""`aa-run` end to end on a tiny random bundle, and its one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from aa_runtime.cli import main
from aa_runtime.poses import Annotations, save_annotations
from aa_runtime.video import read_video
from conftest import stick_figure


@pytest.fixture(scope="module")
def pose_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("poses") / "walk.aa.json"
    save_annotations(path, Annotations(128, 128, 8.0, stick_figure(5, size=128, shift=2.0)))
    return path


def test_aa_run_writes_video_preview_gif_and_sidecar(tiny_bundle, pose_json, tmp_path):
    out = tmp_path / "run" / "clip.mp4"
    res = CliRunner().invoke(main, ["--base", str(tiny_bundle), "--prompt", "a man waving on a beach",
                                    "--pose", str(pose_json), "--frames", "6", "--fps", "12", "--steps", "2",
                                    "--seed", "5", "-o", str(out)])
    assert res.exit_code == 0, res.output
    clip = read_video(out)
    assert clip.frames.shape == (6, 64, 64, 3) and clip.fps == pytest.approx(12)
    preview = read_video(out.with_name("clip.preview.mp4"))
    assert preview.frames.shape == (6, 64, 128, 3)
    assert read_video(out.with_suffix(".gif")).frames.shape[0] == 6
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["seed"] == 5 and side["prompt"] == "a man waving on a beach" and side["frames"] == 6
    assert side["steps"] == 2 and side["scheduler"] == "dpm++" and side["backend"] == "torch"
    assert len(side["base_fingerprint"]) == 16 and side["adapter_sha256"] is None
    assert side["timings"]["denoise_s"] > 0 and side["width"] == 64
    assert "video: " in res.output and "sidecar: " in res.output


def test_aa_run_frames_default_to_the_pose_duration(tiny_bundle, pose_json, tmp_path):
    out = tmp_path / "d.mp4"
    res = CliRunner().invoke(main, ["--base", str(tiny_bundle), "--prompt", "a man", "--pose", str(pose_json),
                                    "--fps", "16", "--steps", "1", "--no-gif", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert read_video(out).frames.shape[0] == 10  # 5 frames at 8 fps = 0.625 s → 10 frames at 16 fps
    assert not out.with_suffix(".gif").exists()


def test_aa_run_few_step_with_a_lora_folded_in(tiny_bundle, tiny_base, tmp_path):
    """The few-step path: --scheduler lcm --steps 2 --guidance 1 with a LoRA folded in at a weight; the sidecar
    records the LoRA, and the LoRA changes the video."""
    from test_adapters import _lora_file

    _lora_file(tiny_base.unet, tmp_path / "fast.safetensors", kohya=True)
    outs = {}
    for name, extra in (("plain", []), ("lora", ["--lora", f"{tmp_path / 'fast.safetensors'}:0.8"])):
        out = tmp_path / f"{name}.mp4"
        res = CliRunner().invoke(main, ["--base", str(tiny_bundle), "--prompt", "a man", "--motion", "wave",
                                        "--frames", "4", "--steps", "2", "--scheduler", "lcm", "--guidance", "1",
                                        "--no-gif", "-o", str(out), *extra])
        assert res.exit_code == 0, res.output
        outs[name] = read_video(out).frames
        side = json.loads(out.with_suffix(".json").read_text())
        assert side["scheduler"] == "lcm" and side["steps"] == 2
    assert side["loras"] == [{"path": str(tmp_path / "fast.safetensors"), "weight": 0.8}]
    assert outs["lora"].shape == (4, 64, 64, 3) and not np.array_equal(outs["lora"], outs["plain"])


@pytest.mark.parametrize("args, expected", [
    (["--pose", "P", "--motion", "wave"], "give exactly one of --pose FILE or --motion NAME"),
    ([], "neither --pose nor --motion"),
    (["--pose", "P", "-o", "x.avi"], "give an .mp4 path"),
    (["--pose", "missing.mp4"], "pose source: missing.mp4 does not exist"),
    (["--pose", "P", "--height", "50"], "height: 50"),
    (["--pose", "P", "--adapter", "nope.safetensors"], "adapter: nope.safetensors does not exist"),
    (["--pose", "P", "--device", "cuda"], "no CUDA GPU"),
    (["--pose", "P", "--device", "tpu"], "device: tpu"),
    (["--pose", "P", "--dtype", "float16", "--device", "cpu"], "float16 on cpu"),
    (["--pose", "P", "--base", "/nonexistent/base"], "base model: /nonexistent/base does not exist"),
    # numbers are checked as given (before: a traceback from the motion generator, or 0 read as "the default")
    (["--motion", "wave", "--frames", "-3"], "frames: -3"),
    (["--motion", "wave", "--frames", "0"], "frames: 0"),
    (["--pose", "P", "--frames", "0"], "frames: 0"),
    (["--motion", "wave", "--fps", "0"], "fps: 0.0"),
    (["--motion", "wave", "--fps", "nan"], "fps: nan"),
    (["--motion", "wave", "--steps", "0"], "steps: 0"),
    (["--motion", "wave", "--width", "8"], "motion width: 8"),
    (["--motion", "wave", "--window", "0"], "window: 0"),
    (["--motion", "wave", "--window", "4", "--overlap", "4"], "overlap: 4"),
    (["--motion", "wave", "--adapter-scale", "0.5"], "adapter-scale: 0.5 — it weighs an --adapter"),
    (["--motion", "wave", "--lora", "fast.safetensors:0.5"], "lora: fast.safetensors does not exist"),
    (["--motion", "wave", "--scheduler", "tcd", "--steps", "80"], "steps: 80 — the tcd scheduler runs 1 to 50"),
    (["--motion", "wave", "--adapter", "a.safetensors", "--adapter-scale", "-1"], "adapter-scale: -1.0 — use 0"),
    (["--motion", "wave", "--free-init", "0"], "FreeInit iterations: 0 — use 1 (off) to 8"),
])
def test_bad_inputs_are_one_line(tiny_bundle, pose_json, tmp_path, args, expected):
    args = [str(pose_json) if a == "P" else a for a in args]
    if "--base" not in args:
        args += ["--base", str(tiny_bundle)]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "x.mp4")]
    res = CliRunner().invoke(main, ["--prompt", "a man", "--steps", "1", *args])
    if "cuda" in args and res.exit_code == 0:
        pytest.skip("a GPU is visible")
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert res.output.count("\n") == 1 and res.output.startswith("error: ")
    assert not list(tmp_path.glob("*.mp4"))


def test_no_traceback_in_a_real_process(tiny_bundle, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-m", "aa_runtime.cli", "--base", str(tiny_bundle), "--prompt", "a man",
                        "--pose", str(bad), "-o", str(tmp_path / "o.mp4")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert "cannot be decoded" in r.stderr or "no person" in r.stderr or "mediapipe" in r.stderr


def test_negative_frames_is_one_line_in_a_real_process(tmp_path):
    """The issue's command: a traceback (ValueError from the motion generator, exit 1) before the fix."""
    r = subprocess.run([sys.executable, "-m", "aa_runtime.cli", "--prompt", "hi", "--motion", "wave", "--frames", "-3",
                        "-o", str(tmp_path / "e.mp4")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: frames: -3 — use 1 or more frames, e.g. --frames 16"
    assert not list(tmp_path.iterdir())


def test_sidecar_records_the_windows_and_sampling_that_ran(tiny_bundle, tmp_path):
    """A --window longer than the clip runs as one window of the clip's length: the sidecar says so (it said 16/4)."""
    out = tmp_path / "w.mp4"
    res = CliRunner().invoke(main, ["--base", str(tiny_bundle), "--prompt", "a man", "--motion", "wave", "--frames",
                                    "6", "--window", "16", "--steps", "1", "--no-gif", "-o", str(out)])
    assert res.exit_code == 0, res.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert (side["window"], side["overlap"], side["windows"]) == (6, 0, [[0, 6]])
    res = CliRunner().invoke(main, ["--base", str(tiny_bundle), "--prompt", "a man", "--motion", "wave", "--frames",
                                    "6", "--window", "4", "--overlap", "1", "--steps", "1", "--no-gif", "-o", str(out)])
    assert res.exit_code == 0, res.output
    side = json.loads(out.with_suffix(".json").read_text())
    # windows [0, 4) and [2, 6): the last one ends at the clip's end, so neighbours share 2 frames, not 1
    assert (side["window"], side["overlap"], side["windows"]) == (4, 2, [[0, 4], [2, 6]])
    # the sampling settings as they ran: the flags given, the bundle's defaults for the rest
    res = CliRunner().invoke(main, ["--base", str(tiny_bundle), "--prompt", "a man", "--motion", "wave", "--frames",
                                    "4", "--steps", "2", "--free-init", "2", "--noise-progressive", "0.5", "--no-gif",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert {k: side[k] for k in ("steps", "free_init_iters", "noise_progressive", "noise_shared_frequency")} == {
        "steps": 2, "free_init_iters": 2, "noise_progressive": 0.5, "noise_shared_frequency": -1.0}
    assert side["timings"]["unet_evals"] == 2 * 2 * 2  # two runs of 2 steps, guided


def test_pose_video_with_sidecar(tiny_bundle, tmp_path):
    from aa_runtime.video import write_video

    video = write_video(tmp_path / "dance.mp4", np.zeros((4, 64, 64, 3), np.uint8), 8)
    save_annotations(tmp_path / "dance.aa.json", Annotations(64, 64, 8.0, stick_figure(4)))
    res = CliRunner().invoke(main, ["--base", str(tiny_bundle), "--prompt", "a man", "--pose", str(video),
                                    "--steps", "1", "-o", str(tmp_path / "o.mp4")])
    assert res.exit_code == 0, res.output
    assert read_video(tmp_path / "o.mp4").frames.shape == (4, 64, 64, 3)
