"""How the pipeline evaluates the UNet: one small interface, several backends (eager torch by default).

`torch` calls the diffusers UNetMotionModel; `torch-compile` runs it through `torch.compile`; `onnxruntime`
runs an exported ONNX graph (exported here on first use, cached, when no file is given); `tensorrt` runs a
serialized engine built by `aa-export trt`. The ONNX export building blocks (`OnnxUNet`, `export_unet_onnx`,
`onnx_parity`) live here, not in `aa_export`, so that the runtime can export on the fly without importing
the export package (dependencies point one way: export → runtime).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Protocol

import torch

from .errors import AAError, MissingDependencyError, cache_root, require_file

BACKENDS: tuple[str, ...] = ("torch", "torch-compile", "onnxruntime", "tensorrt")
INPUT_NAMES: tuple[str, str, str] = ("sample", "timestep", "encoder_hidden_states")
OUTPUT_NAME = "noise_pred"
ONNX_FORMAT = "aa-unet-onnx/1"
DEFAULT_OPSET = 17
# Symbolic axes of a `dynamic` export: batch (1 or 2 with CFG) and frames (any window length).
DYNAMIC_AXES = {"sample": {0: "batch", 2: "frames"}, "timestep": {0: "batch"},
                "encoder_hidden_states": {0: "batch_frames"}, OUTPUT_NAME: {0: "batch", 2: "frames"}}
# Parity tolerance on max |Δ| (relative to max(1, max |reference|)) of an export against eager PyTorch.
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


class UNetBackend(Protocol):
    """Predicts noise for a window: sample float (B, 8, F, h, w), timestep (), text (B·F, T, D) → (B, 4, F, h, w)."""

    name: str

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """Eager PyTorch: calls the diffusers UNetMotionModel directly."""

    name = "torch"

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]


# ============================================================================================ torch.compile
class TorchCompileBackend:
    """`torch.compile` (inductor) of the UNet; compiles on the first call of each new shape (minutes on a CPU)."""

    name = "torch-compile"

    def __init__(self, unet: torch.nn.Module, *, mode: str | None = None, dynamic: bool | None = None):
        device = next(unet.parameters()).device
        compilers = (os.environ.get("CXX", "g++"), "g++", "clang++", "c++")
        if device.type == "cpu" and not any(shutil.which(c) for c in compilers):
            raise AAError("torch-compile backend", "no C++ compiler found (inductor needs one on a CPU)",
                          "install g++ (e.g. apt-get install g++) or use --backend torch or onnxruntime")
        self.unet = unet
        self.compiled = torch.compile(unet, mode=mode, dynamic=dynamic)

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        from torch._dynamo.exc import TorchDynamoException
        from torch._inductor.exc import InductorError

        try:
            return self.compiled(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
        except (TorchDynamoException, InductorError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise AAError("torch-compile backend", f"compilation failed ({type(e).__name__}: {first})",
                          "use --backend torch or onnxruntime") from None


# ============================================================================================ ONNX export
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
    fast, exact, and dynamic batch/frames work; see STACK-NOTES). Weights over 2 GB go to one external-data file
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
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    del model.metadata_props[:]
    for k, v in sorted(meta.items()):
        model.metadata_props.add(key=k, value=v)
    _consolidate_external_data(model, file)
    return file


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


def onnx_parity(unet: torch.nn.Module, backend: "UNetBackend", shapes: UNetShapes, *, seed: int = 0) -> dict:
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


# ============================================================================================ onnxruntime
def _ort():
    import onnxruntime

    return onnxruntime


def ort_session(path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None):
    """An onnxruntime session: CUDA EP when `device` is CUDA (needs onnxruntime-gpu), else CPU EP with
    `threads` (default: torch's) intra-op threads and no spinning (it shares the cores with torch)."""
    ort = _ort()
    device = torch.device(device)
    require_ort_provider(device)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if device.type == "cuda":
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, NoSuchFile, ...)
        raise AAError("ONNX model", f"{path} could not be loaded by onnxruntime ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:120]})", "re-export it with aa-export onnx") from None


