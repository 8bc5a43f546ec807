"""Model assembly: bundles, SD1.5 folder + AnimateDiff motion module, conv_in widening, key checks."""
import copy
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from aa_runtime.bundle import fingerprint
from aa_runtime.errors import AAError
from aa_runtime.model import load_base
from aa_runtime.sd15 import widen_conv_in


def test_sd15_folder_plus_motion_folder(sd15):
    root, motion = sd15
    base = load_base(root, motion)
    assert base.unet.config.in_channels == 8 and base.unet.conv_in.in_channels == 8
    assert (base.unet.conv_in.weight[:, 4:] == 0).all()
    out = base.unet(torch.randn(1, 8, 3, 8, 8), 5, encoder_hidden_states=torch.randn(3, 16, 32)).sample
    assert out.shape == (1, 4, 3, 8, 8)
    assert base.vae_scale == 2


def test_motion_module_file_in_diffusers_and_original_naming(sd15, tmp_path):
    root, motion = sd15
    ref = load_base(root, motion)
    state = load_file(str(motion / "diffusion_pytorch_model.safetensors"))
    save_file(state, str(tmp_path / "mm.safetensors"))
    # the original AnimateDiff naming (what mm_sd_v15_v2 ships), mapped back by the loader
    original = {}
    for k, v in state.items():
        k = re.sub(r"(motion_modules\.\d+\.)", r"\1temporal_transformer.", k)
        for new, old in ((".norm1", ".norms.0"), (".norm2", ".norms.1"), (".norm3", ".ff_norm"),
                         (".attn1", ".attention_blocks.0"), (".attn2", ".attention_blocks.1")):
            k = k.replace(new, old) if ".transformer_blocks." in k else k
        original[k] = v
    assert any(".temporal_transformer.transformer_blocks.0.attention_blocks.0." in k for k in original)
    save_file(original, str(tmp_path / "mm_original.safetensors"))
    for f in ("mm.safetensors", "mm_original.safetensors"):
        got = load_base(root, tmp_path / f)
        for (k, a), (k2, b) in zip(ref.unet.state_dict().items(), got.unet.state_dict().items()):
            assert k == k2 and torch.equal(a, b), f"{f}: {k}"
        assert got.fingerprint == ref.fingerprint


def test_widened_conv_in_with_zero_pose_equals_4_channel_unet(sd15):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    root, motion = sd15
    unet4 = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(root / "unet"),
                                        MotionAdapter.from_pretrained(motion)).eval()
    unet8 = widen_conv_in(copy.deepcopy(unet4))
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = unet4(x, 10, encoder_hidden_states=text).sample
        got = unet8(torch.cat([x, torch.zeros_like(x)], 1), 10, encoder_hidden_states=text).sample
        live = unet8(torch.cat([x, torch.ones_like(x)], 1), 10, encoder_hidden_states=text).sample
    assert torch.equal(ref, got)
    assert torch.equal(ref, live), "new channels start at zero, so even a non-zero pose has no effect yet"
    with torch.no_grad():
        unet8.conv_in.weight[:, 4:].normal_()
        moved = unet8(torch.cat([x, torch.ones_like(x)], 1), 10, encoder_hidden_states=text).sample
    assert (moved - ref).abs().max() > 1e-3


@pytest.mark.parametrize("remove, expected", [
    ("vae/diffusion_pytorch_model.safetensors", "no weights in"),
    ("text_encoder/config.json", "config.json is missing"),
    ("tokenizer/merges.txt", "merges.txt is missing"),
    ("scheduler/scheduler_config.json", "scheduler_config.json is missing"),
])
def test_missing_file_is_one_line(sd15, tmp_path, remove, expected):
    root, motion = sd15
    copy_root = tmp_path / "sd"
    shutil.copytree(root, copy_root)
    (copy_root / remove).unlink()
    with pytest.raises(AAError, match=expected) as e:
        load_base(copy_root, motion)
    assert "\n" not in str(e.value)


def test_corrupt_and_mismatched_weights(sd15, tmp_path):
    root, motion = sd15
    bad = tmp_path / "sd"
    shutil.copytree(root, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AAError, match="corrupted or unreadable"):
        load_base(bad, motion)
    shutil.rmtree(bad)
    shutil.copytree(root, bad)
    sd = load_file(str(bad / "unet" / "diffusion_pytorch_model.safetensors"))
    sd.pop(next(k for k in sd if k.endswith("conv_in.weight")))
    save_file(sd, str(bad / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(AAError, match="1 missing"):
        load_base(bad, motion)


def test_sd15_without_motion_module_and_missing_paths(sd15, tmp_path):
    root, _ = sd15
    with pytest.raises(AAError, match="--motion-module"):
        load_base(root)
    with pytest.raises(AAError, match="does not exist"):
        load_base(tmp_path / "nowhere")
    with pytest.raises(AAError, match="motion module"):
        load_base(root, tmp_path / "missing.safetensors")


def test_bundle_round_trip_and_fingerprint(tiny_base, tiny_bundle, tmp_path):
    from aa_runtime.bundle import save_bundle

    again = load_base(tiny_bundle)
    assert again.fingerprint == tiny_base.fingerprint == fingerprint(again.unet, again.vae, again.text_encoder)
    for (k, a), (_, b) in zip(tiny_base.unet.state_dict().items(), again.unet.state_dict().items()):
        assert torch.equal(a, b), k
    half = save_bundle(again, tmp_path / "half", half=True, tokenizer_dir=tiny_bundle / "tokenizer")
    from_half = load_base(half)
    assert from_half.fingerprint == tiny_base.fingerprint  # the fingerprint samples fp16-rounded values
    # an fp16 bundle loads as fp32 in every part (the text encoder's library would keep the stored dtype), with the
    # stored values exactly: the live model was left in fp32 while its fp16 copy was written
    for part in ("unet", "vae", "text_encoder"):
        stored, loaded = getattr(again, part).state_dict(), getattr(from_half, part).state_dict()
        assert {v.dtype for v in stored.values()} == {v.dtype for v in loaded.values()} == {torch.float32}, part
        for k, v in loaded.items():
            assert torch.equal(v, stored[k].half().float()), (part, k)
    sd = load_file(str(half / "unet" / "diffusion_pytorch_model.safetensors"))
    sd[next(iter(sd))] += 1
    save_file(sd, str(half / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(AAError, match="fingerprint"):
        load_base(half)


def test_random_base_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """build_random_base trains its tokenizer in a temporary folder; it used to leave one `aa-tok-*` folder behind per
    call. The tokenizer still reaches a saved bundle intact: the bundle's copy tokenizes as the in-memory one does."""
    import tempfile

    from aa_runtime.bundle import save_bundle
    from aa_runtime.tiny import TinyConfig, build_random_base
    from aa_runtime.tokenizer import load_clip_tokenizer

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = TinyConfig(unet_channels=(16, 16), unet_layers=1, unet_heads=2, motion_heads=2, text_dim=16)
    bases = [build_random_base(cfg, seed=s) for s in (0, 1)]
    assert list(scratch.iterdir()) == []
    bundle = save_bundle(bases[0], tmp_path / "b", half=False)
    assert list(scratch.iterdir()) == []
    loaded = load_clip_tokenizer(bundle / "tokenizer")
    text = "a woman in a green shirt dancing in a snow field"
    assert loaded(text).input_ids == bases[0].tokenizer(text).input_ids
    assert len(bases[0].tokenizer(text).input_ids) > 3  # words, not one unknown token
    assert load_base(bundle).fingerprint == bases[0].fingerprint
