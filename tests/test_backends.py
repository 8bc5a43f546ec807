"""UNet backends: onnxruntime samples the same video as eager torch; selection errors are one line; the
throughput benchmark's JSON has its documented fields and ratios of its own medians."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aa_runtime.backends import OnnxRuntimeBackend, UNetShapes, export_unet_onnx, make_backend
from aa_runtime.errors import AAError

NO_GPU = "needs an NVIDIA GPU with CUDA; none is visible to torch here — run it on a GPU machine with " \
         "`pip install 'animate-anywhere[gpu]'`, or use the onnxruntime backend on a CPU"


def sample(pipe, poses, frames: int, guidance: float):
    """uint8 frames (F, H, W, 3) and the final latents (1, 4, F, h, w) of a short, seeded run."""
    captured = {}
    decode = pipe.decode_latents

    def capture(latents, chunk):
        captured["latents"] = latents.clone()
        return decode(latents, chunk)

    pipe.decode_latents = capture
    try:
        out = pipe("a man waving on a beach", poses, num_frames=frames, num_inference_steps=3,
                   guidance_scale=guidance, seed=0, progress=False)
    finally:
        del pipe.decode_latents
    return out.frames, captured["latents"]


def test_onnxruntime_samples_the_same_frames_as_torch(pipe, poses, tmp_path):
    # batch 2 (CFG) × 4 frames, then batch 1 (no CFG) × 3 frames: one dynamic export serves both
    reference = [sample(pipe, poses, 4, 5.0), sample(pipe, poses, 3, 1.0)]
    backend = make_backend("onnxruntime", pipe.unet, device="cpu", cache_dir=tmp_path)
    pipe.set_backend(backend)
    for (frames_t, latents_t), (frames, guidance) in zip(reference, ((4, 5.0), (3, 1.0))):
        frames_o, latents_o = sample(pipe, poses, frames, guidance)
        assert frames_o.shape == frames_t.shape == (frames, 64, 64, 3)
        assert np.abs(frames_o.astype(int) - frames_t.astype(int)).max() <= 2  # uint8 levels
        torch.testing.assert_close(latents_o, latents_t, rtol=0, atol=1e-3)
        assert latents_t.abs().max() > 0.1
    exported = list(tmp_path.glob("onnx/*/unet.onnx"))
    assert len(exported) == 1 and len(backend.sessions) == 1
    parity = json.loads((exported[0].parent / "export.json").read_text())["parity"]
    assert parity["max_abs"] <= 1e-4 and parity["shape"]["frames"] == 3  # checked at another shape than traced
    mtime = exported[0].stat().st_mtime_ns
    again = make_backend("onnxruntime", pipe.unet, device="cpu", cache_dir=tmp_path)
    x = UNetShapes(1, 2, 16, 16, 32, 64).example_inputs()
    assert again(*x).shape == (1, 4, 2, 16, 16)
    assert exported[0].stat().st_mtime_ns == mtime  # reused from the cache, not exported again


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_tensorrt_without_gpu_is_one_line(tiny_base):
    for device in ("cpu", "cuda"):
        with pytest.raises(AAError) as e:
            make_backend("tensorrt", tiny_base.unet, onnx_path="unet.plan", device=device)
        assert one_line(e) == f"tensorrt backend: {NO_GPU}"


def test_selection_errors_are_one_line(tiny_base, tmp_path, monkeypatch):
    with pytest.raises(AAError) as e:
        make_backend("tensorrtt", tiny_base.unet)
    assert one_line(e) == "backend: 'tensorrtt' — use one of torch, torch-compile, onnxruntime, tensorrt"
    missing = tmp_path / "nope.onnx"
    with pytest.raises(AAError) as e:
        make_backend("onnxruntime", tiny_base.unet, onnx_path=missing)
    assert one_line(e) == (f"ONNX model: {missing} does not exist — export one with `aa-export onnx -o unet.onnx`, "
                           "or leave out --onnx to export the UNet on the fly")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(AAError, match=r"^ONNX model: .*broken.onnx could not be loaded by onnxruntime") as e:
        make_backend("onnxruntime", tiny_base.unet, onnx_path=broken)
    one_line(e)
    with pytest.raises(AAError) as e:
        make_backend("torch", tiny_base.unet, onnx_path=broken)
    assert one_line(e).startswith("--onnx: ") and "only read by the onnxruntime and tensorrt backends" in str(e.value)
    monkeypatch.setattr("aa_runtime.backends.shutil.which", lambda name: None)
    with pytest.raises(AAError) as e:
        make_backend("torch-compile", tiny_base.unet)
    assert one_line(e) == ("torch-compile backend: no C++ compiler found (inductor needs one on a CPU) — install g++ "
                           "(e.g. apt-get install g++) or use --backend torch or onnxruntime")


def test_static_onnx_refuses_other_shapes_in_one_line(tmp_path):
    from aa_runtime.model import TinyConfig, build_unet

    torch.manual_seed(0)
    micro = build_unet(TinyConfig(unet_channels=(16, 16), unet_layers=1, unet_heads=2, motion_heads=2, text_dim=16))
    shapes = UNetShapes(2, 4, 16, 16, 8, 16)
    path = export_unet_onnx(micro.eval(), tmp_path / "static.onnx", shapes)
    backend = OnnxRuntimeBackend(path)
    assert backend(*shapes.example_inputs()).shape == (2, 4, 4, 16, 16)
    with pytest.raises(AAError) as e:
        backend(*UNetShapes(2, 3, 16, 16, 8, 16).example_inputs())
    assert one_line(e) == ("ONNX input sample: shape (2, 8, 3, 16, 16) does not fit the model's (2, 8, 4, 16, 16) — "
                           "re-export with --dynamic, or with --frames/--height/--width/--batch matching the run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_aa_run_tensorrt_without_gpu_prints_one_line(tiny_bundle, tmp_path):
    from aa_runtime.cli import main

    r = CliRunner().invoke(main, ["--prompt", "a man", "--motion", "walk", "--base", str(tiny_bundle), "--frames", "2",
                                  "--backend", "tensorrt", "--onnx", "unet.plan", "-o", str(tmp_path / "o.mp4")])
    assert r.exit_code == 2
    assert r.output.strip() == f"error: tensorrt backend: {NO_GPU}"


def test_throughput_json_fields_and_ratios(tiny_bundle, tmp_path):
    from aa_export.throughput import Scenario, ThroughputConfig, run_throughput

    tiny = Scenario("tiny-test", "aa-tiny", 64, 64, frames=4, clip_frames=6, steps=2, overlap=1, repeats=1, warmup=0,
                    backends=("torch", "onnxruntime", "tensorrt"), pipeline=True)
    chosen = (tiny, "sd15-512px-16f") if not torch.cuda.is_available() else (tiny,)
    cfg = ThroughputConfig(scenarios=chosen, backends=("torch", "onnxruntime", "tensorrt"), device="cpu",
                           bundle=str(tiny_bundle), merge_ranks=(), out_dir=tmp_path)
    run_throughput(cfg)
    r = json.loads((tmp_path / "throughput.json").read_text())
    assert r["format"] == "aa-bench-throughput/1" and r["peak"]["tflops"] > 0 and "measured" in r["peak"]["source"]
    assert {"cpu", "threads", "torch", "onnxruntime"} <= r["host"].keys()
    s = r["scenarios"][0]
    assert s["status"] == "ok" and s["flops_per_call"] > 1e9 and f"bundle {tiny_bundle}" in s["model_source"]
    assert s["shapes"]["frames"] == 4 and s["windows_per_clip"] == 2
    rows = {b["backend"]: b for b in s["backends"]}
    assert rows["tensorrt"]["status"] == "skipped" and "GPU" in rows["tensorrt"]["reason"]
    eager = rows["torch"]
    for name in ("torch", "onnxruntime"):
        b = rows[name]
        assert b["status"] == "ok" and len(b["times_s"]) == 1
        for key in ("median_s", "evals_per_s", "s_per_step", "clip_frames_per_s", "tflops", "peak_fraction",
                    "peak_mem_gib", "peak_mem_increase_gib", "max_abs_vs_eager", "speedup_vs_eager", "setup_s"):
            assert isinstance(b[key], float), key
        assert b["median_s"] == statistics.median(b["times_s"])
        assert b["speedup_vs_eager"] == pytest.approx(eager["median_s"] / b["median_s"], rel=1e-12)
        assert b["evals_per_s"] == pytest.approx(2 / b["median_s"], rel=1e-12)
        assert b["tflops"] == pytest.approx(s["flops_per_call"] / b["median_s"] / 1e12, rel=1e-12)
        assert b["peak_fraction"] == pytest.approx(b["tflops"] / r["peak"]["tflops"], rel=1e-12)
        assert b["clip_frames_per_s"] == pytest.approx(6 / (2 * 2 * b["s_per_step"]), rel=1e-12)
        assert b["peak_mem_gib"] > 0.1
    assert eager["speedup_vs_eager"] == 1.0 and eager["max_abs_vs_eager"] == 0.0
    assert rows["onnxruntime"]["max_abs_vs_eager"] <= 1e-4
    pipeline = {p["backend"]: p for p in s["pipeline"]}
    assert pipeline["onnxruntime"]["max_level_diff_vs_eager"] <= 2 and pipeline["torch"]["unet_evals"] == 8
    if len(r["scenarios"]) > 1:
        assert r["scenarios"][1]["status"] == "skipped" and "cuda only" in r["scenarios"][1]["reason"]
    md = (tmp_path / "throughput.md").read_text()
    assert "## tiny-test" in md and "| onnxruntime |" in md and "Peak assumed" in md


def test_bench_cli_lists_scenarios():
    from aa_export.bench import main

    r = CliRunner().invoke(main, ["throughput", "--list"])
    assert r.exit_code == 0 and "sd15-256px-8f" in r.output and "aa-tiny-64px" in r.output
    r = CliRunner().invoke(main, ["throughput", "--scenarios", "nope"])
    assert r.exit_code == 2 and r.output.startswith("error: scenario: 'nope' — use one of")
