"""`aa-train identity`: ID-consistent one-shot learning.

From one reference video: stage 1 trains LoRA on the spatial cross-attention with frames as independent images
(motion modules bypassed); stage 2 continues on clips with the motion modules on. Losses: background-weakening
(eq. 1) + DreamBooth prior preservation on class samples generated once by the base. Mask-guided spatial
self-attention is active in both stages. Everything but the LoRA matrices stays frozen.

By default (`identifier="pieces"`, the paper's setting) the tokenizer splits the identifier `<name>` into ordinary
pieces shared with other words, and only the LoRA trains. `identifier="rare"` makes it one token of its own (an added
token, started from a reserved rare word), `"pivotal"` also trains that token's input embedding with the LoRA (pivotal
tuning, as Custom Diffusion trains its modifier token); the adapter then carries the embedding."""
from __future__ import annotations

import hashlib
import json
import re
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import numpy as np
import torch

from aa_runtime.adapters import (ATTN2_PROJECTIONS, LORA_REACHES, adapter_metadata, adapter_target_pattern,
                                 add_identifier_token, attach_lora, describe_identifier, save_adapter)
from aa_runtime.device import resolve_device
from aa_runtime.errors import AAError, MissingDependencyError
from aa_runtime.files import atomic_path
from aa_runtime.model import load_base
from aa_runtime.pipeline import AnimatePipeline, frame_correlated_noise, prompt_ids
from aa_runtime.poses import PoseSequence, render_skeletons

from .attention import reset_attention, set_mask_guided_attention
from .losses import background_weakening_loss, latent_masks, prior_preservation_loss
from .preprocess import PrepareConfig, ReadSettings, prepare_identity, write_preview

ADAPTER_NAME = "identity"


