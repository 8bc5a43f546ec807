"""The ONNX building blocks: the UNet's call shapes, a named-tensor view of it for the exporter, the export itself
(one external-data file for models over 2 GB), atomic staging, and the parity check against eager PyTorch."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from aa_runtime.backends import INPUT_NAMES, OUTPUT_NAME, UNetBackend
from aa_runtime.errors import AAError

ONNX_FORMAT = "aa-unet-onnx/1"
DEFAULT_OPSET = 17
# Symbolic axes of a `dynamic` export: batch (1 or 2 with CFG) and frames (any window length).
DYNAMIC_AXES = {"sample": {0: "batch", 2: "frames"}, "timestep": {0: "batch"},
                "encoder_hidden_states": {0: "batch_frames"}, OUTPUT_NAME: {0: "batch", 2: "frames"}}
# Parity tolerance on max |Δ| (relative to max(1, max |reference|)) of an export against eager PyTorch.
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@dataclass(frozen=True)
class UNetShapes:
    """Shapes of one UNet call: batch (2 per clip with CFG), frames, latent height × width, text tokens × dim."""

    batch: int
    frames: int
    height: int
    width: int
    text_len: int
    text_dim: int
    in_channels: int = 8

    def __post_init__(self):
        for name in ("batch", "frames", "height", "width", "text_len", "text_dim", "in_channels"):
            if getattr(self, name) < 1:
                raise AAError(f"UNet {name}", getattr(self, name), "use a positive size")

    def example_inputs(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Seeded random inputs: sample (B, C, F, h, w), timestep float (B,) in [0, 1000), text (B·F, T, D)."""
        g = torch.Generator("cpu").manual_seed(seed)
        sample = torch.randn((self.batch, self.in_channels, self.frames, self.height, self.width), generator=g)
        timestep = torch.randint(0, 1000, (1,), generator=g).float().expand(self.batch).contiguous()
        text = torch.randn((self.batch * self.frames, self.text_len, self.text_dim), generator=g)
        return sample.to(device, dtype), timestep.to(device), text.to(device, dtype)


