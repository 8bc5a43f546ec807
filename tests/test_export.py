"""ONNX export: parity with PyTorch (fp32, max |Δ| ≤ 1e-4), dynamic frames, merged adapters, atomic failure, CLI."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from aa_export.onnx_graph import UNetShapes
from aa_runtime.backends import OnnxRuntimeBackend
from aa_runtime.errors import AAError

TOL = 1e-4


def unet_out(unet, inputs):
    sample, timestep, text = inputs
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]


@pytest.fixture(scope="module")
def adapter_file(tiny_base, tmp_path_factory):
    """A random rank-4 identity adapter with nonzero B on the spatial attn2 layers of the tiny base."""
    import re

    from aa_runtime.adapters import SPATIAL_ATTN2, adapter_metadata, save_adapter

    g = torch.Generator().manual_seed(1)
    targets = [n for n, m in tiny_base.unet.named_modules() if re.fullmatch(SPATIAL_ATTN2, n)]
    assert targets
    mods = dict(tiny_base.unet.named_modules())
    lora_A = {n: torch.randn(4, mods[n].in_features, generator=g) * 0.3 for n in targets}
    lora_B = {n: torch.randn(mods[n].out_features, 4, generator=g) * 0.3 for n in targets}
    meta = adapter_metadata(identifier="<me>", class_word="man", rank=4, alpha=4.0,
                            base_fingerprint=tiny_base.fingerprint)
    return save_adapter(tmp_path_factory.mktemp("adapter") / "me.safetensors", lora_A, lora_B, meta)


@pytest.fixture(scope="module")
def base_export(tiny_bundle, tmp_path_factory):
    from aa_export.onnx_export import OnnxExportConfig, export_onnx

    out = tmp_path_factory.mktemp("onnx") / "unet.onnx"
    return export_onnx(OnnxExportConfig(output=out, base=str(tiny_bundle), frames=4, device="cpu"))


@pytest.fixture(scope="module")
def adapter_export(tiny_bundle, adapter_file, tmp_path_factory):
    from aa_export.onnx_export import OnnxExportConfig, export_onnx

    out = tmp_path_factory.mktemp("onnx-adapter") / "unet.onnx"
    return export_onnx(OnnxExportConfig(output=out, base=str(tiny_bundle), adapters=(str(adapter_file),), frames=4,
                                        dynamic=True, device="cpu"))


def test_static_export_matches_pytorch(base_export, tiny_base):
    import onnx

    shapes = base_export.shapes
    assert (shapes.batch, shapes.in_channels, shapes.frames, shapes.height, shapes.width) == (2, 8, 4, 16, 16)
    model = onnx.load(str(base_export.onnx), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["sample", "timestep", "encoder_hidden_states"]
    assert [o.name for o in model.graph.output] == ["noise_pred"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 8, 4, 16, 16]  # static by default, from the bundle's 64 px / VAE ×4
    assert model.opset_import[0].version >= 17
    report = json.loads(base_export.report.read_text())
    assert report["passed"] and report["max_abs"] <= TOL and report["tolerance"] == TOL
    assert base_export.data is None  # far below 2 GB: weights inside the .onnx
    # independent check on other seeded inputs than the report's
    inputs = shapes.example_inputs(seed=7)
    ref = unet_out(tiny_base.unet, inputs)
    out = OnnxRuntimeBackend(base_export.onnx)(*inputs)
    assert (out - ref).abs().max().item() <= TOL
    assert ref.abs().max().item() > 0.1  # a real output, not zeros


def test_dynamic_export_runs_other_frames_and_matches_merged_model(adapter_export, adapter_file, tiny_base):
    from aa_runtime.adapters import load_adapter, merge_adapter

    merged = copy.deepcopy(tiny_base.unet)
    merge_adapter(merged, load_adapter(adapter_file), base_fingerprint=tiny_base.fingerprint)
    backend = OnnxRuntimeBackend(adapter_export.onnx, unet=merged)  # fingerprint check passes: same weights
    s = adapter_export.shapes
    for batch, frames in ((1, 6), (2, 4)):  # exported at batch 2 × 4 frames
        inputs = UNetShapes(batch, frames, s.height, s.width, s.text_len, s.text_dim).example_inputs(seed=3)
        out = backend(*inputs)
        assert out.shape == (batch, 4, frames, s.height, s.width)
        assert (out - unet_out(merged, inputs)).abs().max().item() <= TOL
    report = json.loads(adapter_export.report.read_text())
    assert report["dynamic"] and len(report["cases"]) == 2 and all(c["passed"] for c in report["cases"])
    assert report["adapters"][0]["sha256"] == load_adapter(adapter_file).sha256


def test_adapter_export_differs_from_base_export(base_export, adapter_export, tiny_base):
    inputs = base_export.shapes.example_inputs(seed=5)
    base_out = OnnxRuntimeBackend(base_export.onnx)(*inputs)
    adapter_out = OnnxRuntimeBackend(adapter_export.onnx)(*inputs)
    assert (adapter_out - base_out).abs().max().item() > 1e-2  # the adapter changes the exported UNet
    # the adapter's export given the plain base UNet: its attn2 weights are put back, so it runs the base
    back = OnnxRuntimeBackend(adapter_export.onnx, unet=tiny_base.unet)(*inputs)
    assert (back - base_out).abs().max().item() <= TOL


def test_one_export_serves_every_identity_without_re_export(base_export, adapter_export, adapter_file, tiny_base,
                                                             tmp_path):
    """The base's export, given a UNet with an adapter merged, runs that UNet: its spatial attn2 weights replace
    the file's in the session. Equal to a fresh export of the merged UNet and to eager PyTorch within 1e-4, for two
    different adapters; a UNet that differs elsewhere is refused in one line."""
    from aa_runtime.adapters import load_adapter, merge_adapter

    sys.path.insert(0, str(Path(__file__).parent))
    from test_adapters import random_adapter

    other = random_adapter(tiny_base.unet, tmp_path / "other.safetensors", tiny_base.fingerprint, scale=0.3, seed=9)
    s = base_export.shapes
    inputs = s.example_inputs(seed=11)
    fresh = OnnxRuntimeBackend(adapter_export.onnx)(*inputs)  # the merged UNet exported on its own
    outs = []
    for path in (adapter_file, other):
        merged = copy.deepcopy(tiny_base.unet)
        merge_adapter(merged, load_adapter(path), base_fingerprint=tiny_base.fingerprint)
        out = OnnxRuntimeBackend(base_export.onnx, unet=merged)(*inputs)
        assert (out - unet_out(merged, inputs)).abs().max().item() <= TOL
        outs.append(out)
    assert (outs[0] - fresh).abs().max().item() <= TOL
    assert (outs[0] - outs[1]).abs().max().item() > 1e-2  # two identities, two outputs, one file
    changed = copy.deepcopy(tiny_base.unet)
    with torch.no_grad():
        changed.conv_in.weight.add_(0.01)
    with pytest.raises(AAError) as e:
        OnnxRuntimeBackend(base_export.onnx, unet=changed)
    assert "\n" not in str(e.value) and "beyond the identity adapter's layers" in str(e.value)


def test_failed_parity_leaves_no_onnx(tiny_bundle, tmp_path):
    from aa_export.onnx_export import OnnxExportConfig, export_onnx

    out = tmp_path / "unet.onnx"
    with pytest.raises(AAError, match="ONNX parity: max \\|Δ\\|"):
        export_onnx(OnnxExportConfig(output=out, base=str(tiny_bundle), frames=2, tolerance=1e-12, device="cpu"))
    assert not out.exists() and not list(tmp_path.glob(".unet.onnx.*"))  # nothing half-written, no staging left
    report = json.loads(out.with_suffix(".parity.json").read_text())
    assert report["passed"] is False and report["max_abs"] > 1e-12


def test_config_checks_inputs_first(tmp_path):
    from aa_export.onnx_export import OnnxExportConfig

    with pytest.raises(AAError, match="output: .*unet.txt — give a path ending in .onnx"):
        OnnxExportConfig(output=tmp_path / "unet.txt")
    with pytest.raises(AAError, match="opset: 13 — use 17 to"):
        OnnxExportConfig(output=tmp_path / "u.onnx", opset=13)
    with pytest.raises(AAError, match="--fp16: with --device cpu"):
        OnnxExportConfig(output=tmp_path / "u.onnx", fp16=True, device="cpu")


def test_cli_errors_are_one_line(tmp_path, base_export):
    from aa_export.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["onnx", "-o", str(tmp_path / "unet.txt")])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0
    assert r.output.startswith("error: output:")
    r = runner.invoke(main, ["trt", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "unet.plan")])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "missing.onnx does not exist" in r.output
    if not torch.cuda.is_available():
        r = runner.invoke(main, ["trt", str(base_export.onnx), "-o", str(tmp_path / "unet.plan")])
        assert r.exit_code == 2 and r.output.strip().count("\n") == 0
        assert r.output.strip() == (
            "error: TensorRT engine build: needs an NVIDIA GPU with CUDA; none is visible to torch here — run it on "
            "a GPU machine with `pip install 'animate-anywhere[gpu]'`, or use the onnxruntime backend on a CPU")
        assert not (tmp_path / "unet.plan").exists()


def _tensorrt_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _tensorrt_ready(), reason="TensorRT refit needs an NVIDIA GPU and the gpu extra")
def test_one_refittable_engine_serves_two_identities_with_parity(tiny_bundle, adapter_file, tiny_base, tmp_path):
    """A refittable fp32 engine of the base, given UNets with two different adapters merged, takes each one's attn2
    weights by refit (no rebuild) and then matches that UNet in eager PyTorch (the parity check after every refit,
    against the known bias-dropping refit bugs) within 1e-2 relative (TensorRT's fp32 engines may use TF32, ~1e-3 per
    product); a UNet that differs elsewhere is
    refused in one line."""
    from aa_export.onnx_export import OnnxExportConfig, export_onnx
    from aa_export.trt_engine import TrtBuildConfig, build_trt_engine
    from aa_runtime.adapters import load_adapter, merge_adapter
    from aa_runtime.backends import TensorRTBackend

    sys.path.insert(0, str(Path(__file__).parent))
    from test_adapters import random_adapter

    exported = export_onnx(OnnxExportConfig(output=tmp_path / "unet.onnx", base=str(tiny_bundle), frames=4,
                                            device="cpu"))
    plan = build_trt_engine(TrtBuildConfig(onnx=exported.onnx, output=tmp_path / "unet.plan", fp16=False,
                                           refit=True, workspace_gib=2.0))
    other = random_adapter(tiny_base.unet, tmp_path / "other.safetensors", tiny_base.fingerprint, scale=0.3, seed=9)
    inputs = [t.cuda() for t in exported.shapes.example_inputs(seed=11)]
    outs = []
    for path in (adapter_file, other):
        merged = copy.deepcopy(tiny_base.unet).cuda()
        merge_adapter(merged, load_adapter(path), base_fingerprint=tiny_base.fingerprint)
        backend = TensorRTBackend(plan, unet=merged)
        assert backend.refit_s is not None and backend.refit_parity <= 1e-2
        out = backend(*inputs)
        want = unet_out(merged, inputs)
        assert (out - want).abs().max().item() <= 1e-2 * want.abs().max().item()
        outs.append(out)
    assert (outs[0] - outs[1]).abs().max().item() > 1e-2
    changed = copy.deepcopy(tiny_base.unet).cuda()
    with torch.no_grad():
        changed.conv_in.weight.add_(0.01)
    with pytest.raises(AAError) as e:
        TensorRTBackend(plan, unet=changed)
    assert "\n" not in str(e.value) and "beyond the identity adapter's layers" in str(e.value)
