"""`aa-train distill`: few-step sampling by latent consistency distillation (LCD; Luo et al. 2023, "Latent
Consistency Models", as AnimateLCM applies it to video UNets).

The bundle is the teacher. The student starts as a copy of its UNet (spatial layers and motion modules) and learns
to map a noisy clip x_t, with its pose latents and caption, straight to the clip the teacher's probability-flow ODE
ends at: one DDIM step of the teacher with classifier-free guidance (scale drawn from a range, so the guidance is
baked into the student, which samples without guidance or with a little) takes x_t to x_s, s = t − k on the 50-step grid that
`LCMScheduler` samples on, and the student's prediction at t is pulled towards a target network's (an EMA of the
student) at s, under the consistency parameterisation f(x, t) = c_skip(t)·x + c_out(t)·x̂₀(x, t) that LCMScheduler
applies at sampling time. The student's input, ε-prediction and scheduler config stay the teacher's: the result is an
ordinary bundle whose sample defaults are `--scheduler lcm --steps 4 --guidance 2`, and identity adapters trained
on the teacher merge into it (its manifest names the teacher's fingerprint).
Data: the same sources as `aa-train base` (clips, pose latents and captions; latents cached per VAE).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from aa_runtime.bundle import save_bundle
from aa_runtime.errors import AAError
from aa_runtime.pipeline import frame_correlated_noise
from aa_runtime.schedulers import ORIGINAL_STEPS, make_scheduler

from .base import StageRunner, _encode_text, cached_latents, check_report_to, make_accelerator
from .data import check_training_specs, load_training_data

METHOD = "latent consistency distillation (Luo et al. 2023), DDIM teacher solver, guidance baked in"


@dataclass(frozen=True)
class DistillConfig:
    """The recipe; saved in the student bundle's manifest."""

    teacher: str  # an aa bundle folder
    output: Path
    data: tuple[str, ...] = ("world:4000",)
    work_dir: Path = Path("runs/aa-tiny-lcm")
    size: int = 64
    frames: int = 8
    fps: float = 8.0
    steps: int = 2000
    batch: int = 4  # clips per micro-step
    lr: float = 1e-4
    warmup: int = 100
    ema: float = 0.99  # EMA of the student: the weights written to the bundle
    target_ema: float = 0.95  # the target network's EMA of the student (LCD's θ⁻)
    guidance_min: float = 4.0  # teacher guidance drawn uniformly from [min, max] per clip
    guidance_max: float = 6.0
    skip: int = 1000 // ORIGINAL_STEPS  # DDIM solver skip k: the grid LCMScheduler samples on (50 of 1000)
    loss: str = "huber"  # pseudo-Huber (c = huber_c) or l2
    huber_c: float = 0.001
    sample_steps: int = 4  # the student bundle's default sampling steps
    # its default guidance: 2 = classifier-free guidance on top of the baked-in range, which on aa-tiny keeps what
    # an identity adapter adds (1.02 × the teacher's adapter ID at 4 steps against 0.88 × at 1; steps.md), for a
    # batch of 2 per call that costs 5 % more time on a CPU
    sample_guidance: float = 2.0
    mixed_precision: str = "no"
    gradient_accumulation: int = 1
    report_to: str = "none"  # or tensorboard: the loss, lr and samples/s (accelerate's tracker)
    sample_every: int = 0  # (previews are the base trainer's; distillation logs losses only)
    checkpoint_every: int = 100
    seed: int = 0
    resume: bool = False
    threads: int = 1
    # start the student from this distilled bundle's UNet instead of the teacher's: a student of an earlier version
    # of the teacher (the base trained on) catches up in fewer steps than a new one
    student_init: str | None = None

    def __post_init__(self):
        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))
        for name in ("steps", "batch", "skip", "sample_steps", "checkpoint_every", "threads", "gradient_accumulation"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise AAError(name.replace("_", "-"), v, "use a positive integer")
        if not 0 < self.lr < 1:
            raise AAError("lr", self.lr, "use 0 < lr < 1, e.g. 1e-4")
        for name in ("ema", "target_ema"):
            if not 0 <= getattr(self, name) < 1:
                raise AAError(name.replace("_", "-"), getattr(self, name), "use a decay 0 ≤ d < 1")
        if not 1 <= self.sample_guidance <= 50:
            raise AAError("sample-guidance", self.sample_guidance, "use 1 (no guidance) to 50; 2 is typical")
        if not 1 <= self.guidance_min <= self.guidance_max <= 50:
            raise AAError("guidance range", f"{self.guidance_min}..{self.guidance_max}",
                          "use 1 ≤ --guidance-min ≤ --guidance-max ≤ 50 (the teacher's default is typical)")
        if self.loss not in ("huber", "l2") or not self.huber_c > 0:
            raise AAError("loss", f"{self.loss} (c {self.huber_c})", "use huber (c > 0) or l2")
        if 1000 % self.skip or self.sample_steps > 1000 // self.skip:
            raise AAError("skip", self.skip, "use a divisor of 1000 with at least --sample-steps grid points")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise AAError("mixed-precision", self.mixed_precision, "use no, bf16 or fp16")
        check_report_to(self.report_to)
        check_training_specs(self.data, self.size, self.frames, self.fps)


class TargetNetwork(torch.nn.Module):
    """LCD's target network θ⁻: an EMA of the student, updated after every optimizer step (checkpointed)."""

    def __init__(self, student: torch.nn.Module, decay: float):
        super().__init__()
        self.unet = copy.deepcopy(student).requires_grad_(False).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        torch._foreach_lerp_(list(self.unet.parameters()), [p.detach() for p in student.parameters()],
                             1 - self.decay)


class ConsistencyTerms:
    """The noise schedule's pieces LCD needs, as tensors: √ᾱ, √(1-ᾱ) and LCMScheduler's boundary scalings."""

    def __init__(self, scheduler_config: dict, skip: int):
        lcm = make_scheduler("lcm", scheduler_config)
        ac = lcm.alphas_cumprod.float()
        self.alpha, self.sigma, self.skip = ac.sqrt(), (1 - ac).sqrt(), skip
        self.scalings = lcm.get_scalings_for_boundary_condition_discrete
        self.grid = torch.arange(1, 1000 // skip + 1) * skip - 1  # 19, 39, …, 999 for skip 20

    def at(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(√ᾱ_t, √(1-ᾱ_t), c_skip(t), c_out(t)), each shaped to broadcast over `like` (B, C, F, h, w)."""
        shape = (-1,) + (1,) * (like.ndim - 1)
        c_skip, c_out = self.scalings(t.float())
        return tuple(v.to(like).reshape(shape) for v in (self.alpha[t], self.sigma[t], c_skip, c_out))

    def consistency(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t) = c_skip·x + c_out·x̂₀, x̂₀ = (x − √(1-ᾱ)·ε) / √ᾱ — what LCMScheduler.step returns as `denoised`."""
        a, s, c_skip, c_out = self.at(t, x)
        return c_skip * x + c_out * (x - s * eps) / a

    def ddim_step(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The teacher's ODE step t → s (deterministic DDIM) from its guided ε."""
        a_t, s_t, _, _ = self.at(t, x)
        a_s, s_s, _, _ = self.at(s, x)
        x0 = (x - s_t * eps) / a_t
        return a_s * x0 + s_s * eps


def lcd_loss(student, target, teacher, terms: ConsistencyTerms, z, p, text, uncond, noise, index, guidance, *,
             loss: str = "huber", huber_c: float = 0.001) -> torch.Tensor:
    """One LCD loss. z, p, noise float (B, 4, F, h, w); text, uncond (B, T, D); index (B,) positions on the grid;
    guidance (B,). The UNets take (B, 8, F, h, w) and per-frame text (B·F, T, D)."""
    t = terms.grid[index]
    s = (t - terms.skip).clamp(min=0)
    a, sg, _, _ = terms.at(t, z)
    x_t = a * z + sg * noise
    f = z.shape[2]
    emb, emb_u = text.repeat_interleave(f, 0), uncond.repeat_interleave(f, 0)
    t_dev, s_dev = t.to(z.device), s.to(z.device)
    pred = terms.consistency(student(torch.cat([x_t, p], 1), t_dev, encoder_hidden_states=emb).sample, x_t, t)
    with torch.no_grad():
        x_in = torch.cat([x_t, p], 1)
        eps_u, eps_c = teacher(torch.cat([x_in, x_in]), torch.cat([t_dev, t_dev]),
                               encoder_hidden_states=torch.cat([emb_u, emb])).sample.chunk(2)
        g = guidance.to(z).reshape(-1, 1, 1, 1, 1)
        x_s = terms.ddim_step(eps_u + g * (eps_c - eps_u), x_t, t, s)
        goal = terms.consistency(target(torch.cat([x_s, p], 1), s_dev, encoder_hidden_states=emb).sample, x_s, s)
    if loss == "l2":
        return F.mse_loss(pred.float(), goal.float())
    return (torch.sqrt((pred.float() - goal.float()).pow(2) + huber_c ** 2) - huber_c).mean()


def _load_student(path: str, unet) -> dict:
    """Copy a distilled bundle's UNet weights into `unet` (the teacher's copy); refuses a bundle that is not a
    student or whose UNet has another shape. Returns its fingerprint and teacher, for the provenance."""
    from aa_runtime.model import load_base

    prior = load_base(path)
    distilled = prior.manifest.get("provenance", {}).get("distill")
    if not distilled:
        raise AAError("student-init", path, "give a bundle written by aa-train distill (or leave it out)")
    have, want = prior.unet.state_dict(), unet.state_dict()
    if have.keys() != want.keys() or any(have[k].shape != want[k].shape for k in want):
        raise AAError("student-init", path, "its UNet is not shaped like the teacher's: distil from the teacher")
    unet.load_state_dict({k: v.to(want[k].dtype) for k, v in have.items()})
    return {"bundle": str(path), "fingerprint": prior.fingerprint, "teacher": distilled["teacher"]}


def distill(cfg: DistillConfig, log=print) -> Path:
    """Distil cfg.teacher into a few-step student bundle at cfg.output (fp16); resumable from cfg.work_dir."""
    from aa_runtime.model import load_base

    acc, work = make_accelerator(cfg, "aa-train-distill")
    main_log = log if acc.is_main_process else (lambda *_: None)
    teacher = load_base(cfg.teacher)
    if teacher.manifest.get("provenance", {}).get("distill"):
        raise AAError("teacher", f"{cfg.teacher} is itself a distilled bundle", "distil the bundle it came from")
    if teacher.untrained_unet:
        raise AAError("teacher", f"{cfg.teacher} has no trained UNet", "train it first (aa-train base)")
    for m in (teacher.unet, teacher.vae, teacher.text_encoder):
        m.to(acc.device)
    data = load_training_data(cfg.data, cfg.size, cfg.frames, cfg.fps, work / "cache", log=main_log)
    latents, pose_latents, _ = cached_latents(teacher.vae, data.clips, work / "cache" / f"latents-{data.key}", main_log,
                                           acc.process_index, acc.num_processes, acc.wait_for_everyone)
    if tuple(latents.shape[-2:]) != (cfg.size // teacher.vae_scale,) * 2:
        raise AAError("size", cfg.size, "use the teacher's training size")

    student_unet = copy.deepcopy(teacher.unet).requires_grad_(True).train()
    started = None
    if cfg.student_init:
        started = _load_student(cfg.student_init, student_unet)
        main_log(f"student starts from {cfg.student_init} ({started['fingerprint']})")
    student = SimpleNamespace(unet=student_unet, vae=teacher.vae, text_encoder=teacher.text_encoder)
    target = TargetNetwork(student_unet, cfg.target_ema)
    params = list(student_unet.parameters())
    runner = StageRunner(cfg, acc, student, "distill", cfg.steps, cfg.lr, log, params=params, batch=cfg.batch,
                         also_save=(target,))
    terms = ConsistencyTerms(teacher.scheduler_config, cfg.skip)
    clips = data.clips
    with torch.no_grad():
        empty = _encode_text(teacher, [""], acc.device)  # (1, T, D)

    def loss_fn(step):
        rng = np.random.default_rng([cfg.seed, 17, step, acc.process_index])
        ci = data.draw(rng, cfg.batch, video=True)
        z = latents[ci].float().permute(0, 2, 1, 3, 4).to(acc.device)  # (B, F, 4, h, w) → (B, 4, F, h, w)
        p = pose_latents[ci].float().permute(0, 2, 1, 3, 4).to(acc.device)
        with torch.no_grad():
            text = _encode_text(teacher, [clips.captions[i] for i in ci], acc.device)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = frame_correlated_noise(z.shape, g, teacher.defaults.noise_correlation).to(acc.device)  # the teacher's
        index = torch.from_numpy(rng.integers(0, len(terms.grid), cfg.batch))
        guidance = torch.from_numpy(rng.uniform(cfg.guidance_min, cfg.guidance_max, cfg.batch))
        return lcd_loss(student_unet, target.unet, teacher.unet, terms, z, p, text, empty.expand_as(text), noise,
                        index, guidance, loss=cfg.loss, huber_c=cfg.huber_c)

    summary = runner.run(loss_fn, after_step=lambda: target.update(student_unet))
    if acc.is_main_process:
        student_unet.eval().requires_grad_(False)
        out = SimpleNamespace(**{k: getattr(teacher, k) for k in ("vae", "text_encoder", "tokenizer",
                                                                  "scheduler_config", "manifest")},
                              unet=student_unet, defaults=replace(teacher.defaults, steps=cfg.sample_steps,
                                                                  guidance=cfg.sample_guidance, scheduler="lcm"))
        provenance = {"distill": {"method": METHOD, "teacher": {"bundle": str(cfg.teacher),
                                                                "fingerprint": teacher.fingerprint},
                                  "steps": cfg.steps, "sample_steps": cfg.sample_steps,
                                  "guidance": [cfg.guidance_min, cfg.guidance_max], "skip": cfg.skip,
                                  "summary": summary, **({"student_init": started} if started else {}),
                                  "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                                  "data": data.described, "torch": torch.__version__},
                      "init": {"bundle": str(cfg.teacher), "fingerprint": teacher.fingerprint,
                               "provenance": teacher.manifest.get("provenance")}}
        name = f"{teacher.manifest.get('name', 'aa-tiny')}-lcm"
        save_bundle(out, cfg.output, half=True, name=name, provenance=provenance,
                    tokenizer_dir=Path(teacher.source) / "tokenizer")
        (work / "summary.json").write_text(json.dumps(summary, indent=1))
        log(f"[distill] {cfg.steps} steps, final loss {summary['final_loss']:.5f}")
    acc.wait_for_everyone()
    acc.end_training()
    return Path(cfg.output)