@dataclass(frozen=True)
class IdentityTrainConfig:
    """Settings of one identity job; saved in the adapter's training summary."""

    video: Path
    name: str
    class_word: str
    output: Path
    base: str | None = None
    motion_module: str | None = None
    rank: int = 8
    alpha: float = 8.0
    lora_targets: tuple[str, ...] = ATTN2_PROJECTIONS  # spatial attn2 projections given LoRA
    # attn2: those projections only (paper); attention: + spatial attn1 and feed-forward; wide: + resnet 3×3 convs
    lora_reach: Literal["attn2", "attention", "wide"] = "attn2"
    lr: float = 1e-3
    stage1_steps: int = 240
    stage2_steps: int = 80
    checkpoint_every: int = 100
    image_batch: int = 4
    clip_frames: int = 8
    resolution: int | None = None  # default: the base's sample size
    bw_alpha: float = 0.001
    mask_attention_weight: float = 0.3  # w for cross-region attention pairs; 1 = plain attention
    prior_weight: float = 1.0
    prior_steps: int = 20  # sampling steps for the class samples
    prior_prompts: tuple[str, ...] = ()  # more class prompts (e.g. other scenes): one prior video each
    prior_motions: tuple[str, ...] = ()  # built-in motions for the prior_prompts videos (cycled), own skeletons each
    prior_reference: bool = True  # the class caption in the reference's own poses is one of the prior videos
    identity_norm: Literal["frame", "region"] = "frame"  # eq. 1's means over the frame (paper) or over each region
    composite_scenes: tuple[str, ...] = ()  # also train on the person pasted onto these world scenes, so captioned
    optimizer: Literal["adamw8bit", "adamw"] = "adamw8bit"
    # pieces: <name> split into ordinary word pieces (paper); rare: a token of its own, frozen at a reserved rare
    # word's embedding; pivotal: that token's embedding trained with the LoRA at token_lr
    identifier: Literal["pieces", "rare", "pivotal"] = "pieces"
    token_lr: float = 5e-3
    # free: LoRA of `rank` on the targets (paper); key-locked: Perfusion's key-locked rank-one edit of the spatial attn2
    # K and V, gated to the identifier (needs identifier=rare): K of the identifier := K of the class word, its V trains
    lora_form: Literal["free", "key-locked"] = "free"
    gradient_checkpointing: bool | None = None  # default: on with CUDA
    separate_prior: bool | None = None  # prior sample in its own backward pass; default: with checkpointing
    # how the reference is read: frames, pose and mask annotators, captioner, --description
    read: ReadSettings = field(default_factory=ReadSettings)
    # write the person's appearance (read.description, else the judge's reading with captioner judge, else a world
    # sidecar's caption) into every instance caption and the adapter; aa-run writes it into prompts naming
    # <name> <class>, so the adapter learns what the words do not say
    describe: bool = False
    seed: int = 0
    device: str = "auto"
    work_dir: Path | None = None
    resume: bool = False
    cache_dir: Path | None = None
    preview: bool = True

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name or ""):
            raise AAError("name", repr(self.name), "use one word of letters/digits, e.g. --name me (token <me>)")
        if not self.class_word.strip():
            raise AAError("class word", repr(self.class_word), "give the class, e.g. --class-word man")
        if self.output.suffix != ".safetensors":
            raise AAError("output", self.output, "give a .safetensors path")
        if not self.lora_targets or set(self.lora_targets) - set(ATTN2_PROJECTIONS):
            raise AAError("lora-targets", ",".join(self.lora_targets) or "(none)",
                          f"use some of {','.join(ATTN2_PROJECTIONS)}, e.g. --lora-targets to_k,to_v")
        if self.lora_reach not in LORA_REACHES:
            raise AAError("lora-reach", self.lora_reach, f"use one of {', '.join(LORA_REACHES)}")
        if not 1 <= self.rank <= 256:
            raise AAError("rank", self.rank, "use 1 to 256")
        for name in ("stage1_steps", "stage2_steps"):
            if getattr(self, name) < 0:
                raise AAError(name.replace("_", "-"), getattr(self, name), "use ≥ 0 steps")
        if self.stage1_steps + self.stage2_steps == 0:
            raise AAError("steps", 0, "train at least one stage (--stage1-steps / --stage2-steps)")
        if not 0 <= self.bw_alpha <= 1:
            raise AAError("bw-alpha", self.bw_alpha, "use 0 ≤ α ≤ 1 (1 = plain MSE)")
        if not 0 <= self.mask_attention_weight <= 1:
            raise AAError("mask-attention-weight", self.mask_attention_weight, "use 0 ≤ w ≤ 1 (1 = off)")
        if self.prior_weight < 0:
            raise AAError("prior-weight", self.prior_weight, "use ≥ 0 (0 = no prior preservation)")
        for prompt in self.prior_prompts:
            if not prompt.strip() or self.token in prompt:
                raise AAError("prior prompt", repr(prompt), f"give a class prompt without {self.token}, "
                              f"e.g. 'a {self.class_word} on a beach'")
        if self.prior_prompts and self.prior_weight == 0:
            raise AAError("prior prompt", f"{len(self.prior_prompts)} given with --prior-weight 0",
                          "drop --prior-prompt or set --prior-weight > 0")
        if self.identity_norm not in ("frame", "region"):
            raise AAError("identity-norm", self.identity_norm, "use frame or region")
        if self.prior_motions and not self.prior_prompts:
            raise AAError("prior motion", ",".join(self.prior_motions), "give --prior-prompt too: the motions "
                          "drive those prompts' prior videos")
        if not self.prior_reference and not self.prior_prompts and self.prior_weight > 0:
            raise AAError("no-prior-reference", "no --prior-prompt", "give --prior-prompt, or --prior-weight 0")
        from aa_runtime.motions import MOTIONS
        from aa_world.scenes import SCENES

        for kind, names, known in (("prior motion", self.prior_motions, MOTIONS),
                                   ("composite scene", self.composite_scenes, SCENES)):
            bad = [x for x in names if x not in known]
            if bad:
                raise AAError(kind, ",".join(bad), f"use some of {', '.join(known)}")
        if self.image_batch < 1 or self.clip_frames < 1:
            raise AAError("batch/frames", f"{self.image_batch}/{self.clip_frames}", "use ≥ 1")
        if self.optimizer not in ("adamw8bit", "adamw"):
            raise AAError("optimizer", self.optimizer, "use adamw8bit or adamw")
        if self.identifier not in ("pieces", "rare", "pivotal"):
            raise AAError("identifier", self.identifier, "use pieces, rare or pivotal")
        if not 0 <= self.lr <= 1:
            raise AAError("lr", self.lr, "use a learning rate in [0, 1], e.g. 1e-3")
        if self.lr == 0 and self.identifier != "pivotal":
            raise AAError("lr", 0, "nothing would train: --lr 0 keeps the LoRA at zero, so give --identifier pivotal "
                          "(the identifier embedding alone: textual inversion)")
        if self.lora_form not in ("free", "key-locked"):
            raise AAError("lora-form", self.lora_form, "use free or key-locked")
        if self.lora_form == "key-locked" and (self.identifier != "rare" or self.lora_reach != "attn2"):
            raise AAError("lora-form", "key-locked", "the key-locked edit gates on the identifier's own frozen token "
                          "in the spatial cross-attention: use --identifier rare and the attn2 reach")
        if self.lora_form == "key-locked" and self.rank != 1:
            raise AAError("rank", self.rank, "the key-locked edit is rank one: use --rank 1 --alpha 1")
        if not 0 < self.token_lr <= 1:
            raise AAError("token-lr", self.token_lr, "use a learning rate in (0, 1], e.g. 5e-3")

    @property
    def target_pattern(self) -> str:
        """Module regex of the trained projections; also the adapter's `target_modules`."""
        if self.lora_form == "key-locked":
            return adapter_target_pattern("attn2", ("to_k", "to_v"))
        return adapter_target_pattern(self.lora_reach, self.lora_targets)

    @property
    def token(self) -> str:
        return f"<{self.name}>"


PRESETS = {
    # real SD1.5 + AnimateDiff on a 24 GB card (fits 12 GB with everything checkpointed; benchmarks/memory.py)
    "sd15-4090": dict(resolution=512, clip_frames=16, rank=16, alpha=16.0, lr=1e-4, stage1_steps=800,
                      stage2_steps=400, image_batch=2, gradient_checkpointing=True, optimizer="adamw8bit",
                      prior_steps=25),
}


# adapter reach of the recommended recipe: LoRA r16 on every spatial Linear and resnet 3×3 conv (attn2 alone is the
# paper's; on base 9d0ff985 the wide reach is the one that carries the person past what the words draw:
# benchmarks/results/quality_identity_wide.md)
WIDE_REACH = {"lora_reach": "wide", "rank": 16, "alpha": 16.0}

DECOUPLE_KEYS = ("prior_prompts", "prior_motions", "prior_reference", "prior_weight", "identity_norm",
                 "composite_scenes")


