"""Part labels from the renderer, region spans of captions, and the grounding losses on cross-attention weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aa_world.parts import PARTS, part_id, region_bits


def test_part_labels_cover_exactly_the_person_mask_and_show_the_shirt_colour():
    from aa_world.clips import ClipSpec, render_clip
    from aa_world.identity import COLOUR_RGB

    spec = ClipSpec(identity_seed=3, scene="snow field", scene_seed=1, motion="walk", frames=4,
                    objects=(("balloon", "red"),))
    clip = render_clip(spec)
    person = (clip.parts >= part_id("hair")) & (clip.parts <= part_id("backpack"))
    assert np.array_equal(person, clip.masks)
    assert (clip.parts == part_id("balloon")).any()  # held objects have their own label
    if clip.identity.shirt_pattern == "solid":  # the shirt's pixels are the shirt's colour (shading aside)
        shirt = clip.frames[clip.parts == part_id("shirt")].astype(float)
        assert np.abs(np.median(shirt, 0) - np.asarray(COLOUR_RGB[clip.identity.shirt_colour])).max() < 30


def test_caption_spans_name_each_phrase_and_leave_the_caption_unchanged():
    from aa_world.captions import appearance_phrase, context_phrase, full_caption_spans
    from aa_world.identity import sample_identity

    for seed in range(40):
        ident = sample_identity(seed)
        spans = full_caption_spans(ident, "dance", "snow field", (("ball", "blue"),))
        caption = f"{appearance_phrase(ident)}, {context_phrase('dance', 'snow field', (('ball', 'blue'),))}"
        named = {region: caption[a:b] for a, b, region in spans}
        assert named["person"] == ident.class_word
        assert named["background"] == "snow field" and named["ball"] == "blue ball"
        assert named["shoes"] == f"{ident.shoe_colour} shoes"
        assert named["shirt"].startswith(ident.shirt_colour) and named["shirt"].endswith("shirt")
        assert ("hair" in named) == (ident.hair_style != "bald")


def test_token_regions_mark_the_tokens_inside_each_span():
    """With the shipped tokenizer (whole words are single tokens) each word's token carries its phrase's region."""
    from pathlib import Path

    from aa_runtime.tokenizer import load_clip_tokenizer
    from aa_train.grounding import token_regions

    tokenizer = load_clip_tokenizer(Path(__file__).resolve().parents[1] / "models" / "aa-tiny" / "tokenizer")

    caption = "a man with short black hair, in a red shirt, blue trousers and black shoes, dancing on a beach"
    phrases = {"man": "person", "short black hair": "hair", "red shirt": "shirt", "blue trousers": "lower",
               "black shoes": "shoes", "beach": "background"}
    spans = [(caption.index(text), caption.index(text) + len(text), region) for text, region in phrases.items()]
    bits = token_regions(tokenizer, [caption], [spans], 64)[0]
    tokens = tokenizer(caption).input_ids
    words = [tokenizer.decode([t]).strip() for t in tokens]
    by_word = {}
    for w, b in zip(words, bits.tolist()):
        by_word.setdefault(w, set()).add(b)
    assert by_word["man"] == {region_bits(["person"])}
    assert by_word["red"] == {region_bits(["shirt"])} and by_word["beach"] == {region_bits(["background"])}
    assert by_word["black"] == {region_bits(["hair"]), region_bits(["shoes"])}  # one per phrase
    assert by_word["dancing"] == {0} and by_word["a"] == {0}
    assert bits[len(tokens):].eq(0).all()  # padding grounds nothing


def test_grounding_losses_match_a_hand_computation():
    from aa_train.grounding import grounding_losses

    # 4×4 labels → a 2×2 attention grid (each attention pixel averages a 2×2 block)
    labels = torch.zeros(1, 4, 4, dtype=torch.uint8)
    labels[0, :2, :2] = part_id("shirt")  # attention pixel 0 is all shirt
    labels[0, 2:, 2:] = part_id("shoes")  # pixel 3 all shoes; pixels 1, 2 background
    labels[0, 0, 2] = part_id("shoes")  # a quarter of pixel 1 is shoes
    bits = torch.tensor([[0, region_bits(["shirt"]), region_bits(["shoes"]), region_bits(["background"])]])
    a = torch.tensor([[[0.1, 0.7, 0.1, 0.1],  # (L=4, T=4) rows sum to 1
                       [0.4, 0.2, 0.2, 0.2],
                       [0.25, 0.25, 0.25, 0.25],
                       [0.1, 0.1, 0.6, 0.2]]])
    maps = [a[:, None].repeat(1, 2, 1, 1)]  # two identical heads: the head mean is `a`
    token_loss, pixel_loss = grounding_losses(maps, labels, bits)

    region = {1: [1, 0, 0, 0], 2: [0, 0.25, 0, 1], 3: [0, 0.75, 1, 0]}  # token → share of its region per pixel
    col = a[0].numpy()
    inside = {t: float((col[:, t] * np.array(r)).sum() / col[:, t].sum()) for t, r in region.items()}
    expect_token = np.mean([(1 - v) ** 2 for v in inside.values()])
    # pixel 0 → token 1 (shirt), pixel 1 → token 3 (background share 0.75), pixel 2 → token 3, pixel 3 → token 2;
    # groups by dominant part: shirt {0}, background {1, 2}, shoes {3}, each weighing the same
    expect_pixel = -np.mean([math.log(0.7), (math.log(0.2) + math.log(0.25)) / 2, math.log(0.6)])
    assert token_loss.item() == pytest.approx(expect_token, abs=1e-6)
    assert pixel_loss.item() == pytest.approx(expect_pixel, abs=1e-6)

    _, person_only = grounding_losses(maps, labels, bits, pixel_regions="person")  # the background groups drop out
    assert person_only.item() == pytest.approx(-np.mean([math.log(0.7), math.log(0.6)]), abs=1e-6)

    none_l, none_p = grounding_losses(maps, labels, torch.zeros_like(bits))
    assert none_l.item() == 0 and none_p.item() == 0


def test_grounding_processor_gives_the_plain_output_and_records_every_spatial_cross_attention(tiny_base):
    from aa_train.grounding import reset_grounding_attention, set_grounding_attention

    unet = tiny_base.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 2, 16, 16, generator=g)
    text = torch.randn(2, 64, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        plain = unet(x, 10, encoder_hidden_states=text).sample
        store = set_grounding_attention(unet)
        probed = unet(x, 10, encoder_hidden_states=text).sample
        maps = list(store.maps)
        reset_grounding_attention(unet, store)
        again = unet(x, 10, encoder_hidden_states=text).sample
    assert (probed - plain).abs().max().item() < 1e-5
    assert torch.equal(again, plain)
    n_attn2 = sum(1 for n in unet.attn_processors if ".attentions." in n and n.endswith("attn2.processor")
                  and "motion_modules" not in n)
    assert len(maps) == n_attn2 > 0
    assert all(m.shape[0] == 2 and m.shape[-1] == 64 for m in maps)
    assert all(torch.allclose(m.sum(-1), torch.ones(())) for m in maps)


def test_grounding_losses_fall_along_their_gradient(tmp_path):
    """Gradients of both losses reach the attention through the processors: a small step against each loss's own
    gradient lowers it on a fixed batch (first order), and Adam steps lower the pixel loss by half. On a random
    base the token loss moves slowly under Adam (it needs pixel features that tell the parts apart), so the token
    loss is checked by the gradient step only."""
    from diffusers import DDPMScheduler

    from aa_runtime.tiny import TinyConfig, build_random_base
    from aa_train.base import denoising_loss, encode_all, trainable_parameters
    from aa_train.grounding import grounding_losses, set_grounding_attention, token_regions
    from aa_train.world_data import WorldSource, render_world

    base = build_random_base(TinyConfig(max_tokens=64), seed=0)
    clips = render_world(WorldSource(2, 64, 2, 8.0), cache_dir=tmp_path)
    z = encode_all(base.vae, clips.frames.reshape(-1, 64, 64, 3)).float()[:, :, None]
    p = encode_all(base.vae, clips.skeletons.reshape(-1, 64, 64, 3)).float()[:, :, None]
    caps = [c for c in clips.captions for _ in range(2)]
    spans = [s for s in clips.spans for _ in range(2)]
    bits = token_regions(base.tokenizer, caps, spans, 64)
    labels = torch.from_numpy(clips.parts.reshape(-1, 64, 64))
    noise_scheduler = DDPMScheduler.from_config(base.scheduler_config)
    g = torch.Generator().manual_seed(0)
    noise, t = torch.randn(z.shape, generator=g), torch.tensor([100, 300, 500, 700])
    store = set_grounding_attention(base.unet)
    params = trainable_parameters(base, "image")

    def losses():
        store.clear()
        denoising_loss(base, noise_scheduler, z, p, caps, t, noise, train_text=True, device="cpu")
        return grounding_losses(store.maps, labels, bits)

    for which in (0, 1):
        loss = losses()[which]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        norm = torch.sqrt(sum((g_ ** 2).sum() for g_ in grads if g_ is not None))
        assert norm > 0
        with torch.no_grad():
            for prm, g_ in zip(params, grads):
                if g_ is not None:
                    prm -= 1e-2 * g_ / norm
            assert losses()[which] < loss.detach(), which
    opt = torch.optim.AdamW(params, lr=1e-2)
    first = losses()[1].item()
    for _ in range(8):
        token_loss, pixel_loss = losses()
        (token_loss + pixel_loss).backward()
        opt.step()
        opt.zero_grad()
    assert losses()[1].item() < 0.5 * first


def test_parts_table_matches_the_object_labels():
    from aa_world.objects import OBJECT_LABELS

    assert PARTS[0] == "background" and all(PARTS[v] == k for k, v in OBJECT_LABELS.items())
    assert region_bits(["person"]) == sum(1 << k for k in range(1, 9))


def test_person_attention_entropy_reads_only_person_pixels():
    from benchmarks.attention_probe import person_attention_entropy

    labels = torch.zeros(1, 4, 4, dtype=torch.uint8)
    labels[0, :2, :2] = part_id("shirt")  # attention pixel 0 is the person's, pixels 1–3 background
    a = torch.full((1, 1, 4, 4), 0.25)  # uniform everywhere: entropy 1 ...
    a[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # ... except the person pixel, which reads one token
    assert person_attention_entropy([a], labels) == pytest.approx(0.0, abs=1e-6)
    a[0, 0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert person_attention_entropy([a], labels) == pytest.approx(math.log(2) / math.log(4), abs=1e-6)
    assert person_attention_entropy([a], torch.zeros_like(labels)) is None
