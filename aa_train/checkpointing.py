"""Gradient checkpointing of the whole UNetMotionModel, motion modules included.

diffusers' `enable_gradient_checkpointing()` (0.42) checkpoints the resnets, the spatial transformers and the mid
block's motion module, but not the motion modules of the down and up blocks: their activations (temporal
attention over F frames at every pixel) then dominate the training peak.
`enable_full_gradient_checkpointing` swaps each of those motion modules for a small wrapper module whose forward
runs the original under `torch.utils.checkpoint` (non-reentrant), and returns a function that swaps the
originals back, so parameter names and state_dict keys are unchanged afterwards. No `forward` is patched.
While it is on, names inside the wrapped motion modules read `...motion_modules.0.inner...`: save full state
dicts after `restore()` (LoRA on the spatial attn2 layers, SPATIAL_ATTN2, keeps its names either way).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

# Blocks whose forward (diffusers 0.42) already runs its motion modules through `_gradient_checkpointing_func`
# when `gradient_checkpointing` is on; wrapping them again would only add a second recomputation.
# tests/test_checkpointing.py checks that every motion module is recomputed exactly once.
_CHECKPOINTED_BY_DIFFUSERS = ("UNetMidBlockCrossAttnMotion",)


class CheckpointedModule(torch.nn.Module):
    """Runs `inner` under non-reentrant activation checkpointing while gradients are on (Chen et al. 2016)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(self.inner, *args, use_reentrant=False, **kwargs)
        return self.inner(*args, **kwargs)


def motion_module_slots(unet: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList, int]]:
    """(block name, its `motion_modules` list, index) for every motion module of the down, mid and up blocks."""
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(("mid_block", unet.mid_block))
    blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    return [(name, block.motion_modules, j) for name, block in blocks
            if hasattr(block, "motion_modules") for j in range(len(block.motion_modules))]


def enable_full_gradient_checkpointing(unet: torch.nn.Module) -> Callable[[], None]:
    """Turn on diffusers' gradient checkpointing and checkpoint every motion module it leaves out.
    Returns `restore()`, which puts the original modules back and the checkpointing switches as they were."""
    if any(isinstance(m, CheckpointedModule) for m in unet.modules()):
        raise RuntimeError("full gradient checkpointing is already enabled on this UNet; call its restore() first")
    was_on = {name: m.gradient_checkpointing for name, m in unet.named_modules()
              if hasattr(m, "gradient_checkpointing")}
    unet.enable_gradient_checkpointing()
    swapped: list[tuple[torch.nn.ModuleList, int, torch.nn.Module]] = []
    for name, modules, j in motion_module_slots(unet):
        block = unet.get_submodule(name)
        if type(block).__name__ in _CHECKPOINTED_BY_DIFFUSERS:
            continue
        swapped.append((modules, j, modules[j]))
        modules[j] = CheckpointedModule(modules[j])

    def restore() -> None:
        for modules, j, original in swapped:
            modules[j] = original
        swapped.clear()
        for name, m in unet.named_modules():
            if name in was_on:
                m.gradient_checkpointing = was_on[name]

    return restore
