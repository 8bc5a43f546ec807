"""Peak memory of one identity-training step: measured where it can run, estimated without a GPU.

Estimated: torch's MemTracker (torch.distributed._tools.mem_tracker) traces forward + backward of the
SD1.5 + AnimateDiff UNet on fake CPU tensors (FakeTensorMode), so a 512 px × 16-frame step is "run" on a
laptop in minutes and allocates nothing. The model is built on `meta`, gets its LoRA and dtypes there, and only
then has its parameters replaced by fake CPU tensors (module.to() and peft fail on fake parameters); frozen
parameters are skipped when MemTracker hooks gradients. Optimizer states are added analytically (bitsandbytes
kernels cannot run on fake tensors) and checked against a real AdamW8bit step on the tiny model. Measured: the
process peak RSS of a real step of the tiny model on CPU, `torch.cuda.max_memory_reserved` of a real SD1.5 step
on a GPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from aa_runtime.errors import AAError

from benchmarks.report import write_report
from benchmarks.throughput import RESULTS_DIR, PeakMemory, host_info, release_free_memory

MEMORY_FORMAT = "aa-bench-memory/1"
Checkpointing = Literal["none", "diffusers", "full"]
MODES: dict[str, str] = {
    "none": "no checkpointing",
    "diffusers": "diffusers checkpointing (enable_gradient_checkpointing)",
    "full": "+ motion modules checkpointed (aa_train.checkpointing)",
}
KNOWN_GAPS = [
    "CUDA context, cuBLAS/cuDNN workspaces and caching-allocator fragmentation are not traced: the table adds "
    "×{factor} + {extra} GiB for them (a rule of thumb, not a measurement).",
    "The trace uses CPU autocast: CUDA autocast runs group_norm/layer_norm in fp32, so their outputs kept for "
    "backward are 2× larger on a GPU than traced here (partly hidden by checkpointing, which keeps them only "
    "inside one recomputed segment at a time).",
    "Attention memory follows the kernel chosen on the CPU (fused flash attention for CPU); on a GPU SDPA "
    "flash / memory-efficient or xformers keep the same O(N) footprint, but the math fallback (e.g. with an "
    "unsupported mask) would add a (B·F, heads, N, N) matrix: 4 GiB per 64×64 self-attention in bf16.",
    "Mask-guided attention (training only) is not included: its attn_mask bias of (B·F, 1, N, N) is 512 MiB in "
    "bf16 at 64×64 latents per spatial self-attention call, kept per layer without checkpointing.",
    "AdamW8bit states are computed from the LoRA parameter sizes (uint8 ×2 + fp32 absmax per 256 block + qmaps; "
    "tensors under 4,096 elements keep fp32 states), checked against a real bitsandbytes step on the tiny model.",
    "Only the UNet is resident: text embeddings and latents are cached (no text encoder or VAE on the device), "
    "and the prior-preservation loss runs as its own batch-1 step; batching it with the identity sample doubles "
    "the activations.",
]


@dataclass(frozen=True)
class MemoryConfig:
    """`sd15-4090` identity-training settings by default; validated once."""

    preset: str = "sd15-4090"
    height: int = 512
    width: int = 512
    frames: int = 16
    batch: int = 1
    rank: int = 16
    text_len: int = 77
    text_dim: int = 768
    base_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    modes: tuple[str, ...] = ("none", "diffusers", "full")
    overhead_factor: float = 1.15
    overhead_gib: float = 1.0
    budgets_gib: tuple[float, ...] = (12.0, 24.0)
    aim_gib: float = 10.0
    measure: bool = True       # also a real step: tiny model on CPU, SD1.5 on a GPU when one is visible
    estimate: bool = True      # the SD1.5 MemTracker estimates (minutes each)
    out_dir: Path = RESULTS_DIR

    def __post_init__(self):
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.height % 64 or self.width % 64 or min(self.height, self.width) < 64:
            raise AAError("height/width", (self.height, self.width), "use multiples of 64 (VAE ×8, 3 down-samplings)")
        if not 1 <= self.frames <= 32:
            raise AAError("frames", self.frames, "use 1 to 32 (the motion modules' length)")
        if min(self.batch, self.rank, self.text_len, self.text_dim) < 1:
            raise AAError("batch/rank/text", (self.batch, self.rank, self.text_len, self.text_dim),
                          "use positive sizes")
        bad = set(self.modes) - set(MODES)
        if bad:
            raise AAError("checkpointing mode", sorted(bad), f"use {', '.join(MODES)}")
        if self.base_dtype not in ("bfloat16", "float16"):
            raise AAError("base dtype", self.base_dtype, "use bfloat16 or float16")

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.base_dtype)


# ============================================================================================ the step
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, alpha: float = 1e-3) -> torch.Tensor:
    """Background-weakening loss (paper eq. 1): mean(M·(ε−ε̂)²) + mean(α·(1−M)·(ε−ε̂)²); mask (B, 1, F, h, w)."""
    weight = mask + alpha * (1 - mask)
    return (weight * (pred.float() - target.float()).square()).mean()


def step_inputs(batch: int, frames: int, h: int, w: int, text_len: int, text_dim: int, device="cpu") -> dict:
    """One cached training sample: noisy + pose latents (B, 8, F, h, w), noise (B, 4, F, h, w),
    mask (B, 1, F, h, w) in {0, 1}, text (B·F, T, D)."""
    return {"sample": torch.randn(batch, 8, frames, h, w, device=device),
            "timestep": torch.randint(0, 1000, (batch,), device=device),
            "text": torch.randn(batch * frames, text_len, text_dim, device=device),
            "noise": torch.randn(batch, 4, frames, h, w, device=device),
            "mask": (torch.rand(batch, 1, frames, h, w, device=device) > 0.5).float()}


def forward_backward(unet: torch.nn.Module, x: dict, dtype: torch.dtype, device_type: str) -> torch.Tensor:
    """Forward under autocast, background-weakening loss in fp32, backward."""
    with torch.autocast(device_type, dtype=dtype):
        pred = unet(x["sample"], x["timestep"], encoder_hidden_states=x["text"], return_dict=False)[0]
    loss = masked_mse(pred, x["noise"], x["mask"])
    loss.backward()
    return loss


def prepare_lora_unet(unet: torch.nn.Module, rank: int, dtype: torch.dtype, checkpointing: Checkpointing):
    """LoRA rank `rank` on SPATIAL_ATTN2 (fp32, trainable), everything else frozen in `dtype`; checkpointing set.
    Returns the restore function of full checkpointing (or None)."""
    from aa_runtime.adapters import SPATIAL_ATTN2, attach_lora

    attach_lora(unet, rank, float(rank), SPATIAL_ATTN2)
    for name, p in unet.named_parameters():
        lora = ".lora_" in name
        p.requires_grad_(lora)
        p.data = p.data.to(torch.float32 if lora else dtype)
    for m in unet.modules():
        for name, b in m._buffers.items():
            if b is not None and b.is_floating_point():
                m._buffers[name] = b.to(dtype)
    unet.train()
    if checkpointing == "diffusers":
        unet.enable_gradient_checkpointing()
    elif checkpointing == "full":
        from aa_train.checkpointing import enable_full_gradient_checkpointing

        return enable_full_gradient_checkpointing(unet)
    return None


def adamw8bit_state_bytes(params: list[torch.Tensor], min_8bit_size: int = 4096, block: int = 256) -> int:
    """bitsandbytes AdamW8bit state bytes: exp_avg and exp_avg_sq in uint8 with an fp32 absmax per `block`
    elements and two 256-entry fp32 quantisation maps per tensor; tensors under `min_8bit_size` keep fp32 states."""
    total = 0
    for p in params:
        n = p.numel()
        if n >= min_8bit_size:
            total += 2 * n + 2 * 4 * math.ceil(n / block) + 2 * 256 * 4
        else:
            total += 2 * 4 * n
    return total


# ============================================================================================ estimate
class _NoHandle:
    def remove(self) -> None:
        pass


def _whole_model_tracker():
    """MemTracker adapted to a whole-UNet trace: it does not hook gradients of frozen parameters (it raises on
    them), and keeps only the global peak, not every module's local peak (MemTracker updates those by walking all
    tracked modules after every op: hours for the ~2,000 modules of SD1.5, minutes without). Both overrides
    touch private methods of torch 2.13's MemTracker; `tests` and the benchmark run them."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

    class WholeModelMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            for p in module.parameters():
                if not p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                    self._param_to_grad_hook_handles[p] = (_NoHandle(), _NoHandle())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)

    return WholeModelMemTracker()


