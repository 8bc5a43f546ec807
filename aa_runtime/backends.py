"""How the pipeline evaluates the UNet: one small interface, several backends (eager torch by default)."""
from __future__ import annotations

from typing import Protocol

import torch


class UNetBackend(Protocol):
    """Predicts noise for a window: sample float (B, 8, F, h, w), timestep (), text (B·F, T, D) → (B, 4, F, h, w)."""

    name: str

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """Eager PyTorch: calls the diffusers UNetMotionModel directly."""

    name = "torch"

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
