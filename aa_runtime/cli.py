"""`aa-run`: generate a pose-driven video from a prompt (parses flags, calls `run()`, prints what it wrote)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .console import fail, quiet_libraries
from .device import BACKENDS, DTYPES
from .errors import AAError
from .generate import RunConfig, run
from .schedulers import SCHEDULERS


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--prompt", required=True, help='Text prompt, e.g. "a <me> man on a beach".')
@click.option("--negative-prompt", default="", show_default=True, help="What to steer away from (CFG).")
@click.option("--base", default=None, help="aa bundle or SD1.5 diffusers folder [default: $AA_BASE or models/aa-tiny].")
@click.option("--motion-module", default=None, help="AnimateDiff motion module (folder or file), with an SD1.5 --base.")
@click.option("--adapter", default=None, help="Identity adapter .safetensors from aa-train identity.")
@click.option("--adapter-scale", type=float, default=1.0, show_default=True,
              help="The adapter's weight in the merge: 0 = base only, 1 = as trained.")
@click.option("--lora", "loras", multiple=True, metavar="PATH[:WEIGHT]",
              help="Another Stable Diffusion 1.5 LoRA to fold in (repeatable), e.g. a few-step LCM-LoRA.")
@click.option("--force", is_flag=True, help="Merge an adapter made for another base anyway.")
@click.option("--no-describe", is_flag=True,
              help="Use the prompt as written: do not write the adapter's trained appearance in after <NAME> CLASS.")
@click.option("--no-retarget", is_flag=True, help="Keep the driving poses' bone lengths (skip retargeting).")
@click.option("--pose", default=None, help="Driving poses: a video (its .aa.json sidecar or mediapipe) or an .aa.json.")
@click.option("--pose-backend", type=click.Choice(["auto", "sidecar", "mediapipe"]), default="auto", show_default=True,
              help="How to get poses from a --pose video.")
@click.option("--motion", default=None,
              help="Built-in motion instead of --pose: walk, run, wave, jump, dance, turn, squat.")
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
@click.option("--noise-shared-frequency", type=float, default=None,
              help="Spatial frequencies of the initial noise within R cycles per latent frame are common to all "
                   "frames (0: the mean only; each frame's noise stays white): a steadier background; −1 = off "
                   "[default: the base's].")
@click.option("--noise-progressive", type=float, default=None,
              help="Correlation c of each frame's initial noise with the previous frame's (progressive noise): a "
                   "steadier background, but short prompts lose their scene more often; 0 = off [default: the base's].")
@click.option("--free-init", "free_init_iters", type=int, default=None,
              help="FreeInit: sample N times, each run starting from the last result's low frequencies re-noised "
                   "(N × the time); 1 = off [default: the base's].")
@click.option("--free-init-progressive", type=float, default=None,
              help="Progressive correlation C of the fresh noise in FreeInit's later runs (their high frequencies; "
                   "the first run's noise as the other --noise flags say); −1 = as --noise-progressive "
                   "[default: the base's].")
@click.option("--window", type=int, default=None, help="Frames per denoising window [default: 16].")
@click.option("--overlap", type=int, default=None, help="Frames shared by neighbouring windows [default: 4].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Weights dtype (auto: float16 on CUDA, float32 on CPU).")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch",
              show_default=True, help="How the UNet runs.")
@click.option("--onnx", default=None, help="Exported UNet: .onnx from aa-export onnx (any identity of that base) for "
              "onnxruntime, .plan for tensorrt.")
@click.option("--no-gif", is_flag=True, help="Do not write the gif.")
@click.option("-o", "--output", default="out/aa-run.mp4", show_default=True, type=click.Path(path_type=Path),
              help="Output mp4; OUT.gif, OUT.preview.mp4 and OUT.json are written beside it.")
def main(prompt, negative_prompt, base, motion_module, adapter, adapter_scale, loras, force, no_describe, no_retarget,
         pose, pose_backend, motion, pose_fit, frames, fps, height, width, steps, guidance, scheduler, seed,
         noise_correlation, noise_shared_frequency, noise_progressive, free_init_iters, free_init_progressive, window,
         overlap, device, dtype, backend, onnx, no_gif, output):
    """Generate a video of PROMPT, moving as the --pose video or the built-in --motion says."""
    quiet_libraries()
    try:
        cfg = RunConfig(prompt=prompt, output=output, base=base, motion_module=motion_module, adapter=adapter,
                        adapter_scale=adapter_scale, loras=loras, force=force, describe=not no_describe,
                        retarget=not no_retarget, negative_prompt=negative_prompt, pose=pose, pose_backend=pose_backend,
                        motion=motion, pose_fit=pose_fit, frames=frames, fps=fps, height=height, width=width,
                        steps=steps, guidance=guidance, scheduler=scheduler, seed=seed,
                        noise_correlation=noise_correlation, noise_shared_frequency=noise_shared_frequency,
                        noise_progressive=noise_progressive, free_init_iters=free_init_iters,
                        free_init_progressive=free_init_progressive, window=window, overlap=overlap, device=device,
                        dtype=dtype, backend=backend, onnx=onnx, gif=not no_gif,
                        progress=sys.stderr.isatty() or not os.environ.get("CI"))
        written = run(cfg)
    except AAError as e:
        fail(e)
    for kind, path in written.items():
        click.echo(f"{kind:>8}: {path}")


if __name__ == "__main__":
    main()
