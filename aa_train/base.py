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
scene (README, "Status of the embedded model"), so the default stays the plain mean.
Runs under `accelerate`: one CPU process by default; several through `torchrun` (accelerate 1.15's `launch --cpu` starts one).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from aa_runtime.bundle import save_bundle
from aa_runtime.errors import AAError
from aa_runtime.model import load_base
from aa_runtime.pipeline import to_unit as pipeline_to_unit
from aa_runtime.tiny import TinyConfig, build_random_base

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
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 autocast around each step's forward (fp32 weights)
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
        for name in ("grounding_token_weight", "grounding_pixel_weight"):
            if not getattr(self, name) >= 0:
                raise AAError(name.replace("_", "-"), getattr(self, name), "use a weight ≥ 0 (0 = off)")
        if not 0 < self.lr < 1 or not 0 <= self.ema < 1:
            raise AAError("lr/ema", f"{self.lr}/{self.ema}", "use 0 < lr < 1 and 0 ≤ ema < 1")
        if self.grounding_pixel_regions not in ("all", "person"):
            raise AAError("grounding-pixel-regions", self.grounding_pixel_regions, "use all or person")
        if self.mixed_precision not in ("no", "bf16"):
            raise AAError("mixed-precision", self.mixed_precision, "use no or bf16")
        if self.size % 16:
            raise AAError("size", self.size, "use a multiple of 16")
        if self.motion_module and not self.init:
            raise AAError("motion-module", self.motion_module, "give --init SD15_FOLDER with it (the tiny config "
                          "has motion modules of its own)")
        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))
        check_training_specs(self.data, self.size, self.frames, self.fps)


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


class EMA:
    """Exponential moving average of parameters (the weights that get saved)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 10 %."""
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


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


