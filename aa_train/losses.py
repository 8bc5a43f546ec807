"""Identity-training losses (DESIGN §7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def background_weakening_loss(pred: torch.Tensor, target: torch.Tensor, fore: torch.Tensor,
                              alpha: float = 0.001) -> torch.Tensor:
    """Paper eq. 1: mean(M_fore · (ε − ε̂)²) + mean(α · M_back · (ε − ε̂)²), M_back = 1 − M_fore.

    pred, target: (B, C, F, h, w); fore: person mask at latent resolution, broadcastable (B, 1, F, h, w) in [0, 1].
    α = 1 gives plain MSE; α = 0 counts the foreground only."""
    err = (pred.float() - target.float()).pow(2)
    fore = fore.to(err.dtype).expand_as(err)
    return (fore * err).mean() + (alpha * (1 - fore) * err).mean()


def prior_preservation_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DreamBooth's class-prior term: plain MSE on the class samples."""
    return F.mse_loss(pred.float(), target.float())


def latent_masks(masks: torch.Tensor, size: tuple[int, int], pool: str = "avg") -> torch.Tensor:
    """bool/float (N, H, W) pixel masks → float (N, 1, h, w) in [0, 1]: the person's share of each latent pixel's
    patch (`avg`), or 1 wherever the patch holds any person pixel (`max`)."""
    down = {"avg": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}[pool]
    return down(masks.float()[:, None], size)
