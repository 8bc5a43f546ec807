"""Mask-guided spatial self-attention (the paper's mask-guided attention): attention weights between a query and a
key in different regions (person vs background) are multiplied by w < 1, so each region attends mostly to itself.

Implemented as a diffusers attention processor: a log-w bias on the logits through SDPA's `attn_mask`.
Training-time only. The trainer sets the per-sample masks on a shared `RegionMasks` before each forward.
The explicit cross-attention (`cross_attention_weights`, `project_out`) is shared with the grounding losses."""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

# spatial self-attention of the transformer blocks; not the motion modules' temporal attention
SPATIAL_ATTN1 = re.compile(r".*attentions\.\d+\.transformer_blocks\.\d+\.attn1\.processor$")
SPATIAL_ATTN2 = re.compile(r".*attentions\.\d+\.transformer_blocks\.\d+\.attn2\.processor$")


class RegionMasks:
    """Person masks of the current batch at latent resolution, float (N, 1, h, w), N = batch × frames;
    None = plain attention."""

    def __init__(self, previous: dict | None = None):
        self.masks: torch.Tensor | None = None
        self.previous = previous or {}  # the processors replaced, restored by `reset_attention`

    def bias(self, tokens: int, weight: float, dtype, device) -> torch.Tensor | None:
        """Additive logit bias (N, 1, L, L): 0 within a region, log(weight) across regions."""
        if self.masks is None or weight >= 1.0:
            return None
        n, _, h, w = self.masks.shape
        s = round(math.sqrt(h * w / tokens))  # the down-sampling of this block
        if (h // s) * (w // s) != tokens:
            raise ValueError(f"cannot map {tokens} tokens onto a {h}x{w} mask")
        region = F.adaptive_avg_pool2d(self.masks, (h // s, w // s)).flatten(1) > 0.5  # (N, L) person?
        same = region[:, :, None] == region[:, None, :]  # (N, L, L)
        cross = math.log(weight) if weight > 0 else float("-inf")
        return torch.where(same, 0.0, cross).to(dtype=dtype, device=device)[:, None]


class MaskGuidedAttnProcessor:
    """Self-attention with a region bias; identical to diffusers' SDPA processor when no masks are set or w = 1."""

    def __init__(self, regions: RegionMasks, weight: float):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"mask attention weight {weight}: use 0 ≤ w ≤ 1 (1 = plain attention)")
        self.regions, self.weight = regions, weight

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if encoder_hidden_states is not None or hidden_states.ndim != 3:
            raise ValueError("MaskGuidedAttnProcessor handles spatial self-attention on (N, L, C) tokens only")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        n, tokens, _ = hidden_states.shape
        q, k, v = (_split_heads(x, attn.heads)
                   for x in (attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)))
        bias = self.regions.bias(tokens, self.weight, q.dtype, q.device)
        if bias is not None and bias.shape[0] != n:
            raise ValueError(f"region masks for {bias.shape[0]} samples, attention batch is {n}")
        return project_out(attn, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), residual)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, heads·d) → (N, heads, L, d)."""
    return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)


def project_out(attn, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Attention output (N, heads, L, d) → the processor's result: heads merged, to_out, residual, rescale."""
    n, heads, _, head = out.shape
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(n, -1, heads * head)))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def set_mask_guided_attention(unet, weight: float) -> RegionMasks:
    """Put a MaskGuidedAttnProcessor on every spatial self-attention; returns the shared masks holder."""
    previous = dict(unet.attn_processors)
    regions = RegionMasks(previous)
    unet.set_attn_processor({name: (MaskGuidedAttnProcessor(regions, weight) if SPATIAL_ATTN1.match(name) else proc)
                             for name, proc in previous.items()})
    return regions


def reset_attention(unet, regions: RegionMasks) -> None:
    """Put back the processors that `set_mask_guided_attention` replaced."""
    unet.set_attn_processor(dict(regions.previous))
    regions.masks = None


def cross_attention_weights(attn, hidden_states, encoder_hidden_states, attention_mask, who: str):
    """Explicit cross-attention of a diffusers `Attention`: (weights (N, heads, L, T) softmax over the text tokens,
    values (N, heads, T, d)); `project_out(attn, weights @ v, hidden_states)` is then the processor's output."""
    if encoder_hidden_states is None or hidden_states.ndim != 3 or attention_mask is not None:
        raise ValueError(f"the {who} handles unmasked cross-attention on (N, L, C) tokens only")
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    q = _split_heads(attn.to_q(hidden_states), attn.heads)  # (N, heads, L, d)
    k, v = (_split_heads(f(encoder_hidden_states), attn.heads) for f in (attn.to_k, attn.to_v))
    return (q @ k.transpose(-1, -2) * attn.scale).softmax(-1), v
