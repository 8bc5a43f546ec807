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
