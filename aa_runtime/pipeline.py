"""`AnimatePipeline`: text + pose sequence → video, with the pose-conditioned UNetMotionModel."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.free_init_utils import FreeInitMixin
from diffusers.utils import BaseOutput

from .backends import TorchBackend, UNetBackend
from .bundle import BaseModel, SampleDefaults, check_noise
from .errors import AAError
from .poses import PoseSequence, fit_poses, render_skeletons, resample_poses, retarget
from .schedulers import CONSISTENCY, ORIGINAL_STEPS, SCHEDULERS, make_scheduler


@dataclass
class AnimateOutput(BaseOutput):
    """frames: uint8 (F, H, W, 3); pose_frames: the rendered skeletons that drove them, same shape; windows: the
    frame ranges denoised together, and the window length and overlap they came from (what ran, not what was
    asked: a window longer than the clip runs as one window of the clip's length, with no overlap); sampling: the
    steps, guidance, scheduler, noise ties and FreeInit iterations that ran (the call's values, else the bundle's)."""

    frames: np.ndarray
    pose_frames: np.ndarray
    seed: int
    timings: dict = field(default_factory=dict)
    windows: list[tuple[int, int]] = field(default_factory=list)
    window: int = 0
    overlap: int = 0
    sampling: dict = field(default_factory=dict)


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """Text → token ids (1, T), padded to the tokenizer's length as the text encoder reads them."""
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def initial_noise(shape: tuple[int, ...], seed: int, correlation: float = 0.0, shared_frequency: float = -1.0,
                  progressive: float = 0.0) -> torch.Tensor:
    """Unit-variance Gaussian noise float (B, C, F, h, w) from a CPU generator (a seed gives the same video on any
    device), its frames tied as `frame_correlated_noise` says. ρ = 0, r < 0 and c = 0 is plain independent noise,
    bit-identical to `torch.randn(shape)` with that seed."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return frame_correlated_noise(shape, generator, correlation, shared_frequency, progressive)


def low_frequency_mask(h: int, w: int, radius: float) -> torch.Tensor:
    """float (h, w) in FFT order: 1 where a 2-D spatial frequency lies within `radius` cycles per frame (0: the mean
    only), else 0; symmetric under f → −f, so it keeps real signals real."""
    fy = torch.fft.fftfreq(h)[:, None] * h
    fx = torch.fft.fftfreq(w)[None] * w
    return ((fy ** 2 + fx ** 2).sqrt() <= radius + 1e-6).float()


def frame_correlated_noise(shape: tuple[int, ...], generator: torch.Generator, correlation: float,
                           shared_frequency: float = -1.0, progressive: float = 0.0) -> torch.Tensor:
    """Unit-variance noise float (B, C, F, h, w) whose frames are tied, each way optional: correlation ρ mixes √ρ of
    one draw shared by the F frames with √(1-ρ) of each frame's own (PYoCo's mixed noise prior, Ge et al. 2023; the
    same mixture in training, `aa-train base --noise-correlation`, and sampling); progressive c and shared
    frequency r as `tie_frames` says. The independent draw comes first, so ρ = 0, c = 0, r < 0 is exactly
    `torch.randn(shape, generator=generator)`."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if correlation > 0:
        shared = torch.randn((*shape[:2], 1, *shape[3:]), generator=generator, dtype=torch.float32)  # (B, C, 1, h, w)
        noise = correlation ** 0.5 * shared + (1 - correlation) ** 0.5 * noise
    return tie_frames(noise, generator, shared_frequency, progressive)