def require_ort_provider(device: torch.device) -> None:
    """On CUDA, onnxruntime needs its CUDA execution provider (the onnxruntime-gpu wheel)."""
    if device.type == "cuda" and "CUDAExecutionProvider" not in _ort().get_available_providers():
        raise MissingDependencyError("onnxruntime-gpu", "gpu", "the onnxruntime backend on CUDA")


_NP_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OnnxRuntimeBackend:
    """onnxruntime: a given .onnx file, or the pipeline's (merged) UNet exported on first use per latent size,
    with dynamic batch and frames, to a cache keyed by the UNet's weights fingerprint and the shapes (so merge
    the identity adapter before the first call: the weights are read then)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike | None = None, *, unet: torch.nn.Module | None = None,
                 device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None, tolerance: float | None = None):
        if onnx_path is None and unet is None:
            raise AAError("onnxruntime backend", "neither an ONNX file nor a UNet", "pass --onnx PATH")
        self.device = torch.device(device)
        require_ort_provider(self.device)  # before any export: fail at selection, not at the first step
        self.unet = unet
        self.threads = threads
        self.tolerance = tolerance
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self.sessions: dict[tuple, object] = {}  # (h, w, T, D) → session; key () for a given file
        self.path = None
        if onnx_path is not None:
            self.path = require_file(onnx_path, "ONNX model",
                                     "export one with `aa-export onnx -o unet.onnx`, or leave out --onnx to "
                                     "export the UNet on the fly")
            session = ort_session(self.path, self.device, threads)
            self._check_matches_unet(session)
            self.sessions[()] = session

    # ----------------------------------------------------------------------------- sessions
    def _check_matches_unet(self, session) -> None:
        """Refuse an ONNX exported from other weights than the pipeline's UNet (e.g. without the adapter)."""
        from .model import fingerprint

        meta = session.get_modelmeta().custom_metadata_map
        if self.unet is None or "aa_unet_fingerprint" not in meta:
            return
        fp = fingerprint(self.unet)
        if meta["aa_unet_fingerprint"] != fp:
            raise AAError("ONNX model", f"{self.path} was exported from UNet weights {meta['aa_unet_fingerprint']}, "
                          f"this pipeline's UNet is {fp}",
                          "re-export with the same --base and --adapter (or leave out --onnx to export on the fly)")

    def _session_for(self, sample: torch.Tensor, text: torch.Tensor):
        if () in self.sessions:
            return self.sessions[()]
        key = (sample.shape[-2], sample.shape[-1], text.shape[1], text.shape[2], sample.dtype)
        if key not in self.sessions:
            self.sessions[key] = ort_session(self._cached_export(*key), self.device, self.threads)
        return self.sessions[key]

    def _cached_export(self, h: int, w: int, text_len: int, text_dim: int, dtype: torch.dtype) -> Path:
        """Export the UNet once per (weights, latent size, text shape, dtype); later runs reuse the file."""
        from .model import fingerprint

        fp = fingerprint(self.unet)
        key_doc = {"format": ONNX_FORMAT, "unet": fp, "h": h, "w": w, "text": [text_len, text_dim],
                   "dtype": str(dtype), "opset": DEFAULT_OPSET, "torch": torch.__version__.split("+")[0]}
        key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_dir / "onnx" / key / "unet.onnx"
        if path.is_file():
            return path
        unet_dtype = next(self.unet.parameters()).dtype
        if unet_dtype != dtype:
            raise AAError("onnxruntime backend", f"input dtype {dtype} ≠ UNet dtype {unet_dtype}", "use one dtype")
        shapes = unet_shapes_for(self.unet, batch=2, frames=4, height=h, width=w, text_len=text_len, text_dim=text_dim)
        check = UNetShapes(1, 3, h, w, text_len, text_dim, shapes.in_channels)  # other batch and frames: dynamic axes
        with staged_onnx(path) as tmp:
            export_unet_onnx(self.unet, tmp, shapes, dynamic=True, metadata={"aa_unet_fingerprint": fp})
            backend = OnnxRuntimeBackend(tmp, device=self.device, threads=self.threads)
            result = onnx_parity(self.unet, backend, check)
            tolerance = self.tolerance or DEFAULT_TOLERANCE.get(dtype, 1e-4)
            if not parity_ok(result, tolerance):
                raise AAError("onnxruntime backend", f"the exported UNet differs from PyTorch by max |Δ| "
                              f"{result['max_abs']:.3g} (> {tolerance:g})", "use --backend torch and report this")
        (path.parent / "export.json").write_text(json.dumps({**key_doc, "parity": result}, indent=1))
        return path

    # ----------------------------------------------------------------------------- call
    def _check_shapes(self, session, feeds: dict[str, torch.Tensor]) -> None:
        for inp in session.get_inputs():
            got = tuple(feeds[inp.name].shape)
            want = inp.shape
            if len(got) != len(want) or any(isinstance(d, int) and d != g for d, g in zip(want, got)):
                raise AAError(f"ONNX input {inp.name}", f"shape {got} does not fit the model's {tuple(want)}",
                              "re-export with --dynamic, or with --frames/--height/--width/--batch matching the run")

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        session = self._session_for(sample, text)
        timestep = timestep.reshape(-1).to(torch.float32).expand(sample.shape[0]).contiguous()  # () → (B,)
        feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": text}
        self._check_shapes(session, feeds)
        types = {i.name: _NP_DTYPES.get(i.type, "float32") for i in session.get_inputs()}
        if self.device.type == "cuda":
            return self._run_cuda(session, feeds, types).to(sample.dtype)
        arrays = {k: v.detach().to("cpu", getattr(torch, types[k])).contiguous().numpy() for k, v in feeds.items()}
        out = session.run([OUTPUT_NAME], arrays)[0]
        return torch.from_numpy(out).to(sample.device, sample.dtype)

    def _run_cuda(self, session, feeds: dict[str, torch.Tensor], types: dict[str, str]) -> torch.Tensor:
        """Zero-copy on CUDA: bind torch tensors' device memory as inputs and output."""
        import numpy as np

        index = self.device.index or 0
        binding = session.io_binding()
        keep = {k: v.to(self.device, getattr(torch, types[k])).contiguous() for k, v in feeds.items()}
        for k, t in keep.items():
            binding.bind_input(k, "cuda", index, getattr(np, types[k]), tuple(t.shape), t.data_ptr())
        out_type = _NP_DTYPES.get(session.get_outputs()[0].type, "float32")
        s = keep["sample"]
        out_channels = session.get_outputs()[0].shape[1]
        out_channels = out_channels if isinstance(out_channels, int) else 4
        out = torch.empty((s.shape[0], out_channels, *s.shape[2:]), dtype=getattr(torch, out_type), device=self.device)
        binding.bind_output(OUTPUT_NAME, "cuda", index, getattr(np, out_type), tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return out


# ============================================================================================ TensorRT
_TRT_DTYPES = {"HALF": torch.float16, "FLOAT": torch.float32, "BF16": torch.bfloat16, "INT64": torch.int64,
               "INT32": torch.int32}


def require_cuda(device: str | torch.device, what: str) -> torch.device:
    """`device` as a CUDA torch.device, or a one-line error when no GPU is visible."""
    device = torch.device(device)
    if not torch.cuda.is_available():
        raise AAError(what, "needs an NVIDIA GPU with CUDA; none is visible to torch here",
                      "run it on a GPU machine with `pip install 'animate-anywhere[gpu]'`, or use the onnxruntime "
                      "backend on a CPU")
    if device.type != "cuda":
        raise AAError(what, f"runs on CUDA, got device {device}", "use --device cuda")
    return device


def import_tensorrt(purpose: str):
    """The `tensorrt` module, or a one-line error naming the `gpu` extra."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("tensorrt", "gpu", purpose) from None
    return tensorrt


class TensorRTBackend:
    """A serialized TensorRT engine (.plan from `aa-export trt`), run on the current CUDA stream
    (TensorRT 10/11 name-based I/O: set_input_shape, set_tensor_address, execute_async_v3)."""

    name = "tensorrt"

    def __init__(self, plan_path: str | os.PathLike, *, device: str | torch.device = "cuda",
                 unet: torch.nn.Module | None = None):
        self.device = require_cuda(device, "tensorrt backend")
        trt = import_tensorrt("the tensorrt backend")
        path = require_file(plan_path, "TensorRT engine", "build one with `aa-export trt unet.onnx -o unet.plan`")
        sidecar = path.with_suffix(path.suffix + ".json")
        if unet is not None and sidecar.is_file():
            from .model import fingerprint

            built_from = json.loads(sidecar.read_text()).get("aa_unet_fingerprint")
            if built_from and built_from != fingerprint(unet):
                raise AAError("TensorRT engine", f"{path} was built from UNet weights {built_from}, this "
                              f"pipeline's UNet is {fingerprint(unet)}",
                              "re-export and rebuild with the same --base and --adapter")
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise AAError("TensorRT engine", f"{path} could not be deserialized",
                              "rebuild it on this machine: engines are tied to the GPU and TensorRT version")
            self.context = self.engine.create_execution_context()
        self.dtypes = {self.engine.get_tensor_name(i): _TRT_DTYPES[self.engine.get_tensor_dtype(
            self.engine.get_tensor_name(i)).name] for i in range(self.engine.num_io_tensors)}

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        timestep = timestep.reshape(-1).to(torch.float32).expand(sample.shape[0])  # () → (B,)
        feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": text}
        keep = {k: v.to(self.device, self.dtypes[k]).contiguous() for k, v in feeds.items()}
        for k, t in keep.items():
            if not self.context.set_input_shape(k, tuple(t.shape)):
                raise AAError(f"TensorRT input {k}", f"shape {tuple(t.shape)} is outside the engine's profile",
                              "rebuild the engine with a profile that covers it (aa-export trt --max-frames ...)")
            self.context.set_tensor_address(k, t.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=self.dtypes[OUTPUT_NAME],
                          device=self.device)
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise AAError("TensorRT engine", "execution failed", "rebuild the engine; see the TensorRT log above")
        return out.to(sample.dtype)


# ============================================================================================ selection
def make_backend(name: str, unet: torch.nn.Module, *, onnx_path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None) -> UNetBackend:
    """The backend called `name` for `unet` on `device`; `onnx_path` is the .onnx (onnxruntime) or .plan (tensorrt)."""
    if name not in BACKENDS:
        raise AAError("backend", repr(name), f"use one of {', '.join(BACKENDS)}")
    if onnx_path is not None and name in ("torch", "torch-compile"):
        raise AAError("--onnx", onnx_path, f"is only read by the onnxruntime and tensorrt backends, not {name}")
    if name == "torch":
        return TorchBackend(unet)
    if name == "torch-compile":
        return TorchCompileBackend(unet)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(onnx_path, unet=unet, device=device, cache_dir=cache_dir)
    require_cuda(device, "tensorrt backend")
    import_tensorrt("the tensorrt backend")
    if onnx_path is None:
        raise AAError("--onnx", "not given for the tensorrt backend",
                      "build an engine with `aa-export onnx` then `aa-export trt unet.onnx -o unet.plan`, "
                      "and pass --onnx unet.plan")
    return TensorRTBackend(onnx_path, device=device, unet=unet)
