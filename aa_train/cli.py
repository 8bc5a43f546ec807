"""`aa-train`: `prepare` (shards from your videos), `base` (train a base bundle), `distill` (a few-step student of a
base) and `identity` (one-shot identity adapter)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from aa_runtime.console import fail, quiet_libraries
from aa_runtime.errors import AAError

quiet_libraries()  # before .identity pulls in peft → bitsandbytes, whose import-time notices would reach stderr
from .identity import PRESETS  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main():
    """Train AnimateAnywhere models."""
    quiet_libraries()


@main.command("base")
@click.option("--data", multiple=True, default=("world:4000",), show_default=True,
              help="Repeatable, SPEC[@WEIGHT]: world:N[:SEED] (N synthetic clips) or shards:DIR (aa-train prepare's "
                   "output); sources are drawn by weight, e.g. --data shards:mine --data world:4000@0.2.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Bundle folder to write (fp16).")
@click.option("--stages", default="vae,image,video", show_default=True, help="Comma list of vae, image, video.")
@click.option("--work-dir", default="runs/aa-tiny", show_default=True, type=click.Path(path_type=Path),
              help="Checkpoints, caches, the fp32 bundle after each stage.")
@click.option("--size", default=64, show_default=True, help="Frame size in pixels.")
@click.option("--frames", default=8, show_default=True, help="Frames per training clip.")
@click.option("--vae-steps", default=12000, show_default=True)
@click.option("--image-steps", default=20000, show_default=True)
@click.option("--video-steps", default=4000, show_default=True)
@click.option("--vae-batch", default=32, show_default=True)
@click.option("--image-batch", default=32, show_default=True)
@click.option("--video-batch", default=4, show_default=True)
@click.option("--lr", default=3e-4, show_default=True, help="UNet/text-encoder learning rate.")
@click.option("--vae-lr", default=5e-4, show_default=True)
@click.option("--denoise-person-weight", default=1.0, show_default=True,
              help="Denoising loss weight on latent pixels the person touches (1 = plain MSE).")
@click.option("--grounding-token-weight", default=0.0, show_default=True,
              help="Image stage: token grounding loss weight (each phrase's attention inside its part; 0 = off).")
@click.option("--grounding-pixel-weight", default=0.0, show_default=True,
              help="Image stage: pixel grounding loss weight (each pixel attends to its part's words; 0 = off).")
@click.option("--grounding-pixel-regions", type=click.Choice(["all", "person"]), default="all", show_default=True,
              help="Pixels the pixel grounding loss counts: every grounded region, or the person's parts only.")
@click.option("--noise-correlation", default=0.0, show_default=True,
              help="Video stage: share of each clip's noise common to its frames (mixed noise prior, PYoCo); "
                   "the bundle samples with it by default. 0 = independent per frame.")
@click.option("--sample-noise-correlation", type=float, default=None,
              help="The bundle's default sampling ρ, where it should differ from --noise-correlation (a larger one "
                   "steadies the background further) [the training ρ].")
@click.option("--short-captions", default=0.0, show_default=True,
              help="Share of the world's captions replaced by their class caption alone ('a woman dancing in a snow "
                   "field'), so short prompts keep their scene (0 = full captions only).")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no", show_default=True,
              help="accelerate's autocast around each step (bf16 on a GPU).")
@click.option("--gradient-accumulation", default=1, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--report-to", type=click.Choice(["none", "tensorboard"]), default="none", show_default=True,
              help="Log loss, lr, samples/s and preview grids to TensorBoard under WORK_DIR/logs.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Activation checkpointing of the UNet, motion modules included [on with CUDA].")
@click.option("--sample-every", default=0, show_default=True,
              help="Image and video stages: a preview grid (EMA weights, 2 captions × 2 motions) every N steps "
                   "into WORK_DIR/samples (0 = off).")
@click.option("--loader-workers", type=int, default=None,
              help="DataLoader worker processes drawing batches ahead of training [2 with CUDA, 0 on the CPU].")
@click.option("--warmup", default=500, show_default=True)
@click.option("--checkpoint-every", default=500, show_default=True)
@click.option("--init", default=None,
              help="Start from this bundle, or a Stable Diffusion 1.5 diffusers folder (with --motion-module), "
                   "instead of the tiny config's random weights.")
@click.option("--motion-module", default=None,
              help="AnimateDiff motion module (folder or file) for an SD1.5 --init.")
@click.option("--train-text-encoder/--freeze-text-encoder", default=None,
              help="Train the text encoder in the image stage [on, but off for SD1.5 weights].")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch threads per process.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoints in --work-dir.")
def base_cmd(data, output, stages, work_dir, size, frames, vae_steps, image_steps, video_steps, vae_batch,
             image_batch, video_batch, lr, vae_lr, denoise_person_weight, grounding_token_weight,
             grounding_pixel_weight, grounding_pixel_regions, noise_correlation, sample_noise_correlation,
             short_captions, mixed_precision,
             gradient_accumulation, report_to, gradient_checkpointing, sample_every, loader_workers, warmup, checkpoint_every, init,
             motion_module, train_text_encoder, seed, threads, resume):
    """Train a pose-conditioned base bundle (VAE, then image stage, then video stage)."""
    from .base import BaseTrainConfig, train_base

    try:
        cfg = BaseTrainConfig(output=output, data=data, stages=tuple(s.strip() for s in stages.split(",") if s.strip()),
                              work_dir=work_dir, size=size, frames=frames, vae_steps=vae_steps,
                              image_steps=image_steps, video_steps=video_steps, vae_batch=vae_batch,
                              image_batch=image_batch, video_batch=video_batch, lr=lr, vae_lr=vae_lr,
                              denoise_person_weight=denoise_person_weight,
                              grounding_token_weight=grounding_token_weight,
                              grounding_pixel_weight=grounding_pixel_weight,
                              grounding_pixel_regions=grounding_pixel_regions, noise_correlation=noise_correlation,
                              sample_noise_correlation=sample_noise_correlation, short_captions=short_captions,
                              mixed_precision=mixed_precision,
                              gradient_accumulation=gradient_accumulation, report_to=report_to,
                              sample_every=sample_every, gradient_checkpointing=gradient_checkpointing,
                              loader_workers=loader_workers, warmup=warmup,
                              checkpoint_every=checkpoint_every, init=init, motion_module=motion_module,
                              train_text_encoder=train_text_encoder, seed=seed, threads=threads, resume=resume)
        path = train_base(cfg, log=lambda m: click.echo(m, err=True))
    except AAError as e:
        fail(e)
    click.echo(f"  bundle: {path}")


@main.command("prepare")
@click.option("--data", multiple=True, required=True,
              help="Repeatable: videos:DIR (mp4/mov/webm/avi/mkv/gif, recursively) or images:DIR (png/jpg/webp).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Shard folder to write (index.json + shard-*.npz); a re-run continues it.")
@click.option("--size", default=64, show_default=True, help="Square crop side in pixels.")
@click.option("--frames", default=8, show_default=True, help="Frames per clip.")
@click.option("--fps", default=8.0, show_default=True, help="Clip frame rate (never above the video's).")
@click.option("--stride", type=int, default=None, help="Frames between clip starts [--frames: no overlap].")
@click.option("--clips-per-video", default=8, show_default=True)
@click.option("--clips-per-shard", default=256, show_default=True)
@click.option("--min-person-fraction", default=0.75, show_default=True,
              help="Clips with a person in fewer of their frames are rejected (and counted).")
@click.option("--class-word", default="person", show_default=True, help="What uncaptioned files are called.")
@click.option("--captioner", type=click.Choice(["template", "openai"]), default="template", show_default=True,
              help="For files without a caption: 'a photo of CLASS', or an OpenAI-compatible vision model "
                   "(key from OPENAI_API_KEY).")
@click.option("--openai-model", default="gpt-4o", show_default=True)
@click.option("--workers", default=1, show_default=True, help="Processes decoding and annotating files.")
def prepare_cmd(data, output, **options):
    """Turn folders of videos or images into shards of training clips for `aa-train base --data shards:DIR`:
    decode, sample clips, crop around the person, poses and masks (.aa.json sidecar or MediaPipe), captions
    (metadata.jsonl, WebVid CSV, .txt, the sidecar, or the captioner), skeleton renders."""
    from .data import PrepareDataConfig, prepare_data

    try:
        prepare_data(PrepareDataConfig(data=tuple(data), output=output, **options),
                     log=lambda m: click.echo(m, err=True))
    except AAError as e:
        fail(e)
    click.echo(f"  shards: {output}")


@main.command("distill")
@click.option("--teacher", default=None, help="aa bundle to distil [default: the embedded models/aa-tiny].")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Student bundle folder to write (fp16; samples with --scheduler lcm --steps 4 --guidance 2).")
@click.option("--data", multiple=True, default=("world:4000",), show_default=True,
              help="Repeatable training source, as for aa-train base: world:N[:SEED] or shards:DIR, [@WEIGHT].")
@click.option("--work-dir", default="runs/aa-tiny-lcm", show_default=True, type=click.Path(path_type=Path),
              help="Checkpoints and caches (--resume continues from here).")
@click.option("--size", default=64, show_default=True, help="Frame size in pixels (the teacher's).")
@click.option("--frames", default=8, show_default=True, help="Frames per training clip.")
@click.option("--steps", default=2000, show_default=True, help="Distillation steps.")
@click.option("--batch", default=4, show_default=True, help="Clips per step.")
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--warmup", default=100, show_default=True)
@click.option("--guidance-min", default=4.0, show_default=True, help="Lowest teacher guidance baked in.")
@click.option("--guidance-max", default=6.0, show_default=True, help="Highest teacher guidance baked in.")
@click.option("--sample-steps", default=4, show_default=True, help="The student bundle's default sampling steps.")
@click.option("--sample-guidance", default=2.0, show_default=True,
              help="The student bundle's default guidance (1 = none; 2 keeps identity adapters' effect).")
@click.option("--student-init", default=None,
              help="Start the student from this distilled bundle (a student of an earlier version of the teacher) "
                   "instead of the teacher's UNet.")
@click.option("--loss", type=click.Choice(["huber", "l2"]), default="huber", show_default=True)
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no", show_default=True)
@click.option("--report-to", type=click.Choice(["none", "tensorboard"]), default="none", show_default=True,
              help="Log loss, lr and samples/s to TensorBoard under WORK_DIR/logs.")
@click.option("--checkpoint-every", default=100, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch threads per process.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoints in --work-dir.")
def distill_cmd(teacher, **options):
    """Distil a base bundle into a few-step student (latent consistency distillation): sample it with
    aa-run --base OUTPUT (its defaults: lcm scheduler, 4 steps, guidance 2); identity adapters made for the
    teacher merge into it."""
    from aa_runtime.model import resolve_base

    from .distill import DistillConfig, distill

    try:
        cfg = DistillConfig(teacher=str(resolve_base(teacher)), **options)
        path = distill(cfg, log=lambda m: click.echo(m, err=True))
    except AAError as e:
        fail(e)
    click.echo(f"  bundle: {path}")


@main.command("identity")
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Identifier word; the prompt token is <NAME>.")
@click.option("--class-word", required=True, help="The class of the person: man, woman, person, …")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Adapter .safetensors to write.")
@click.option("--base", default=None, help="aa bundle or SD1.5 folder [default: the embedded bundle].")
@click.option("--motion-module", default=None, help="AnimateDiff motion module, with an SD1.5 --base.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Settings for real weights (sd15-4090: 512 px, 16 frames, rank 16, checkpointing, 8-bit Adam).")
@click.option("--stage1-steps", type=int, default=None, help="Image-stage steps [240].")
@click.option("--stage2-steps", type=int, default=None, help="Video-stage steps [80].")
@click.option("--rank", type=int, default=None, help="LoRA rank [8].")
@click.option("--alpha", type=float, default=None, help="LoRA alpha [8].")
@click.option("--lora-targets", default=None, callback=lambda _c, _p, v: None if v is None else tuple(
              t.strip() for t in v.split(",") if t.strip()),
              help="Spatial attn2 projections to adapt, comma list [to_q,to_k,to_v,to_out.0].")
@click.option("--lora-reach", type=click.Choice(["attn2", "attention", "wide"]), default=None,
              help="Layers given LoRA: attn2 (the spatial cross-attention, as the paper), attention (+ spatial "
                   "self-attention and feed-forward), wide (+ the spatial resnets' convs) [attn2].")
@click.option("--lr", type=float, default=None,
              help="LoRA learning rate [1e-3]; 0 with --identifier pivotal trains the embedding alone (textual "
                   "inversion).")
@click.option("--resolution", type=int, default=None, help="Training size in pixels [the base's].")
@click.option("--frames", "clip_frames", type=int, default=None, help="Frames per stage-2 clip [8].")
@click.option("--max-frames", type=int, default=None, help="Reference frames used at most [32].")
@click.option("--image-batch", type=int, default=None, help="Frames per stage-1 step [4].")
@click.option("--bw-alpha", type=float, default=None, help="Background-weakening α (1 = plain MSE) [0.001].")
@click.option("--mask-attention-weight", type=float, default=None, help="Cross-region attention weight w (1 = off) [0.3].")
@click.option("--prior-weight", type=float, default=None, help="Prior-preservation weight (0 = off) [1.0].")
@click.option("--prior-steps", type=int, default=None, help="Sampling steps for the class samples [20].")
@click.option("--prior-prompt", "prior_prompts", multiple=True, default=None,
              help="Another class prompt for prior samples, e.g. the class in another scene (repeatable; one "
                   "generated video each).")
@click.option("--prior-motion", "prior_motions", multiple=True, default=None,
              help="A built-in motion for the --prior-prompt videos (repeatable, cycled over the prompts): each "
                   "prior video then moves on its own skeletons instead of the reference's poses.")
@click.option("--prior-reference/--no-prior-reference", default=None,
              help="Keep the class caption in the reference's own poses among the prior videos [on].")
@click.option("--identity-norm", type=click.Choice(["frame", "region"]), default=None,
              help="Background-weakening loss means over the frame (eq. 1 as written) or over each region [frame].")
@click.option("--composite-scene", "composite_scenes", multiple=True, default=None,
              help="Also train on the person pasted onto this world scene, the caption naming it (repeatable).")
@click.option("--decouple", is_flag=True,
              help="Keep the person apart from the reference's scene and poses: train on the person pasted onto every "
                   "world scene (captioned with it) against class videos in those scenes, each in another motion, at "
                   "prior weight 0.3 and the region-averaged identity term (sets the six flags above).")
@click.option("--optimizer", type=click.Choice(["adamw8bit", "adamw"]), default=None, help="[adamw8bit].")
@click.option("--identifier", type=click.Choice(["pieces", "rare", "pivotal"]), default=None,
              help="How <NAME> reaches the text encoder: pieces (split into ordinary word pieces, as the paper), "
                   "rare (a token of its own at a reserved rare word's embedding), pivotal (that token's embedding "
                   "trained with the LoRA; the adapter carries it) [pieces].")
@click.option("--token-lr", type=float, default=None, help="Learning rate of the identifier embedding [5e-3].")
@click.option("--lora-form", type=click.Choice(["free", "key-locked"]), default=None,
              help="free: LoRA of --rank on the targets (paper); key-locked: Perfusion's rank-one edit of the "
                   "spatial cross-attention K and V gated to the identifier (with --identifier rare --rank 1 "
                   "--alpha 1) [free].")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Checkpoint UNet and motion modules [on with CUDA].")
@click.option("--pose-backend", type=click.Choice(["auto", "sidecar", "mediapipe", "dwpose"]), default="auto",
              show_default=True)
@click.option("--mask-backend", type=click.Choice(["auto", "sidecar", "mediapipe", "sam"]), default="auto",
              show_default=True)
@click.option("--captioner", type=click.Choice(["template", "openai", "judge"]), default="template", show_default=True,
              help="template: the world sidecar's captions or 'a photo of <NAME> CLASS'; openai: a vision model "
                   "describes clothing, action and scene; judge: template captions, the appearance for --describe "
                   "read off the frames by the synthetic world's judge.")
@click.option("--description", default=None,
              help="What the person wears, e.g. 'in a grey shirt and a yellow skirt': extra caption text for the "
                   "template captioner, and the written appearance for --describe.")
@click.option("--describe/--no-describe", default=None,
              help="Write the person's appearance (--description, or a world sidecar's caption) into every training "
                   "caption and the adapter; aa-run then writes it into prompts naming <NAME> CLASS, so the adapter "
                   "learns what the words do not say [off].")
@click.option("--fps", type=float, default=None, help="Resample the reference video [its rate, at most 8].")
@click.option("--min-person-fraction", type=float, default=None, help="Frames that must show a person [0.5].")
@click.option("--sam-checkpoint", type=click.Path(path_type=Path), default=None,
              help="segment-anything checkpoint (sam_vit_b_01ec64.pth), for --mask-backend sam.")
@click.option("--dwpose-det", type=click.Path(path_type=Path), default=None,
              help="DWPose person detector ONNX (yolox_l.onnx), for --pose-backend dwpose.")
@click.option("--dwpose-pose", type=click.Path(path_type=Path), default=None,
              help="DWPose pose ONNX (dw-ll_ucoco_384.onnx), for --pose-backend dwpose.")
@click.option("--openai-model", default=None, help="Model for --captioner openai [gpt-4o]; key from OPENAI_API_KEY.")
@click.option("--openai-timeout", type=float, default=None, help="Seconds before falling back to the template [30].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N].")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None, help="Checkpoints [OUTPUT.work].")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Prepared-data cache.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --work-dir.")
def identity_cmd(video, output, preset, **options):
    """Learn the person in VIDEO as a LoRA identity adapter (one-shot, two stages)."""
    from .identity import DECOUPLE_KEYS, IdentityTrainConfig, decoupled_settings, train_identity
    from .preprocess import READ_SETTINGS, ReadSettings

    settings = dict(PRESETS.get(preset, {}))
    decouple = options.pop("decouple")
    settings.update({k: v for k, v in options.items() if v is not None and v != ()})
    read = {k: settings.pop(k) for k in READ_SETTINGS if k in settings}
    try:
        settings["read"] = ReadSettings(**read)
        if decouple:
            given = [f"--{k.replace('_', '-').removesuffix('s')}" for k in DECOUPLE_KEYS if k in settings]
            if given:
                raise AAError("--decouple", f"given with {', '.join(given)}", "use --decouple alone, or set those "
                              "flags yourself without it")
            settings.update(decoupled_settings(settings.get("class_word", "person")))
        cfg = IdentityTrainConfig(video=video, output=output, **settings)
        result = train_identity(cfg, log=lambda m: click.echo(m, err=True))
    except AAError as e:
        fail(e)
    click.echo(f" adapter: {result.adapter}")
    click.echo(f"    loss: {output.with_suffix('.loss.png')}")
    click.echo(f" preview: {output.with_suffix('.annotations.png')}")


if __name__ == "__main__":
    sys.exit(main())
