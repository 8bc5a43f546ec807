"""How the pipeline evaluates the UNet: one small interface, several backends (eager torch by default).

`torch` calls the diffusers UNetMotionModel; `torch-compile` runs it through `torch.compile`; `onnxruntime` runs an
ONNX graph written by `aa-export onnx`; `tensorrt` runs a serialized engine built by `aa-export trt`. The runtime
only runs exported files: exporting is `aa_export`'s job.
"""
from __future__ import annotations

import json
import shutil
import os
from pathlib import Path
from typing import Protocol

import torch

from .device import BACKENDS
from .errors import AAError, MissingDependencyError
from .files import require_file
# The I/O names of an exported UNet, shared with aa_export.
INPUT_NAMES: tuple[str, str, str] = ("sample", "timestep", "encoder_hidden_states")
OUTPUT_NAME = "noise_pred"


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


# ============================================================================================ onnxruntime
def _ort():
    import onnxruntime

    return onnxruntime


def ort_session(path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None,
                initializers: dict | None = None):
    """An onnxruntime session: CUDA EP when `device` is CUDA (needs onnxruntime-gpu), else CPU EP with
    `threads` (default: torch's) intra-op threads and no spinning (it shares the cores with torch).
    `initializers` (name → OrtValue, kept alive by the caller) replace the file's initializers of those names."""
    ort = _ort()
    device = torch.device(device)
    require_ort_provider(device)
    so = ort.SessionOptions()
    for name, value in (initializers or {}).items():
        so.add_initializer(name, value)
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


def override_weights(meta: dict, unet: torch.nn.Module | None, what: str, kind: str = "ONNX model") -> dict:
    """The weights to put into an exported UNet (ONNX initializers, or a refittable TensorRT engine's weights of the
    same names) so it computes `unet`: {} when it was exported from these very weights; the spatial attn2 projections
    (`aa_overridable`: another identity adapter, or none) as numpy arrays in the export's dtype and layout when only
    they differ; a one-line error when anything else differs. `meta`: the export's aa metadata; `what`: its path."""
    import numpy as np

    from .bundle import fingerprint, fingerprint_except

    if unet is None or "aa_unet_fingerprint" not in meta or meta["aa_unet_fingerprint"] == fingerprint(unet):
        return {}
    where = meta.get("aa_overridable", "{}")
    where = json.loads(where) if isinstance(where, str) else where
    if not where or meta.get("aa_fixed_fingerprint") != fingerprint_except(unet, where):
        raise AAError(kind, f"{what} was exported from UNet weights {meta['aa_unet_fingerprint']}, this "
                      f"pipeline's UNet is {fingerprint(unet)} beyond the identity adapter's layers",
                      "export the same --base (adapters on the spatial cross-attention need no re-export)")
    dtype = np.float16 if meta.get("aa_dtype") == "float16" else np.float32
    out = {}
    for module, at in where.items():
        w = unet.get_submodule(module).weight.detach().cpu().float().numpy()
        out[at["initializer"]] = np.ascontiguousarray(w.T if at["transposed"] else w, dtype=dtype)
    return out


