"""`aa-train base`: train a pose-conditioned base bundle on the synthetic world and/or shards prepared from your
own videos and images (`aa-train prepare`, aa_train.data), mixed by weight.

Stages, each resumable from its own checkpoint:
  vae    — AutoencoderKL on world frames (person pixels weighted up so clothing colours survive).
  image  — text + pose → image: spatial UNet layers and the text encoder train, motion modules off
           (their zero-initialised output projection makes them the identity, AnimateDiff style).
  video  — motion modules train on clips; everything else frozen.
`denoise_person_weight` > 1 weights the denoising loss up on the latent pixels the person touches: the person covers
~8 % of a 64 px frame, so under the plain mean the base learns the scene and barely the clothing the captions name.
Weighting raises the base's attribute score, but identity adapters trained on such a base kept less of the prompted
scene (benchmarks/results/README.md), so the default stays the plain mean.
Runs on `accelerate`: prepare (DDP, mixed precision), accumulate, save_state / load_state, trackers; one CPU process by
default, several through `torchrun` on CPUs (accelerate 1.15's `launch --cpu` starts one) or `accelerate launch` on GPUs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from aa_runtime.bundle import save_bundle
from aa_runtime.errors import AAError
from aa_runtime.model import load_base
from aa_runtime.pipeline import frame_correlated_noise, to_unit as pipeline_to_unit
from aa_runtime.tiny import TinyConfig, build_random_base
from aa_world.captions import class_caption_of

from .grounding import grounding_losses, reset_grounding_attention, set_grounding_attention, token_regions
from .losses import latent_masks
from .data import check_training_specs, load_training_data
from .world_data import WorldSource, render_world

Stage = Literal["vae", "image", "video"]
STAGES: tuple[Stage, ...] = ("vae", "image", "video")


@dataclass(frozen=True)
class BaseTrainConfig:
    """The recipe; saved in the bundle manifest."""

    output: Path
    data: tuple[str, ...] = ("world:4000",)  # --data sources (aa_train.data): world:N[:SEED], shards:DIR, @WEIGHT
    stages: tuple[Stage, ...] = STAGES
    work_dir: Path = Path("runs/aa-tiny")
    size: int = 64
    frames: int = 8
    fps: float = 8.0
    vae_steps: int = 12000
    image_steps: int = 20000
    video_steps: int = 4000
    vae_batch: int = 32
    image_batch: int = 32
    video_batch: int = 4
    lr: float = 3e-4
    vae_lr: float = 5e-4
    warmup: int = 500
    ema: float = 0.999
    person_weight: float = 4.0  # VAE loss weight on person pixels
    denoise_person_weight: float = 1.0  # denoising loss weight on latent pixels the person touches (1 = plain MSE)
    grounding_token_weight: float = 0.0  # image stage: weight of the token grounding loss (aa_train.grounding)
    grounding_pixel_weight: float = 0.0  # image stage: weight of the pixel grounding loss
    grounding_pixel_regions: Literal["all", "person"] = "all"  # pixels the pixel loss counts (person: not the scene)
    caption_dropout: float = 0.1  # empty captions, for classifier-free guidance
    # share of the world's full captions replaced by their class caption alone ('a woman dancing in a snow field',
    # what a user types), so the scene and motion words must carry without the appearance's; image stage: those
    # captions ground nothing, as dropped ones. Captions not of the world's form are kept whole
    short_captions: float = 0.0
    # video stage: share ρ of each clip's training noise common to all its frames (PYoCo's mixed noise prior, Ge et
    # al. 2023); the bundle then samples with the same ρ by default. 0 = independent noise per frame
    noise_correlation: float = 0.0
    # the bundle's default sampling ρ when it differs from the training ρ (None = the training ρ): sampling with a
    # larger share than the motion modules were trained on steadies the background further, at some cost in how
    # well the person's appearance comes through (benchmarks/results/README.md, flicker)
    sample_noise_correlation: float | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate's autocast around each step (fp32 weights)
    gradient_accumulation: int = 1  # micro-batches per optimizer step (accelerator.accumulate)
    report_to: Literal["none", "tensorboard"] = "none"  # accelerate tracker: loss, lr, samples/s, preview grids
    sample_every: int = 0  # image/video stages: a preview grid (EMA weights) every N steps into work_dir/samples
    # activation checkpointing of the UNet, motion modules included (image and video stages); default: on with CUDA
    gradient_checkpointing: bool | None = None
    loader_workers: int | None = None  # DataLoader workers drawing batches (default: 2 with CUDA, 0 on the CPU)
    checkpoint_every: int = 500
    seed: int = 0
    resume: bool = False
    threads: int = 1
    init: str | None = None  # start from this bundle (or an SD1.5 folder + motion_module) instead of random weights
    motion_module: str | None = None  # AnimateDiff motion module for an SD1.5 --init
    # the image stage trains the text encoder too; default: yes for aa bundles and the tiny config, no for SD1.5
    # weights (frozen, as AnimateDiff and HumanSD train on a pretrained CLIP)
    train_text_encoder: bool | None = None
    vocab_size: int = 1024
    max_tokens: int = 64

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise AAError("stage", ",".join(bad), f"use some of {', '.join(STAGES)}")
        for name in ("vae_steps", "image_steps", "video_steps", "vae_batch", "image_batch", "video_batch"):
            if getattr(self, name) < 0:
                raise AAError(name.replace("_", "-"), getattr(self, name), "use a non-negative number")
        if not self.denoise_person_weight >= 1:
            raise AAError("denoise-person-weight", self.denoise_person_weight, "use a weight ≥ 1 (1 = plain MSE)")
        if not 0 <= self.short_captions <= 1:
            raise AAError("short-captions", self.short_captions, "use a share in [0, 1] (0 = full captions only)")
        for name in ("grounding_token_weight", "grounding_pixel_weight"):
            if not getattr(self, name) >= 0:
                raise AAError(name.replace("_", "-"), getattr(self, name), "use a weight ≥ 0 (0 = off)")
        if not 0 < self.lr < 1 or not 0 <= self.ema < 1:
            raise AAError("lr/ema", f"{self.lr}/{self.ema}", "use 0 < lr < 1 and 0 ≤ ema < 1")
        for name in ("noise_correlation", "sample_noise_correlation"):
            rho = getattr(self, name)
            if rho is not None and not (isinstance(rho, (int, float)) and 0 <= rho < 1):
                raise AAError(name.replace("_", "-"), rho, "use 0 ≤ ρ < 1 (0 = independent noise per frame)")
        if self.grounding_pixel_regions not in ("all", "person"):
            raise AAError("grounding-pixel-regions", self.grounding_pixel_regions, "use all or person")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise AAError("mixed-precision", self.mixed_precision, "use no, bf16 or fp16")
        if self.loader_workers is not None and not 0 <= self.loader_workers <= 64:
            raise AAError("loader-workers", self.loader_workers, "use 0 (batches drawn in the training process) to 64")
        if self.gradient_accumulation < 1 or self.sample_every < 0:
            raise AAError("gradient-accumulation/sample-every", f"{self.gradient_accumulation}/{self.sample_every}",
                          "use ≥ 1 micro-batches and ≥ 0 steps (0 = no previews)")
        check_report_to(self.report_to)
        if self.size % 16:
            raise AAError("size", self.size, "use a multiple of 16")
        if self.motion_module and not self.init:
            raise AAError("motion-module", self.motion_module, "give --init SD15_FOLDER with it (the tiny config "
                          "has motion modules of its own)")
        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))
        check_training_specs(self.data, self.size, self.frames, self.fps)


def check_report_to(report_to: str) -> None:
    """--report-to: none, or tensorboard when it is installed (one clear line otherwise)."""
    if report_to not in ("none", "tensorboard"):
        raise AAError("report-to", report_to, "use none or tensorboard")
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise AAError("report-to", "tensorboard is not installed",
                          "pip install tensorboard (or the train extra: pip install -e .[train])") from None


def zero_motion_outputs(unet) -> None:
    """Zero the motion modules' output projections: each temporal block starts as the identity."""
    for name, module in unet.named_modules():
        if "motion_modules" in name and name.endswith("proj_out"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def trainable_parameters(base, stage: Stage, train_text: bool = True) -> list[torch.nn.Parameter]:
    """Set requires_grad for `stage` and return the parameters that train (`train_text`: the text encoder's in the
    image stage)."""
    for m in (base.unet, base.vae, base.text_encoder):
        m.requires_grad_(False)
    if stage == "vae":
        base.vae.requires_grad_(True)
        return list(base.vae.parameters())
    if stage == "image":
        params = [p for n, p in base.unet.named_parameters() if "motion_modules" not in n]
        params += list(base.text_encoder.parameters()) if train_text else []
    else:
        params = [p for n, p in base.unet.named_parameters() if "motion_modules" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def to_unit(u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [-1, 1] on the CPU (the pipeline's converter)."""
    return pipeline_to_unit(u8, "cpu", torch.float32)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two float images in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-10))


# ----------------------------------------------------------------------------------------------- stages
def train_text_encoder(cfg: BaseTrainConfig) -> bool:
    """Whether the image stage trains the text encoder: as asked, else not for pretrained SD1.5 weights (an --init
    that needs a motion module)."""
    return cfg.train_text_encoder if cfg.train_text_encoder is not None else not cfg.motion_module


class StageModule(torch.nn.Module):
    """The base's modules as one module whose forward is one step's loss (`loss_fn(step)`): what `accelerate.prepare`
    wraps (DDP across processes, autocast under --mixed-precision), so the library averages the gradients, VAE
    encode/decode and text encoder included."""

    def __init__(self, base):
        super().__init__()
        self.unet, self.vae, self.text_encoder = base.unet, base.vae, base.text_encoder

    def forward(self, loss_fn, step: int) -> torch.Tensor:
        return loss_fn(step)


class Progress:
    """Step count, loss history and the training seconds that reached a checkpoint (over every resumed part),
    checkpointed with accelerate's state (register_for_checkpointing)."""

    def __init__(self):
        self.step, self.losses, self.extra, self.seconds = 0, [], {}, 0.0

    def state_dict(self) -> dict:
        return {"step": self.step, "losses": self.losses, "extra": self.extra, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.losses, self.extra = state["step"], list(state["losses"]), dict(state["extra"])
        self.seconds = float(state.get("seconds", 0.0))  # checkpoints written before it was kept: unknown, 0


class StageRunner:
    """One stage's loop on accelerate: the prepared StageModule, optimizer and LR schedule (diffusers'
    get_scheduler), gradient accumulation (`accelerator.accumulate`), diffusers' EMAModel, and `save_state` /
    `load_state` checkpoints (weights, optimizer, schedule, RNG, EMA, progress) for --resume."""

    def __init__(self, cfg: BaseTrainConfig, accelerator, base, stage: str, steps: int, lr: float, log, *,
                 params: list[torch.nn.Parameter] | None = None, batch: int | None = None, also_save=()):
        """`params`: what trains (default: the base stage's); `batch`: samples per micro-step (default: the stage's);
        `also_save`: further objects with state_dict/load_state_dict saved in the stage's checkpoints."""
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.cfg, self.acc, self.base, self.stage, self.steps, self.log = cfg, accelerator, base, stage, steps, log
        self.params = params if params is not None else trainable_parameters(base, stage,
                                                                             train_text=train_text_encoder(cfg))
        self._batch = batch
        opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0 if stage == "vae" else 1e-2)
        sched = get_scheduler("cosine", opt, num_warmup_steps=min(cfg.warmup, steps), num_training_steps=steps)
        self.model, self.opt, self.sched = accelerator.prepare(StageModule(base), opt, sched)
        self.ema = EMAModel(self.params, decay=cfg.ema)
        self.progress = Progress()
        # a fresh prepare per stage: registered objects are checkpointed in this order, so keep only this stage's
        accelerator._custom_objects = []
        accelerator.register_for_checkpointing(self.ema, self.progress, *also_save)
        self.state_dir = Path(cfg.work_dir) / f"{stage}-state"
        if cfg.resume and self.state_dir.is_dir():
            accelerator.load_state(str(self.state_dir))
            self.ema.to(accelerator.device)
            self.log(f"[{stage}] resumed at step {self.progress.step}/{steps}")

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def extra(self) -> dict[str, list[float]]:
        """Further loss terms to log, name → per-step values (checkpointed with the progress)."""
        return self.progress.extra

    @extra.setter
    def extra(self, value: dict[str, list[float]]) -> None:
        if not self.progress.extra:  # a resumed run keeps the histories it loaded
            self.progress.extra = value

    @property
    def losses(self) -> list[float]:
        return self.progress.losses

    def save(self) -> None:
        """accelerate's save_state into a temporary folder, renamed over the last one when every rank is done."""
        import shutil

        tmp = self.state_dir.with_name(self.state_dir.name + ".tmp")
        self.acc.save_state(str(tmp))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            if self.state_dir.exists():
                shutil.rmtree(self.state_dir)
            tmp.rename(self.state_dir)
        self.acc.wait_for_everyone()

    def run(self, loss_fn, evaluate=None, preview=None, after_step=None) -> dict:
        """Train the stage's parameters with `loss_fn(micro_step) -> loss` (one micro-batch; `gradient_accumulation`
        of them per step); `evaluate()` → str at each checkpoint, `preview(step)` every `sample_every` steps,
        `after_step()` after each optimizer step (e.g. a target network's EMA update)."""
        acc, accum = self.acc, self.cfg.gradient_accumulation
        t0, start, before = time.time(), self.step, self.progress.seconds
        while self.step < self.steps:
            for micro in range(accum):
                with acc.accumulate(self.model):
                    loss = self.model(loss_fn, self.step * accum + micro)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(self.params, 1.0)
                    self.opt.step()
                    if acc.sync_gradients:
                        self.sched.step()
                    self.opt.zero_grad(set_to_none=True)
            self.ema.step(self.params)
            if after_step is not None:
                after_step()
            self.progress.losses.append(float(loss.detach()))
            self.progress.step += 1
            if self.step % 50 == 0 or self.step == self.steps:
                rate = (self.step - start) / max(1e-6, time.time() - t0)
                eta = (self.steps - self.step) / max(rate, 1e-6)
                extra = {k: float(np.mean(v[-50:])) for k, v in self.extra.items() if v}
                self.log(f"[{self.stage}] step {self.step}/{self.steps} loss {np.mean(self.losses[-50:]):.4f}"
                         + "".join(f" {k} {v:.4f}" for k, v in extra.items())
                         + f" {rate:.2f} it/s eta {eta / 60:.1f} min")
                acc.log({f"{self.stage}/loss": float(np.mean(self.losses[-50:])),
                         f"{self.stage}/lr": self.sched.get_last_lr()[0],
                         f"{self.stage}/samples_per_s": rate * self.batch * accum * acc.num_processes,
                         **{f"{self.stage}/{k}": v for k, v in extra.items()}}, step=self.step)
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.steps:
                self.progress.seconds = before + time.time() - t0
                self.save()
                if evaluate is not None and acc.is_main_process:
                    self.log(f"[{self.stage}] step {self.step}: {evaluate()}")
            if preview is not None and self.cfg.sample_every and (self.step % self.cfg.sample_every == 0
                                                                   or self.step == self.steps):
                with self.ema_weights():
                    preview(self.step)
        self.ema.copy_to(self.params)
        tail = self.losses[-200:]
        seconds = time.time() - t0
        summary = {"steps": self.steps, "final_loss": float(np.mean(tail)) if tail else None,
                   "seconds": round(seconds, 1), "processes": acc.num_processes,
                   "samples_per_s": round((self.step - start) * self.batch * accum * acc.num_processes
                                          / max(seconds, 1e-6), 2)}
        if start:  # resumed: `seconds` and the rate are this part's; the whole run's, as far as checkpoints saw it
            summary |= {"resumed_at": start, "total_seconds": round(before + seconds, 1)}
        if acc.device.type == "cuda":
            summary["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(acc.device) / 2**30, 2)
        return summary

    @property
    def batch(self) -> int:
        if self._batch is not None:
            return self._batch
        return {"vae": self.cfg.vae_batch, "image": self.cfg.image_batch, "video": self.cfg.video_batch}[self.stage]

    @contextmanager
    def ema_weights(self):
        """The EMA weights in place of the training ones, for previews (restored after)."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)


def _batch_rng(cfg: BaseTrainConfig, stage: str, step: int, rank: int) -> np.random.Generator:
    """Per-step, per-rank data RNG: resuming replays the same batches; ranks see different ones."""
    return np.random.default_rng([cfg.seed, STAGES.index(stage), step, rank])


def train_vae(cfg, acc, base, clips, log) -> dict:
    runner = StageRunner(cfg, acc, base, "vae", cfg.vae_steps, cfg.vae_lr, log)
    vae = base.vae
    frames = clips.frames.reshape(-1, *clips.frames.shape[2:])  # (N·F, H, W, 3)
    masks = clips.masks.reshape(-1, *clips.masks.shape[2:])

    def loss_fn(step):
        idx = _batch_rng(cfg, "vae", step, acc.process_index).integers(0, len(frames), cfg.vae_batch)
        x = to_unit(frames[idx]).to(acc.device)  # (B, 3, H, W)
        w = 1 + (cfg.person_weight - 1) * torch.from_numpy(masks[idx]).float().to(acc.device)[:, None]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        err = rec - x
        return (w * (err.abs() + err.pow(2))).mean() + 1e-6 * post.kl().mean()

    held_out = render_world(WorldSource(32, cfg.size, cfg.frames, cfg.fps, cfg.seed + 1, "eval"),
                            Path(cfg.work_dir) / "cache", log=lambda *_: None)
    x_eval = to_unit(held_out.frames.reshape(-1, *held_out.frames.shape[2:])).to(acc.device)  # (256, 3, H, W)

    @torch.no_grad()
    def held_out_psnr() -> float:
        return psnr(vae.decode(vae.encode(x_eval).latent_dist.mean).sample, x_eval)

    summary = runner.run(loss_fn, evaluate=lambda: f"held-out PSNR {held_out_psnr():.2f} dB")
    base.vae.eval()
    with torch.no_grad():
        z = base.vae.encode(to_unit(frames[:: max(1, len(frames) // 512)]).to(acc.device)).latent_dist.mean
    base.vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    summary.update(psnr_db=held_out_psnr(), scaling_factor=base.vae.config.scaling_factor)
    log(f"[vae] PSNR {summary['psnr_db']:.2f} dB, scaling factor {summary['scaling_factor']:.4f}")
    return summary


@torch.no_grad()
def encode_all(vae, images: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """uint8 (N, H, W, 3) → latent means × scaling factor, float16 (N, 4, h, w)."""
    out = [vae.encode(to_unit(images[s:s + chunk]).to(vae.device)).latent_dist.mean * vae.config.scaling_factor
           for s in range(0, len(images), chunk)]
    return torch.cat(out).half().cpu()


LATENT_ARRAYS = ("latents", "pose_latents", "person")


def cached_latents(vae, clips, stem: Path, log, rank: int = 0, world: int = 1,
                   barrier=lambda: None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame and skeleton latents, float16 (N, F, 4, h, w) each, and latent-resolution person masks uint8
    (N, F, h, w) (1 wherever a latent pixel's patch holds any person pixel), encoded once per VAE into a cache
    folder beside the data (keyed by the VAE's fingerprint, so a retrained VAE never reuses stale latents). The
    clips are encoded a block at a time and the arrays stay on disk, memory-mapped: the tensors returned share
    their pages (copy-on-write), so neither the frames nor the latents need to fit in RAM. With `world`
    processes each encodes its own rows of the same files; `barrier()` waits for every rank."""
    from aa_runtime.bundle import fingerprint

    from . import arrays

    folder = stem.with_name(f"{stem.name}-{fingerprint(vae)}")
    if not arrays.is_complete(folder):
        n, f, h, w = clips.frames.shape[:4]
        if n < world:
            raise AAError("data", f"{n} clips for {world} processes", "use at least one clip per process")
        log(f"encoding {n * f} frames and skeletons with the VAE in {world} part(s) (cached in {folder.name})")
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        lat = (n, f, vae.config.latent_channels, h // down, w // down)
        shapes = {"latents": (lat, np.float16), "pose_latents": (lat, np.float16),
                  "person": ((n, f, *lat[-2:]), np.uint8)}
        scratch = arrays.scratch_path(folder, f"encode-of-{world}" if world > 1 else f"encode-{os.getpid()}")
        if rank == 0:
            arrays.create(scratch, shapes)
        barrier()
        encode_latent_rows(vae, clips, arrays.open_rows(scratch, LATENT_ARRAYS), rank * n // world,
                           (rank + 1) * n // world)
        barrier()
        if rank == 0:
            arrays.publish(scratch, folder, {"clips": n, "frames": f, "vae": fingerprint(vae)})
        barrier()
    got, _ = arrays.read(folder, LATENT_ARRAYS, mode="c")
    return tuple(torch.from_numpy(got[k]) for k in LATENT_ARRAYS)


@torch.no_grad()
def encode_latent_rows(vae, clips, out: dict, lo: int, hi: int, frames_per_block: int = 256) -> None:
    """Encode clips [lo, hi) into the writable rows `out` (`LATENT_ARRAYS` → `arrays.Rows`), a block of whole clips at
    a time."""
    vae.eval()
    f = clips.frames.shape[1]
    step = max(1, frames_per_block // f)
    flat = lambda a: np.array(a).reshape(-1, *a.shape[2:])  # noqa: E731  (n, F, ...) → (n·F, ...), a writable copy
    for s in range(lo, hi, step):
        e = min(hi, s + step)
        z = encode_all(vae, flat(clips.frames[s:e]))
        out["latents"][s:e] = z.view(e - s, f, *z.shape[1:]).numpy()
        out["pose_latents"][s:e] = encode_all(vae, flat(clips.skeletons[s:e])).view(e - s, f, *z.shape[1:]).numpy()
        person = latent_masks(torch.from_numpy(flat(clips.masks[s:e])), tuple(z.shape[-2:]), pool="max")
        out["person"][s:e] = person.to(torch.uint8).view(e - s, f, *z.shape[-2:]).numpy()


def _encode_text(base, captions: list[str], device) -> torch.Tensor:
    ids = base.tokenizer(captions, padding="max_length", max_length=base.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)
    return base.text_encoder(ids)[0]  # (B, T, D)


def person_weights(person: torch.Tensor, weight: float) -> torch.Tensor:
    """Latent person masks (…, h, w) of 0/1 (`cached_latents`) → loss weights float: `weight` on the person, 1
    elsewhere (a limb one latent pixel wide still counts: the masks are max-pooled)."""
    return 1 + (weight - 1) * person.float()


def denoising_loss(base, noise_scheduler, z, p, captions, t, noise, *, train_text: bool, device,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """ε-prediction MSE for latents z and pose latents p, float (B, 4, F, h, w); one timestep per sample.
    `weights` (B, 1, F, h, w) makes it a weighted mean Σ w·e² / Σ w (over channels too): the plain MSE when all
    weights are equal."""
    z, p, noise, t = z.to(device), p.to(device), noise.to(device), t.to(device)
    noisy = noise_scheduler.add_noise(z, noise, t)
    with torch.set_grad_enabled(train_text):
        text = _encode_text(base, captions, device)  # (B, T, D)
    emb = text.repeat_interleave(z.shape[2], 0)  # (B·F, T, D)
    pred = base.unet(torch.cat([noisy, p], 1), t, encoder_hidden_states=emb).sample
    if weights is None:
        return F.mse_loss(pred, noise)
    w = weights.to(device).expand_as(pred)
    return (w * (pred - noise).pow(2)).sum() / w.sum()


class StageBatches(torch.utils.data.Dataset):
    """The image or video stage's micro-batches as a dataset: item i is micro-step `first + i`, drawn with that step's
    own RNG (`_batch_rng`: a resumed run replays the same batches from where it stopped, each rank draws its own), as
    CPU tensors — clip rows by the data's source weights, latents (B, 4, F, h, w; F = 1 for images), pose latents,
    person weights, captions (dropped ones empty), timesteps, noise and, for grounding, the token bits and part maps.
    `stage_loader` serves it through a DataLoader, so drawing and gathering run in workers ahead of the step."""

    def __init__(self, cfg: BaseTrainConfig, stage: Stage, rank: int, data, latents: torch.Tensor,
                 pose_latents: torch.Tensor, person: torch.Tensor | None, token_bits: torch.Tensor | None,
                 num_train_timesteps: int, first: int, last: int):
        self.cfg, self.stage, self.rank, self.data = cfg, stage, rank, data
        self.latents, self.pose_latents, self.person, self.token_bits = latents, pose_latents, person, token_bits
        self.timesteps, self.first, self.last = num_train_timesteps, first, last
        self.short = [class_caption_of(c) for c in data.clips.captions] if cfg.short_captions > 0 else None

    def __len__(self) -> int:
        return max(0, self.last - self.first)

    def __getitem__(self, i: int) -> dict:
        step = self.first + i
        cfg, clips = self.cfg, self.data.clips
        rng = _batch_rng(cfg, self.stage, step, self.rank)
        w = None
        if self.stage == "image":
            f = self.latents.shape[1]  # latents (N, F, 4, h, w)
            ci, fi = self.data.draw(rng, cfg.image_batch, video=False), rng.integers(0, f, cfg.image_batch)
            z = self.latents[ci, fi].float()[:, :, None]  # (B, 4, 1, h, w)
            p = self.pose_latents[ci, fi].float()[:, :, None]
            if self.person is not None:
                w = person_weights(self.person[ci, fi], cfg.denoise_person_weight)[:, None, None]  # (B, 1, 1, h, w)
        else:
            ci, fi = self.data.draw(rng, cfg.video_batch, video=True), None
            z = self.latents[ci].float().permute(0, 2, 1, 3, 4)  # (B, F, 4, h, w) → (B, 4, F, h, w)
            p = self.pose_latents[ci].float().permute(0, 2, 1, 3, 4)
            if self.person is not None:
                w = person_weights(self.person[ci], cfg.denoise_person_weight)[:, None]  # (B, 1, F, h, w)
        dropped = rng.random(len(ci)) < cfg.caption_dropout
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = frame_correlated_noise(z.shape, g, cfg.noise_correlation if self.stage == "video" else 0.0)
        t = torch.from_numpy(rng.integers(0, self.timesteps, z.shape[0]))
        captions = ["" if d else clips.captions[k] for d, k in zip(dropped, ci)]
        whole = ~dropped
        if self.short is not None:  # drawn last: a run without short captions replays the same batches as before
            for j in np.flatnonzero((rng.random(len(ci)) < cfg.short_captions) & ~dropped):
                if self.short[ci[j]] is not None:
                    captions[j], whole[j] = self.short[ci[j]], False
        batch = {"step": step, "z": z, "p": p, "w": w, "noise": noise, "t": t, "captions": captions, "bits": None,
                 "parts": None}
        if self.token_bits is not None:  # grounding (image stage): a dropped or shortened caption grounds nothing
            batch["bits"] = self.token_bits[ci] * torch.from_numpy(whole)[:, None]
            batch["parts"] = torch.from_numpy(clips.parts[ci, fi])
        return batch


def stage_loader(batches: StageBatches, device: torch.device, workers: int | None) -> torch.utils.data.DataLoader:
    """A DataLoader over a stage's micro-batches in step order: `workers` processes draw and gather ahead of
    training (default: 2 with CUDA, none on the CPU, whose cores train), pinned memory on CUDA. The batches are
    already per rank and per step, so the loader neither shuffles nor shards (the step is the resume position)."""
    workers = (2 if device.type == "cuda" else 0) if workers is None else workers
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                       pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


def train_unet(cfg, acc, base, data, stage: Stage, log, latents, pose_latents, person) -> dict:
    """Stage `image` (frames as independent images) or `video` (clips of F frames, never a still image's)."""
    from diffusers import DDPMScheduler

    clips = data.clips
    steps = cfg.image_steps if stage == "image" else cfg.video_steps
    checkpointed = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else acc.device.type == "cuda"
    if checkpointed:  # before the runner: its checkpoints then hold the wrapped modules' names, as a resume will
        from .checkpointing import enable_full_gradient_checkpointing

        restore_ckpt = enable_full_gradient_checkpointing(base.unet)
    runner = StageRunner(cfg, acc, base, stage, steps, cfg.lr, log)
    noise_scheduler = DDPMScheduler.from_config(base.scheduler_config)
    weighted = cfg.denoise_person_weight != 1
    grounded = stage == "image" and (cfg.grounding_token_weight > 0 or cfg.grounding_pixel_weight > 0)
    text = train_text_encoder(cfg)
    if grounded:
        token_bits = token_regions(base.tokenizer, clips.captions, clips.spans, base.tokenizer.model_max_length)
        store = set_grounding_attention(base.unet)
        runner.extra = {"grounding_token": [], "grounding_pixel": []}

    batches = iter(stage_loader(StageBatches(
        cfg, stage, acc.process_index, data, latents, pose_latents, person if weighted else None,
        token_bits if grounded else None, noise_scheduler.config.num_train_timesteps,
        runner.step * cfg.gradient_accumulation, steps * cfg.gradient_accumulation), acc.device, cfg.loader_workers))

    def loss_fn(step):
        b = next(batches)
        if b["step"] != step:
            raise RuntimeError(f"data loader at micro-step {b['step']}, training at {step}")
        put = lambda x: None if x is None else x.to(acc.device, non_blocking=True)  # noqa: E731
        if grounded:
            store.clear()
        loss = denoising_loss(base, noise_scheduler, put(b["z"]), put(b["p"]), b["captions"], put(b["t"]),
                              put(b["noise"]), train_text=stage == "image" and text, device=acc.device,
                              weights=put(b["w"]))
        if not grounded:
            return loss
        token_loss, pixel_loss = grounding_losses(store.maps, put(b["parts"]), put(b["bits"]),
                                                  cfg.grounding_pixel_regions)
        store.clear()
        runner.extra["grounding_token"].append(float(token_loss.detach()))
        runner.extra["grounding_pixel"].append(float(pixel_loss.detach()))
        return loss + cfg.grounding_token_weight * token_loss + cfg.grounding_pixel_weight * pixel_loss

    def preview(step: int) -> None:
        if not acc.is_main_process:
            return
        from PIL import Image

        grid = preview_grid(base, data, cfg, acc.device)
        if grounded:
            store.clear()
        folder = Path(cfg.work_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(folder / f"{stage}-{step:06d}.png")
        if cfg.report_to == "tensorboard":
            acc.get_tracker("tensorboard").log_images({f"{stage}/preview": grid}, step, dataformats="HWC")

    try:
        summary = runner.run(loss_fn, preview=preview)
    finally:
        if grounded:
            reset_grounding_attention(base.unet, store)
        if checkpointed:
            restore_ckpt()  # the bundle is written with the plain module names
    if grounded:
        summary.update({k: float(np.mean(v[-200:])) for k, v in runner.extra.items() if v})
    return summary


def check_ranks_agree(acc, base, stage: str) -> list[str]:
    """Every rank's hash of its exact weights, gathered (accelerate.utils.gather_object); refuses to go on when they
    differ (DDP drift). Returns the hashes, one per rank."""
    h = hashlib.sha256()
    for module in (base.unet, base.vae, base.text_encoder):
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    from accelerate.utils import gather_object

    seen = gather_object([h.hexdigest()[:16]])
    if len(set(seen)) != 1:
        raise RuntimeError(f"ranks disagree after stage {stage}: {seen}")
    return seen


def preview_grid(base, data, cfg: BaseTrainConfig, device) -> np.ndarray:
    """Two captions of the training data × two built-in motions, sampled in 10 steps: uint8 (rows·S, F·S, 3), one
    row per (caption, motion), the frames left to right, so a user sees the pose channels come alive."""
    from aa_runtime.pipeline import AnimatePipeline
    from aa_runtime.pose_sources import motion_poses

    pipe = AnimatePipeline.from_base(base)
    captions = [data.clips.captions[0], data.clips.captions[len(data.clips.captions) // 2]]
    rows = []
    modules = (base.unet, base.vae, base.text_encoder)
    for m in modules:
        m.eval()
    try:
        for caption in captions:
            for motion in ("wave", "dance"):
                poses = motion_poses(motion, cfg.frames, cfg.fps, cfg.size, cfg.size)
                out = pipe(caption, poses, num_inference_steps=10, height=cfg.size, width=cfg.size, seed=0,
                           progress=False)
                rows.append(np.concatenate(list(out.frames), axis=1))
    finally:
        for m in modules:
            m.train()
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------------------------- entry
def make_accelerator(cfg, project: str):
    """The run's Accelerator (CPU without CUDA; mixed precision, accumulation and trackers from `cfg`), its work
    folder created, torch's threads and seed set. Returns (accelerator, work folder)."""
    from accelerate import Accelerator

    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                      gradient_accumulation_steps=cfg.gradient_accumulation, step_scheduler_with_optimizer=False,
                      log_with=None if cfg.report_to == "none" else cfg.report_to, project_dir=str(work / "logs"))
    if cfg.report_to != "none":
        acc.init_trackers(project, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                           for k, v in asdict(cfg).items()})
    torch.manual_seed(cfg.seed)
    return acc, work


def train_base(cfg: BaseTrainConfig, log=print) -> Path:
    """Run the requested stages and write the bundle (fp16) to cfg.output after each stage."""
    acc, work = make_accelerator(cfg, "aa-train-base")
    main_log = log if acc.is_main_process else (lambda *_: None)
    data = load_training_data(cfg.data, cfg.size, cfg.frames, cfg.fps, work / "cache", log=main_log)
    clips = data.clips
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if cfg.resume and state_file.is_file() else {"done": {}}

    init = work / "current"  # the bundle after the last finished stage
    started_from = None  # the --init bundle this training continues: fingerprint and its own provenance
    if cfg.resume and (init / "aa_bundle.json").is_file():
        base = load_base(init)
        started_from = base.manifest.get("provenance", {}).get("init")
    elif cfg.init:
        base = load_base(cfg.init, cfg.motion_module)  # an SD1.5 folder: the 8-channel UNet, pose half zero
        started_from = {"bundle": str(cfg.init), "fingerprint": base.fingerprint,
                        "provenance": base.manifest.get("provenance")}
    else:
        tiny = TinyConfig(sample_size=cfg.size, vocab_size=cfg.vocab_size, max_tokens=cfg.max_tokens)
        base = build_random_base(tiny, captions=clips.captions, seed=cfg.seed, tokenizer_dir=work / "tokenizer")
        zero_motion_outputs(base.unet)
    tok_dir = work / "tokenizer" if (work / "tokenizer" / "vocab.json").is_file() else Path(base.source) / "tokenizer"
    for m in (base.unet, base.vae, base.text_encoder):
        m.to(acc.device).train()

    latents = pose_latents = person = None
    for stage in cfg.stages:
        if stage in state["done"]:
            log(f"[{stage}] already done: {state['done'][stage]}")
            continue
        if stage == "vae":
            summary = train_vae(cfg, acc, base, clips, log)
        else:
            if latents is None:  # pre-encode once with the (now fixed) VAE
                latents, pose_latents, person = cached_latents(base.vae, clips, work / "cache" / f"latents-{data.key}", main_log,
                                                       acc.process_index, acc.num_processes, acc.wait_for_everyone)
            summary = train_unet(cfg, acc, base, data, stage, log, latents, pose_latents, person)
            if stage == "video":  # sample with the noise the motion modules were trained on, unless told otherwise
                rho = cfg.noise_correlation if cfg.sample_noise_correlation is None else cfg.sample_noise_correlation
                base.defaults = replace(base.defaults, noise_correlation=float(rho))
        state["done"][stage] = summary
        state.setdefault("rank_hashes", {})[stage] = check_ranks_agree(acc, base, stage)
        if acc.is_main_process:
            for m in (base.unet, base.vae, base.text_encoder):
                m.eval()
            provenance = {"recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                          "data": data.described, "stages": state["done"], "torch": torch.__version__,
                          "processes": acc.num_processes, **({"init": started_from} if started_from else {})}
            save_bundle(base, init, half=False, name="aa-tiny", provenance=provenance, tokenizer_dir=tok_dir)
            save_bundle(base, cfg.output, half=True, name="aa-tiny", provenance=provenance, tokenizer_dir=tok_dir)
            state_file.write_text(json.dumps(state, indent=1))
            for m in (base.unet, base.vae, base.text_encoder):
                m.train()
        acc.wait_for_everyone()
    acc.end_training()
    return Path(cfg.output)