class StageRunner:
    """One stage's loop: accelerate-prepared model and optimizer, EMA, checkpoints, progress."""

    def __init__(self, cfg: BaseTrainConfig, accelerator, base, stage: Stage, steps: int, lr: float, log):
        self.cfg, self.acc, self.base, self.stage, self.steps, self.log = cfg, accelerator, base, stage, steps, log
        self.params = trainable_parameters(base, stage, train_text=train_text_encoder(cfg))
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0 if stage == "vae" else 1e-2)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.warmup, steps))
        self.ema = EMA(self.params, cfg.ema)
        self.ckpt = Path(cfg.work_dir) / f"{stage}.pt"
        self.step, self.losses = 0, []
        self.extra: dict[str, list[float]] = {}  # further loss terms to log, name → per-step values
        if cfg.resume and self.ckpt.is_file():
            state = torch.load(self.ckpt, map_location="cpu", weights_only=False)
            with torch.no_grad():
                for p, v in zip(self.params, state["params"]):
                    p.copy_(v)
                for s, v in zip(self.ema.shadow, state["ema"]):
                    s.copy_(v)
            self.opt.load_state_dict(state["opt"])
            self.sched.load_state_dict(state["sched"])
            self.step, self.losses = state["step"], state["losses"]
            self.log(f"[{stage}] resumed at step {self.step}/{steps}")

    def save(self) -> None:
        if not self.acc.is_main_process:
            return
        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save({"params": [p.detach() for p in self.params], "ema": self.ema.shadow,
                    "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "step": self.step, "losses": self.losses}, tmp)
        tmp.replace(self.ckpt)

    def run(self, loss_fn, evaluate=None) -> dict:
        """Train the stage's parameters with `loss_fn(step) -> loss`; `evaluate()` → str at each checkpoint."""
        t0, start = time.time(), self.step
        while self.step < self.steps:
            with torch.autocast(self.acc.device.type, dtype=torch.bfloat16,
                                enabled=self.cfg.mixed_precision == "bf16"):
                loss = loss_fn(self.step)
            self.acc.backward(loss)
            average_gradients(self.params, self.acc)
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.ema.update(self.step)
            self.losses.append(float(loss.detach()))
            self.step += 1
            if self.step % 50 == 0 or self.step == self.steps:
                rate = (self.step - start) / max(1e-6, time.time() - t0)
                eta = (self.steps - self.step) / max(rate, 1e-6)
                extra = "".join(f" {k} {np.mean(v[-50:]):.4f}" for k, v in self.extra.items() if v)
                self.log(f"[{self.stage}] step {self.step}/{self.steps} loss {np.mean(self.losses[-50:]):.4f}{extra} "
                         f"{rate:.2f} it/s eta {eta / 60:.1f} min")
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.steps:
                self.save()
                if evaluate is not None and self.acc.is_main_process:
                    self.log(f"[{self.stage}] step {self.step}: {evaluate()}")
        self.ema.copy_to_params()
        tail = self.losses[-200:]
        return {"steps": self.steps, "final_loss": float(np.mean(tail)) if tail else None}


def average_gradients(params: list[torch.nn.Parameter], acc) -> None:
    """All-reduce (mean) the gradients of every rank in one flat buffer: DDP's semantics, but it also covers
    modules used outside their forward (VAE encode/decode) and several models at once (UNet + text encoder)."""
    if acc.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= acc.num_processes
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


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


def cached_latents(vae, clips, stem: Path, log, rank: int = 0, world: int = 1,
                   barrier=lambda: None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame and skeleton latents, float16 (N, F, 4, h, w) each, encoded once per VAE and cached beside the data
    (keyed by the VAE's fingerprint, so a retrained VAE never reuses stale latents). With `world` processes each
    encodes its own block of clips; rank 0 joins the blocks; `barrier()` waits for every rank."""
    from safetensors.torch import load_file

    from aa_runtime.bundle import fingerprint

    file = stem.with_name(f"{stem.name}-{fingerprint(vae)}.safetensors")
    if not file.is_file():
        n, f = clips.frames.shape[:2]
        if n < world:
            raise AAError("data", f"{n} clips for {world} processes", "use at least one clip per process")
        log(f"encoding {n * f} frames and skeletons with the VAE in {world} part(s) (cached in {file.name})")
        part = encode_latent_part(vae, clips, file, rank, world)
        if world == 1:
            return part
        barrier()
        if rank == 0:
            join_latent_parts(file, world)
        barrier()
    z = load_file(str(file))
    return z["latents"], z["pose_latents"]


def _part_file(file: Path, rank: int, world: int) -> Path:
    return file.with_name(f"{file.stem}.part{rank}-of-{world}.safetensors")


@torch.no_grad()
def encode_latent_part(vae, clips, file: Path, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode clips [rank·N/world, (rank+1)·N/world) and write them beside `file` (atomically); returns them."""
    from safetensors.torch import save_file

    from aa_runtime.files import atomic_path

    vae.eval()
    n = clips.frames.shape[0]
    lo, hi = rank * n // world, (rank + 1) * n // world
    frames, skeletons = clips.frames[lo:hi], clips.skeletons[lo:hi]
    flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731  (N, F, ...) → (N·F, ...)
    latents = encode_all(vae, flat(frames))
    latents = latents.view(*frames.shape[:2], *latents.shape[1:])  # (n, F, 4, h, w)
    pose_latents = encode_all(vae, flat(skeletons)).view(latents.shape)
    out = file if world == 1 else _part_file(file, rank, world)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file({"latents": latents.contiguous(), "pose_latents": pose_latents.contiguous()}, str(tmp))
    return latents, pose_latents


def join_latent_parts(file: Path, world: int) -> None:
    """Concatenate the `world` part files in rank order into `file` (atomically), then delete the parts."""
    from safetensors.torch import load_file, save_file

    from aa_runtime.files import atomic_path

    parts = [_part_file(file, r, world) for r in range(world)]
    loaded = [load_file(str(p)) for p in parts]
    with atomic_path(file) as tmp:
        save_file({k: torch.cat([z[k] for z in loaded]).contiguous() for k in ("latents", "pose_latents")}, str(tmp))
    for p in parts:
        p.unlink()


def _encode_text(base, captions: list[str], device) -> torch.Tensor:
    ids = base.tokenizer(captions, padding="max_length", max_length=base.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)
    return base.text_encoder(ids)[0]  # (B, T, D)


def latent_person_weights(masks: torch.Tensor, latent_hw: tuple[int, int], weight: float) -> torch.Tensor:
    """Pixel person masks bool (..., H, W) → loss weights float (..., h, w): `weight` on every latent pixel whose
    patch holds any person pixel (max-pool: a limb one latent pixel wide still counts), 1 elsewhere."""
    m = latent_masks(masks.reshape(-1, *masks.shape[-2:]), latent_hw, pool="max")
    return (1 + (weight - 1) * m).reshape(*masks.shape[:-2], *latent_hw)


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


def train_unet(cfg, acc, base, data, stage: Stage, log, latents, pose_latents) -> dict:
    """Stage `image` (frames as independent images) or `video` (clips of F frames, never a still image's)."""
    from diffusers import DDPMScheduler

    clips = data.clips
    steps = cfg.image_steps if stage == "image" else cfg.video_steps
    runner = StageRunner(cfg, acc, base, stage, steps, cfg.lr, log)
    noise_scheduler = DDPMScheduler.from_config(base.scheduler_config)
    f = latents.shape[1]  # latents (N, F, 4, h, w)
    weighted = cfg.denoise_person_weight != 1
    if weighted:  # (N, F, h, w), once: the masks are fixed like the latents
        person_w = latent_person_weights(torch.from_numpy(clips.masks), tuple(latents.shape[-2:]),
                                         cfg.denoise_person_weight).half()
    grounded = stage == "image" and (cfg.grounding_token_weight > 0 or cfg.grounding_pixel_weight > 0)
    text = train_text_encoder(cfg)
    if grounded:
        token_bits = token_regions(base.tokenizer, clips.captions, clips.spans, base.tokenizer.model_max_length)
        store = set_grounding_attention(base.unet)
        runner.extra = {"grounding_token": [], "grounding_pixel": []}

    def loss_fn(step):
        rng = _batch_rng(cfg, stage, step, acc.process_index)
        if stage == "image":
            ci, fi = data.draw(rng, cfg.image_batch, video=False), rng.integers(0, f, cfg.image_batch)
            z = latents[ci, fi].float()[:, :, None]  # (B, 4, 1, h, w)
            p = pose_latents[ci, fi].float()[:, :, None]
            w = person_w[ci, fi].float()[:, None, None] if weighted else None  # (B, 1, 1, h, w)
        else:
            ci = data.draw(rng, cfg.video_batch, video=True)
            z = latents[ci].float().permute(0, 2, 1, 3, 4)  # (B, F, 4, h, w) → (B, 4, F, h, w)
            p = pose_latents[ci].float().permute(0, 2, 1, 3, 4)
            w = person_w[ci].float()[:, None] if weighted else None  # (B, 1, F, h, w)
        dropped = rng.random(len(ci)) < cfg.caption_dropout
        caps = ["" if d else clips.captions[i] for d, i in zip(dropped, ci)]
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(z.shape, generator=g)
        t = torch.from_numpy(rng.integers(0, noise_scheduler.config.num_train_timesteps, z.shape[0]))
        if not grounded:
            return denoising_loss(base, noise_scheduler, z, p, caps, t, noise, train_text=stage == "image" and text,
                                  device=acc.device, weights=w)
        store.clear()
        loss = denoising_loss(base, noise_scheduler, z, p, caps, t, noise, train_text=text, device=acc.device,
                              weights=w)
        bits = token_bits[ci] * torch.from_numpy(~dropped)[:, None]  # a dropped caption grounds nothing
        token_loss, pixel_loss = grounding_losses(store.maps, torch.from_numpy(clips.parts[ci, fi]).to(acc.device),
                                                  bits.to(acc.device), cfg.grounding_pixel_regions)
        store.clear()
        runner.extra["grounding_token"].append(float(token_loss.detach()))
        runner.extra["grounding_pixel"].append(float(pixel_loss.detach()))
        return loss + cfg.grounding_token_weight * token_loss + cfg.grounding_pixel_weight * pixel_loss

    try:
        summary = runner.run(loss_fn)
    finally:
        if grounded:
            reset_grounding_attention(base.unet, store)
    if grounded:
        summary.update({k: float(np.mean(v[-200:])) for k, v in runner.extra.items() if v})
    return summary


def check_ranks_agree(acc, base, work: Path, stage: str) -> None:
    """Every rank writes a hash of its exact weights; rank 0 refuses to go on if they differ (DDP drift)."""
    h = hashlib.sha256()
    for module in (base.unet, base.vae, base.text_encoder):
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    fp = h.hexdigest()
    ranks = work / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    (ranks / f"{stage}-rank{acc.process_index}.txt").write_text(fp)
    acc.wait_for_everyone()
    if acc.is_main_process:
        seen = {(ranks / f"{stage}-rank{i}.txt").read_text() for i in range(acc.num_processes)}
        if len(seen) != 1:
            raise RuntimeError(f"ranks disagree after stage {stage}: {sorted(seen)}")


# ----------------------------------------------------------------------------------------------- entry
def train_base(cfg: BaseTrainConfig, log=print) -> Path:
    """Run the requested stages and write the bundle (fp16) to cfg.output after each stage."""
    from accelerate import Accelerator

    torch.set_num_threads(cfg.threads)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
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

    latents = pose_latents = None
    for stage in cfg.stages:
        if stage in state["done"]:
            log(f"[{stage}] already done: {state['done'][stage]}")
            continue
        if stage == "vae":
            summary = train_vae(cfg, acc, base, clips, log)
        else:
            if latents is None:  # pre-encode once with the (now fixed) VAE
                latents, pose_latents = cached_latents(base.vae, clips, work / "cache" / f"latents-{data.key}", main_log,
                                                       acc.process_index, acc.num_processes, acc.wait_for_everyone)
            summary = train_unet(cfg, acc, base, data, stage, log, latents, pose_latents)
        state["done"][stage] = summary
        check_ranks_agree(acc, base, work, stage)
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
    return Path(cfg.output)
