"""AnimateAnywhere export: UNet → ONNX with a parity check (`export_onnx`), ONNX → TensorRT engine
(`build_trt_engine`), CLI `aa-export`. The runtime runs what this writes."""
from __future__ import annotations

_PUBLIC = {
    "OnnxExportConfig": "onnx_export", "OnnxExportResult": "onnx_export", "export_onnx": "onnx_export",
    "TrtBuildConfig": "trt_engine", "build_trt_engine": "trt_engine",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    """Import lazily, so `aa-export --help` does not load torch."""
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
