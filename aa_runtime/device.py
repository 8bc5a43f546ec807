"""Where and how the model runs: the one device and dtype resolver of the project ('auto'|'cpu'|'cuda[:N]', dtype
name → torch objects) and the UNet backend names (kept free of a torch import, for fast `--help`)."""
from __future__ import annotations

from .errors import AAError

DTYPES = ("auto", "float32", "float16", "bfloat16")
BACKENDS: tuple[str, ...] = ("torch", "torch-compile", "onnxruntime", "tensorrt")  # see aa_runtime.backends


def resolve_device(device: str, dtype: str):
    """('auto'|'cpu'|'cuda[:N]', dtype name) → (torch.device, torch.dtype), with one-line errors."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise AAError("device", device, "use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AAError("device", device, "no CUDA GPU is visible to torch here; use --device cpu")
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if device == "cpu" and dtype == "float16":
        raise AAError("dtype", "float16 on cpu", "use float32 or bfloat16 on a CPU")
    return torch.device(device), getattr(torch, dtype)