class OnnxUNet(torch.nn.Module):
    """Export view of the UNet with named tensors: sample (B, 8, F, h, w), timestep (B,) or scalar,
    encoder_hidden_states (B·F, T, D) → noise_pred (B, 4, F, h, w)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        timestep = timestep.reshape(-1).expand(sample.shape[0])  # () or (B,) → (B,)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


def unet_shapes_for(unet: torch.nn.Module, *, batch: int, frames: int, height: int, width: int, text_len: int,
                    text_dim: int | None = None) -> UNetShapes:
    """UNetShapes for `unet` (its in_channels and cross-attention dim unless given)."""
    return UNetShapes(batch, frames, height, width, text_len, text_dim or int(unet.config.cross_attention_dim),
                      int(unet.config.in_channels))


@contextmanager
def staged_onnx(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path in a temp folder beside `path`; on success move the model (and its `.data`) into place, so a
    failed export never leaves a half-written .onnx behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp / path.name
        data = tmp / f"{path.name}.data"
        if data.exists():
            os.replace(data, path.parent / data.name)
        elif (path.parent / data.name).exists():
            (path.parent / data.name).unlink()  # stale data of an earlier, larger export
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_unet_onnx(unet: torch.nn.Module, file: str | os.PathLike, shapes: UNetShapes, *, dynamic: bool = False,
                     opset: int = DEFAULT_OPSET, metadata: dict | None = None) -> Path:
    """Export `unet` (in its current dtype and device) to `file` with the TorchScript exporter (`dynamo=False`:
    fast, exact, and dynamic batch/frames work). Weights over 2 GB go to one external-data file
    `<file>.data`. Writes into `file`'s folder directly: wrap it in `staged_onnx` for an atomic result."""
    import onnx

    file = Path(file)
    p = next(unet.parameters())
    inputs = shapes.example_inputs(p.dtype, p.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on python-int shape arithmetic; checked by onnx_parity
        with torch.no_grad():
            torch.onnx.export(OnnxUNet(unet).eval(), inputs, str(file), input_names=list(INPUT_NAMES),
                              output_names=[OUTPUT_NAME], dynamic_axes=DYNAMIC_AXES if dynamic else None,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load(str(file), load_external_data=False)
    meta = {"aa_format": ONNX_FORMAT, "aa_shapes": json.dumps(asdict(shapes)), "aa_dynamic": json.dumps(dynamic),
            "aa_dtype": str(p.dtype).removeprefix("torch."), "aa_opset": str(opset),
            "aa_motion_max_seq_length": str(int(getattr(unet.config, "motion_max_seq_length", 32)))}
    meta.update(overridable_initializers(unet, model, file.parent))
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    del model.metadata_props[:]
    for k, v in sorted(meta.items()):
        model.metadata_props.add(key=k, value=v)
    _consolidate_external_data(model, file)
    return file


def overridable_initializers(unet: torch.nn.Module, model, folder: Path) -> dict[str, str]:
    """Where the spatial attn2 projection weights (what an identity adapter changes) live in the exported graph, so a
    runtime can put another identity's merged weights in their place without re-exporting: metadata
    `aa_overridable` = {module: {"initializer": name, "transposed": bool}} (found by value: the exporter folds each
    Linear weight into an initializer of its own name, transposed for MatMul), and `aa_fixed_fingerprint` = the
    fingerprint of every other UNet tensor (an override is only valid on the same base). Empty when a projection
    cannot be found (e.g. shared or rewritten by the exporter)."""
    import numpy as np
    from onnx import numpy_helper

    from aa_runtime.adapters import SPATIAL_ATTN2
    from aa_runtime.bundle import fingerprint_except

    targets = {n: m.weight.detach().cpu().float().numpy() for n, m in unet.named_modules()
               if re.fullmatch(SPATIAL_ATTN2, n)}
    by_shape: dict[tuple, list] = {}
    for t in model.graph.initializer:
        by_shape.setdefault(tuple(t.dims), []).append(t)
    found, used = {}, set()
    for name, w in targets.items():
        for transposed, shape in ((True, w.shape[::-1]), (False, w.shape)):
            for t in by_shape.get(tuple(shape), []):
                if t.name in used:
                    continue
                value = numpy_helper.to_array(t, base_dir=str(folder)).astype(np.float32)
                if np.array_equal(value, w.T if transposed else w):
                    found[name] = {"initializer": t.name, "transposed": transposed}
                    used.add(t.name)
                    break
            if name in found:
                break
        else:
            return {}
    return {"aa_overridable": json.dumps(found, sort_keys=True),
            "aa_fixed_fingerprint": fingerprint_except(unet, found)}


def _consolidate_external_data(model, file: Path) -> None:
    """The TorchScript exporter writes one file per tensor for models over 2 GB; gather them into `<file>.data`
    (streamed, 64-byte aligned) and save the graph proto that points at it."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    tensors = [t for t in model.graph.initializer if uses_external_data(t)]
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and uses_external_data(attr.t):
                tensors.append(attr.t)
    if not tensors:
        onnx.save(model, str(file))
        return
    data_name = f"{file.name}.data"
    sources = set()
    with open(file.parent / data_name, "wb") as out:
        for t in tensors:
            info = ExternalDataInfo(t)
            src = file.parent / info.location
            with open(src, "rb") as f:
                f.seek(info.offset or 0)
                blob = f.read(info.length) if info.length else f.read()
            out.write(b"\0" * (-out.tell() % 64))
            offset = out.tell()
            out.write(blob)
            del t.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(blob)))):
                t.external_data.add(key=key, value=value)
            if src.name != data_name:
                sources.add(src)
    onnx.save(model, str(file))
    for src in sources:
        src.unlink()


def onnx_parity(unet: torch.nn.Module, backend: UNetBackend, shapes: UNetShapes, *, seed: int = 0) -> dict:
    """Run `unet` (eager) and `backend` on the same seeded inputs: max |Δ| and relative L2 of the noise prediction."""
    p = next(unet.parameters())
    sample, timestep, text = shapes.example_inputs(p.dtype, p.device, seed)
    with torch.no_grad():
        ref = unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0].float()
    out = backend(sample, timestep, text).float()
    diff = (out - ref).abs()
    return {"shape": asdict(shapes), "seed": seed, "max_abs": float(diff.max()),
            "rel_l2": float((out - ref).norm() / ref.norm().clamp_min(1e-12)), "ref_max_abs": float(ref.abs().max())}


def parity_ok(result: dict, tolerance: float) -> bool:
    """max |Δ| within `tolerance` × max(1, max |reference|)."""
    return result["max_abs"] <= tolerance * max(1.0, result["ref_max_abs"])
