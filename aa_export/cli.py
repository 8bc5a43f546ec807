"""`aa-export`: UNet → ONNX (parity-checked) → TensorRT engine. Parses flags and calls the typed functions."""
from __future__ import annotations

from pathlib import Path

import click

from aa_runtime.console import fail, quiet_libraries
from aa_runtime.errors import AAError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main():
    """Export the pose-conditioned UNet: `aa-export onnx` then, on a GPU, `aa-export trt`."""


@main.command("onnx")
@click.option("--base", default=None, help="aa bundle or SD1.5 diffusers folder [default: $AA_BASE or models/aa-tiny].")
@click.option("--motion-module", default=None, help="AnimateDiff motion module, with an SD1.5 --base.")
@click.option("--adapter", "adapters", multiple=True, help="Identity adapter to merge first (repeatable).")
@click.option("--force", is_flag=True, help="Merge adapters made for another base anyway.")
@click.option("--frames", type=int, default=None, help="Frames per UNet window [default: the base's window].")
@click.option("--height", type=int, default=None, help="Frame height in pixels [default: the base's].")
@click.option("--width", type=int, default=None, help="Frame width in pixels [default: the base's].")
@click.option("--batch", type=int, default=1, show_default=True, help="Clips per call (UNet batch = 2 × this, CFG).")
@click.option("--dynamic", is_flag=True, help="Leave batch and frames free (symbolic axes).")
@click.option("--fp16", is_flag=True, help="Export in float16 (needs a CUDA GPU).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (≥ 17).")
@click.option("--tolerance", type=float, default=None, help="Max |Δ| vs PyTorch [default: 1e-4 fp32, 2e-2 fp16].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output .onnx "
              "(OUT.parity.json beside it; OUT.data when over 2 GB).")
def onnx_cmd(base, motion_module, adapters, force, frames, height, width, batch, dynamic, fp16, opset, tolerance,
             device, output):
    """Export the (adapter-merged) UNet to ONNX and check it against PyTorch."""
    quiet_libraries()
    from .onnx_export import OnnxExportConfig, export_onnx

    try:
        cfg = OnnxExportConfig(output=output, base=base, motion_module=motion_module, adapters=adapters, force=force,
                               batch=batch, frames=frames, height=height, width=width, dynamic=dynamic, fp16=fp16,
                               opset=opset, tolerance=tolerance, device=device)
        result = export_onnx(cfg)
    except AAError as e:
        fail(e)
    s = result.shapes
    click.echo(f"    onnx: {result.onnx}" + (f" (+ {result.data.name})" if result.data else ""))
    axes = " dynamic batch/frames" if cfg.dynamic else ""
    click.echo(f"  shapes: sample ({s.batch}, {s.in_channels}, {s.frames}, {s.height}, {s.width}){axes}, "
               f"text ({s.batch * s.frames}, {s.text_len}, {s.text_dim})")
    click.echo(f"  parity: max |Δ| {result.max_abs:.2e}, rel L2 {result.rel_l2:.2e} → {result.report}")


@main.command("trt")
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output engine (.plan).")
@click.option("--fp16/--fp32", default=True, show_default=True, help="Engine precision (fp32 ONNX on TensorRT 10).")
@click.option("--min-frames", type=int, default=1, show_default=True, help="Profile: fewest frames (dynamic ONNX).")
@click.option("--opt-frames", type=int, default=None, help="Profile: frames to tune for [default: as exported].")
@click.option("--max-frames", type=int, default=None, help="Profile: most frames [default: motion module length].")
@click.option("--max-batch", type=int, default=2, show_default=True, help="Profile: largest UNet batch (dynamic ONNX).")
@click.option("--workspace", type=float, default=8.0, show_default=True, help="Builder workspace in GiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache to reuse and update [default: OUT.timing.cache].")
@click.option("--device", default="cuda", show_default=True, help="cuda or cuda:N.")
@click.option("--refit", is_flag=True, help="Refittable engine: aa-run --adapter swaps the identity's attention "
              "weights in (trt.Refitter) instead of a rebuild.")
def trt_cmd(onnx_file, output, fp16, min_frames, opt_frames, max_frames, max_batch, workspace, timing_cache, device,
            refit):
    """Build a TensorRT engine from ONNX_FILE (needs an NVIDIA GPU and the `gpu` extra)."""
    quiet_libraries()
    from .trt_engine import TrtBuildConfig, build_trt_engine

    try:
        cfg = TrtBuildConfig(onnx=onnx_file, output=output, fp16=fp16, refit=refit, min_frames=min_frames,
                             opt_frames=opt_frames, max_frames=max_frames, opt_batch=min(2, max_batch), max_batch=max_batch,
                             workspace_gib=workspace, timing_cache=timing_cache, device=device)
        path = build_trt_engine(cfg)
    except AAError as e:
        fail(e)
    click.echo(f"  engine: {path} (profile and provenance in {path.name}.json; timing cache {cfg.cache_path})")


if __name__ == "__main__":
    main()
