"""`aa-run`: generate a pose-driven video from a prompt (parses flags, calls `run()`, prints what it wrote)."""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .errors import AAError
from .schedulers import SCHEDULERS

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class RunConfig:
    """Everything `aa-run` needs; validated once."""

    prompt: str
    output: Path
    base: str | None = None
    motion_module: str | None = None
    adapter: str | None = None
    force: bool = False
    describe: bool = True  # write an adapter's trained appearance into the prompt
    retarget: bool = True
    negative_prompt: str = ""
    pose: str | None = None
    pose_backend: str = "auto"
    motion: str | None = None
    pose_fit: str = "person"
    frames: int | None = None
    fps: float | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    seed: int = 0
    noise_correlation: float | None = None
    window: int | None = None
    overlap: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "torch"
    onnx: str | None = None
    gif: bool = True
    progress: bool = True

    def __post_init__(self):
        if (self.pose is None) == (self.motion is None):
            raise AAError("pose input", "both --pose and --motion" if self.pose else "neither --pose nor --motion",
                          "give exactly one of --pose FILE or --motion NAME")
        if self.output.suffix.lower() != ".mp4":
            raise AAError("output", self.output, "give an .mp4 path (gif, preview and sidecar are written beside it)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise AAError("device", self.device, "use auto, cpu, cuda or cuda:N")
        if self.dtype not in DTYPES:
            raise AAError("dtype", self.dtype, f"use one of {', '.join(DTYPES)}")
        # numbers given on the command line are checked as given: 0 is refused, never read as "the default"
        for flag, v, lo, fix in (("frames", self.frames, 1, "use 1 or more frames, e.g. --frames 16"),
                                 ("steps", self.steps, 1, "use 1 or more denoising steps, e.g. --steps 25"),
                                 ("height", self.height, 1, "use a positive height in pixels, e.g. --height 64"),
                                 ("width", self.width, 1, "use a positive width in pixels, e.g. --width 64"),
                                 ("window", self.window, 1, "use 1 or more frames per window, e.g. --window 16"),
                                 ("overlap", self.overlap, 0, "use 0 or more frames, less than --window")):
            if v is not None and v < lo:
                raise AAError(flag, v, fix)
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise AAError("fps", self.fps, "use a positive frame rate, e.g. --fps 8")


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


def run(cfg: RunConfig) -> dict[str, Path]:
    """Load the base, merge the adapter, get poses, sample, and write mp4 + gif + preview + JSON sidecar."""
    from .adapters import load_adapter
    from .model import load_base
    from .pipeline import AnimatePipeline
    from .pose_sources import load_pose_source, motion_poses
    from .video import side_by_side, write_json, write_video

    device, dtype = resolve_device(cfg.device, cfg.dtype)
    adapter = load_adapter(cfg.adapter) if cfg.adapter else None  # check inputs before the slow load
    pose_seq = load_pose_source(cfg.pose, cfg.pose_backend) if cfg.pose else None
    base = load_base(cfg.base, cfg.motion_module, device=device, dtype=dtype)
    if base.untrained_unet:
        stages = ", ".join(base.trained_stages) or "none"
        click.echo(f"warning: {base.source} has only these trained stages: {stages}; its UNet is untrained, "
                   "so the video will be noise (train it with aa-train base)", err=True)
    pipe = AnimatePipeline.from_base(base)
    if adapter is not None:
        pipe.set_identity(adapter, force=cfg.force, describe=cfg.describe)
    if cfg.backend != "torch":
        from .backends import make_backend

        pipe.set_backend(make_backend(cfg.backend, pipe.unet, onnx_path=cfg.onnx, device=device))
    d = base.defaults
    width = d.width if cfg.width is None else cfg.width
    height = d.height if cfg.height is None else cfg.height
    fps = cfg.fps if cfg.fps is not None else pose_seq.fps if pose_seq is not None else d.fps
    if pose_seq is None:
        frames = d.frames if cfg.frames is None else cfg.frames
        pose_seq = motion_poses(cfg.motion, frames, fps, width, height)
    else:
        frames = cfg.frames if cfg.frames is not None else max(1, round(pose_seq.frames / pose_seq.fps * fps))
    out = pipe(cfg.prompt, pose_seq, negative_prompt=cfg.negative_prompt, num_frames=frames, fps=fps,
               height=height, width=width, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
               scheduler=cfg.scheduler, seed=cfg.seed, window=cfg.window, overlap=cfg.overlap,
               pose_fit=cfg.pose_fit, retarget_poses=cfg.retarget, progress=cfg.progress,
               noise_correlation=cfg.noise_correlation)

    stem = cfg.output.with_suffix("")
    written = {"video": write_video(cfg.output, out.frames, fps)}
    if cfg.gif:
        written["gif"] = write_video(stem.with_suffix(".gif"), out.frames, fps)
    written["preview"] = write_video(Path(f"{stem}.preview.mp4"), side_by_side(out.pose_frames, out.frames), fps)
    sidecar = {
        "prompt": cfg.prompt, "prompt_used": pipe.describe_prompt(cfg.prompt), "negative_prompt": cfg.negative_prompt,
        "seed": cfg.seed,
        "steps": d.steps if cfg.steps is None else cfg.steps, "scheduler": cfg.scheduler or d.scheduler,
        "guidance": d.guidance if cfg.guidance is None else cfg.guidance,
        "frames": int(out.frames.shape[0]), "fps": fps, "width": width, "height": height,
        "noise_correlation": d.noise_correlation if cfg.noise_correlation is None else cfg.noise_correlation,
        # the windows the sampler ran (a --window longer than the clip runs as one window of the clip's length)
        "window": out.window, "overlap": out.overlap, "windows": [list(w) for w in out.windows],
        "pose_source": cfg.pose or f"motion:{cfg.motion}", "pose_fit": cfg.pose_fit,
        "base": base.source, "base_fingerprint": base.fingerprint,
        "adapter": str(cfg.adapter) if cfg.adapter else None,
        "adapter_sha256": adapter.sha256 if adapter else None, "retarget": cfg.retarget and adapter is not None,
        "backend": pipe.backend.name, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "timings": {k: round(v, 4) if isinstance(v, float) else v for k, v in out.timings.items()},
        "versions": _versions(),
    }
    written["sidecar"] = write_json(stem.with_suffix(".json"), sidecar)
    return written


def _versions() -> dict:
    import diffusers
    import torch

    from . import __version__

    return {"animate_anywhere": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


def quiet_libraries() -> None:
    """Keep library chatter (dtype-cast notices, hub hints) out of the user's terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    # bitsandbytes (imported through peft) warns on AVX-512 CPUs about an optional kernels package it never needs
    # here; its loggers have no handler, so the warning would reach stderr through logging's last resort
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from diffusers.utils import logging as diffusers_logging  # already imported modules read no env var

    diffusers_logging.set_verbosity_error()


def fail(e: Exception) -> None:
    """Print a user error as one line and exit 2."""
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--prompt", required=True, help='Text prompt, e.g. "a <me> man on a beach".')
@click.option("--negative-prompt", default="", show_default=True, help="What to steer away from (CFG).")
@click.option("--base", default=None, help="aa bundle or SD1.5 diffusers folder [default: $AA_BASE or models/aa-tiny].")
@click.option("--motion-module", default=None, help="AnimateDiff motion module (folder or file), with an SD1.5 --base.")
@click.option("--adapter", default=None, help="Identity adapter .safetensors from aa-train identity.")
@click.option("--force", is_flag=True, help="Merge an adapter made for another base anyway.")
@click.option("--no-describe", is_flag=True,
              help="Use the prompt as written: do not write the adapter's trained appearance in after <NAME> CLASS.")
@click.option("--no-retarget", is_flag=True, help="Keep the driving poses' bone lengths (skip retargeting).")
@click.option("--pose", default=None, help="Driving poses: a video (its .aa.json sidecar or mediapipe) or an .aa.json.")
@click.option("--pose-backend", type=click.Choice(["auto", "sidecar", "mediapipe"]), default="auto", show_default=True,
              help="How to get poses from a --pose video.")
@click.option("--motion", default=None, help="Built-in motion instead of --pose: walk, run, wave, jump, dance, turn, squat.")
@click.option("--pose-fit", type=click.Choice(["person", "frame"]), default="person", show_default=True,
              help="Fit the person's box into the frame, or letterbox the source frame.")
@click.option("--frames", type=int, default=None, help="Frames to generate [default: the pose source's duration].")
@click.option("--fps", type=float, default=None, help="Output frame rate [default: the pose source's].")
@click.option("--height", type=int, default=None, help="Output height in pixels [default: the base's].")
@click.option("--width", type=int, default=None, help="Output width in pixels [default: the base's].")
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the base's, 25].")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale; 1 = off.")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=None, help="Sampler [default: dpm++].")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed (same seed → same video on CPU).")
@click.option("--noise-correlation", type=float, default=None,
              help="Share of the initial noise common to all frames, 0 ≤ ρ < 1 [default: the base's].")
@click.option("--window", type=int, default=None, help="Frames per denoising window [default: 16].")
@click.option("--overlap", type=int, default=None, help="Frames shared by neighbouring windows [default: 4].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Weights dtype (auto: float16 on CUDA, float32 on CPU).")
@click.option("--backend", type=click.Choice(["torch", "torch-compile", "onnxruntime", "tensorrt"]), default="torch",
              show_default=True, help="How the UNet runs.")
@click.option("--onnx", default=None, help="Exported UNet (.onnx for onnxruntime, .plan for tensorrt).")
@click.option("--no-gif", is_flag=True, help="Do not write the gif.")
@click.option("-o", "--output", default="out/aa-run.mp4", show_default=True, type=click.Path(path_type=Path),
              help="Output mp4; OUT.gif, OUT.preview.mp4 and OUT.json are written beside it.")
def main(prompt, negative_prompt, base, motion_module, adapter, force, no_describe, no_retarget, pose, pose_backend,
         motion, pose_fit, frames, fps, height, width, steps, guidance, scheduler, seed, noise_correlation, window,
         overlap, device, dtype, backend, onnx, no_gif, output):
    """Generate a video of PROMPT, moving as the --pose video or the built-in --motion says."""
    quiet_libraries()
    try:
        cfg = RunConfig(prompt=prompt, output=output, base=base, motion_module=motion_module, adapter=adapter,
                        force=force, describe=not no_describe, retarget=not no_retarget,
                        negative_prompt=negative_prompt, pose=pose, pose_backend=pose_backend, motion=motion,
                        pose_fit=pose_fit, frames=frames, fps=fps, height=height, width=width, steps=steps,
                        guidance=guidance, scheduler=scheduler, seed=seed, noise_correlation=noise_correlation,
                        window=window, overlap=overlap, device=device, dtype=dtype, backend=backend, onnx=onnx,
                        gif=not no_gif, progress=sys.stderr.isatty() or not os.environ.get("CI"))
        written = run(cfg)
    except AAError as e:
        fail(e)
    for kind, path in written.items():
        click.echo(f"{kind:>8}: {path}")


if __name__ == "__main__":
    main()
