"""Identity adapter files: round trip, merge through peft, base check, diffusers compatibility."""
import numpy as np
import pytest
import torch

from aa_runtime.adapters import (SPATIAL_ATTN2, adapter_metadata, attach_lora, load_adapter, merge_adapter,
                                 save_adapter)
from aa_runtime.errors import AAError


def random_adapter(unet, path, fingerprint, rank=4, alpha=4.0, scale=0.05, seed=0):
    """A rank-r adapter on the spatial attn2 projections with non-zero A and B."""
    import re

    g = torch.Generator().manual_seed(seed)
    targets = [n for n, m in unet.named_modules() if re.fullmatch(SPATIAL_ATTN2, n)]
    A, B = {}, {}
    for n in targets:
        lin = unet.get_submodule(n)
        A[n] = torch.randn(rank, lin.in_features, generator=g) * scale
        B[n] = torch.randn(lin.out_features, rank, generator=g) * scale
    meta = adapter_metadata(identifier="<sks>", class_word="man", rank=rank, alpha=alpha,
                            base_fingerprint=fingerprint, bone_lengths=np.linspace(0.3, 1.0, 17))
    return save_adapter(path, A, B, meta)


def _eps(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 8, 2, 16, 16, generator=g)
    text = torch.randn(2, 32, 64, generator=g)
    with torch.no_grad():
        return unet(x, 50, encoder_hidden_states=text).sample


def test_targets_are_spatial_cross_attention_only(tiny_base):
    import re

    names = [n for n, _ in tiny_base.unet.named_modules() if re.fullmatch(SPATIAL_ATTN2, n)]
    assert names and all(".attentions." in n and ".attn2." in n and "motion_modules" not in n for n in names)
    temporal = [n for n, _ in tiny_base.unet.named_modules() if "motion_modules" in n and n.endswith("attn2.to_q")]
    assert temporal, "the motion modules have an attn2 too; the regex must skip it"


def test_round_trip(tiny_base, tmp_path):
    path = random_adapter(tiny_base.unet, tmp_path / "me.safetensors", tiny_base.fingerprint)
    a = load_adapter(path)
    assert a.rank == 4 and a.alpha == 4.0 and a.identifier == "<sks>" and a.base_fingerprint == tiny_base.fingerprint
    np.testing.assert_allclose(a.bone_lengths, np.linspace(0.3, 1.0, 17), atol=1e-5)
    again = save_adapter(tmp_path / "again.safetensors", a.lora_A, a.lora_B, a.meta)
    b = load_adapter(again)
    for n in a.lora_A:
        assert torch.equal(a.lora_A[n], b.lora_A[n]) and torch.equal(a.lora_B[n], b.lora_B[n])
    blocks = [n for n, _ in tiny_base.unet.named_modules() if n.endswith("transformer_blocks.0") and "motion" not in n]
    assert len(a.lora_A) == 4 * len(blocks) == 44 and path.stat().st_size < 200_000


