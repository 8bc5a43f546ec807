"""Measures of the base's spatial cross-attention for `quality.py attention`: how evenly each pixel spreads its weight
over the text tokens (normalised entropy, 1 = uniform), and how much of each grounded phrase's attention lands on
its body part."""
from __future__ import annotations

import math

import torch

from aa_train.attention import SPATIAL_ATTN2, cross_attention_weights, project_out
from aa_train.grounding import bits_matrix, region_fractions
from aa_world.parts import PARTS, PERSON_PARTS


class CrossAttentionProbe:
    """Cross-attention with the plain output that also records, per call, the mean over queries and heads of the
    entropy of the weights over the text tokens divided by log(T): 1 = uniform (every pixel reads the same mix of
    the text), 0 = each pixel reads a single token."""

    def __init__(self):
        self.ratios: list[float] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        weights, v = cross_attention_weights(attn, hidden_states, encoder_hidden_states, attention_mask, "probe")
        entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)
        self.ratios.append(float(entropy.mean() / math.log(weights.shape[-1])))
        return project_out(attn, weights @ v, hidden_states)


@torch.no_grad()
def cross_attention_entropy(unet, sample: torch.Tensor, timestep: torch.Tensor,
                            text: torch.Tensor) -> dict[str, float]:
    """One UNet forward with every spatial cross-attention probed: layer name → normalised entropy of its weights
    over the text tokens (see CrossAttentionProbe). The UNet's processors are restored afterwards."""
    previous = dict(unet.attn_processors)
    probes = {name: CrossAttentionProbe() for name in previous if SPATIAL_ATTN2.match(name)}
    unet.set_attn_processor({name: probes.get(name, proc) for name, proc in previous.items()})
    try:
        unet(sample, timestep, encoder_hidden_states=text)
    finally:
        unet.set_attn_processor(previous)
    return {name.removesuffix(".processor"): sum(p.ratios) / len(p.ratios) for name, p in probes.items() if p.ratios}


@torch.no_grad()
def part_attention_mass(maps: list[torch.Tensor], labels: torch.Tensor, bits: torch.Tensor) -> dict[str, float]:
    """Per region name: the mean share of its grounded tokens' attention mass that falls inside its region (the
    token loss's `inside`, averaged over layers, tokens and samples where the region is visible)."""
    member = bits_matrix(bits.to(labels.device))
    sums: dict[str, list[float]] = {}
    for weights in maps:
        a = weights.float().mean(1)
        fractions = region_fractions(labels, a.shape[1])
        region = member @ fractions
        inside = (a.transpose(1, 2) * region).sum(-1) / a.sum(1).clamp_min(1e-8)  # (N, T)
        for k, name in enumerate(PARTS):
            if name == "skin":
                continue
            own = (member[..., k] > 0) & (member.sum(-1) == 1) & (fractions[:, k].sum(-1) > 0)[:, None]
            if own.any():
                sums.setdefault(name, []).append(float(inside[own].mean()))
        person = (member[..., 1:9].sum(-1) == 8) & (region.sum(-1) > 0)
        if person.any():
            sums.setdefault("person", []).append(float(inside[person].mean()))
    return {name: sum(v) / len(v) for name, v in sums.items()}


@torch.no_grad()
def person_attention_entropy(maps: list[torch.Tensor], labels: torch.Tensor) -> float | None:
    """Normalised entropy over the text tokens (1 = uniform) of the attention of the pixels whose dominant part is
    the person's, mean over heads, those pixels and layers (None when no layer sees a person pixel)."""
    values = []
    for weights in maps:
        w = weights.float()  # (N, heads, L, T)
        entropy = -(w * w.clamp_min(1e-30).log()).sum(-1) / math.log(w.shape[-1])  # (N, heads, L)
        dominant = region_fractions(labels, w.shape[2]).argmax(1)  # (N, L)
        person = (dominant >= 1) & (dominant < 1 + len(PERSON_PARTS))
        if person.any():
            values.append(float(entropy.mean(1)[person].mean()))
    return sum(values) / len(values) if values else None
