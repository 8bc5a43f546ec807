"""Stable Diffusion 1.5 + an AnimateDiff motion module → the pose-conditioned base: the motion UNet built from the
two, with `conv_in` widened to 8 channels whose pose half starts at zero. Reads local files only."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .bundle import (BUNDLE_FORMAT, POSE_CHANNELS, BaseModel, SampleDefaults, fingerprint, load_diffusers_model,
                     load_state_strict, load_text_encoder, load_tokenizer, load_weights, read_scheduler_config)
from .errors import AAError


def widen_conv_in(unet: torch.nn.Module, in_channels: int = 4 + POSE_CHANNELS) -> torch.nn.Module:
    """Widen `conv_in` to `in_channels`; the new input channels get zero weights, so the widened UNet
    equals the original whenever the extra (pose) channels are ignored."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise AAError("conv_in channels", old.in_channels, f"cannot narrow to {in_channels}")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def load_motion_adapter(path: str | os.PathLike):
    """An AnimateDiff motion adapter: a diffusers MotionAdapter folder, or one weights file in diffusers or
    original AnimateDiff naming (its config inferred from the tensor shapes)."""
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    path = Path(path)
    fix = "download an AnimateDiff motion module (e.g. guoyww/animatediff-motion-adapter-v1-5-2) and pass its path"
    if path.is_dir():
        return load_diffusers_model(MotionAdapter, path, "motion module", fix)
    state = load_weights(path, "motion module", fix)
    if any(".temporal_transformer." in k for k in state):
        state = convert_animatediff_checkpoint_to_diffusers(state)
    keys = [k for k in state if "motion_modules" in k]
    if not keys:
        raise AAError("motion module", f"{path} holds no motion_modules tensors", fix)
    n_down = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("down_blocks."))
    channels = tuple(int(state[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[0]) for i in range(n_down))
    layers = 1 + max(int(k.split(".")[3]) for k in keys if k.startswith("down_blocks.0.motion_modules."))
    pe = [v for k, v in state.items() if k.endswith("pos_embed.pe")]
    groups = state["down_blocks.0.motion_modules.0.norm.weight"].shape[0]
    adapter = MotionAdapter(
        block_out_channels=channels, motion_layers_per_block=layers,
        motion_num_attention_heads=8, motion_norm_num_groups=min(32, groups),
        motion_max_seq_length=int(pe[0].shape[1]) if pe else 32,
        use_motion_mid_block=any(k.startswith("mid_block.") for k in keys))
    load_state_strict(adapter, state, "motion module", path)
    return adapter


def load_sd15(folder: Path, motion_module: str | os.PathLike) -> BaseModel:
    """SD1.5 diffusers folder + AnimateDiff motion module → pose-conditioned UNetMotionModel (conv_in widened)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNetMotionModel

    fix = "the Stable Diffusion folder needs unet/, vae/, text_encoder/, tokenizer/, scheduler/ (diffusers layout)"
    unet2d = load_diffusers_model(UNet2DConditionModel, folder / "unet", "SD1.5 UNet", fix)
    adapter = load_motion_adapter(motion_module)
    try:
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    except ValueError as e:
        raise AAError("motion module", f"{motion_module} does not fit the UNet ({e})",
                      "use a motion module made for SD1.5 (AnimateDiff v1/v2/v3)") from None
    widen_conv_in(unet)
    vae = load_diffusers_model(AutoencoderKL, folder / "vae", "SD1.5 VAE", fix)
    text_encoder = load_text_encoder(folder / "text_encoder", fix)
    tokenizer = load_tokenizer(folder / "tokenizer", fix)
    fp = fingerprint(unet, vae, text_encoder)
    defaults = SampleDefaults(width=512, height=512, frames=16, fps=8.0, steps=25, guidance=7.5)
    manifest = {"format": BUNDLE_FORMAT, "name": folder.name, "fingerprint": fp,
                "provenance": {"sd15": str(folder), "motion_module": str(motion_module)}}
    scheduler = read_scheduler_config(folder / "scheduler", defaults.steps)
    return BaseModel(unet, vae, text_encoder, tokenizer, scheduler, fp, defaults, str(folder), manifest)
