"""Stable Diffusion 1.5 + AnimateDiff (v1-5-2) shaped UNetMotionModel with random weights, for benchmarks and
memory estimates without downloading anything (same config as `load_sd15`, conv_in widened to 8 channels)."""
from __future__ import annotations

import torch

# runwayml/stable-diffusion-v1-5 unet/config.json + guoyww/animatediff-motion-adapter-v1-5-2 (mid block, 32 frames).
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockMotion",) * 3 + ("DownBlockMotion",),
    up_block_types=("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32, cross_attention_dim=768,
    num_attention_heads=8, motion_max_seq_length=32, motion_num_attention_heads=8, use_motion_mid_block=True,
)
SD15_TEXT = (77, 768)  # CLIP ViT-L/14 tokens × hidden size
SD15_VAE_SCALE = 8


def build_sd15_unet(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A random SD1.5-shaped pose-conditioned UNetMotionModel (1.31 B parameters; ~14 s and 5.3 GB in fp32 on a
    CPU), frozen and in eval mode. `device="meta"` builds it without memory, for tracing and estimates."""
    from diffusers import UNetMotionModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNetMotionModel(**SD15_UNET_CONFIG)
    return unet.to(dtype=dtype).eval().requires_grad_(False)


def write_random_sd15_folder(root, tokenizer_dir, seed: int = 0, dtype: torch.dtype = torch.float16):
    """An SD1.5-layout diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) plus an AnimateDiff
    v1-5-2-shaped motion adapter folder, all random and in SD1.5's shapes (the text encoder's vocabulary is the
    given tokenizer's): what `aa-train base --init ROOT --motion-module ROOT/motion` trains in a GPU check when no
    real weights may be downloaded. Returns (root, motion folder)."""
    import json
    import shutil
    from pathlib import Path

    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from aa_runtime.bundle import DEFAULT_SCHEDULER
    from aa_runtime.tokenizer import load_clip_tokenizer

    root = Path(root)
    torch.manual_seed(seed)
    tok = load_clip_tokenizer(tokenizer_dir)
    shutil.copytree(tokenizer_dir, root / "tokenizer", dirs_exist_ok=True)
    UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
    ).to(dtype).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                  sample_size=512).to(dtype).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, max_position_embeddings=77, eos_token_id=tok.eos_token_id,
                                 bos_token_id=tok.bos_token_id)).to(dtype).save_pretrained(root / "text_encoder")
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(DEFAULT_SCHEDULER))
    MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_num_attention_heads=8,
                  motion_max_seq_length=32, use_motion_mid_block=True).to(dtype).save_pretrained(root / "motion")
    return root, root / "motion"