_NP_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OnnxRuntimeBackend:
    """onnxruntime over an .onnx file from `aa-export onnx`. Given the pipeline's `unet`, the file must hold its
    weights: exported from the same UNet, or from the same base with other spatial attn2 projection weights (another
    identity adapter, or none), which are then replaced in the session by the UNet's own (`aa_overridable`), so one
    export serves every identity. Anything else is refused."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, *, unet: torch.nn.Module | None = None,
                 device: str | torch.device = "cpu", threads: int | None = None):
        self.device = torch.device(device)
        require_ort_provider(self.device)
        self.path = require_file(onnx_path, "ONNX model", "export one with `aa-export onnx -o unet.onnx` (with the "
                                 "same --base as the run)")
        self.unet = unet
        self._overrides = self._weights_from_unet()  # name → OrtValue, alive as long as the session
        self.session = ort_session(self.path, self.device, threads, self._overrides)

    def _weights_from_unet(self) -> dict:
        """The initializers to replace with the pipeline UNet's weights ({} when the file already holds them)."""
        import onnx

        try:
            meta = {p.key: p.value for p in onnx.load(str(self.path), load_external_data=False).metadata_props}
        except Exception:  # not an ONNX file: ort_session gives the one-line error
            return {}
        arrays = override_weights(meta, self.unet, f"{self.path}")
        return {name: _ort().OrtValue.ortvalue_from_numpy(w) for name, w in arrays.items()}

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
        session = self.session
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
    (TensorRT 10/11 name-based I/O: set_input_shape, set_tensor_address, execute_async_v3). Given the pipeline's
    `unet` with another identity adapter merged, an engine built with `--refit` takes its spatial attn2 weights by
    `trt.Refitter` (no rebuild), then its output is checked against eager PyTorch (`refit_parity`): refit-enabled
    engines have dropped biases in some TensorRT versions, so a refit that does not reproduce the UNet is refused."""

    name = "tensorrt"
    PARITY_TOLERANCE = 0.05  # max |engine − eager| / max |eager| after a refit (fp16 engines reach ~1e-2)

    def __init__(self, plan_path: str | os.PathLike, *, device: str | torch.device = "cuda",
                 unet: torch.nn.Module | None = None):
        self.device = require_cuda(device, "tensorrt backend")
        trt = import_tensorrt("the tensorrt backend")
        path = require_file(plan_path, "TensorRT engine", "build one with `aa-export trt unet.onnx -o unet.plan`")
        sidecar = path.with_suffix(path.suffix + ".json")
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        weights = {}
        if unet is not None and meta.get("aa_unet_fingerprint"):
            from .bundle import fingerprint

            if meta.get("refittable"):
                weights = override_weights(meta, unet, str(path), kind="TensorRT engine")
            elif meta["aa_unet_fingerprint"] != fingerprint(unet):
                raise AAError("TensorRT engine", f"{path} was built from UNet weights {meta['aa_unet_fingerprint']}, "
                              f"this pipeline's UNet is {fingerprint(unet)}",
                              "rebuild with the same --base and --adapter, or build with --refit to swap identities")
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise AAError("TensorRT engine", f"{path} could not be deserialized",
                              "rebuild it on this machine: engines are tied to the GPU and TensorRT version")
            self.refit_s, self.refit_parity = None, None
            if weights:
                self.refit_s = refit_engine(self.engine, self.logger, weights)
            self.context = self.engine.create_execution_context()
        self.dtypes = {self.engine.get_tensor_name(i): _TRT_DTYPES[self.engine.get_tensor_dtype(
            self.engine.get_tensor_name(i)).name] for i in range(self.engine.num_io_tensors)}
        if weights:
            self.refit_parity = self.parity(unet, meta)
            if not self.refit_parity <= self.PARITY_TOLERANCE:
                raise AAError("TensorRT refit", f"{path} refitted gives {self.refit_parity:.3g} relative error "
                              "against eager PyTorch", "rebuild the engine for this adapter, or update TensorRT")

    @torch.no_grad()
    def parity(self, unet: torch.nn.Module, meta: dict) -> float:
        """max |engine − eager| / max |eager| on one seeded call at the engine profile's smallest shapes."""
        lo = {k: v[0] for k, v in meta.get("profile", {}).items()}
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(lo.get("sample", (1, 8, 1, 8, 8)), generator=g)
        text = torch.randn(lo.get("encoder_hidden_states", (1, 77, unet.config.cross_attention_dim)), generator=g)
        t = torch.tensor(500.0)
        dtype = next(unet.parameters()).dtype
        want = unet(sample.to(self.device, dtype), t.to(self.device), encoder_hidden_states=text.to(self.device, dtype),
                    return_dict=False)[0].float()
        got = self(sample.to(self.device), t, text.to(self.device)).float()
        return float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))

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


def refit_engine(engine, logger, weights: dict) -> float:
    """Put `weights` (ONNX initializer name → numpy array, the export's layout and dtype) into a refittable engine
    with `trt.Refitter`; returns the seconds it took. Names the engine does not know are a one-line error."""
    import time

    trt = import_tensorrt("refitting a TensorRT engine")
    t0 = time.perf_counter()
    refitter = trt.Refitter(engine, logger)
    known = set(refitter.get_all_weights())
    unknown = [n for n in weights if n not in known]
    if unknown:
        raise AAError("TensorRT refit", f"the engine has no refittable weights named {unknown[0]} "
                      f"({len(unknown)} of {len(weights)})", "build it with `aa-export trt --refit`")
    held = [trt.Weights(w) for w in weights.values()]  # alive until the refit is done
    for name, w in zip(weights, held):
        if not refitter.set_named_weights(name, w):
            raise AAError("TensorRT refit", f"weights {name} were refused (shape or dtype)", "rebuild the engine")
    missing = refitter.get_missing_weights()
    if missing:
        raise AAError("TensorRT refit", f"{len(missing)} weights still missing (e.g. {missing[0]})",
                      "rebuild the engine")
    if not refitter.refit_cuda_engine():
        raise AAError("TensorRT refit", "refit_cuda_engine failed (see the TensorRT log above)", "rebuild the engine")
    torch.cuda.synchronize()
    del held
    return time.perf_counter() - t0


# ============================================================================================ selection
def make_backend(name: str, unet: torch.nn.Module, *, onnx_path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> UNetBackend:
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
        if onnx_path is None:
            raise AAError("--onnx", "not given for the onnxruntime backend",
                          "export the UNet with `aa-export onnx -o unet.onnx` and pass --onnx unet.onnx")
        return OnnxRuntimeBackend(onnx_path, unet=unet, device=device)
    require_cuda(device, "tensorrt backend")
    import_tensorrt("the tensorrt backend")
    if onnx_path is None:
        raise AAError("--onnx", "not given for the tensorrt backend",
                      "build an engine with `aa-export onnx` then `aa-export trt unet.onnx -o unet.plan`, "
                      "and pass --onnx unet.plan")
    return TensorRTBackend(onnx_path, device=device, unet=unet)