def _fake_parameters(module: torch.nn.Module, mode) -> None:
    """Replace meta parameters and buffers by fake CPU tensors of the same shape, dtype and requires_grad."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                with mode:
                    fake = torch.empty(p.shape, dtype=p.dtype, device="cpu")
                m._parameters[name] = torch.nn.Parameter(fake, requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                with mode:
                    m._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device="cpu")


def estimate_step(build_meta: Callable[[], torch.nn.Module], *, latent: tuple[int, int], frames: int, batch: int,
                  text: tuple[int, int], rank: int, dtype: torch.dtype, checkpointing: Checkpointing) -> dict:
    """Trace one forward + backward on fake tensors; peak bytes by category, plus AdamW8bit states."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    t0 = time.perf_counter()
    unet = build_meta()
    prepare_lora_unet(unet, rank, dtype, checkpointing)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer_bytes = adamw8bit_state_bytes(trainable)
    mode = FakeTensorMode()
    _fake_parameters(unet, mode)
    tracker = _whole_model_tracker()
    with mode, tracker:
        x = step_inputs(batch, frames, *latent, *text)
        forward_backward(unet, x, dtype, "cpu")
    snap = tracker.get_tracker_snapshot("peak")
    per_device = next(iter(snap.values()))
    by_kind = {str(k).split(".")[-1]: int(v) for k, v in per_device.items()}
    traced = by_kind.pop("Total", None) or sum(by_kind.values())
    return {"checkpointing": checkpointing, "traced_peak_bytes": traced, "traced_by_kind": by_kind,
            "optimizer_state_bytes": optimizer_bytes, "peak_bytes": traced + optimizer_bytes,
            "trainable_params": sum(p.numel() for p in trainable),
            "frozen_params": sum(p.numel() for p in unet.parameters() if not p.requires_grad),
            "trace_s": time.perf_counter() - t0}


