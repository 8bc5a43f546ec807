"""UNet throughput per backend, declared as scenarios (STYLE §9): warm-up, interleaved repeats, medians, and
ratios to eager PyTorch measured in the same run on the same inputs and seed.

Per backend: UNet evaluations/s (a batch-2 CFG call is 2 evaluations), seconds per sampling step (one window),
frames/s of a full clip (UNet only: steps × windows × s/step; for bundles also the whole pipeline measured),
achieved TFLOP/s from a FlopCounterMode count of one eager forward and its fraction of a matmul peak measured in
the same run, peak memory (process RSS high-water mark on CPU, torch's max reserved on CUDA), and max |Δ| of the
noise prediction against eager. Also the time to merge an identity adapter into an SD1.5-sized UNet.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from aa_export.onnx_graph import UNetShapes, export_unet_onnx, staged_onnx
from aa_runtime.backends import BACKENDS
from aa_runtime.device import resolve_device
from aa_runtime.errors import AAError
from benchmarks.report import write_report

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
THROUGHPUT_FORMAT = "aa-bench-throughput/1"


@dataclass(frozen=True)
class Scenario:
    """One measurement: which UNet, at what size, where, with which backends."""

    name: str
    model: Literal["aa-tiny", "sd15"]
    height: int                    # pixels
    width: int
    frames: int                    # frames per UNet window
    batch: int = 2                 # UNet batch: 2 = one clip with classifier-free guidance
    clip_frames: int = 16          # a full clip, for frames/s
    steps: int = 25                # sampling steps of that clip
    overlap: int = 4               # frames shared by neighbouring windows
    devices: tuple[str, ...] = ("cpu", "cuda")
    backends: tuple[str, ...] = BACKENDS
    repeats: int = 5
    warmup: int = 2
    pipeline: bool = False         # also time the whole pipeline on a clip (needs a bundle: aa-tiny)
    note: str = ""

    def __post_init__(self):
        if self.model not in ("aa-tiny", "sd15"):
            raise AAError("scenario model", self.model, "use aa-tiny or sd15")
        if min(self.height, self.width, self.frames, self.batch, self.clip_frames, self.steps, self.repeats) < 1:
            raise AAError("scenario", self.name, "sizes, steps and repeats must be positive")
        if not 0 <= self.overlap < self.frames:
            raise AAError("scenario overlap", self.overlap, f"use 0 to {self.frames - 1}")
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise AAError("scenario backends", sorted(unknown), f"use {', '.join(BACKENDS)}")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("aa-tiny-64px", "aa-tiny", 64, 64, frames=16, clip_frames=16, repeats=7, warmup=2, pipeline=True),
    Scenario("sd15-512px-16f", "sd15", 512, 512, frames=16, clip_frames=16, devices=("cuda",), repeats=10, warmup=3,
             note="the SD1.5 + AnimateDiff working size; GPU only (one fp32 CPU forward takes minutes)"),
    Scenario("sd15-256px-8f", "sd15", 256, 256, frames=8, clip_frames=16, repeats=3, warmup=1,
             note="the SD1.5-shaped UNet at a size a CPU can run: 256 px (32×32 latents), 8-frame windows"),
)


@dataclass(frozen=True)
class ThroughputConfig:
    """What `aa-bench throughput` runs; validated once."""

    scenarios: tuple[str | Scenario, ...] = ()   # names from SCENARIOS or Scenario objects; () = all
    backends: tuple[str, ...] = BACKENDS          # filter applied to every scenario's own list
    device: str = "auto"
    threads: int | None = None                    # torch and onnxruntime intra-op threads [default: torch's]
    repeats: int | None = None                    # override every scenario's
    warmup: int | None = None
    seed: int = 0
    bundle: str | None = None                     # aa-tiny bundle [default: models/aa-tiny, else a random one]
    pipeline: bool = True                         # allow the whole-pipeline clip timing
    merge_ranks: tuple[int, ...] = (4, 16)        # adapter merge timing at SD1.5 size; () = skip
    out_dir: Path = RESULTS_DIR

    def __post_init__(self):
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        names = {s.name: s for s in SCENARIOS}
        for s in self.scenarios:
            if isinstance(s, str) and s not in names:
                raise AAError("scenario", repr(s), f"use one of {', '.join(names)}")
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise AAError("backends", ",".join(sorted(unknown)), f"use {', '.join(BACKENDS)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise AAError("device", self.device, "use auto, cpu, cuda or cuda:N")
        for name in ("threads", "repeats"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AAError(name, getattr(self, name), "use a positive number")
        if self.warmup is not None and self.warmup < 0:
            raise AAError("warmup", self.warmup, "use 0 or more")

    def resolved_scenarios(self) -> list[Scenario]:
        names = {s.name: s for s in SCENARIOS}
        chosen = [names[s] if isinstance(s, str) else s for s in self.scenarios] or list(SCENARIOS)
        return [replace(s, repeats=self.repeats or s.repeats, warmup=s.warmup if self.warmup is None else self.warmup)
                for s in chosen]


# ============================================================================================ measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one measured call: the process RSS high-water mark on CPU (reset through
    /proc/self/clear_refs where Linux allows it), torch's max reserved bytes on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = device.type == "cpu" and _reset_rss_peak()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            _reset_rss_peak()

    def current_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_reserved(self.device)
        return _status_kib("VmRSS") * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_reserved(self.device)
        return _status_kib("VmHWM") * 1024

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_reserved (memory onnxruntime/TensorRT allocate themselves is not in it)"
        return "process RSS high-water mark (VmHWM" + (", reset before each call)" if self.resettable else
                                                       ", not resettable here: whole-process peak)")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def release_free_memory(device: torch.device) -> None:
    """Hand freed memory back to the system (gc, then malloc_trim on glibc / empty_cache on CUDA), so that the
    resident size reads what is really held."""
    import ctypes
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: resident size then includes cached free heap
        pass


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def count_flops(unet: torch.nn.Module, inputs: tuple) -> tuple[int, torch.Tensor, dict]:
    """FLOPs of one eager forward (FlopCounterMode: matmul, conv and attention; 2 per multiply-add; elementwise
    ops and norms are not counted) and its output."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:  # CPU fused attention is not in torch's flop registry
        custom[cpu_sdpa] = lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v)
    sample, timestep, text = inputs
    with FlopCounterMode(display=False, custom_mapping=custom) as counter, torch.no_grad():
        out = unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), out, by_op


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> dict:
    """Best achieved TFLOP/s of a square matmul on `device`, measured now with the current thread count."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t0)
    best = min(times[1:])
    return {"tflops": 2 * n ** 3 / best / 1e12, "source": f"measured in this run: best of {repeats} {n}×{n} "
            f"{str(dtype).removeprefix('torch.')} torch.mm on {device.type} with {torch.get_num_threads()} thread(s)",
            "matmul_n": n, "times_s": times[1:]}


def host_info(device: torch.device) -> dict:
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "device": str(device),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ============================================================================================ models
def load_scenario_model(s: Scenario, cfg: ThroughputConfig, device: torch.device, dtype: torch.dtype):
    """(unet, base or None, shapes, where the weights come from)."""
    if s.model == "sd15":
        from benchmarks.sd15_shapes import SD15_TEXT, SD15_VAE_SCALE, build_sd15_unet

        unet = build_sd15_unet(device, dtype, seed=cfg.seed)
        shapes = UNetShapes(s.batch, s.frames, s.height // SD15_VAE_SCALE, s.width // SD15_VAE_SCALE, *SD15_TEXT)
        source = "random SD1.5-shaped UNetMotionModel (SD1.5 UNet + AnimateDiff v1-5-2 motion modules)"
        return unet, None, shapes, source
    from aa_runtime.model import DEFAULT_BUNDLE, load_base
    from aa_runtime.tiny import TinyConfig, build_random_base

    if cfg.bundle:
        base, source = load_base(cfg.bundle, device=device, dtype=dtype), f"bundle {cfg.bundle}"
    elif DEFAULT_BUNDLE.exists():
        base, source = load_base(None, device=device, dtype=dtype), f"embedded bundle {DEFAULT_BUNDLE.name}"
    else:
        base = build_random_base(TinyConfig(), seed=cfg.seed)
        for m in (base.unet, base.vae, base.text_encoder):
            m.to(device=device, dtype=dtype)
        source = "random TinyConfig bundle (models/aa-tiny is not there yet)"
    unet = base.unet
    shapes = UNetShapes(s.batch, s.frames, s.height // base.vae_scale, s.width // base.vae_scale,
                        int(base.tokenizer.model_max_length), int(base.text_encoder.config.hidden_size),
                        int(unet.config.in_channels))
    return unet, base, shapes, f"{source}, fingerprint {base.fingerprint}"


def make_bench_backend(name: str, unet, shapes: UNetShapes, device: torch.device, workdir: Path):
    """A backend for a fixed shape: static ONNX export (as `aa-export onnx` does by default), static compile."""
    from aa_runtime import backends as b

    if name == "torch":
        return b.TorchBackend(unet)
    if name == "torch-compile":
        return b.TorchCompileBackend(unet, dynamic=False)
    if name == "tensorrt":
        b.require_cuda(device, "tensorrt backend")
        b.import_tensorrt("the tensorrt backend")
    path = workdir / f"{name}.onnx"
    with staged_onnx(path) as tmp:
        export_unet_onnx(unet, tmp, shapes, dynamic=False)
    if name == "onnxruntime":
        return b.OnnxRuntimeBackend(path, device=device)
    from aa_export.trt_engine import TrtBuildConfig, build_trt_engine

    plan = build_trt_engine(TrtBuildConfig(onnx=path, output=workdir / "unet.plan", device=str(device)))
    return b.TensorRTBackend(plan, device=device)


# ============================================================================================ one scenario
def run_scenario(s: Scenario, cfg: ThroughputConfig, device: torch.device, peak: dict) -> tuple[dict, object]:
    """Measure every backend of `s`; returns the scenario's record and its UNet (reused for merge timing)."""
    from aa_runtime.pipeline import context_windows

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    record = {"name": s.name, "scenario": asdict(s), "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    wanted = [name for name in s.backends if name in cfg.backends]
    if device.type not in s.devices:
        record.update(status="skipped", reason=f"runs on {'/'.join(s.devices)} only; this run is on {device.type}"
                      + (f" ({s.note})" if s.note else ""), backends=[])
        return record, None
    t0 = time.perf_counter()
    unet, base, shapes, source = load_scenario_model(s, cfg, device, dtype)
    sample, timestep, text = shapes.example_inputs(dtype, device, cfg.seed)
    inputs = (sample, timestep[0].long(), text)  # a 0-dim integer timestep, as the pipeline passes it
    flops, ref, by_op = count_flops(unet, inputs)  # also the eager warm-up call
    windows = len(context_windows(s.clip_frames, s.frames, s.overlap))
    record.update(status="ok", model_source=source, note=s.note, load_s=time.perf_counter() - t0,
                  params=sum(p.numel() for p in unet.parameters()), shapes=asdict(shapes),
                  flops_per_call=flops, flops_by_op=by_op, windows_per_clip=windows)

    # set up each backend (export / compile / first call outside the timing), then warm up
    memory = PeakMemory(device)
    workdir = Path(tempfile.mkdtemp(prefix=f"aa-bench-{s.name}-"))
    live, rows = {}, {}
    for name in wanted:
        row = rows[name] = {"backend": name}
        t1 = time.perf_counter()
        try:
            backend = make_bench_backend(name, unet, shapes, device, workdir)
            out = backend(*inputs)
            sync(device)
        except AAError as e:
            row.update(status="skipped", reason=str(e))
            continue
        row.update(status="ok", setup_s=time.perf_counter() - t1,
                   max_abs_vs_eager=float((out.float() - ref.float()).abs().max()))
        for _ in range(s.warmup):
            backend(*inputs)
        live[name] = backend
    sync(device)
    release_free_memory(device)  # what the exporters and session loaders freed

    # interleaved timing: every repeat runs every backend once, in the same order
    times = {name: [] for name in live}
    peaks = {name: [] for name in live}
    deltas = {name: [] for name in live}
    for _ in range(s.repeats):
        for name, backend in live.items():
            before = memory.current_bytes()
            memory.reset()
            sync(device)
            t1 = time.perf_counter()
            backend(*inputs)
            sync(device)
            times[name].append(time.perf_counter() - t1)
            peaks[name].append(memory.peak_bytes())
            deltas[name].append(peaks[name][-1] - before)
    eager = statistics.median(times["torch"]) if "torch" in times else None
    for name in live:
        med = statistics.median(times[name])
        s_per_step = med * 2 / s.batch  # one CFG step = 2 evaluations of one window
        rows[name].update(
            times_s=times[name], median_s=med, evals_per_s=s.batch / med, s_per_step=s_per_step,
            clip_frames_per_s=s.clip_frames / (s.steps * windows * s_per_step),
            tflops=flops / med / 1e12, peak_fraction=flops / med / 1e12 / peak["tflops"],
            peak_mem_gib=max(peaks[name]) / 2 ** 30, peak_mem_increase_gib=max(deltas[name]) / 2 ** 30,
            speedup_vs_eager=(eager / med) if eager else None)
    record["backends"] = [rows[name] for name in wanted]
    record["memory_kind"] = memory.kind
    record["resident_gib"] = memory.current_bytes() / 2 ** 30  # all backends' models loaded at once

    if s.pipeline and cfg.pipeline and base is not None and base.vae is not None and live:
        record["pipeline"] = time_pipeline(s, base, live, device)
    live.clear()
    shutil.rmtree(workdir, ignore_errors=True)
    return record, unet


def time_pipeline(s: Scenario, base, live: dict, device: torch.device) -> list[dict]:
    """The whole pipeline (prompt → poses → denoise → decode) on one clip per backend, same seed."""
    import numpy as np

    from aa_runtime.pipeline import AnimatePipeline
    from aa_runtime.pose_sources import motion_poses

    pipe = AnimatePipeline.from_base(base)
    poses = motion_poses("walk", s.clip_frames, 8.0, s.width, s.height)
    rows, frames = [], {}
    for name, backend in live.items():
        pipe.set_backend(backend)
        t0 = time.perf_counter()
        out = pipe("a man walking on a beach", poses, num_frames=s.clip_frames, height=s.height, width=s.width,
                   num_inference_steps=s.steps, window=s.frames, overlap=s.overlap, seed=0, progress=False)
        sync(device)
        total = time.perf_counter() - t0
        frames[name] = out.frames
        row = {"backend": name, "clip_s": total, "clip_frames_per_s": s.clip_frames / total,
               "denoise_s": out.timings["denoise_s"], "unet_evals": out.timings["unet_evals"]}
        if "torch" in frames:
            row["max_level_diff_vs_eager"] = int(np.abs(out.frames.astype(int) - frames["torch"].astype(int)).max())
        rows.append(row)
    return rows


# ============================================================================================ adapter merge
def measure_merge(unet: torch.nn.Module | None, ranks: tuple[int, ...], repeats: int = 3, seed: int = 0) -> list[dict]:
    """Seconds to load and merge a random identity adapter (rank r on SPATIAL_ATTN2) into an SD1.5-sized UNet."""
    from aa_runtime.adapters import SPATIAL_ATTN2, adapter_metadata, load_adapter, merge_adapter, save_adapter

    if unet is None:
        from benchmarks.sd15_shapes import build_sd15_unet

        unet = build_sd15_unet("cpu", torch.float32, seed=seed)
    modules = dict(unet.named_modules())
    targets = [n for n in modules if re.fullmatch(SPATIAL_ATTN2, n)]
    g = torch.Generator().manual_seed(seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="aa-bench-merge-") as tmp:
        for rank in ranks:
            lora_A = {n: torch.randn(rank, modules[n].in_features, generator=g) * 0.01 for n in targets}
            lora_B = {n: torch.randn(modules[n].out_features, rank, generator=g) * 0.01 for n in targets}
            meta = adapter_metadata(identifier="<me>", class_word="man", rank=rank, alpha=rank,
                                    base_fingerprint="bench-random-sd15")
            path = save_adapter(Path(tmp) / f"r{rank}.safetensors", lora_A, lora_B, meta)
            load_s, merge_s = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                adapter = load_adapter(path)
                t1 = time.perf_counter()
                merge_adapter(unet, adapter, base_fingerprint="bench-random-sd15")
                sync(next(unet.parameters()).device)
                merge_s.append(time.perf_counter() - t1)
                load_s.append(t1 - t0)
            rows.append({"rank": rank, "targets": len(targets), "file_bytes": path.stat().st_size,
                         "device": str(next(unet.parameters()).device),
                         "dtype": str(next(unet.parameters()).dtype).removeprefix("torch."),
                         "load_s": statistics.median(load_s), "merge_s": statistics.median(merge_s),
                         "merge_times_s": merge_s, "aim_s": 1.0})
    return rows


# ============================================================================================ run + write
def run_throughput(cfg: ThroughputConfig) -> dict:
    """Run the scenarios, write `throughput.json` and `throughput.md` into `cfg.out_dir`, return the results."""
    device, _ = resolve_device(cfg.device, "float32")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    if device.type == "cuda":
        peak["datasheet"] = "for reference, NVIDIA H100 SXM: 989 TFLOP/s dense FP16 tensor core (H100 PCIe: 756)"
    results = {"format": THROUGHPUT_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "host": host_info(device), "peak": peak, "scenarios": [], "merge": [],
               "definitions": DEFINITIONS}
    keep = None
    for s in cfg.resolved_scenarios():
        record, unet = run_scenario(s, cfg, device, peak)
        results["scenarios"].append(record)
        if s.model == "sd15" and unet is not None:
            keep = unet
        del unet
    if cfg.merge_ranks:
        results["merge"] = measure_merge(keep, cfg.merge_ranks, seed=cfg.seed)
    write_results(results, cfg.out_dir)
    return results


DEFINITIONS = {
    "median_s": "median wall time of one UNet call at the scenario's batch (interleaved repeats, after warm-up)",
    "evals_per_s": "noise predictions per second = batch / median_s (a CFG call of batch 2 is 2 evaluations)",
    "s_per_step": "seconds per sampling step of one window with CFG = median_s × 2 / batch",
    "clip_frames_per_s": "UNet-only estimate: clip_frames / (steps × windows_per_clip × s_per_step); the pipeline "
                         "table measures the whole clip (text, poses, VAE decode included) where a bundle exists",
    "tflops": "flops_per_call / median_s; flops counted by torch.utils.flop_counter.FlopCounterMode on one eager "
              "forward (matmul, conv, attention; 2 per multiply-add; norms and elementwise ops not counted)",
    "peak_fraction": "tflops / peak.tflops (peak = matmul measured in the same run)",
    "peak_mem_gib": "max over repeats of the memory measure named in memory_kind (whole process: every backend's "
                    "model is resident)",
    "peak_mem_increase_gib": "max over repeats of that peak minus the resident memory just before the call",
    "max_abs_vs_eager": "max |Δ| of the noise prediction against eager torch on the same inputs",
    "speedup_vs_eager": "median_s(torch) / median_s(backend), both from this run",
}


def write_results(results: dict, out_dir: Path) -> tuple[Path, Path]:
    return write_report(out_dir, "throughput", results, render_markdown(results))


def _f(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def render_markdown(r: dict) -> str:
    h = r["host"]
    lines = [f"# UNet throughput ({r['created']})", "",
             f"Host: {h['cpu']} ({h['cpu_count']} cores), {h['threads']} thread(s), device {h['device']}"
             + (f" ({h['gpu']})" if "gpu" in h else "") + f"; torch {h['torch']}, onnxruntime {h['onnxruntime']}.",
             f"Peak assumed: {r['peak']['tflops']:.3f} TFLOP/s — {r['peak']['source']}."
             + (f" {r['peak']['datasheet']}." if "datasheet" in r["peak"] else ""), ""]
    for s in r["scenarios"]:
        sc = s["scenario"]
        lines.append(f"## {s['name']}: {sc['height']}×{sc['width']} px, {sc['frames']} frames/window, UNet batch "
                     f"{sc['batch']} (CFG), {sc['steps']} steps for a {sc['clip_frames']}-frame clip")
        lines.append("")
        if s["status"] != "ok":
            lines += [f"Skipped: {s['reason']}", ""]
            continue
        lines += [f"Model: {s['model_source']}; {s['params'] / 1e6:.1f} M parameters; "
                  f"{s['flops_per_call'] / 1e9:.1f} GFLOP per call; dtype {s['dtype']} on {s['device']}."
                  + (f" Note: {s['note']}." if s.get("note") else ""), "",
                  "| backend | median s/call | evals/s | s/step | clip frames/s (UNet) | TFLOP/s | % of peak | "
                  "peak mem GiB | call's increase GiB | max abs diff vs eager | speed-up vs eager |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in s["backends"]:
            if b["status"] != "ok":
                lines.append(f"| {b['backend']} | skipped: {b['reason']} ||||||||||")
                continue
            lines.append(f"| {b['backend']} | {b['median_s']:.4f} | {b['evals_per_s']:.2f} | {b['s_per_step']:.4f} | "
                         f"{b['clip_frames_per_s']:.3f} | {b['tflops']:.4f} | {100 * b['peak_fraction']:.1f} | "
                         f"{b['peak_mem_gib']:.2f} | {b['peak_mem_increase_gib']:.2f} | {b['max_abs_vs_eager']:.2e} | "
                         f"{_f(b['speedup_vs_eager'], '.2f')}× |")
        lines += ["", f"Memory: {s['memory_kind']}; the process holds every backend's copy of the model at once "
                  f"({s['resident_gib']:.2f} GiB resident after the runs), so compare the per-call increase.", ""]
        if s.get("pipeline"):
            lines += ["Whole pipeline, one clip per backend (text, poses, VAE decode included):", "",
                      "| backend | clip s | frames/s | denoise s | UNet calls | max level diff vs eager (uint8) |",
                      "|---|---|---|---|---|---|"]
            for p in s["pipeline"]:
                lines.append(f"| {p['backend']} | {p['clip_s']:.2f} | {p['clip_frames_per_s']:.2f} | "
                             f"{p['denoise_s']:.2f} | {p['unet_evals']} | {p.get('max_level_diff_vs_eager', '–')} |")
            lines.append("")
    if r["merge"]:
        lines += ["## Identity adapter merge at SD1.5 size (aim ≤ 1 s)", "",
                  "| rank | target layers | file | device | load s | merge s |", "|---|---|---|---|---|---|"]
        for m in r["merge"]:
            lines.append(f"| {m['rank']} | {m['targets']} | {m['file_bytes'] / 2 ** 20:.1f} MiB | {m['device']} "
                         f"{m['dtype']} | {m['load_s']:.3f} | {m['merge_s']:.3f} |")
        lines.append("")
    lines += ["## Definitions", ""] + [f"- `{k}`: {v}" for k, v in r["definitions"].items()] + [""]
    return "\n".join(lines)
