"""A small pose-conditioned base built from scratch (aa-tiny's shape by default): random UNet, VAE and text encoder
and a tokenizer trained on a caption corpus — for tests, and as the start of `aa-train base`."""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .bundle import BUNDLE_FORMAT, DEFAULT_SCHEDULER, POSE_CHANNELS, BaseModel, SampleDefaults, fingerprint
from .tokenizer import load_clip_tokenizer, train_clip_tokenizer


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of a small bundle built from scratch (aa-tiny's shape by default)."""

    sample_size: int = 64           # pixel frames
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_layers: int = 2
    unet_heads: int = 4
    motion_heads: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks → f = 4
    latent_channels: int = 4
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_tokens: int = 32
    vocab_size: int = 2048

    def __post_init__(self):
        if len(self.unet_channels) < 2 or any(c % 8 for c in self.unet_channels + self.vae_channels):
            raise ValueError(f"channels must be ≥ 2 blocks of multiples of 8, got {self.unet_channels}/{self.vae_channels}")
        f = 2 ** (len(self.vae_channels) - 1)
        if self.sample_size % (f * 2 ** (len(self.unet_channels) - 1)):
            raise ValueError(f"sample_size {self.sample_size} must be divisible by the total down-sampling")


def build_unet(cfg: TinyConfig):
    """A random pose-conditioned UNetMotionModel (in_channels 8)."""
    from diffusers import UNetMotionModel

    n = len(cfg.unet_channels)
    return UNetMotionModel(
        sample_size=cfg.sample_size // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=cfg.latent_channels + POSE_CHANNELS, out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlockMotion",) * (n - 1) + ("DownBlockMotion",),
        up_block_types=("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * (n - 1),
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers,
        norm_num_groups=8, cross_attention_dim=cfg.text_dim, num_attention_heads=cfg.unet_heads,
        motion_num_attention_heads=cfg.motion_heads, motion_max_seq_length=32, use_motion_mid_block=True,
    )


def build_vae(cfg: TinyConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=8,
        sample_size=cfg.sample_size, scaling_factor=1.0,
    )


def build_text_encoder(cfg: TinyConfig, vocab_size: int, eos_token_id: int, bos_token_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_dim, intermediate_size=cfg.text_dim * 4,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_tokens, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
        pad_token_id=eos_token_id,
    ))


def build_random_base(cfg: TinyConfig = TinyConfig(), captions: list[str] | None = None, seed: int = 0,
                      tokenizer_dir: Path | None = None) -> BaseModel:
    """A complete base with random weights (for tests, and as the start of base training)."""
    torch.manual_seed(seed)
    tok_dir, tok_files = (Path(tokenizer_dir), None) if tokenizer_dir else (None, {})
    if tok_dir is None:  # trained in a temporary folder, removed at once: save_bundle writes its files from memory
        with tempfile.TemporaryDirectory(prefix="aa-tok-") as tmp:
            train_clip_tokenizer(captions or _DEFAULT_CORPUS, tmp, cfg.vocab_size, cfg.max_tokens)
            tokenizer = load_clip_tokenizer(tmp)
            tok_files = {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}
    else:
        if not (tok_dir / "vocab.json").is_file():
            train_clip_tokenizer(captions or _DEFAULT_CORPUS, tok_dir, cfg.vocab_size, cfg.max_tokens)
        tokenizer = load_clip_tokenizer(tok_dir)
    unet = build_unet(cfg)
    vae = build_vae(cfg)
    text_encoder = build_text_encoder(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    fp = fingerprint(unet, vae, text_encoder)
    defaults = SampleDefaults(width=cfg.sample_size, height=cfg.sample_size)
    manifest = {"format": BUNDLE_FORMAT, "name": "random", "fingerprint": fp,
                "provenance": {"weights": "random", "seed": seed, "config": asdict(cfg)}}
    base = BaseModel(unet, vae, text_encoder, tokenizer, dict(DEFAULT_SCHEDULER), fp, defaults, "random", manifest)
    base._tokenizer_dir = tok_dir  # type: ignore[attr-defined]
    base._tokenizer_files = tok_files  # type: ignore[attr-defined]  # file name → bytes, without a tokenizer_dir
    return base


_DEFAULT_CORPUS = [
    "a man in a red striped shirt and blue trousers waving on a beach holding a yellow balloon",
    "a woman in a green shirt and black skirt dancing in a snow field with a dog",
    "a person walking in a forest", "a man running in a city street at night under the stars",
    "a woman jumping in a desert", "a man turning around in an indoor room", "a woman squatting on a stage",
    "a man waving in a park with a ball", "a woman holding an umbrella", "orange purple pink white grey brown",
] * 20