def tie_frames(noise: torch.Tensor, generator: torch.Generator, shared_frequency: float = -1.0,
               progressive: float = 0.0) -> torch.Tensor:
    """Noise (B, C, F, h, w) with unit-variance frames → the same with its frames tied, every frame still exactly
    white unit-variance Gaussian (what the UNet was trained on, frame by frame):

    - progressive c > 0: each frame is c × the previous one + √(1−c²) × its own (PYoCo's progressive noise prior,
      Ge et al. 2023): neighbouring frames correlate by c, frames k apart by cᵏ, so frame-to-frame change shrinks
      while the clip as a whole is not pinned to one draw (a draw shared by all frames steadies as much, but its
      low frequencies then override the scene the text asks for: benchmarks/results/README.md);
    - shared frequency r ≥ 0: the spatial frequencies within r cycles per latent frame (r = 0: each channel's mean)
      are replaced by those of one draw common to all frames. A frequency band of white noise is independent of the
      rest, so frames stay white; the mean is what a sampler that starts short of zero signal-to-noise carries into
      the image (Lin et al., WACV 2024), so with it shared the background's brightness and colour stop drifting."""
    if progressive > 0:
        tied = noise.clone()
        for f in range(1, noise.shape[2]):
            tied[:, :, f] = progressive * tied[:, :, f - 1] + (1 - progressive ** 2) ** 0.5 * noise[:, :, f]
        noise = tied
    if shared_frequency >= 0:
        common = torch.randn((*noise.shape[:2], 1, *noise.shape[3:]), generator=generator, dtype=torch.float32)
        low = low_frequency_mask(noise.shape[-2], noise.shape[-1], shared_frequency).to(noise.device)
        noise = noise + torch.fft.ifft2(low * (torch.fft.fft2(common.to(noise.device)) - torch.fft.fft2(noise))).real
    return noise


def tied_renoise(sample: torch.Tensor, denoised: torch.Tensor, alpha_prod: torch.Tensor, generator: torch.Generator,
                 shared_frequency: float, progressive: float) -> torch.Tensor:
    """LCM's multistep re-noising, sample = √ᾱ·denoised + √(1−ᾱ)·z with z fresh per frame, redone with z's frames
    tied as the initial noise's are (`tie_frames`), so each step's noise is still LCM's own, frame by frame."""
    sigma = (1 - alpha_prod) ** 0.5
    z = (sample.float() - alpha_prod ** 0.5 * denoised.float()) / sigma
    return alpha_prod ** 0.5 * denoised.float() + sigma * tie_frames(z, generator, shared_frequency, progressive)