# ============================================================================================ measure
def measure_step(unet: torch.nn.Module, *, latent: tuple[int, int], frames: int, batch: int, text: tuple[int, int],
                 rank: int, dtype: torch.dtype, checkpointing: Checkpointing, device: torch.device) -> dict:
    """Two real training steps: the first creates the optimizer states and warms the libraries up; then freed
    heap memory is handed back (malloc_trim on CPU), and the peak of the second step and its increase over the
    memory held just before it (model, inputs, optimizer states) are measured."""
    import bitsandbytes as bnb

    prepare_lora_unet(unet, rank, dtype, checkpointing)
    unet.to(device)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = bnb.optim.AdamW8bit(trainable, lr=1e-4)
    x = step_inputs(batch, frames, *latent, *text, device=device)
    memory = PeakMemory(device)
    for step in range(2):
        if step == 1:
            release_free_memory(device)
            before = torch.cuda.memory_reserved(device) if device.type == "cuda" else _rss_bytes()
            memory.reset()
        t0 = time.perf_counter()
        forward_backward(unet, x, dtype, device.type)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {"checkpointing": checkpointing, "device": str(device), "peak_bytes": memory.peak_bytes(),
            "before_step_bytes": before, "step_increase_bytes": memory.peak_bytes() - before,
            "memory_kind": memory.kind, "step_s": seconds,
            "param_bytes": sum(p.numel() * p.element_size() for p in unet.parameters()),
            "optimizer_state_bytes": sum(t.numel() * t.element_size() for t in states),
            "optimizer_state_bytes_formula": adamw8bit_state_bytes(trainable)}


