"""`export_onnx(cfg)`: base (+ merged identity adapters) → UNet ONNX, checked against PyTorch.

Static shapes by default (UNet batch 2 × clips for CFG, the bundle's window of frames, its latent size), so
TensorRT and onnxruntime can plan for one shape; `--dynamic` leaves batch and frames free. The parity report
(max |Δ| and relative L2 against eager PyTorch on the same seeded inputs) is written beside the .onnx as
`<name>.parity.json`; past the tolerance the export fails and no .onnx is left behind.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from aa_runtime.backends import OnnxRuntimeBackend
from aa_runtime.device import resolve_device
from aa_runtime.errors import AAError
from aa_runtime.files import atomic_path

from .onnx_graph import (DEFAULT_OPSET, DEFAULT_TOLERANCE, UNetShapes, export_unet_onnx, onnx_parity, parity_ok,
                         staged_onnx, unet_shapes_for)

PARITY_FORMAT = "aa-onnx-parity/1"
MAX_OPSET = 23  # highest opset the pinned onnx / onnxruntime pair supports


@dataclass(frozen=True)
class OnnxExportConfig:
    """Everything `aa-export onnx` needs; validated once. Sizes left as None come from the base's defaults."""

    output: Path
    base: str | None = None
    motion_module: str | None = None
    adapters: tuple[str, ...] = ()
    force: bool = False
    batch: int = 1                 # clips per UNet call; the UNet batch is 2 × batch (CFG)
    frames: int | None = None      # frames per window [default: the base's window, at most its clip length]
    height: int | None = None      # pixels [default: the base's]
    width: int | None = None
    dynamic: bool = False          # batch and frames as symbolic axes
    fp16: bool = False             # export in float16 (GPU only)
    opset: int = DEFAULT_OPSET
    tolerance: float | None = None  # max |Δ| [default: 1e-4 fp32, 2e-2 fp16]
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "adapters", tuple(str(a) for a in self.adapters))
        if self.output.suffix != ".onnx":
            raise AAError("output", self.output, "give a path ending in .onnx")
        if not DEFAULT_OPSET <= self.opset <= MAX_OPSET:
            raise AAError("opset", self.opset, f"use {DEFAULT_OPSET} to {MAX_OPSET}")
        for name in ("batch", "frames", "height", "width"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise AAError(name, v, "use a positive number")
        if self.tolerance is not None and not self.tolerance > 0:
            raise AAError("tolerance", self.tolerance, "use a positive max |Δ|, e.g. 1e-4")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise AAError("device", self.device, "use auto, cpu, cuda or cuda:N")
        if self.fp16 and self.device == "cpu":
            raise AAError("--fp16", "with --device cpu", "fp16 export runs on a GPU; drop --fp16 on a CPU")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.fp16 else torch.float32


@dataclass
class OnnxExportResult:
    """What `export_onnx` wrote and how close it is to PyTorch."""

    onnx: Path
    data: Path | None
    report: Path
    shapes: UNetShapes
    max_abs: float
    rel_l2: float
    seconds: dict = field(default_factory=dict)


def _resolve_device(device: str, fp16: bool) -> torch.device:
    device, _ = resolve_device(device, "float32")
    if fp16 and device.type != "cuda":
        raise AAError("--fp16", "no CUDA GPU is visible", "fp16 export runs on a GPU; drop --fp16 on a CPU")
    return device


def export_shapes(cfg: OnnxExportConfig, base) -> UNetShapes:
    """The shapes to export: from `cfg`, else the base's defaults (latent = pixels / VAE scale)."""
    d, unet = base.defaults, base.unet
    max_frames = int(unet.config.motion_max_seq_length)
    frames = cfg.frames or min(d.window, d.frames, max_frames)
    if frames > max_frames:
        raise AAError("frames", frames, f"use at most {max_frames} (the motion modules' length)")
    m = base.vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)
    sizes = {}
    for name, v in (("height", cfg.height or d.height), ("width", cfg.width or d.width)):
        if v % m:
            raise AAError(name, v, f"use a multiple of {m} (VAE ×{base.vae_scale}, UNet down-sampling)")
        sizes[name] = v // base.vae_scale
    return unet_shapes_for(unet, batch=2 * cfg.batch, frames=frames, height=sizes["height"], width=sizes["width"],
                           text_len=int(base.tokenizer.model_max_length),
                           text_dim=int(base.text_encoder.config.hidden_size))