def decoupled_settings(class_word: str, *, exclude_scenes=(), exclude_motions=()) -> dict:
    """The settings that keep the learnt person apart from the reference's scene and poses (`--decouple`): the
    person pasted by its masks onto every world scene (but `exclude_scenes`), each captioned with that scene, and
    DreamBooth's diverse class prior — a class video per scene, each moving in another built-in motion (but
    `exclude_motions`) on its own skeletons, none in the reference's poses — at weight 0.3 against the instance term
    averaged over the person's own region."""
    from aa_runtime.motions import MOTIONS
    from aa_world.captions import class_caption
    from aa_world.scenes import SCENES

    scenes = [s for s in SCENES if s not in exclude_scenes]
    motions = [m for m in MOTIONS if m not in exclude_motions]
    if not scenes or not motions:
        raise AAError("decouple", "every scene or motion excluded", "leave some world scenes and motions in")
    return {"prior_prompts": tuple(class_caption(class_word, motions[k % len(motions)], s)
                                   for k, s in enumerate(scenes)),
            "prior_motions": tuple(motions), "prior_reference": False, "prior_weight": 0.3, "identity_norm": "region",
            "composite_scenes": tuple(scenes)}


@dataclass
class IdentityResult:
    adapter: Path | None  # None when something else than the LoRA adapter trained (see train_identity)
    summary: dict
    base: object = None  # the BaseModel trained in place (LoRA layers still attached, unmerged)
    appearance: str | None = None  # the written appearance trained with (describe), for prompts naming the identity


