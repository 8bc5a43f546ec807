"""Identity-training losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def background_weakening_loss(pred: torch.Tensor, target: torch.Tensor, fore: torch.Tensor,
                              alpha: float = 0.001, norm: str = "frame") -> torch.Tensor:
    """Paper eq. 1: mean(M_fore · (ε − ε̂)²) + mean(α · M_back · (ε − ε̂)²), M_back = 1 − M_fore.

    pred, target: (B, C, F, h, w); fore: person mask at latent resolution, broadcastable (B, 1, F, h, w) in [0, 1].
    α = 1 gives plain MSE; α = 0 counts the foreground only.
    norm="frame" takes both means over the whole frame, as eq. 1 is written: a person covering ~10 % of the frame
    then weighs ~0.1 against a prior term averaged over every pixel. norm="region" reads the means over each region
    (Σ M_fore·e² / Σ M_fore + α Σ M_back·e² / Σ M_back): the identity term is the person's own mean error whatever
    their size, and α stays the background's relative weight."""
    err = (pred.float() - target.float()).pow(2)
    fore = fore.to(err.dtype).expand_as(err)
    if norm == "region":
        back = 1 - fore
        return (fore * err).sum() / fore.sum().clamp_min(1e-6) + alpha * (back * err).sum() / back.sum().clamp_min(1e-6)
    if norm != "frame":
        raise ValueError(f"norm={norm!r}: use 'frame' or 'region'")
    return (fore * err).mean() + (alpha * (1 - fore) * err).mean()


def prior_preservation_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DreamBooth's class-prior term: plain MSE on the class samples."""
    return F.mse_loss(pred.float(), target.float())


def latent_masks(masks: torch.Tensor, size: tuple[int, int], pool: str = "avg") -> torch.Tensor:
    """bool/float (N, H, W) pixel masks → float (N, 1, h, w) in [0, 1]: the person's share of each latent pixel's
    patch (`avg`), or 1 wherever the patch holds any person pixel (`max`)."""
    down = {"avg": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}[pool]
    return down(masks.float()[:, None], size)