def on_meta(build: Callable, *args):
    """`build(*args)` with parameters on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return build(*args)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


# ============================================================================================ run + write
def run_memory(cfg: MemoryConfig) -> dict:
    """Estimate (SD1.5, each checkpointing mode) and measure (tiny on CPU; SD1.5 on a GPU); write JSON + md."""
    from aa_runtime.tiny import TinyConfig, build_unet

    from benchmarks.sd15_shapes import build_sd15_unet

    gib = 2 ** 30
    latent = (cfg.height // 8, cfg.width // 8)
    text = (cfg.text_len, cfg.text_dim)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"format": MEMORY_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "host": host_info(device), "config": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in asdict(cfg).items()},
               "settings": f"{cfg.preset}: SD1.5 UNet + AnimateDiff v1-5-2 motion modules, {cfg.height}×{cfg.width} "
                           f"px ({latent[0]}×{latent[1]} latents), {cfg.frames} frames, batch {cfg.batch}, text "
                           f"{cfg.text_len}×{cfg.text_dim}; LoRA rank {cfg.rank} on SPATIAL_ATTN2 only (fp32); base "
                           f"frozen in {cfg.base_dtype}; {cfg.base_dtype} autocast; AdamW8bit on the LoRA; "
                           f"mask-weighted MSE (background-weakening) loss",
               "overhead": {"factor": cfg.overhead_factor, "extra_gib": cfg.overhead_gib,
                            "rule": "with_overhead = peak × factor + extra (CUDA context, workspaces, fragmentation)"},
               "known_gaps": [g.format(factor=cfg.overhead_factor, extra=cfg.overhead_gib) for g in KNOWN_GAPS],
               "estimates": [], "measured": []}

    if cfg.measure:  # tiny on CPU (bf16 autocast as on the GPU), the estimator on the same step beside it
        tiny = TinyConfig()
        tiny_kw = dict(latent=(16, 16), frames=16, batch=1, text=(tiny.max_tokens, tiny.text_dim), rank=cfg.rank,
                       dtype=cfg.dtype, checkpointing="full")
        torch.manual_seed(0)
        row = measure_step(build_unet(tiny), device=torch.device("cpu"), **tiny_kw)
        est = estimate_step(lambda: on_meta(build_unet, tiny), **tiny_kw)
        k = est["traced_by_kind"]
        row.update(model="aa-tiny UNet (random)", shape="64×64 px (16×16 latents), 16 frames, batch 1",
                   estimated_peak_bytes=est["peak_bytes"], estimated_traced_by_kind=k,
                   estimated_step_increase_bytes=est["traced_peak_bytes"] - k.get("PARAM", 0) - k.get("BUFFER", 0))
        results["measured"].append(row)
        if device.type == "cuda":
            torch.manual_seed(0)
            row = measure_step(build_sd15_unet("cpu", torch.float32), device=device, latent=latent,
                               frames=cfg.frames, batch=cfg.batch, text=text, rank=cfg.rank, dtype=cfg.dtype,
                               checkpointing="full")
            row.update(model="SD1.5-shaped UNetMotionModel (random)", shape=results["settings"])
            results["measured"].append(row)

    if cfg.estimate:
        for mode in cfg.modes:
            est = estimate_step(lambda: build_sd15_unet("meta", torch.float32), latent=latent, frames=cfg.frames,
                                batch=cfg.batch, text=text, rank=cfg.rank, dtype=cfg.dtype, checkpointing=mode)
            peak = est["peak_bytes"] / gib
            total = peak * cfg.overhead_factor + cfg.overhead_gib
            est.update(mode=MODES[mode], peak_gib=peak, with_overhead_gib=total,
                       fits={f"{b:g} GiB": total <= b for b in cfg.budgets_gib}, meets_aim=total <= cfg.aim_gib)
            results["estimates"].append(est)
    write_results(results, cfg.out_dir)
    return results


def write_results(results: dict, out_dir: Path) -> tuple[Path, Path]:
    return write_report(out_dir, "memory", results, render_markdown(results))


def render_markdown(r: dict) -> str:
    gib = 2 ** 30
    o = r["overhead"]
    lines = [f"# Peak memory of one identity-training step ({r['created']})", "", f"Settings — {r['settings']}.", ""]
    if r["estimates"]:
        budgets = list(r["estimates"][0]["fits"])
        lines += ["## Estimated without a GPU (MemTracker on fake tensors)", "",
                  "| training | params GiB | activations + temp GiB | grads GiB | optimizer GiB | traced peak GiB | "
                  f"+ overhead (×{o['factor']} + {o['extra_gib']} GiB) | " + " | ".join(f"fits {b}" for b in budgets)
                  + " |", "|---" * (7 + len(budgets)) + "|"]
        for e in r["estimates"]:
            k = e["traced_by_kind"]
            act = (k.get("ACT", 0) + k.get("TEMP", 0)) / gib
            lines.append(f"| {e['mode']} | {(k.get('PARAM', 0) + k.get('BUFFER', 0)) / gib:.2f} | {act:.2f} | "
                         f"{k.get('GRAD', 0) / gib:.3f} | {e['optimizer_state_bytes'] / gib:.3f} | "
                         f"{e['peak_gib']:.2f} | **{e['with_overhead_gib']:.2f}** | "
                         + " | ".join("yes" if v else "no" for v in e["fits"].values()) + " |")
        lines += ["", "Categories are MemTracker's at the moment of the peak (activations and temporaries together, "
                  "since their split is unreliable inside recomputed segments); optimizer states added on top.", ""]
    if r["measured"]:
        lines += ["## Measured", "", "| model | shape | checkpointing | device | peak GiB | step increase GiB | "
                  "estimator: step increase GiB | AdamW8bit states: real / formula (KiB) | step s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m in r["measured"]:
            est = m.get("estimated_step_increase_bytes")
            est = "–" if est is None else f"{est / gib:.3f}"
            lines.append(f"| {m['model']} | {m['shape'][:60]} | {m['checkpointing']} | {m['device']} | "
                         f"{m['peak_bytes'] / gib:.3f} | {m['step_increase_bytes'] / gib:.3f} | {est} | "
                         f"{m['optimizer_state_bytes'] / 1024:.0f} / {m['optimizer_state_bytes_formula'] / 1024:.0f} | "
                         f"{m['step_s']:.2f} |")
        lines += ["", f"Memory measure: {r['measured'][0]['memory_kind']}. On a CPU the process peak includes the "
                  "Python runtime and libraries; compare the step increase (activations, gradients, temporaries, "
                  "allocator slack, over model + inputs + optimizer states) with the estimator's traced peak minus "
                  "parameters and buffers.", ""]
    lines += ["## Known gaps of the estimate", ""] + [f"- {g}" for g in r["known_gaps"]] + [""]
    return "\n".join(lines)
