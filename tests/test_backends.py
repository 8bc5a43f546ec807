"""UNet backends: onnxruntime samples the same video as eager torch; selection errors are one line; the
throughput benchmark's numbers match values known without its code (a fake clock, a FLOP count from hooks)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aa_export.onnx_graph import UNetShapes, export_unet_onnx, unet_shapes_for
from aa_runtime.backends import OnnxRuntimeBackend, make_backend
from aa_runtime.bundle import fingerprint
from aa_runtime.errors import AAError
from aa_runtime.model import load_base

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
    shapes = unet_shapes_for(pipe.unet, batch=2, frames=4, height=16, width=16,
                             text_len=int(pipe.tokenizer.model_max_length))
    path = export_unet_onnx(pipe.unet, tmp_path / "unet.onnx", shapes, dynamic=True,
                            metadata={"aa_unet_fingerprint": fingerprint(pipe.unet)})
    pipe.set_backend(make_backend("onnxruntime", pipe.unet, onnx_path=path, device="cpu"))
    for (frames_t, latents_t), (frames, guidance) in zip(reference, ((4, 5.0), (3, 1.0))):
        frames_o, latents_o = sample(pipe, poses, frames, guidance)
        assert frames_o.shape == frames_t.shape == (frames, 64, 64, 3)
        assert np.abs(frames_o.astype(int) - frames_t.astype(int)).max() <= 2  # uint8 levels
        torch.testing.assert_close(latents_o, latents_t, rtol=0, atol=1e-3)
        assert latents_t.abs().max() > 0.1


def test_onnxruntime_refuses_a_file_from_other_weights(pipe, tmp_path):
    shapes = unet_shapes_for(pipe.unet, batch=2, frames=4, height=16, width=16,
                             text_len=int(pipe.tokenizer.model_max_length))
    path = export_unet_onnx(pipe.unet, tmp_path / "unet.onnx", shapes,  # as if from another base
                            metadata={"aa_unet_fingerprint": "0" * 16, "aa_fixed_fingerprint": "0" * 16})
    with pytest.raises(AAError) as e:
        make_backend("onnxruntime", pipe.unet, onnx_path=path)
    assert one_line(e) == (f"ONNX model: {path} was exported from UNet weights {'0' * 16}, this pipeline's UNet is "
                           f"{fingerprint(pipe.unet)} beyond the identity adapter's layers — export the same --base "
                           "(adapters on the spatial cross-attention need no re-export)")


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
    assert one_line(e) == (f"ONNX model: {missing} does not exist — export one with `aa-export onnx -o unet.onnx` "
                           "(with the same --base as the run)")
    with pytest.raises(AAError) as e:
        make_backend("onnxruntime", tiny_base.unet)
    assert one_line(e) == ("--onnx: not given for the onnxruntime backend — export the UNet with `aa-export onnx -o "
                           "unet.onnx` and pass --onnx unet.onnx")
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
    from aa_runtime.tiny import TinyConfig, build_unet

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


class FakeClock:
    """Stands in for the benchmark module's `time`: perf_counter advances by `tick` per reading and by whatever the
    timed backends add, never by the real time taken; the rest is the real module."""

    tick = 2.0 ** -10

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def __getattr__(self, name):
        import time

        return getattr(time, name)


class TimedBackend:
    """A real backend whose every call takes `seconds` on the fake clock."""

    def __init__(self, backend, seconds: float, clock: FakeClock):
        self.backend, self.seconds, self.clock = backend, seconds, clock

    def __call__(self, *args):
        out = self.backend(*args)
        self.clock.now += self.seconds
        return out

    def __getattr__(self, name):
        return getattr(self.backend, name)


def hooked_flops(unet, inputs) -> int:
    """FLOPs of one forward counted from the layers themselves (2 per multiply-add): every Conv2d, every Linear, and
    the two products of each attention (QKᵀ and weights × V)."""
    from diffusers.models.attention_processor import Attention

    total = [0]

    def conv(m, args, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, args, out):
        total[0] += 2 * out.numel() * m.in_features

    def attention(m, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]  # (B, Lq, C)
        ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        keys = (x if ctx is None else ctx).shape[1]
        total[0] += 2 * 2 * x.shape[0] * x.shape[1] * keys * m.to_q.out_features

    hooks = []
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attention, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2])
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def test_throughput_json_fields_and_ratios(tiny_bundle, tmp_path, monkeypatch):
    """Every number of the throughput JSON against a value known without the benchmark's code: the timings run on a
    fake clock where a torch call takes 0.25 s and an onnxruntime call 0.125 s (plus 2⁻¹⁰ s per clock reading, which
    is also all the peak matmul takes), so medians, rates and ratios have values worked out by hand; the FLOP count
    must equal a count made with forward hooks on every convolution, linear layer and attention product."""
    import benchmarks.throughput as tp
    from benchmarks.throughput import Scenario, ThroughputConfig, run_throughput

    clock = FakeClock()
    seconds = {"torch": 0.25, "onnxruntime": 0.125}
    build = tp.make_bench_backend
    monkeypatch.setattr(tp, "time", clock)
    monkeypatch.setattr(tp, "make_bench_backend", lambda name, *a: TimedBackend(build(name, *a), seconds[name], clock)
                        if name in seconds else build(name, *a))
    tiny = Scenario("tiny-test", "aa-tiny", 64, 64, frames=4, clip_frames=6, steps=2, overlap=1, repeats=1, warmup=0,
                    backends=("torch", "onnxruntime", "tensorrt"), pipeline=True)
    chosen = (tiny, "sd15-512px-16f") if not torch.cuda.is_available() else (tiny,)
    cfg = ThroughputConfig(scenarios=chosen, backends=("torch", "onnxruntime", "tensorrt"), device="cpu",
                           bundle=str(tiny_bundle), merge_ranks=(), out_dir=tmp_path)
    run_throughput(cfg)
    r = json.loads((tmp_path / "throughput.json").read_text())
    assert r["format"] == "aa-bench-throughput/1" and "measured" in r["peak"]["source"]
    peak = 2 * 2048 ** 3 / FakeClock.tick / 1e12  # one 2048² matmul per reading pair
    assert r["peak"]["tflops"] == pytest.approx(peak, rel=1e-9)
    assert {"cpu", "threads", "torch", "onnxruntime"} <= r["host"].keys()
    s = r["scenarios"][0]
    assert s["status"] == "ok" and f"bundle {tiny_bundle}" in s["model_source"]
    shapes = UNetShapes(**s["shapes"])
    assert (shapes.batch, shapes.frames, shapes.height, shapes.width) == (2, 4, 16, 16)
    sample, timestep, text = shapes.example_inputs()
    assert s["flops_per_call"] == hooked_flops(load_base(tiny_bundle).unet, (sample, timestep[0].long(), text))
    assert s["windows_per_clip"] == 2  # 6 frames in windows of 4 sharing 1: [0, 4) and [2, 6)
    rows = {b["backend"]: b for b in s["backends"]}
    assert rows["tensorrt"]["status"] == "skipped" and "GPU" in rows["tensorrt"]["reason"]
    for name, call_s in seconds.items():
        b, med = rows[name], call_s + FakeClock.tick
        assert b["status"] == "ok" and b["times_s"] == [pytest.approx(med, rel=1e-9)]
        assert b["median_s"] == pytest.approx(med, rel=1e-9) and b["setup_s"] == pytest.approx(med, rel=1e-9)
        assert b["evals_per_s"] == pytest.approx(2 / med, rel=1e-9)  # batch 2: one CFG call is 2 evaluations
        assert b["s_per_step"] == pytest.approx(med, rel=1e-9)  # one step of one window = one batch-2 call
        assert b["clip_frames_per_s"] == pytest.approx(6 / (2 * 2 * med), rel=1e-9)  # 2 steps × 2 windows
        assert b["tflops"] == pytest.approx(s["flops_per_call"] / med / 1e12, rel=1e-9)
        assert b["peak_fraction"] == pytest.approx(s["flops_per_call"] / med / 1e12 / peak, rel=1e-9)
        assert b["speedup_vs_eager"] == pytest.approx((0.25 + FakeClock.tick) / med, rel=1e-9)
        assert b["peak_mem_gib"] > 0.1 and isinstance(b["peak_mem_increase_gib"], float)
    assert rows["torch"]["max_abs_vs_eager"] == 0.0 and rows["onnxruntime"]["max_abs_vs_eager"] <= 1e-4
    pipeline = {p["backend"]: p for p in s["pipeline"]}
    for name, call_s in seconds.items():  # 2 steps × 2 windows = 4 batch-2 calls per clip
        assert pipeline[name]["unet_evals"] == 8
        assert pipeline[name]["clip_s"] == pytest.approx(4 * call_s + FakeClock.tick, rel=1e-9)
        assert pipeline[name]["clip_frames_per_s"] == pytest.approx(6 / (4 * call_s + FakeClock.tick), rel=1e-9)
    assert pipeline["onnxruntime"]["max_level_diff_vs_eager"] <= 2
    if len(r["scenarios"]) > 1:
        assert r["scenarios"][1]["status"] == "skipped" and "cuda only" in r["scenarios"][1]["reason"]
    md = (tmp_path / "throughput.md").read_text()
    assert "## tiny-test" in md and "| onnxruntime |" in md and "Peak assumed" in md


def test_bench_cli_lists_scenarios():
    from benchmarks.bench import main

    r = CliRunner().invoke(main, ["throughput", "--list"])
    assert r.exit_code == 0 and "sd15-256px-8f" in r.output and "aa-tiny-64px" in r.output
    r = CliRunner().invoke(main, ["throughput", "--scenarios", "nope"])
    assert r.exit_code == 2 and r.output.startswith("error: scenario: 'nope' — use one of")
