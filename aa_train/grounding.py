"""Token-level grounding of the spatial cross-attention (TokenCompose, Wang et al., CVPR 2024), for base training.

The world knows which pixels each caption phrase describes (part labels from the renderer, region spans from the
caption builder). Two losses on the cross-attention weights A (pixels × text tokens, softmax over tokens, mean over
heads) of every spatial attn2 layer tie the words to their regions:

- token loss (TokenCompose's L_token): for each grounded token, the share of its attention mass over the pixels that
  falls inside its region, pushed to 1: mean of (1 − Σ_in A / Σ_all A)².
- pixel loss: for each pixel inside some grounded region, the attention it gives to the tokens grounded there
  (its part's phrase, the class word on the person, the scene words on the background), pushed to 1: −log Σ_grounded
  A, averaged within each (sample, dominant part) group, then over the groups, so the background's many pixels do
  not drown the small parts. TokenCompose's pixel loss is a per-token BCE between the normalised map and the mask; this one
  is read per pixel instead, because what the identity learner needs is that each pixel reads *its* words, not
  the mean of the caption (the attention-entropy measure of `benchmarks/quality.py attention`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from aa_world.parts import PARTS, PERSON_PARTS, region_bits

from .attention import SPATIAL_ATTN2, cross_attention_weights, project_out


class AttentionMaps:
    """The cross-attention weights recorded by `GroundingProcessor`s during one forward, per call."""

    def __init__(self, previous: dict | None = None):
        self.maps: list[torch.Tensor] = []  # (N, heads, L, T) each, with their autograd graph
        self.previous = previous or {}

    def clear(self) -> None:
        self.maps.clear()


class GroundingProcessor:
    """Cross-attention with explicit weights (the output equals diffusers' processor) that records them."""

    def __init__(self, store: AttentionMaps):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        weights, v = cross_attention_weights(attn, hidden_states, encoder_hidden_states, attention_mask,
                                             "grounding processor")
        self.store.maps.append(weights)  # (N, heads, L, T)
        return project_out(attn, weights @ v, hidden_states)


def set_grounding_attention(unet) -> AttentionMaps:
    """Put a recording GroundingProcessor on every spatial cross-attention; returns the shared store."""
    previous = dict(unet.attn_processors)
    store = AttentionMaps(previous)
    unet.set_attn_processor({name: (GroundingProcessor(store) if SPATIAL_ATTN2.match(name) else proc)
                             for name, proc in previous.items()})
    return store


def reset_grounding_attention(unet, store: AttentionMaps) -> None:
    """Put back the processors that `set_grounding_attention` replaced."""
    unet.set_attn_processor(dict(store.previous))
    store.clear()


def token_regions(tokenizer, captions: list[str], spans: list, max_length: int) -> torch.Tensor:
    """int64 (B, T): per caption token, the bit mask of the part labels its words describe (0 = not grounded).
    A token is grounded when its characters lie inside a (start, end, region) span of its caption."""
    enc = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                    return_offsets_mapping=True)
    out = torch.zeros(len(captions), max_length, dtype=torch.int64)
    for b, (offsets, caption_spans) in enumerate(zip(enc["offset_mapping"], spans)):
        for t, (a, e) in enumerate(offsets):
            if e <= a:
                continue  # special and padding tokens
            for start, end, region in caption_spans:
                if start <= a and e <= end:
                    out[b, t] |= region_bits([region])
    return out


def region_fractions(labels: torch.Tensor, tokens: int) -> torch.Tensor:
    """uint8 labels (N, H, W) → float (N, K, L): the share of each label in each of the L = h·w attention pixels."""
    n, h, w = labels.shape
    s = round((h * w / tokens) ** 0.5)
    if (h // s) * (w // s) != tokens:
        raise ValueError(f"cannot map {tokens} attention pixels onto {h}x{w} labels")
    onehot = F.one_hot(labels.long(), len(PARTS)).permute(0, 3, 1, 2).float()  # (N, K, H, W)
    return F.avg_pool2d(onehot, s).flatten(2)  # (N, K, L)


def bits_matrix(bits: torch.Tensor) -> torch.Tensor:
    """int64 (N, T) bit masks → float (N, T, K) 0/1."""
    k = torch.arange(len(PARTS), device=bits.device)
    return ((bits[..., None] >> k) & 1).float()


def grounding_losses(maps: list[torch.Tensor], labels: torch.Tensor, bits: torch.Tensor,
                     pixel_regions: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """(token loss, pixel loss), each the mean over layers, for attention weights `maps` ((N, heads, L, T) each,
    N = B·frames), part labels (N, H, W) at pixel resolution and token bit masks (N, T). Zero where nothing in
    the batch is grounded (e.g. every caption dropped). `pixel_regions="person"` counts only the pixels whose
    dominant part is the person's in the pixel loss: the background keeps reading the whole caption."""
    if pixel_regions not in ("all", "person"):
        raise ValueError(f"pixel_regions={pixel_regions!r}: use 'all' or 'person'")
    token_terms, pixel_terms = [], []
    member = bits_matrix(bits.to(labels.device))  # (N, T, K)
    for weights in maps:
        a = weights.float().mean(1)  # (N, L, T)
        fractions = region_fractions(labels, a.shape[1])  # (N, K, L)
        region = member @ fractions  # (N, T, L): share of each token's region in each pixel
        present = (member.sum(-1) > 0) & (region.sum(-1) > 0)  # (N, T) grounded and visible in this frame
        if present.any():
            inside = (a.transpose(1, 2) * region).sum(-1) / a.sum(1).clamp_min(1e-8)  # (N, T)
            token_terms.append(((1 - inside) ** 2)[present].mean())
        grounded = (region >= 0.5).float()  # (N, T, L): the tokens that describe each pixel
        has = (grounded.sum(1) > 0).float()  # (N, L)
        if pixel_regions == "person":
            dominant = fractions.argmax(1)  # (N, L)
            has = has * ((dominant >= 1) & (dominant < 1 + len(PERSON_PARTS))).float()
        if has.any():
            share = (a * grounded.transpose(1, 2)).sum(-1)  # (N, L)
            # each (sample, dominant part) group weighs the same: the background's many pixels do not drown the parts
            group = F.one_hot(fractions.argmax(1), len(PARTS)).float() * has[..., None]  # (N, L, K)
            w = (group / group.sum(1, keepdim=True).clamp_min(1)).sum(-1)  # (N, L): 1 / pixels in its group
            pixel_terms.append((w * -share.clamp_min(1e-6).log()).sum() / w.sum())
    zero = maps[0].sum() * 0 if maps else torch.zeros(())
    mean = lambda terms: torch.stack(terms).mean() if terms else zero  # noqa: E731
    return mean(token_terms), mean(pixel_terms)
