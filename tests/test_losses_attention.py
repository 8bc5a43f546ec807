"""Background-weakening loss (eq. 1) and mask-guided attention against hand-computed references."""
import math

import pytest
import torch

from aa_train.attention import MaskGuidedAttnProcessor, RegionMasks, set_mask_guided_attention
from aa_train.losses import background_weakening_loss, latent_masks
from benchmarks.attention_probe import CrossAttentionProbe, cross_attention_entropy


def test_bw_loss_matches_the_formula_on_a_hand_made_tensor():
    pred = torch.zeros(1, 1, 1, 2, 2)
    target = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 2, 2)  # squared errors 1, 4, 9, 16
    fore = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 2, 2)
    # mean over 4 elements: foreground (1 + 4) / 4, background α (9 + 16) / 4
    assert background_weakening_loss(pred, target, fore, 0.001).item() == pytest.approx(5 / 4 + 0.001 * 25 / 4)
    assert background_weakening_loss(pred, target, fore, 1.0).item() == pytest.approx(30 / 4)  # plain MSE
    assert background_weakening_loss(pred, target, fore, 0.0).item() == pytest.approx(5 / 4)  # foreground only


def test_bw_loss_region_norm_averages_each_region_on_its_own():
    pred = torch.zeros(1, 1, 1, 2, 2)
    target = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 2, 2)  # squared errors 1, 4, 9, 16
    fore = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 2, 2)  # the person covers one pixel of four
    # person mean 1 / 1, background mean (4 + 9 + 16) / 3
    assert background_weakening_loss(pred, target, fore, 0.1, "region").item() == pytest.approx(1 + 0.1 * 29 / 3)
    assert background_weakening_loss(pred, target, fore, 0.1, "frame").item() == pytest.approx(1 / 4 + 0.1 * 29 / 4)
    with pytest.raises(ValueError, match="norm"):
        background_weakening_loss(pred, target, fore, 0.1, "pixels")


def test_bw_loss_broadcasts_masks_over_channels():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 4, 3, 8, 8, generator=g)
    fore = (torch.rand(2, 1, 3, 8, 8, generator=g) > 0.5).float()
    err = (pred - target) ** 2
    ref = (fore * err).mean() + (0.25 * (1 - fore) * err).mean()
    assert background_weakening_loss(pred, target, fore, 0.25).item() == pytest.approx(ref.item(), rel=1e-6)


def test_latent_masks_area_average():
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, :2, :2] = True
    m[0, 2, 2] = True
    got = latent_masks(m, (2, 2))
    assert got.shape == (1, 1, 2, 2)
    torch.testing.assert_close(got[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.25]]))


class _Attn(torch.nn.Module):
    """The attributes of a diffusers Attention that the processor reads (one head, identity projections)."""

    def __init__(self, dim=2):
        super().__init__()
        self.heads, self.group_norm, self.residual_connection, self.rescale_output_factor = 1, None, False, 1.0
        self.norm_cross, self.scale = None, dim ** -0.5  # diffusers' default scale: 1/√(head dim)
        self.to_q = self.to_k = self.to_v = torch.nn.Identity()
        self.to_out = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])


def test_mask_attention_against_hand_computed_weights():
    # 4 tokens on a 2×2 grid; tokens 0, 1 are person, 2, 3 background
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]]])  # (1, 4, 2)
    regions = RegionMasks()
    regions.masks = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    w = 0.25
    out = MaskGuidedAttnProcessor(regions, w)(_Attn(), x)
    logits = x[0] @ x[0].T / math.sqrt(2)
    weights = logits.exp() * torch.tensor([[1, 1, w, w], [1, 1, w, w], [w, w, 1, 1], [w, w, 1, 1]])
    ref = (weights / weights.sum(-1, keepdim=True)) @ x[0]
    torch.testing.assert_close(out[0], ref, atol=1e-6, rtol=1e-6)


def test_w_one_is_plain_attention_and_w_zero_blocks_cross_region(tiny_base):
    import copy

    unet = copy.deepcopy(tiny_base.unet)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 8, 1, 16, 16, generator=g), torch.randn(2, 32, 64, generator=g)
    with torch.no_grad():
        plain = unet(x, 30, encoder_hidden_states=text).sample
        regions = set_mask_guided_attention(unet, 1.0)
        regions.masks = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
        same = unet(x, 30, encoder_hidden_states=text).sample
        regions_half = set_mask_guided_attention(unet, 0.2)
        regions_half.masks = regions.masks
        guided = unet(x, 30, encoder_hidden_states=text).sample
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)
    assert (guided - plain).abs().max() > 1e-4
    names = [n for n, p in unet.attn_processors.items() if isinstance(p, MaskGuidedAttnProcessor)]
    assert names and all("attn1" in n and "motion_modules" not in n for n in names)

    # w = 0: a background query's output must not depend on person tokens at all
    x1 = torch.randn(1, 4, 2, generator=g)
    regions0 = RegionMasks()
    regions0.masks = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    a = MaskGuidedAttnProcessor(regions0, 0.0)(_Attn(), x1)
    x2 = x1.clone()
    x2[0, :2] += 5.0  # change the person tokens only
    b = MaskGuidedAttnProcessor(regions0, 0.0)(_Attn(), x2)
    torch.testing.assert_close(a[0, 2:], b[0, 2:])
    assert (a[0, :2] - b[0, :2]).abs().max() > 1


def test_bad_weight_rejected():
    with pytest.raises(ValueError, match="0 ≤ w ≤ 1"):
        MaskGuidedAttnProcessor(RegionMasks(), 1.5)


def test_cross_attention_probe_entropy_against_hand_computed_weights():
    """Normalised entropy of softmax(q·k/√d) over the text tokens; identical keys give exactly uniform weights (1)."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # 3 queries
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [0.5, 0.5]]])  # 4 tokens
    probe = CrossAttentionProbe()
    out = probe(_Attn(), x, text)
    weights = (x[0] @ text[0].T / math.sqrt(2)).softmax(-1)
    torch.testing.assert_close(out[0], weights @ text[0], atol=1e-6, rtol=1e-6)
    ref = float(-(weights * weights.log()).sum(-1).mean() / math.log(4))
    assert probe.ratios == [pytest.approx(ref, abs=1e-6)]
    probe(_Attn(), x, torch.ones(1, 4, 2))
    assert probe.ratios[1] == pytest.approx(1.0, abs=1e-6)


def test_cross_attention_entropy_probes_spatial_attn2_and_keeps_the_output(tiny_base):
    import copy

    unet = copy.deepcopy(tiny_base.unet)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 8, 1, 16, 16, generator=g), torch.randn(2, 32, 64, generator=g)
    before = dict(unet.attn_processors)
    with torch.no_grad():
        plain = unet(x, 30, encoder_hidden_states=text).sample
    ratios = cross_attention_entropy(unet, x, torch.tensor(30), text)
    assert ratios and all("attn2" in n and "motion_modules" not in n for n in ratios)
    assert len(ratios) == sum(1 for n in before if "attn2" in n and "motion_modules" not in n)
    assert all(0.0 < r <= 1.0 for r in ratios.values())
    assert {n: type(p) for n, p in unet.attn_processors.items()} == {n: type(p) for n, p in before.items()}
    # the probe changes nothing: the same forward with the probes in place gives the plain output
    probes = {n: (CrossAttentionProbe() if n.removesuffix(".processor") in ratios else p) for n, p in before.items()}
    unet.set_attn_processor(probes)
    with torch.no_grad():
        probed = unet(x, 30, encoder_hidden_states=text).sample
    torch.testing.assert_close(probed, plain, atol=1e-5, rtol=1e-5)
