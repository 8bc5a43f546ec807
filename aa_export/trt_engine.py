"""`build_trt_engine(cfg)`: UNet ONNX → serialized TensorRT engine (.plan) with one optimisation profile and a
persistent timing cache (TensorRT 10/11 Python API).

Precision: an fp16 ONNX (`aa-export onnx --fp16`) is built as a strongly typed network, the only mode of
TensorRT 11 (its weak-typing flags such as BuilderFlag.FP16 were removed); an fp32 ONNX with `fp16=True` uses
BuilderFlag.FP16 where it still exists (TensorRT 10) and is refused on TensorRT 11. Written against the
documented API; it has not been run in this repository's CI, which has no GPU.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aa_runtime.backends import import_tensorrt, require_cuda
from aa_runtime.errors import AAError
from aa_runtime.files import atomic_path, require_file

from .onnx_graph import DYNAMIC_AXES


@dataclass(frozen=True)
class TrtBuildConfig:
    """Everything `aa-export trt` needs; validated once. Profile ranges apply to the ONNX's dynamic axes only."""

    onnx: Path
    output: Path
    fp16: bool = True
    min_batch: int = 1
    opt_batch: int = 2
    max_batch: int = 2
    min_frames: int = 1
    opt_frames: int | None = None   # default: the frames the ONNX was traced with
    max_frames: int | None = None   # default: the motion modules' length
    workspace_gib: float = 8.0
    refit: bool = False  # refittable engine: another identity's attn2 weights go in by trt.Refitter, no rebuild
    timing_cache: Path | None = None  # default: <output>.timing.cache, reused and updated
    device: str = "cuda"

    def __post_init__(self):
        object.__setattr__(self, "onnx", Path(self.onnx))
        object.__setattr__(self, "output", Path(self.output))
        if self.output.suffix not in (".plan", ".engine", ".trt"):
            raise AAError("output", self.output, "give a path ending in .plan")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise AAError("batch profile", (self.min_batch, self.opt_batch, self.max_batch), "need 1 ≤ min ≤ opt ≤ max")
        frames = [f for f in (self.min_frames, self.opt_frames, self.max_frames) if f is not None]
        if frames[0] < 1 or frames != sorted(frames):
            raise AAError("frames profile", (self.min_frames, self.opt_frames, self.max_frames),
                          "need 1 ≤ min ≤ opt ≤ max")
        if not self.workspace_gib > 0:
            raise AAError("workspace", self.workspace_gib, "use a positive size in GiB")

    @property
    def cache_path(self) -> Path:
        return self.timing_cache or self.output.with_suffix(".timing.cache")


def onnx_io(path: Path) -> tuple[dict[str, list], dict[str, str]]:
    """Input dims (ints, or axis names for dynamic axes) and the aa metadata of an ONNX file (weights not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}
    return dims, {p.key: p.value for p in model.metadata_props}


def profile_shapes(cfg: TrtBuildConfig, dims: dict[str, list], meta: dict[str, str]) -> dict[str, tuple]:
    """(min, opt, max) shape per input: static axes as exported, dynamic batch / frames from the config."""
    traced = json.loads(meta.get("aa_shapes", "{}"))
    max_seq = int(meta.get("aa_motion_max_seq_length", 32))
    frames = (cfg.min_frames, cfg.opt_frames or traced.get("frames", 16), cfg.max_frames or max_seq)
    batch = (cfg.min_batch, cfg.opt_batch, cfg.max_batch)
    sizes = {"batch": batch, "frames": frames, "batch_frames": tuple(b * f for b, f in zip(batch, frames))}
    out = {}
    for name, shape in dims.items():
        axes = DYNAMIC_AXES.get(name, {})
        out[name] = tuple(tuple(sizes[axes[i]][k] if isinstance(d, str) else d for i, d in enumerate(shape))
                          for k in range(3))
    return out


def build_trt_engine(cfg: TrtBuildConfig) -> Path:
    """Parse the ONNX, build an engine for the profile, write `<output>`, `<output>.json` and the timing cache."""
    # 1. inputs first: the ONNX, the GPU, tensorrt itself
    onnx_path = require_file(cfg.onnx, "ONNX model", "export one with `aa-export onnx -o unet.onnx`")
    dims, meta = onnx_io(onnx_path)
    require_cuda(cfg.device, "TensorRT engine build")
    trt = import_tensorrt("building a TensorRT engine")
    major = int(trt.__version__.split(".")[0])
    onnx_fp16 = meta.get("aa_dtype") == "float16"
    if cfg.fp16 and not onnx_fp16 and (major >= 11 or not hasattr(trt.BuilderFlag, "FP16")):
        raise AAError("--fp16", f"TensorRT {trt.__version__} builds strongly typed networks only and {onnx_path} is "
                      f"{meta.get('aa_dtype', 'float32')}", "export the ONNX with `aa-export onnx --fp16` on the GPU")

    # 2. network: strongly typed when the ONNX carries its own precision (always on TensorRT ≥ 11)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if (onnx_fp16 or major >= 11 or not cfg.fp16) and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))[:200]
        raise AAError("ONNX model", f"TensorRT could not parse {onnx_path} ({errors})",
                      "re-export it with aa-export onnx")

    # 3. config: workspace, precision, optimisation profile, timing cache
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * 2 ** 30))
    if cfg.fp16 and not onnx_fp16 and not flags:
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.refit:
        if not meta.get("aa_overridable"):
            raise AAError("--refit", f"{onnx_path} does not record where the attn2 weights live (aa_overridable)",
                          "re-export it with this version's aa-export onnx")
        config.set_flag(trt.BuilderFlag.REFIT)
    shapes = profile_shapes(cfg, dims, meta)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_bytes = cfg.cache_path.read_bytes() if cfg.cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    # 4. build and write atomically: engine, timing cache, sidecar
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AAError("TensorRT engine build", f"failed for {onnx_path} (see the TensorRT log above)",
                      "check GPU memory (--workspace) and the profile ranges")
    with atomic_path(cfg.output) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(cfg.cache_path) as tmp:
        tmp.write_bytes(bytes(cache.serialize()))  # updated in place by the build
    import torch

    sidecar = {"format": "aa-trt-engine/1", "onnx": str(onnx_path), "tensorrt": trt.__version__,
               "gpu": torch.cuda.get_device_name(), "strongly_typed": bool(flags), "fp16": cfg.fp16 or onnx_fp16,
               "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
               "build_s": round(time.perf_counter() - t0, 1),
               "aa_unet_fingerprint": meta.get("aa_unet_fingerprint"), "refittable": cfg.refit,
               # what the runtime's refit needs: where the identity's weights live, and the fingerprint of the rest
               **({k: meta[k] for k in ("aa_overridable", "aa_fixed_fingerprint", "aa_dtype") if k in meta}
                  if cfg.refit else {}),
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
    with atomic_path(cfg.output.with_suffix(cfg.output.suffix + ".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=1))
    return cfg.output