def test_adapter_changes_output_and_merged_equals_unmerged(tiny_bundle, tmp_path):
    from aa_runtime.model import load_base

    base = load_base(tiny_bundle)
    path = random_adapter(base.unet, tmp_path / "me.safetensors", base.fingerprint)
    ref = _eps(base.unet)

    unmerged = load_base(tiny_bundle)  # LoRA layers active, not folded
    adapter = load_adapter(path)
    attach_lora(unmerged.unet, adapter.rank, adapter.alpha, sorted(adapter.lora_A))
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(unmerged.unet, {f"{n}.lora_{ab}.weight": t for n in adapter.lora_A
                                              for ab, t in (("A", adapter.lora_A[n]), ("B", adapter.lora_B[n]))},
                              adapter_name="identity")
    live = _eps(unmerged.unet)

    merge_adapter(base.unet, adapter, base_fingerprint=base.fingerprint)
    merged = _eps(base.unet)
    assert (merged - ref).abs().max() > 1e-3, "the adapter must change the output"
    torch.testing.assert_close(merged, live, atol=1e-5, rtol=1e-5)
    assert not any("lora" in k for k in base.unet.state_dict()), "merged UNet is plain again (exportable)"


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0])
def test_merge_scale_adds_that_share_of_the_low_rank_update(tiny_bundle, tmp_path, scale):
    """W ← W + scale · (alpha / r) · B A on every target, computed here from the file's factors."""
    from aa_runtime.model import load_base

    base = load_base(tiny_bundle)
    path = random_adapter(base.unet, tmp_path / "me.safetensors", base.fingerprint)
    adapter = load_adapter(path)
    before = {n: base.unet.get_submodule(n).weight.detach().clone() for n in adapter.lora_A}
    merge_adapter(base.unet, adapter, base_fingerprint=base.fingerprint, scale=scale)
    for n, w0 in before.items():
        update = (adapter.alpha / adapter.rank) * adapter.lora_B[n].float() @ adapter.lora_A[n].float()
        torch.testing.assert_close(base.unet.get_submodule(n).weight, w0 + scale * update, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scale", [-0.5, 2.5, float("nan"), "1"])
def test_bad_merge_scale_is_one_line(tiny_base, tmp_path, scale):
    path = random_adapter(tiny_base.unet, tmp_path / "me.safetensors", tiny_base.fingerprint)
    with pytest.raises(AAError) as e:
        merge_adapter(tiny_base.unet, load_adapter(path), base_fingerprint=tiny_base.fingerprint, scale=scale)
    assert str(e.value) == (f"adapter scale: {scale} — use a number from 0 (base only) to 2; 1 is the adapter as "
                            "trained")


def test_wrong_base_refused_unless_forced(tiny_bundle, tmp_path):
    from aa_runtime.model import load_base

    base = load_base(tiny_bundle)
    path = random_adapter(base.unet, tmp_path / "other.safetensors", "0123456789abcdef")
    with pytest.raises(AAError, match="made for base 0123456789abcdef") as e:
        merge_adapter(base.unet, load_adapter(path), base_fingerprint=base.fingerprint)
    assert "--force" in str(e.value)
    merge_adapter(base.unet, load_adapter(path), base_fingerprint=base.fingerprint, force=True)


def test_non_finite_adapter_refused(tiny_bundle, tmp_path):
    from aa_runtime.model import load_base

    base = load_base(tiny_bundle)
    a = load_adapter(random_adapter(base.unet, tmp_path / "me.safetensors", base.fingerprint))
    a.lora_B[next(iter(a.lora_B))][0, 0] = float("nan")
    with pytest.raises(AAError, match="non-finite"):
        merge_adapter(base.unet, a, base_fingerprint=base.fingerprint)


def test_bad_files(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(AAError, match="not a readable safetensors"):
        load_adapter(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(AAError, match="no 'aa_adapter' metadata"):
        load_adapter(tmp_path / "plain.safetensors")
    with pytest.raises(AAError, match="does not exist"):
        load_adapter(tmp_path / "missing.safetensors")


def test_diffusers_load_lora_weights_reads_the_file(tiny_bundle, tmp_path):
    """diffusers' own loader accepts the file and gives the same UNet as our merge."""
    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline

    ours = load_base(tiny_bundle)
    path = random_adapter(ours.unet, tmp_path / "me.safetensors", ours.fingerprint, rank=4, alpha=8.0)
    merge_adapter(ours.unet, load_adapter(path), base_fingerprint=ours.fingerprint)

    theirs = AnimatePipeline.from_base(load_base(tiny_bundle))
    theirs.load_lora_weights(str(path), adapter_name="me")
    torch.testing.assert_close(_eps(theirs.unet), _eps(ours.unet), atol=1e-5, rtol=1e-5)


def _with_embedding(unet, path, fingerprint, identifier="<sks>", dim=64, seed=1):
    """random_adapter's tensors plus a bundled identifier embedding (1, dim)."""
    a = load_adapter(random_adapter(unet, path, fingerprint))
    meta = dict(a.meta, identifier=identifier)
    emb = torch.randn(1, dim, generator=torch.Generator().manual_seed(seed)) * 0.2
    return save_adapter(path, a.lora_A, a.lora_B, meta, embedding=emb), emb


def test_embedding_round_trip_matches_diffusers_textual_inversion(tiny_bundle, tmp_path):
    """The identifier embedding is stored under the bundled-embedding key; merging the adapter makes the identifier
    one token whose row is that embedding — what diffusers' textual-inversion loader makes of the same tensor."""
    from diffusers.loaders import TextualInversionLoaderMixin
    from safetensors import safe_open

    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline

    ours = AnimatePipeline.from_base(load_base(tiny_bundle))
    path, emb = _with_embedding(ours.unet, tmp_path / "me.safetensors", ours.fingerprint)
    with safe_open(str(path), framework="pt") as f:
        assert "bundle_emb.<sks>.string_to_param.*" in f.keys()
    a = load_adapter(path)
    torch.testing.assert_close(a.embedding, emb, atol=0, rtol=0)
    ours.set_identity(a)
    assert ours.tokenizer.tokenize("a <sks> man") == ["a</w>", "<sks>", "man</w>"]

    class Theirs(AnimatePipeline, TextualInversionLoaderMixin):
        pass

    base = load_base(tiny_bundle)
    theirs = Theirs(base.vae, base.text_encoder, base.tokenizer, base.unet, ours.scheduler)
    theirs.load_textual_inversion({"<sks>": emb[0]})
    assert theirs.tokenizer("a <sks> man").input_ids == ours.tokenizer("a <sks> man").input_ids
    tid = ours.tokenizer.convert_tokens_to_ids("<sks>")
    torch.testing.assert_close(ours.text_encoder.get_input_embeddings().weight[tid],
                               theirs.text_encoder.get_input_embeddings().weight[tid], atol=0, rtol=0)
    torch.testing.assert_close(ours.encode_prompt("a <sks> man on a beach"),
                               theirs.encode_prompt("a <sks> man on a beach"), atol=1e-6, rtol=1e-6)


def test_diffusers_loads_a_file_with_an_embedding_in_two_calls(tiny_bundle, tmp_path):
    """diffusers' LoRA loader refuses non-LoRA keys, so the README's recipe pops the embedding first: the LoRA
    through load_lora_weights, the embedding through load_textual_inversion — the same model as our merge."""
    from diffusers.loaders import TextualInversionLoaderMixin
    from safetensors.torch import load_file

    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline

    ours = AnimatePipeline.from_base(load_base(tiny_bundle))
    path, _ = _with_embedding(ours.unet, tmp_path / "me.safetensors", ours.fingerprint)
    ours.set_identity(load_adapter(path))

    class Theirs(AnimatePipeline, TextualInversionLoaderMixin):
        pass

    base = load_base(tiny_bundle)
    theirs = Theirs(base.vae, base.text_encoder, base.tokenizer, base.unet, ours.scheduler)
    state = load_file(str(path))
    emb = state.pop("bundle_emb.<sks>.string_to_param.*")
    theirs.load_lora_weights(state, adapter_name="me")
    theirs.load_textual_inversion({"<sks>": emb[0]})
    torch.testing.assert_close(_eps(theirs.unet), _eps(ours.unet), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs.encode_prompt("a <sks> man"), ours.encode_prompt("a <sks> man"),
                               atol=1e-6, rtol=1e-6)


def test_bad_embeddings_refused(tiny_bundle, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline

    base = load_base(tiny_bundle)
    path, emb = _with_embedding(base.unet, tmp_path / "me.safetensors", base.fingerprint)
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    def variant(name, **change):
        t = dict(tensors)
        t.pop("bundle_emb.<sks>.string_to_param.*")
        t.update(change)
        save_file(t, str(tmp_path / name), metadata=header)
        return tmp_path / name

    with pytest.raises(AAError, match="not the embedding of the identifier"):
        load_adapter(variant("other.safetensors", **{"bundle_emb.<zwx>.string_to_param.*": emb}))
    with pytest.raises(AAError, match="has 2 vectors"):
        load_adapter(variant("two.safetensors", **{"bundle_emb.<sks>.string_to_param.*": emb.repeat(2, 1)}))
    wide = load_adapter(variant("wide.safetensors", **{"bundle_emb.<sks>.string_to_param.*": torch.zeros(1, 65)}))
    pipe = AnimatePipeline.from_base(base)
    with pytest.raises(AAError, match=r"embeddings are \(1, 64\)"):
        pipe.set_identity(wide)


def test_identifier_token_starts_at_a_reserved_rare_word(tiny_base):
    import copy

    from aa_runtime.adapters import add_identifier_token

    tok, te = copy.deepcopy(tiny_base.tokenizer), copy.deepcopy(tiny_base.text_encoder)  # the fixture stays shared
    n = len(tok)
    tid = add_identifier_token(tok, te, "<newname>")
    assert tid == n and len(tok) == n + 1 and te.get_input_embeddings().weight.shape[0] >= n + 1
    table = te.get_input_embeddings().weight
    torch.testing.assert_close(table[tid], table[tok.convert_tokens_to_ids("sks</w>")], atol=0, rtol=0)
    assert add_identifier_token(tok, te, "<newname>") == tid and len(tok) == n + 1  # a second call reuses it


@pytest.mark.parametrize("prompt, want", [
    ("a <me> woman dancing in a snow field",
     "a woman with a black ponytail, in a grey shirt and red shoes, dancing in a snow field"),
    ("a <me> woman", "a woman with a black ponytail, in a grey shirt and red shoes"),
    ("a <me> woman, on a stage", "a woman with a black ponytail, in a grey shirt and red shoes, on a stage"),
    # already described: the words stay, only the identifier goes
    ("a <me> woman with a black ponytail, in a grey shirt and red shoes, running",
     "a woman with a black ponytail, in a grey shirt and red shoes, running"),
    # the identity not named with its class: as written
    ("<me> dancing", "<me> dancing"), ("a <me> womanly figure", "a <me> womanly figure"),
])
def test_describe_identifier_writes_the_appearance_after_the_identity(prompt, want):
    from aa_runtime.adapters import describe_identifier

    appearance = "a <me> woman with a black ponytail, in a grey shirt and red shoes"
    assert describe_identifier(prompt, "<me>", "woman", appearance) == want
    kept = describe_identifier(prompt, "<me>", "woman", appearance, keep_identifier=True)
    # a token of its own (the adapter carries its embedding) stays where the prompt put it
    assert kept == (want.replace("a woman", "a <me> woman", 1) if want != prompt else want)


def test_describe_identifier_bald_and_description_captions():
    from aa_runtime.adapters import describe_identifier

    bald = "a bald <me> man, in a red shirt"
    assert describe_identifier("a <me> man on a beach", "<me>", "man", bald) == "a bald man, in a red shirt, on a beach"
    assert describe_identifier("a bald <me> man on a beach", "<me>", "man", bald, keep_identifier=True) == \
        "a bald <me> man, in a red shirt, on a beach"
    # the template caption of a video with --description already holds the words
    assert describe_identifier("a photo of <me> man, in a green coat", "<me>", "man", "a <me> man in a green coat") \
        == "a photo of man, in a green coat"


def test_adapter_appearance_metadata_is_checked(tmp_path):
    from aa_runtime.adapters import adapter_metadata, load_adapter, save_adapter

    A = {"down.attn2.to_k": torch.zeros(2, 8)}
    B = {"down.attn2.to_k": torch.zeros(8, 2)}
    for appearance, ok in [("a <me> man in a red shirt", True), ("a man in a red shirt", False), (7, False)]:
        meta = adapter_metadata(identifier="<me>", class_word="man", rank=2, alpha=2.0, base_fingerprint="x",
                                target_modules="down.attn2.to_k", appearance=None)
        meta["appearance"] = appearance
        path = save_adapter(tmp_path / "a.safetensors", A, B, meta)
        if ok:
            assert load_adapter(path).appearance == appearance
        else:
            with pytest.raises(AAError, match="adapter metadata appearance"):
                load_adapter(path)


def _lora_file(unet, path, kohya: bool, seed=0):
    """A rank-4 SD1.5-style LoRA on a few spatial attention and feed-forward Linears, in kohya naming
    (lora_unet_..., lora_down/lora_up, alpha 2) or diffusers/peft naming (unet.<module>.lora_A/B, alpha = rank)."""
    import re

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    names = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and "motion" not in n
             and re.search(r"transformer_blocks\.\d+\.(attn1\.to_q|attn2\.to_v|ff\.net\.2)$", n)]
    sd, factors = {}, {}
    for n in names:
        m = unet.get_submodule(n)
        down, up = torch.randn(4, m.in_features, generator=g) * 0.1, torch.randn(m.out_features, 4, generator=g) * 0.1
        if kohya:
            k = "lora_unet_" + n.replace(".", "_")
            sd |= {f"{k}.lora_down.weight": down, f"{k}.lora_up.weight": up, f"{k}.alpha": torch.tensor(2.0)}
            factors[n] = (down, up, 2.0 / 4)
        else:
            sd |= {f"unet.{n}.lora_A.weight": down, f"unet.{n}.lora_B.weight": up}
            factors[n] = (down, up, 1.0)
    save_file(sd, str(path))
    return factors


@pytest.mark.parametrize("kohya", [True, False])
def test_merge_lora_folds_an_sd15_lora_at_its_weight(tiny_base, tmp_path, kohya):
    """W ← W + weight · (alpha / r) · up · down on every named layer, computed here; no LoRA layer is left."""
    import copy

    from aa_runtime.adapters import merge_lora

    unet = copy.deepcopy(tiny_base.unet)
    factors = _lora_file(unet, tmp_path / "fast.safetensors", kohya)
    before = {n: unet.get_submodule(n).weight.detach().clone() for n in factors}
    assert merge_lora(unet, tmp_path / "fast.safetensors", 0.5) == len(factors)
    for n, (down, up, scale) in factors.items():
        torch.testing.assert_close(unet.get_submodule(n).weight, before[n] + 0.5 * scale * up @ down, atol=1e-6,
                                   rtol=1e-5)
    assert not any("lora" in k for k in unet.state_dict())


def test_merge_lora_bad_inputs_are_one_line(tiny_base, tmp_path):
    import copy

    from aa_runtime.adapters import merge_lora, parse_lora_spec

    unet = copy.deepcopy(tiny_base.unet)
    with pytest.raises(AAError, match=r"^lora: .*nope.safetensors does not exist"):
        merge_lora(unet, tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(AAError) as e:
        merge_lora(unet, junk)
    assert str(e.value).startswith(f"lora: {junk} could not be read as a UNet LoRA") and "\n" not in str(e.value)
    _lora_file(unet, tmp_path / "ok.safetensors", kohya=True)
    with pytest.raises(AAError, match="lora weight: nan"):
        merge_lora(unet, tmp_path / "ok.safetensors", float("nan"))
    assert parse_lora_spec(f"{tmp_path}/ok.safetensors:0.7") == (tmp_path / "ok.safetensors", 0.7)
    assert parse_lora_spec(f"{tmp_path}/ok.safetensors") == (tmp_path / "ok.safetensors", 1.0)