def context_windows(frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open frame ranges of length `window` stepping by `window - overlap`; the last ends at `frames`."""
    if frames <= window:
        return [(0, frames)]
    stride = window - overlap
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return [(s, s + window) for s in starts]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] → uint8 (N, H, W, 3)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_unit(images: np.ndarray, device, dtype) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).to(dtype) / 127.5 - 1


class AnimatePipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin, FreeInitMixin):
    """Pose-driven text-to-video sampling with classifier-free guidance over overlapping frame windows.

    FreeInit (Wu et al., ECCV 2024) as diffusers' AnimateDiff pipelines have it: `enable_free_init(num_iters, ...)`,
    or `free_init_iters` per call / as the bundle's default (1 = off)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)
        self.fingerprint = ""
        self.adapter_bases: tuple[str, ...] = ()  # fingerprints identity adapters may name (BaseModel.adapter_bases)
        self.defaults = SampleDefaults()
        self.backend: UNetBackend = TorchBackend(unet)
        self.identity = None  # the merged identity adapter, if any (aa_runtime.adapters.Adapter)
        self.loras: list[tuple[str, float]] = []  # other LoRAs folded in (path, weight), e.g. few-step
        # (identifier, class word, appearance, keep the identifier) written into prompts naming the identity
        self.appearance: tuple[str, str, str, bool] | None = None

    @classmethod
    def from_base(cls, base: BaseModel) -> "AnimatePipeline":
        pipe = cls(base.vae, base.text_encoder, base.tokenizer, base.unet,
                   make_scheduler("ddim", base.scheduler_config))
        pipe.fingerprint, pipe.defaults, pipe.adapter_bases = base.fingerprint, base.defaults, base.adapter_bases
        return pipe

    @property
    def scheduler_config(self) -> dict:
        """The base's noise schedule; each call builds the sampler it is asked for from it."""
        return dict(self.scheduler.config)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def set_backend(self, backend: UNetBackend) -> None:
        """Route UNet evaluations through `backend` (see aa_runtime.backends)."""
        self.backend = backend

    def set_identity(self, adapter, *, force: bool = False, describe: bool = True, scale: float = 1.0) -> None:
        """Merge an identity adapter into the UNet (once; checked for base match and finite weights) at `scale`
        (1: as trained). An adapter trained with the person's written appearance has it written into every prompt
        that names '<identifier> <class>' (`describe=False`: prompts as given)."""
        from .adapters import add_identifier_token, merge_adapter

        if self.identity is not None:
            raise AAError("identity adapter", f"{adapter.path}: an identity ({self.identity.path}) is already merged",
                          "load the base again to switch identities")
        merge_adapter(self.unet, adapter, base_fingerprint=self.adapter_bases or self.fingerprint, force=force,
                      scale=scale)
        if adapter.embedding is not None:  # pivotal tuning: the identifier is a token of its own
            add_identifier_token(self.tokenizer, self.text_encoder, adapter.identifier, adapter.embedding)
        self.identity = adapter
        if describe and adapter.appearance:
            self.set_appearance(adapter.identifier, adapter.meta.get("class_word", ""), adapter.appearance,
                                keep_identifier=adapter.embedding is not None)
        if isinstance(self.backend, TorchBackend):
            self.backend = TorchBackend(self.unet)

    def add_lora(self, path, weight: float = 1.0) -> int:
        """Fold a Stable Diffusion 1.5 LoRA (e.g. a few-step LCM-LoRA) into the UNet at `weight`; any number, before
        or after the identity. Returns the layers it changed."""
        from .adapters import merge_lora

        layers = merge_lora(self.unet, path, weight, name=f"lora{len(self.loras)}")
        self.loras.append((str(path), float(weight)))
        if isinstance(self.backend, TorchBackend):
            self.backend = TorchBackend(self.unet)
        return layers

    def set_appearance(self, identifier: str, class_word: str, appearance: str | None, *,
                       keep_identifier: bool = False) -> None:
        """Write `appearance` into prompts naming '<identifier> <class>' (None: prompts as given); the identifier
        stays in the prompt only with `keep_identifier` (it has a trained embedding)."""
        from .adapters import appearance_parts

        if appearance is not None:
            appearance_parts(appearance, identifier, class_word)  # one clear error for a phrase without them
        self.appearance = (identifier, class_word, appearance, keep_identifier) if appearance else None

    def describe_prompt(self, prompt: str) -> str:
        """`prompt` as the UNet reads it: the identity's appearance written in where it names the identity."""
        from .adapters import describe_identifier

        return describe_identifier(prompt, *self.appearance) if self.appearance else prompt

    # ------------------------------------------------------------------------------------- inputs
    def check_inputs(self, prompt, poses, num_frames, fps, height, width, steps, guidance, scheduler, window,
                     overlap):
        if not isinstance(prompt, str) or not prompt.strip():
            raise AAError("prompt", repr(prompt), "give a non-empty text prompt")
        if not isinstance(poses, PoseSequence):
            raise AAError("poses", type(poses).__name__, "pass an aa_runtime.poses.PoseSequence")
        fps_ok = isinstance(fps, (int, float, np.number)) and not isinstance(fps, bool) and math.isfinite(fps)
        if not (fps_ok and fps > 0):
            raise AAError("fps", fps, "use a positive frame rate, e.g. 8")
        m = self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)
        for name, v in (("height", height), ("width", width)):
            if v < m or v % m or v > 2048:
                raise AAError(name, v, f"use a multiple of {m} between {m} and 2048")
        if not 1 <= num_frames <= 4096:
            raise AAError("frames", num_frames, "use 1 to 4096 frames")
        if not 1 <= steps <= 1000:
            raise AAError("steps", steps, "use 1 to 1000 denoising steps")
        if not (guidance >= 1.0 and guidance <= 50):
            raise AAError("guidance", guidance, "use a guidance scale between 1 (off) and 50")
        if scheduler not in SCHEDULERS:
            raise AAError("scheduler", repr(scheduler), f"use one of {', '.join(SCHEDULERS)}")
        if scheduler in CONSISTENCY and steps > ORIGINAL_STEPS:
            raise AAError("steps", steps, f"the {scheduler} scheduler runs 1 to {ORIGINAL_STEPS} steps (4 is typical)")
        max_window = int(self.unet.config.motion_max_seq_length)
        if not 1 <= window <= max_window:
            raise AAError("window", window, f"use 1 to {max_window} frames (the motion modules' length)")
        if not 0 <= overlap < window:
            raise AAError("overlap", overlap, f"use 0 to {window - 1} (less than the window)")

    # ------------------------------------------------------------------------------------- stages
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text → CLIP hidden states float (1, T, D)."""
        return self.text_encoder(prompt_ids(self.tokenizer, prompt).to(self.text_encoder.device))[0].to(self.unet.dtype)

    def prepare_poses(self, poses: PoseSequence, num_frames: int, fps: float, height: int, width: int,
                      fit: str, do_retarget: bool) -> PoseSequence:
        """Resample in time, fit into the frame, retarget to the identity's bone lengths."""
        seq = resample_poses(poses, num_frames, fps)
        if do_retarget and self.identity is not None and self.identity.bone_lengths is not None:
            seq = retarget(seq, self.identity.bone_lengths)
        return fit_poses(seq, width, height, mode=fit)

    @torch.no_grad()
    def encode_images(self, images: np.ndarray, chunk: int) -> torch.Tensor:
        """uint8 (F, H, W, 3) → VAE latent means × scaling factor, float (1, C, F, h, w)."""
        out = []
        for s in range(0, len(images), chunk):
            x = to_unit(images[s:s + chunk], self.vae.device, self.vae.dtype)
            out.append(self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor)
        return torch.cat(out).permute(1, 0, 2, 3).unsqueeze(0)  # (F, C, h, w) → (1, C, F, h, w)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk: int) -> np.ndarray:
        """float (1, C, F, h, w) → uint8 (F, H, W, 3), decoded `chunk` frames at a time."""
        z = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor  # (F, C, h, w)
        return np.concatenate([to_uint8(self.vae.decode(z[s:s + chunk].to(self.vae.dtype)).sample)
                               for s in range(0, len(z), chunk)])

    def predict_noise(self, latents, pose_latents, t, text, uncond, guidance, windows) -> torch.Tensor:
        """CFG noise prediction over frame windows, averaged where windows overlap. latents (1, 4, F, h, w)."""
        noise = torch.zeros_like(latents)
        count = torch.zeros((1, 1, latents.shape[2], 1, 1), dtype=latents.dtype, device=latents.device)
        do_cfg = guidance > 1.0
        for s, e in windows:
            x = torch.cat([latents[:, :, s:e], pose_latents[:, :, s:e]], dim=1)  # (1, 8, w, h, w)
            n = e - s
            if do_cfg:
                x = torch.cat([x, x])  # (2, 8, w, h, w): unconditional, conditional
                emb = torch.cat([uncond.repeat_interleave(n, 0), text.repeat_interleave(n, 0)])  # (2·w, T, D)
                eps_u, eps_c = self.backend(x, t, emb).chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            else:
                eps = self.backend(x, t, text.repeat_interleave(n, 0))
            noise[:, :, s:e] += eps.to(noise.dtype)
            count[:, :, s:e] += 1
        return noise / count

    def denoise(self, latents, sched, pose_latents, text, uncond, guidance, windows, scheduler_name, seed, shared,
                progressive, progress: bool = True) -> torch.Tensor:
        """One run of the sampler over `sched`'s timesteps from `latents` (already scaled to its first noise level)."""
        # the consistency schedulers add fresh noise between steps: from a CPU generator of their own, seeded
        step_kw = {"generator": torch.Generator("cpu").manual_seed(seed + 1)} if scheduler_name in CONSISTENCY else {}
        # LCM re-noises between steps: those noises get their frames tied as the first one's are
        tied = scheduler_name == "lcm" and (shared >= 0 or progressive > 0)
        renoise = torch.Generator("cpu").manual_seed(seed + 2) if tied else None
        for t in self.progress_bar(sched.timesteps) if progress else sched.timesteps:
            x = sched.scale_model_input(latents, t)
            eps = self.predict_noise(x, pose_latents, t, text, uncond, guidance, windows)
            stepped = sched.step(eps, t, latents, return_dict=False, **step_kw)
            latents = stepped[0]
            if renoise is not None and sched.step_index < len(sched.timesteps):  # re-noised towards the next step
                alpha = sched.alphas_cumprod[sched.timesteps[sched.step_index]].to(latents.device, torch.float32)
                latents = tied_renoise(latents, stepped[1], alpha, renoise, shared, progressive).to(latents.dtype)
        return latents

    def free_init_steps(self, steps: int, iteration: int, iterations: int) -> int:
        """Steps of FreeInit run `iteration` (from 0) of `iterations`: all of them, or with coarse-to-fine
        sampling (`enable_free_init(use_fast_sampling=True)`, else the bundle's `free_init_fast`) ⌊steps·(i+1)/N⌋,
        at least 1, so the last run takes all."""
        fast = self._free_init_use_fast_sampling if self.free_init_enabled else self.defaults.free_init_fast
        if fast and iterations > 1:
            return max(1, int(steps / iterations * (iteration + 1)))
        return steps

    def free_init_noise(self, latents: torch.Tensor, noise: torch.Tensor, fresh: torch.Tensor,
                        alpha_prod: torch.Tensor) -> torch.Tensor:
        """FreeInit's re-initialisation, float (B, C, F, h, w): the clean `latents` diffused with the first run's
        `noise` to the level ᾱ the sampler starts from (at ᾱ ≈ 0.01 the clip is still in the low frequencies),
        its low spatio-temporal frequencies kept by diffusers' FreeInit filter (Butterworth order 4, stop frequency
        0.25 in space and time unless `enable_free_init` says otherwise), the high ones from `fresh` noise."""
        enabled = self.free_init_enabled
        low_pass = self._get_free_init_freq_filter(
            (1, *latents.shape[1:]), latents.device,
            filter_type=self._free_init_method if enabled else "butterworth",
            order=self._free_init_order if enabled else 4,
            spatial_stop_frequency=self._free_init_spatial_stop_frequency if enabled else 0.25,
            temporal_stop_frequency=self._free_init_temporal_stop_frequency if enabled else 0.25)
        alpha_prod = alpha_prod.float()
        diffused = alpha_prod ** 0.5 * latents + (1 - alpha_prod) ** 0.5 * noise
        return self._apply_freq_filter(diffused, fresh, low_pass)

    # ------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(self, prompt: str, poses: PoseSequence, *, negative_prompt: str = "",
                 num_frames: int | None = None, fps: float | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, scheduler: str | None = None, seed: int = 0,
                 window: int | None = None, overlap: int | None = None, pose_fit: str = "person",
                 retarget_poses: bool = True, decode_chunk_size: int = 8, progress: bool = True,
                 noise_correlation: float | None = None,
                 noise_shared_frequency: float | None = None, noise_progressive: float | None = None,
                 free_init_iters: int | None = None, free_init_progressive: float | None = None) -> AnimateOutput:
        # None means "the default"; any value given is checked as given (0 frames, 0 steps, an overlap as long as the
        # window are refused, not replaced)
        d = self.defaults
        num_frames = poses.frames if num_frames is None else num_frames
        fps = poses.fps if fps is None else fps
        height = d.height if height is None else height
        width = d.width if width is None else width
        steps = d.steps if num_inference_steps is None else num_inference_steps
        guidance = d.guidance if guidance_scale is None else guidance_scale
        scheduler_name = d.scheduler if scheduler is None else scheduler
        window = min(d.window, int(self.unet.config.motion_max_seq_length)) if window is None else window
        overlap = min(d.overlap, window - 1) if overlap is None else overlap  # the default overlap fits any window
        rho = d.noise_correlation if noise_correlation is None else noise_correlation
        shared = d.noise_shared_frequency if noise_shared_frequency is None else noise_shared_frequency
        progressive = d.noise_progressive if noise_progressive is None else noise_progressive
        if free_init_iters is None:
            free_init_iters = self._free_init_num_iters if self.free_init_enabled else d.free_init_iters
        fresh_progressive = d.free_init_progressive if free_init_progressive is None else free_init_progressive
        self.check_inputs(prompt, poses, num_frames, fps, height, width, steps, guidance, scheduler_name, window,
                          overlap)
        check_noise(noise_correlation=rho, noise_shared_frequency=shared, noise_progressive=progressive,
                    free_init_progressive=fresh_progressive)
        if fresh_progressive < 0:  # the fresh noise of FreeInit's later runs is tied as the first run's
            fresh_progressive = progressive
        if not (isinstance(free_init_iters, int) and 1 <= free_init_iters <= 8):
            raise AAError("FreeInit iterations", free_init_iters, "use 1 (off) to 8")
        device, dtype = self.unet.device, self.unet.dtype
        timings, t0 = {}, time.perf_counter()

        # 1. encode prompt
        text = self.encode_prompt(self.describe_prompt(prompt))
        uncond = self.encode_prompt(negative_prompt or "")
        timings["encode_prompt_s"] = time.perf_counter() - t0

        # 2. prepare poses: resample, retarget, fit, render, VAE-encode
        t1 = time.perf_counter()
        seq = self.prepare_poses(poses, num_frames, fps, height, width, pose_fit, retarget_poses)
        pose_frames = render_skeletons(seq)  # (F, H, W, 3) uint8
        pose_latents = self.encode_images(pose_frames, decode_chunk_size).to(dtype)  # (1, 4, F, h, w)
        timings["prepare_poses_s"] = time.perf_counter() - t1

        # 3. prepare latents: noise from a CPU generator, so a seed gives the same video on any device
        c = int(self.unet.config.out_channels)
        shape = (1, c, num_frames, height // self.vae_scale, width // self.vae_scale)
        noise = initial_noise(shape, seed, rho, shared, progressive)

        # 4. denoise over overlapping windows; with FreeInit, again from the result's low frequencies re-noised
        t2 = time.perf_counter()
        windows = context_windows(num_frames, window, overlap)
        evals, latents = 0, None
        for it in range(free_init_iters):
            it_steps = self.free_init_steps(steps, it, free_init_iters)
            sched = make_scheduler(scheduler_name, self.scheduler_config)
            sched.set_timesteps(it_steps, device=device)
            if it == 0:
                start = noise
            else:  # FreeInit: low spatio-temporal frequencies of the result diffused to the first step, the rest fresh
                fresh = frame_correlated_noise(shape, torch.Generator("cpu").manual_seed(seed + 3 + it), rho, shared,
                                               fresh_progressive)
                start = self.free_init_noise(latents.float().cpu(), noise, fresh,
                                             sched.alphas_cumprod[int(sched.timesteps[0])])
            latents = start.to(device, dtype) * sched.init_noise_sigma
            latents = self.denoise(latents, sched, pose_latents, text, uncond, guidance, windows, scheduler_name,
                                   seed, shared, progressive, progress)
            evals += it_steps * len(windows) * (2 if guidance > 1 else 1)
        timings["denoise_s"] = time.perf_counter() - t2
        timings["unet_evals"] = evals

        # 5. decode
        t3 = time.perf_counter()
        frames = self.decode_latents(latents, decode_chunk_size)
        timings["decode_s"] = time.perf_counter() - t3
        timings["total_s"] = time.perf_counter() - t0
        ran_overlap = windows[0][1] - windows[1][0] if len(windows) > 1 else 0
        sampling = {"steps": steps, "guidance": guidance, "scheduler": scheduler_name, "noise_correlation": rho,
                    "noise_shared_frequency": shared, "noise_progressive": progressive,
                    "free_init_iters": free_init_iters,
                    "free_init_progressive": fresh_progressive if free_init_iters > 1 else None}
        return AnimateOutput(frames=frames, pose_frames=pose_frames, seed=seed, timings=timings, windows=windows,
                             window=windows[0][1] - windows[0][0], overlap=ran_overlap, sampling=sampling)