def _check_shapes(shapes: UNetShapes, max_frames: int) -> UNetShapes:
    """A second shape for a dynamic export: another batch and frame count than the traced one."""
    frames = shapes.frames + 2 if shapes.frames + 2 <= max_frames else max(1, shapes.frames - 1)
    batch = 1 if shapes.batch > 1 else 2
    return UNetShapes(batch, frames, shapes.height, shapes.width, shapes.text_len, shapes.text_dim, shapes.in_channels)


def export_onnx(cfg: OnnxExportConfig) -> OnnxExportResult:
    """Load the base, merge the adapters, export the UNet to ONNX, check it against PyTorch, write the report."""
    import onnxruntime

    from aa_runtime.adapters import load_adapter, merge_adapter
    from aa_runtime.bundle import fingerprint
    from aa_runtime.model import load_base

    # 1. inputs first: device, adapters (cheap), then the slow base load
    device = _resolve_device(cfg.device, cfg.fp16)
    adapters = [load_adapter(a) for a in cfg.adapters]
    t0 = time.perf_counter()
    base = load_base(cfg.base, cfg.motion_module, device=device, dtype=cfg.dtype)
    for adapter in adapters:
        merge_adapter(base.unet, adapter, base_fingerprint=base.adapter_bases, force=cfg.force)
    shapes = export_shapes(cfg, base)
    seconds = {"load_merge": time.perf_counter() - t0}

    # 2. export into a staging folder; 3. parity against eager PyTorch; 4. report; 5. move into place
    tolerance = cfg.tolerance or DEFAULT_TOLERANCE[cfg.dtype]
    unet_fp = fingerprint(base.unet)
    metadata = {"aa_unet_fingerprint": unet_fp, "aa_base_fingerprint": base.fingerprint, "aa_base": base.source,
                "aa_adapters": [{"path": str(a.path), "sha256": a.sha256, "identifier": a.identifier}
                                for a in adapters],
                "aa_vae_scale": base.vae_scale}
    report_path = cfg.output.with_suffix(".parity.json")
    with staged_onnx(cfg.output) as tmp:
        t1 = time.perf_counter()
        export_unet_onnx(base.unet, tmp, shapes, dynamic=cfg.dynamic, opset=cfg.opset, metadata=metadata)
        seconds["export"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        backend = OnnxRuntimeBackend(tmp, device=device)
        cases = [shapes] + ([_check_shapes(shapes, int(base.unet.config.motion_max_seq_length))] if cfg.dynamic else [])
        results = [onnx_parity(base.unet, backend, s, seed=cfg.seed) for s in cases]
        for r in results:
            r["passed"] = parity_ok(r, tolerance)
        seconds["parity"] = time.perf_counter() - t2
        data = tmp.parent / f"{tmp.name}.data"
        worst = max(results, key=lambda r: r["max_abs"])
        report = {
            "format": PARITY_FORMAT, "onnx": str(cfg.output),
            "data": f"{cfg.output}.data" if data.exists() else None,
            "bytes": tmp.stat().st_size + (data.stat().st_size if data.exists() else 0),
            "passed": all(r["passed"] for r in results), "tolerance": tolerance,
            "tolerance_rule": "max |Δ| ≤ tolerance × max(1, max |reference|)",
            "max_abs": worst["max_abs"], "rel_l2": max(r["rel_l2"] for r in results), "cases": results,
            "dtype": str(cfg.dtype).removeprefix("torch."), "opset": cfg.opset, "dynamic": cfg.dynamic,
            "shapes": asdict(shapes), "device": str(device),
            "providers": backend.session.get_providers(),
            "base": base.source, "base_fingerprint": base.fingerprint, "unet_fingerprint": unet_fp,
            "adapters": metadata["aa_adapters"], "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        }
        del backend
        with atomic_path(report_path) as tmp_report:
            tmp_report.write_text(json.dumps(report, indent=1))
        report_path.chmod(0o644)
        if not report["passed"]:
            raise AAError("ONNX parity", f"max |Δ| {worst['max_abs']:.3g} vs PyTorch at {worst['shape']} exceeds "
                          f"{tolerance:g} (report: {report_path})",
                          "nothing was written; raise --tolerance if this is expected (fp16), else report it")
    return OnnxExportResult(cfg.output, Path(report["data"]) if report["data"] else None, report_path, shapes,
                            worst["max_abs"], report["rel_l2"], seconds)
