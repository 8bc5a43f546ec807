"""`run(RunConfig)`: load the base, merge an adapter, get the driving poses, sample, and write the mp4, gif, pose |
video preview and JSON sidecar — what `aa-run` does, as a library call."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .device import DTYPES, resolve_device
from .errors import AAError


@dataclass(frozen=True)
class RunConfig:
    """Everything `aa-run` needs; validated once."""

    prompt: str
    output: Path
    base: str | None = None
    motion_module: str | None = None
    adapter: str | None = None
    adapter_scale: float = 1.0  # the adapter's weight in the merge (diffusers' lora_scale)
    loras: tuple[str, ...] = ()  # other SD1.5 LoRAs, 'PATH' or 'PATH:WEIGHT' (e.g. a few-step LCM-LoRA)
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
    noise_shared_frequency: float | None = None
    noise_progressive: float | None = None
    free_init_iters: int | None = None
    free_init_progressive: float | None = None
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
        if not (math.isfinite(self.adapter_scale) and 0 <= self.adapter_scale <= 2):
            raise AAError("adapter-scale", self.adapter_scale, "use 0 (base only) to 2; 1 is the adapter as trained")
        if self.adapter is None and self.adapter_scale != 1:
            raise AAError("adapter-scale", self.adapter_scale, "it weighs an --adapter: give one, or drop the flag")


def run(cfg: RunConfig, warn=lambda message: print(message, file=sys.stderr), base=None) -> dict[str, Path]:
    """Load the base, merge the adapter, get poses, sample, and write mp4 + gif + preview + JSON sidecar; returns
    the written paths by kind. `warn` receives warnings meant for the user (an untrained base). `base`: an already
    loaded BaseModel to use instead of loading cfg.base (an app that serves many runs); an adapter is merged into
    its UNet, so the caller restores the weights before the next run."""
    from .adapters import load_adapter, parse_lora_spec
    from .model import load_base
    from .pipeline import AnimatePipeline
    from .pose_sources import load_pose_source, motion_poses
    from .video import side_by_side, write_json, write_video

    device, dtype = resolve_device(cfg.device, cfg.dtype)
    adapter = load_adapter(cfg.adapter) if cfg.adapter else None  # check inputs before the slow load
    loras = [parse_lora_spec(spec) for spec in cfg.loras]
    for path, _ in loras:
        if not path.is_file():
            raise AAError("lora", f"{path} does not exist", "pass a LoRA .safetensors, optionally PATH:WEIGHT")
    pose_seq = load_pose_source(cfg.pose, cfg.pose_backend) if cfg.pose else None
    if base is None:
        base = load_base(cfg.base, cfg.motion_module, device=device, dtype=dtype)
    if base.untrained_unet:
        stages = ", ".join(base.trained_stages) or "none"
        warn(f"warning: {base.source} has only these trained stages: {stages}; its UNet is untrained, "
             "so the video will be noise (train it with aa-train base)")
    pipe = AnimatePipeline.from_base(base)
    if adapter is not None:
        pipe.set_identity(adapter, force=cfg.force, describe=cfg.describe, scale=cfg.adapter_scale)
    for path, weight in loras:
        pipe.add_lora(path, weight)
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
               noise_correlation=cfg.noise_correlation, noise_shared_frequency=cfg.noise_shared_frequency,
               noise_progressive=cfg.noise_progressive, free_init_iters=cfg.free_init_iters,
               free_init_progressive=cfg.free_init_progressive)

    stem = cfg.output.with_suffix("")
    written = {"video": write_video(cfg.output, out.frames, fps)}
    if cfg.gif:
        written["gif"] = write_video(stem.with_suffix(".gif"), out.frames, fps)
    written["preview"] = write_video(Path(f"{stem}.preview.mp4"), side_by_side(out.pose_frames, out.frames), fps)
    sidecar = {
        "prompt": cfg.prompt, "prompt_used": pipe.describe_prompt(cfg.prompt), "negative_prompt": cfg.negative_prompt,
        "seed": cfg.seed,
        "frames": int(out.frames.shape[0]), "fps": fps, "width": width, "height": height,
        **out.sampling,  # steps, guidance, scheduler, noise ties and FreeInit iterations as they ran
        # the windows the sampler ran (a --window longer than the clip runs as one window of the clip's length)
        "window": out.window, "overlap": out.overlap, "windows": [list(w) for w in out.windows],
        "pose_source": cfg.pose or f"motion:{cfg.motion}", "pose_fit": cfg.pose_fit,
        "base": base.source, "base_fingerprint": base.fingerprint,
        "adapter": str(cfg.adapter) if cfg.adapter else None,
        "adapter_sha256": adapter.sha256 if adapter else None,
        "adapter_scale": cfg.adapter_scale if adapter else None,
        "loras": [{"path": p, "weight": w} for p, w in pipe.loras], "retarget": cfg.retarget and adapter is not None,
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