# ------------------------------------------------------------------------------------------- helpers
class LossPart(NamedTuple):
    """One term of a training step: its latents and pose latents (B, C, F, h, w), text (1, T, D), attention regions
    (B·F, 1, h, w) and loss(pred, noise)."""

    latents: torch.Tensor
    pose_latents: torch.Tensor
    text: torch.Tensor
    regions: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Bypass(torch.nn.Module):
    """Stands in for a motion module during stage 1: frames pass through untouched."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def motion_modules_off(unet):
    """Swap every motion module for a pass-through (module swap, reversible; no forward patching)."""
    blocks = [b for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) if hasattr(b, "motion_modules")]
    saved = [list(b.motion_modules) for b in blocks]
    for b in blocks:
        for i in range(len(b.motion_modules)):
            b.motion_modules[i] = _Bypass()
    try:
        yield
    finally:
        for b, mods in zip(blocks, saved):
            for i, m in enumerate(mods):
                b.motion_modules[i] = m


def caption_corpus(class_word: str, n: int = 256, seed: int = 0) -> list[str]:
    """Captions like the ones the identifier will meet: the world's full descriptions and class captions of the
    class in every scene and motion (the key-locked edit's statistics of ordinary text states)."""
    from aa_runtime.motions import MOTIONS
    from aa_world.captions import class_caption, full_caption
    from aa_world.identity import sample_identity
    from aa_world.scenes import SCENES

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        motion, scene = MOTIONS[int(rng.integers(len(MOTIONS)))], SCENES[int(rng.integers(len(SCENES)))]
        out.append(full_caption(sample_identity(int(rng.integers(2**31))), motion, scene) if k % 2 else
                   class_caption(class_word, motion, scene))
    return out


@torch.no_grad()
def key_locked_edit(tokenizer, text_encoder, caption: str, identifier: str, class_word: str,
                    corpus: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perfusion's gated rank-one edit (Tewel et al., SIGGRAPH 2023; the closed form of ROME, Meng et al. 2022):
    the identifier's text state h_i in `caption`, the class word's h_c, and the gate
    d = C⁻¹ h_i / (h_iᵀ C⁻¹ h_i) with C the second moment of the corpus' text states, so that d · h_i = 1 while
    E[(d · h)²] over ordinary text is as small as it can be. A LoRA with A = dᵀ then acts on the identifier and barely
    on any other word. Returns (d (D,), h_i (D,), h_c (D,))."""

    def states(text):
        ids = prompt_ids(tokenizer, text)
        return ids[0], text_encoder(ids.to(text_encoder.device))[0][0].float().cpu()  # (T,), (T, D)

    ids, h = states(caption)
    tid = tokenizer.convert_tokens_to_ids(identifier)
    where = (ids == tid).nonzero().flatten()
    if len(where) == 0:
        raise AAError("caption", repr(caption), f"the key-locked edit needs {identifier} in the caption")
    i = int(where[0])
    cls_ids = tokenizer(class_word, add_special_tokens=False).input_ids
    j = next((k for k in range(i + 1, len(ids)) if ids[k] == cls_ids[-1]), None)
    if j is None:
        raise AAError("caption", repr(caption), f"the key-locked edit needs the class word {class_word!r} after "
                      f"{identifier}")
    # every position the UNet attends to, the padding's end-token states included: a gate measured on the words
    # alone answered the padding with large values and the edited keys and values there broke the samples
    X = torch.cat([states(text)[1] for text in corpus]).double()  # (N·T, D)
    C = X.T @ X / len(X)
    C += 1e-3 * C.trace() / len(C) * torch.eye(len(C), dtype=C.dtype)
    Ci_h = torch.linalg.solve(C, h[i].double())
    d = (Ci_h / (h[i].double() @ Ci_h)).float()
    return d, h[i], h[j]


class IdentifierEmbedding:
    """Pivotal tuning: the identifier token's input embedding as one trainable vector, spliced into the embedding
    table's output by a forward hook where the token occurs (the table and the rest of the text encoder stay frozen).

    `hold_norm()` (after each step) rescales the vector to its starting norm, so only its direction trains. Unheld,
    it grew from 0.16 to 0.78 in 320 steps on aa-tiny, and through the encoder's causal attention it moved every later
    word's hidden state (cosine 0.8 for the scene words): the prompted scene was lost even with the UNet untouched.
    cloneofsimo/lora's pivotal tuning pulls the norm towards CLIP's typical 0.4 for the same reason.
    `close()` writes the vector into the table and removes the hook."""

    def __init__(self, text_encoder, token_id: int):
        self.table = text_encoder.get_input_embeddings()
        self.token_id = token_id
        self.vector = torch.nn.Parameter(self.table.weight[token_id].detach().clone())
        self.norm = float(self.vector.detach().norm())
        self._handle = self.table.register_forward_hook(self._splice)

    @torch.no_grad()
    def hold_norm(self) -> None:
        self.vector.mul_(self.norm / self.vector.norm().clamp_min(1e-12))

    def _splice(self, module, args, output):
        hit = (args[0] == self.token_id)[..., None]  # (B, T, 1)
        return torch.where(hit, self.vector.to(output.dtype), output)

    def close(self) -> torch.Tensor:
        self._handle.remove()
        with torch.no_grad():
            self.table.weight[self.token_id] = self.vector.detach()
        return self.vector.detach().cpu().reshape(1, -1)


def lock_keys(unet, targets: list[str], base, caption: str, cfg: IdentityTrainConfig) -> list[torch.nn.Parameter]:
    """Set the rank-one LoRA of every spatial attn2 K and V to the key-locked edit: A = the gate dᵀ (fixed); K's
    B = W_k (h_c − h_i), so the identifier's key becomes the class word's (fixed); V's B starts at zero and is the
    only thing that trains. Returns V's B matrices."""
    d, h_i, h_c = key_locked_edit(base.tokenizer, base.text_encoder, caption, cfg.token, cfg.class_word,
                                  caption_corpus(cfg.class_word, seed=cfg.seed))
    trained = []
    with torch.no_grad():
        for name in targets:
            layer = unet.get_submodule(name)
            A, B = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight  # (1, D), (out, 1)
            A.copy_(d[None].to(A))
            A.requires_grad_(False)
            if name.endswith("to_k"):
                W = layer.get_base_layer().weight  # (out, D)
                B.copy_((W @ (h_c - h_i).to(W))[:, None] * (cfg.rank / cfg.alpha))
                B.requires_grad_(False)
            else:
                B.zero_()
                trained.append(B)
    return trained


def make_optimizer(params, cfg: IdentityTrainConfig, token_params=()):
    """AdamW (8-bit by default) over the adapter's parameters, plus a group for the identifier embedding (its own
    learning rate, no weight decay)."""
    groups = [{"params": list(params), "lr": cfg.lr, "weight_decay": 1e-2}] if params else []
    if token_params:
        groups.append({"params": list(token_params), "lr": cfg.token_lr, "weight_decay": 0.0})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise MissingDependencyError("bitsandbytes", "gpu", "the 8-bit AdamW optimizer (or pass --optimizer adamw)") from None
    return bnb.optim.AdamW8bit(groups)


def lora_tensors(unet, targets: list[str]) -> tuple[dict, dict]:
    A, B = {}, {}
    for n in targets:
        layer = unet.get_submodule(n)
        A[n] = layer.lora_A[ADAPTER_NAME].weight.detach().float().cpu()
        B[n] = layer.lora_B[ADAPTER_NAME].weight.detach().float().cpu()
    return A, B


@torch.no_grad()
def encode_frames(pipe: AnimatePipeline, frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) → latents (F, 4, h, w)."""
    return pipe.encode_images(frames, 16)[0].permute(1, 0, 2, 3)  # (1, C, F, h, w) → (F, C, h, w)


def class_samples(pipe: AnimatePipeline, data, cfg: IdentityTrainConfig, cache_dir: Path,
                  caption: str | None = None, poses: PoseSequence | None = None) -> np.ndarray:
    """Prior-preservation samples: the base's video of the class caption (or `caption`) in the reference poses (or
    `poses`), generated once and cached by (base, its sampling defaults, caption, poses, seed, steps). uint8
    (F, R, R, 3)."""
    res = data.frames.shape[1]
    caption = caption or data.class_caption
    poses = poses or PoseSequence(data.keypoints, res, res, data.fps)
    what = [pipe.fingerprint, asdict(pipe.defaults), caption, cfg.seed, cfg.prior_steps, res,
            hashlib.sha256(poses.keypoints.tobytes()).hexdigest()]
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    path = cache_dir / f"prior-{key}.npy"
    if path.is_file():
        return np.load(path)
    window = min(16, int(pipe.unet.config.motion_max_seq_length))
    out = pipe(caption, poses, num_frames=poses.frames, fps=poses.fps, height=res, width=res,
               num_inference_steps=cfg.prior_steps, seed=cfg.seed, window=window, overlap=min(4, window - 1),
               pose_fit="frame", retarget_poses=False, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, out.frames)
    return out.frames


def prior_bank(pipe: AnimatePipeline, data, cfg: IdentityTrainConfig, cache_dir: Path, pose_latents: torch.Tensor):
    """The prior videos as (latents (F, 4, h, w), pose latents (F, 4, h, w), class text (1, T, D)) each: the class
    caption in the reference's poses (`prior_reference`), then every --prior-prompt, in the reference's poses or
    (with `prior_motions`, cycled) in a built-in motion with that motion's own skeletons."""
    from aa_runtime.pose_sources import motion_poses

    if cfg.prior_weight == 0:
        return []
    res, n = data.frames.shape[1], len(data.frames)
    bank = []
    if cfg.prior_reference:
        bank.append((data.class_caption, None, pose_latents))
    for k, prompt in enumerate(cfg.prior_prompts):
        if cfg.prior_motions:
            poses = motion_poses(cfg.prior_motions[k % len(cfg.prior_motions)], n, data.fps, res, res)
            bank.append((prompt, poses, encode_frames(pipe, render_skeletons(poses))))
        else:
            bank.append((prompt, None, pose_latents))
    return [(encode_frames(pipe, class_samples(pipe, data, cfg, cache_dir, caption, poses)), pl,
             pipe.encode_prompt(caption)) for caption, poses, pl in bank]


def scene_caption(caption: str, scene: str) -> str:
    """`caption` with its world scene phrase swapped for `scene`'s ('… on a beach' → '… in a snow field'); a caption
    naming no world scene gets the phrase appended."""
    from aa_world.captions import SCENE_PHRASES

    for phrase in sorted(SCENE_PHRASES.values(), key=len, reverse=True):
        if f" {phrase}" in caption:
            return caption.replace(f" {phrase}", f" {SCENE_PHRASES[scene]}", 1)
    return f"{caption} {SCENE_PHRASES[scene]}"


def composite_frames(frames: np.ndarray, masks: np.ndarray, scene: str, seed: int) -> np.ndarray:
    """The person of `frames` uint8 (F, R, R, 3) pasted by `masks` bool (F, R, R) onto a world scene's background."""
    from aa_world.scenes import render_scene

    res = frames.shape[1]
    background = np.clip(render_scene(scene, seed, res, res) + 0.5, 0, 255).astype(np.uint8)  # float → uint8 (R, R, 3)
    return np.where(masks[..., None], frames, background[None])


def save_loss_curve(losses: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    offset = 0
    for stage, values in losses.items():
        if values:
            v = np.asarray(values)
            k = max(1, len(v) // 50)
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(smooth)) + offset, smooth, label=stage)
            offset += len(v)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------- the job, step by step
@dataclass
class Reference:
    """Step 1: the prepared reference video and the caption every instance step trains with."""

    data: "IdentityData"  # noqa: F821  (aa_train.preprocess)
    caption: str
    appearance: str | None  # the written appearance trained with (describe), else None
    resolution: int


@dataclass
class TrainingTensors:
    """Step 2: what the steps read, encoded once. Latents (F, 4, h, w); views: the reference and its composites as
    (latents, caption); texts: caption → (1, T, D) while the identifier is frozen; bank: the prior videos."""

    latents: torch.Tensor
    pose_latents: torch.Tensor
    fore: torch.Tensor  # (F, 1, h, w) person mask at latent size
    views: list[tuple[torch.Tensor, str]]
    texts: dict[str, torch.Tensor]
    bank: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class Trainable(NamedTuple):
    """Step 3's choice of what trains: the target module paths, their parameters, and a name for checkpoints."""

    targets: list[str]
    params: list[torch.nn.Parameter]
    kind: str


def lora_parameters(unet, cfg: IdentityTrainConfig) -> Trainable:
    """The adapter: everything frozen, LoRA of `cfg.rank` attached on the target modules (B = 0: output unchanged)."""
    unet.requires_grad_(False)
    targets = [n for n, _ in unet.named_modules() if re.fullmatch(cfg.target_pattern, n)]
    attach_lora(unet, cfg.rank, cfg.alpha, targets, ADAPTER_NAME)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return Trainable(targets, params, "lora")


def load_identity_base(cfg: IdentityTrainConfig):
    """Step 0: the base on the training device (fp32; autocast handles CUDA), with the identifier's own token when
    `identifier` is rare or pivotal. Returns (base, token id or None)."""
    device, _ = resolve_device(cfg.device, "float32")
    torch.manual_seed(cfg.seed)
    base = load_base(cfg.base, cfg.motion_module, device=device, dtype=torch.float32)
    token_id = (add_identifier_token(base.tokenizer, base.text_encoder, cfg.token)
                if cfg.identifier != "pieces" else None)
    base.text_encoder.requires_grad_(False)  # pivotal tuning trains one spliced vector, never the table
    return base, token_id


def prepare_reference(cfg: IdentityTrainConfig, base, log=print) -> Reference:
    """Step 1: frames, poses, masks and caption of the reference (cached by video hash + settings), the written
    appearance with `describe`, the annotation preview."""
    t0 = time.time()
    res = cfg.resolution or base.defaults.width
    m = base.vae_scale * 2 ** (len(base.unet.config.block_out_channels) - 1)
    if res % m or res < m:
        raise AAError("resolution", res, f"use a multiple of {m} for this base")
    data = prepare_identity(PrepareConfig(video=cfg.video, token=cfg.token, class_word=cfg.class_word, resolution=res,
                                          read=cfg.read, **({"cache_dir": cfg.cache_dir} if cfg.cache_dir else {})))
    appearance = data.source.get("appearance") if cfg.describe else None
    if cfg.describe and not appearance:  # before anything is written
        raise AAError("describe", f"no written appearance for {cfg.video}", "give --description 'in a grey shirt "
                      "and a yellow skirt' (what the person wears), or train without --describe")
    if cfg.preview:
        write_preview(data, cfg.output.with_suffix(".annotations.png"))
    # the identifier stays in the caption only as a token of its own (rare, pivotal; the adapter carries it): as
    # ordinary word pieces it would only move the description's words off what the base learnt
    caption = (describe_identifier(data.caption, cfg.token, cfg.class_word, appearance,
                                   keep_identifier=cfg.identifier != "pieces") if appearance else data.caption)
    log(f"reference: {len(data.frames)} frames at {res}px, caption {caption!r} ({time.time() - t0:.1f}s)")
    return Reference(data, caption, appearance, res)


def encode_training_tensors(cfg: IdentityTrainConfig, pipe: AnimatePipeline, ref: Reference,
                            cache: Path) -> TrainingTensors:
    """Step 2: latents, pose latents, latent masks, composite views, caption text states and the prior bank."""
    data, caption = ref.data, ref.caption
    latents = encode_frames(pipe, data.frames)  # (F, 4, h, w)
    pose_latents = encode_frames(pipe, render_skeletons(PoseSequence(data.keypoints, ref.resolution, ref.resolution,
                                                                     data.fps)))
    fore = latent_masks(torch.from_numpy(data.masks), latents.shape[-2:]).to(pipe.unet.device)  # (F, 1, h, w)
    # the person as filmed, then pasted onto each composite scene with that scene in the caption (decoupling)
    views = [(latents, caption)] + [
        (encode_frames(pipe, composite_frames(data.frames, data.masks, scene, cfg.seed + k)),
         scene_caption(caption, scene)) for k, scene in enumerate(cfg.composite_scenes)]
    # (1, T, D) each; a trained identifier goes through the encoder every step instead
    texts = {} if cfg.identifier == "pivotal" else {c: pipe.encode_prompt(c) for _, c in views}
    bank = prior_bank(pipe, data, cfg, cache, pose_latents)
    return TrainingTensors(latents, pose_latents, fore, views, texts, bank)


class IdentityTrainer:
    """Steps 3 and 4: the trainable parameters and their optimizer, mask-guided attention and gradient checkpointing
    on the UNet (`__init__`); one optimisation step (`step`); both stages with resumable checkpoints (`run`);
    the UNet back to plain inference (`close`)."""

    def __init__(self, cfg: IdentityTrainConfig, base, ref: Reference, tensors: TrainingTensors,
                 trainable: Trainable, token_id: int | None, work: Path):
        from diffusers import DDPMScheduler

        self.cfg, self.base, self.ref, self.t = cfg, base, ref, tensors
        self.unet, self.device = base.unet, base.unet.device
        self.trainable, self.token_id = trainable, token_id
        params = trainable.params
        if cfg.lr == 0:  # textual inversion: the LoRA stays at zero (B = 0) and gets no gradient
            for p in params:
                p.requires_grad_(False)
            params = []
        if cfg.lora_form == "key-locked":
            params = lock_keys(self.unet, trainable.targets, base, ref.caption, cfg)
        self.pivot = IdentifierEmbedding(base.text_encoder, token_id) if cfg.identifier == "pivotal" else None
        token_params = [self.pivot.vector] if self.pivot else []
        self.opt = make_optimizer(params, cfg, token_params)
        self.params = params + token_params  # what is clipped and checkpointed
        self.regions = set_mask_guided_attention(self.unet, cfg.mask_attention_weight)
        ckpt_on = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else self.device.type == "cuda"
        self.restore_ckpt = None
        if ckpt_on:
            from .checkpointing import enable_full_gradient_checkpointing

            self.restore_ckpt = enable_full_gradient_checkpointing(self.unet)
        self.use_prior = bool(tensors.bank)
        self.separate_prior = self.use_prior and (cfg.separate_prior if cfg.separate_prior is not None else ckpt_on)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                         else torch.autocast("cpu", enabled=False))
        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler_config)
        self.losses: dict[str, list[float]] = {"stage1": [], "stage2": []}
        self.done = {"stage1": 0, "stage2": 0}
        self.ckpt = work / "checkpoint.pt"
        # what shapes the trained tensors and their optimizer state: a checkpoint from other settings cannot continue
        self.shape_key = {"base": base.fingerprint, "rank": cfg.rank, "lora_targets": list(cfg.lora_targets),
                          "lora_reach": cfg.lora_reach, "lora_form": cfg.lora_form, "trainable": trainable.kind,
                          "optimizer": cfg.optimizer, "identifier": cfg.identifier}
        self.unet.train()

    # ----------------------------------------------------------------------------- checkpoints
    def resume(self, log=print) -> None:
        if not (self.cfg.resume and self.ckpt.is_file()):
            return
        state = torch.load(self.ckpt, map_location="cpu", weights_only=False)
        if state.get("shape_key", self.shape_key) != self.shape_key or len(state["params"]) != len(self.params):
            raise AAError("resume", f"{self.ckpt} was written with {state.get('shape_key')}, this job is "
                          f"{self.shape_key}", "resume with the same base, rank, --lora-targets and optimizer, "
                          "or drop --resume")
        with torch.no_grad():
            for p, v in zip(self.params, state["params"]):
                p.copy_(v)
        self.opt.load_state_dict(state["opt"])
        self.losses, self.done = state["losses"], state["steps"]
        log(f"resumed: stage1 {self.done['stage1']}, stage2 {self.done['stage2']}")

    def save_checkpoint(self) -> None:
        with atomic_path(self.ckpt) as tmp:
            torch.save({"params": [p.detach().cpu() for p in self.params], "opt": self.opt.state_dict(),
                        "losses": self.losses, "steps": self.done, "shape_key": self.shape_key}, tmp)

    # ----------------------------------------------------------------------------- one step
    def instance_text(self, caption: str) -> torch.Tensor:
        """The caption's text states (1, T, D): cached while the identifier is frozen, else through the encoder."""
        if self.pivot is None:
            return self.t.texts[caption]
        te = self.base.text_encoder
        return te(prompt_ids(self.base.tokenizer, caption).to(te.device))[0]

    def loss_parts(self, stage: str, rng: np.random.Generator) -> list[LossPart]:
        """The step's terms: the instance (background-weakening loss) and one prior video, for a batch of frames
        (stage 1: (B, C, 1, h, w)) or one clip window (stage 2: (1, C, F, h, w))."""
        cfg, t, n = self.cfg, self.t, len(self.t.latents)
        if stage == "stage1":  # frames as independent images
            idx = rng.integers(0, n, cfg.image_batch)
            pick = lambda x: x[idx][:, :, None]  # noqa: E731  (F, C, h, w) → (B, C, 1, h, w)
        else:  # one clip window
            f = min(cfg.clip_frames, n)
            s = int(rng.integers(0, n - f + 1))
            idx = np.arange(s, s + f)
            pick = lambda x: x[idx].permute(1, 0, 2, 3)[None]  # noqa: E731  (F, C, h, w) → (1, C, F, h, w)
        # the reference or one of its composites (no draw without composites: the default stream is unchanged)
        view_latents, view_caption = t.views[int(rng.integers(len(t.views)))] if len(t.views) > 1 else t.views[0]
        z, p, fm = pick(view_latents), pick(t.pose_latents), pick(t.fore)
        fm_frames = fm.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B·F, 1, h, w), the UNet's frame order
        parts = [LossPart(z, p, self.instance_text(view_caption), fm_frames, lambda pr, nz: background_weakening_loss(
            pr, nz, fm.to(self.device), cfg.bw_alpha, cfg.identity_norm))]
        if self.use_prior:
            # one prior video per step, drawn from the bank (no draw with one video, so the default job's random
            # stream is unchanged), with its own pose latents; one region (all ones): plain attention
            j = int(rng.integers(len(t.bank))) if len(t.bank) > 1 else 0
            prior_latents, prior_pose_latents, class_text = t.bank[j]
            parts.append(LossPart(pick(prior_latents), pick(prior_pose_latents), class_text,
                                  torch.ones_like(fm_frames),
                                  lambda pr, nz: cfg.prior_weight * prior_preservation_loss(pr, nz)))
        return parts

    def step(self, stage: str, rng: np.random.Generator) -> float:
        """One optimisation step; returns the summed loss. One batched forward over the parts, or (separate_prior)
        one forward + backward per part: same gradient, half the activation peak. Noise and timesteps are drawn once
        for all parts, so splitting into passes changes nothing but the float summation order."""
        parts = self.loss_parts(stage, rng)
        b, frames = parts[0].latents.shape[0], parts[0].latents.shape[2]
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        shape = parts[0].latents.shape[1:]
        # clips (stage 2) get the base's sampling frame correlation (its motion modules' training ρ unless the
        # bundle was given another with --sample-noise-correlation), the noise its videos are sampled from
        rho = self.base.defaults.noise_correlation if frames > 1 else 0.0
        all_noise = frame_correlated_noise((len(parts) * b, *shape), gen, rho).to(self.device)  # (P·B, C, F, h, w)
        all_t = torch.from_numpy(rng.integers(0, self.noise_scheduler.config.num_train_timesteps,
                                              len(parts) * b)).to(self.device)  # (P·B,)
        groups = [[k] for k in range(len(parts))] if self.separate_prior else [list(range(len(parts)))]
        total = 0.0
        for ks in groups:
            group = [parts[k] for k in ks]
            rows = slice(ks[0] * b, (ks[-1] + 1) * b)  # the group's parts are consecutive
            zz = torch.cat([g.latents for g in group]).to(self.device)
            pp = torch.cat([g.pose_latents for g in group]).to(self.device)
            emb = torch.cat([g.text.repeat(b * frames, 1, 1) for g in group]).to(self.device)
            noise, t = all_noise[rows], all_t[rows]
            self.regions.masks = torch.cat([g.regions for g in group]).to(self.device)
            with self.autocast:
                pred = self.unet(torch.cat([self.noise_scheduler.add_noise(zz, noise, t), pp], 1), t,
                                 encoder_hidden_states=emb).sample
            loss = sum(g.loss(pred[i * b:(i + 1) * b], noise[i * b:(i + 1) * b]) for i, g in enumerate(group))
            if loss.requires_grad:  # a prior pass has nothing to train when only the identifier embedding trains
                loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.pivot is not None:
            self.pivot.hold_norm()
        return total

    # ----------------------------------------------------------------------------- both stages
    def run(self, log=print, progress=None) -> float:
        """Stage 1 (images, motion modules off), then stage 2 (clips, motion modules on), from where a resumed
        checkpoint left off; returns the training seconds. `progress(stage, step, total, loss)` after every step."""
        from tqdm.auto import tqdm

        cfg, t0 = self.cfg, time.time()
        for stage, total in (("stage1", cfg.stage1_steps), ("stage2", cfg.stage2_steps)):
            if self.done[stage] >= total:
                continue
            bar = tqdm(range(self.done[stage], total), initial=self.done[stage], total=total, desc=stage,
                       leave=False, disable=None)
            with motion_modules_off(self.unet) if stage == "stage1" else nullcontext():
                for step in bar:
                    rng = np.random.default_rng([cfg.seed, 1 if stage == "stage1" else 2, step])
                    self.losses[stage].append(self.step(stage, rng))
                    self.done[stage] = step + 1
                    bar.set_postfix(loss=f"{np.mean(self.losses[stage][-20:]):.4f}")
                    if progress is not None:
                        progress(stage, step + 1, total, self.losses[stage][-1])
                    if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                        self.save_checkpoint()
            tail = np.mean(self.losses[stage][-50:]) if self.losses[stage] else float("nan")
            log(f"{stage}: {total} steps, loss {tail:.4f}")
        return time.time() - t0

    def close(self) -> torch.Tensor | None:
        """The UNet back to plain inference attention in eval mode; the trained identifier into the embedding table.
        Returns the identifier's embedding (1, D) when it has a token of its own, else None."""
        if self.restore_ckpt is not None:  # undo first: the checkpoint wrappers rename the motion modules' attention
            self.restore_ckpt()
        reset_attention(self.unet, self.regions)
        self.unet.eval()
        if self.pivot is not None:
            self.pivot.close()  # the model in memory now reads the identifier as trained
        if self.token_id is None:
            return None
        return self.base.text_encoder.get_input_embeddings().weight[self.token_id].detach().cpu().reshape(1, -1)


def training_summary(cfg: IdentityTrainConfig, trainer: IdentityTrainer, ref: Reference, train_s: float) -> dict:
    losses = trainer.losses
    return {"stages": {"stage1": {"steps": cfg.stage1_steps, "final_loss": _tail(losses["stage1"])},
                       "stage2": {"steps": cfg.stage2_steps, "final_loss": _tail(losses["stage2"])}},
            "train_seconds": round(train_s, 1), "frames": len(ref.data.frames), "resolution": ref.resolution,
            "caption": ref.caption, "trainable": trainer.trainable.kind,
            "settings": training_settings(cfg),
            "preprocess": {k: v for k, v in ref.data.source.items()
                           if k in ("pose_backend", "mask_backend", "captioner")}}


def training_settings(cfg: IdentityTrainConfig) -> dict:
    """The settings an adapter's metadata records (what it was trained with; where its files went aside)."""
    return _plain({k: v for k, v in asdict(cfg).items() if k not in ("output", "work_dir", "cache_dir")})


def _plain(value):
    """`value` with every Path as its string, for the adapter's JSON metadata."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def write_adapter(cfg: IdentityTrainConfig, trainer: IdentityTrainer, ref: Reference, summary: dict,
                  embedding: torch.Tensor | None) -> Path:
    """Step 5: the LoRA factors (and the identifier's embedding) with their metadata, and the loss curve."""
    A, B = lora_tensors(trainer.unet, trainer.trainable.targets)
    meta = adapter_metadata(identifier=cfg.token, class_word=cfg.class_word, rank=cfg.rank, alpha=cfg.alpha,
                            target_modules=cfg.target_pattern, base_fingerprint=trainer.base.fingerprint,
                            bone_lengths=ref.data.bone_lengths, training=summary, appearance=ref.appearance)
    path = save_adapter(cfg.output, A, B, meta, embedding=embedding)
    save_loss_curve(trainer.losses, cfg.output.with_suffix(".loss.png"))
    return path


# ------------------------------------------------------------------------------------------- entry point
def train_identity(cfg: IdentityTrainConfig, log=print, *,
                   trainable: Callable[[torch.nn.Module, IdentityTrainConfig], Trainable] = lora_parameters,
                   reference: Callable[[Reference], Reference] | None = None,
                   progress: Callable[[str, int, int, float], None] | None = None) -> IdentityResult:
    """Prepare the reference video, train both stages, write the adapter (+ loss curve and preview).
    `progress(stage, step, total, loss)` is called after every training step (a progress bar, a live plot).
    `trainable` picks what trains (default: the LoRA adapter; anything else writes no adapter file and leaves the
    trained model in `result.base`), `reference` may change the prepared reference (benchmark ablations)."""
    base, token_id = load_identity_base(cfg)                                   # 0. base (+ the identifier's token)
    ref = prepare_reference(cfg, base, log)                                    # 1. frames, poses, masks, caption
    if reference is not None:
        ref = reference(ref)
    work = Path(cfg.work_dir) if cfg.work_dir else cfg.output.with_suffix(".work")
    work.mkdir(parents=True, exist_ok=True)  # only now: a video that fails step 1 leaves no folder behind
    t0 = time.time()
    tensors = encode_training_tensors(cfg, AnimatePipeline.from_base(base), ref, Path(cfg.cache_dir or work))
    log(f"caches ready ({time.time() - t0:.1f}s)")                             # 2. latents, texts, prior videos
    trainer = IdentityTrainer(cfg, base, ref, tensors, trainable(base.unet, cfg), token_id, work)  # 3. params
    trainer.resume(log)
    train_s = trainer.run(log, progress)                                       # 4. stage 1, stage 2
    embedding = trainer.close()
    summary = training_summary(cfg, trainer, ref, train_s)
    if trainer.trainable.kind != "lora":
        return IdentityResult(None, summary, base, ref.appearance)
    path = write_adapter(cfg, trainer, ref, summary, embedding)               # 5. the adapter file
    if trainer.ckpt.is_file():
        trainer.ckpt.unlink()
    if cfg.work_dir is None and not any(work.iterdir()):
        work.rmdir()  # the default OUT.work folder only held the checkpoint
    return IdentityResult(path, summary, base, ref.appearance)


def _tail(values: list[float]) -> float | None:
    return round(float(np.mean(values[-50:])), 5) if values else None

