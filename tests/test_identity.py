"""`aa-train identity` end to end on a tiny random base: only LoRA trains, the adapter is complete and usable."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aa_runtime.adapters import load_adapter
from aa_runtime.model import load_base


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from aa_world.clips import ClipSpec, render_clip, write_clip

    d = tmp_path_factory.mktemp("ref")
    write_clip(render_clip(ClipSpec(identity_seed=1_000_007, scene="beach", scene_seed=1, motion="turn",
                                    frames=12, fps=8.0, seed=3)), d / "ref.mp4")
    return d / "ref.mp4"


@pytest.fixture(scope="module")
def trained(tiny_bundle, reference, tmp_path_factory):
    from aa_train.identity import IdentityTrainConfig, train_identity

    out = tmp_path_factory.mktemp("id") / "me.safetensors"
    cfg = IdentityTrainConfig(video=reference, name="me", class_word="man", output=out, base=str(tiny_bundle),
                              stage1_steps=6, stage2_steps=3, image_batch=2, clip_frames=4, prior_steps=2,
                              lr=5e-3, cache_dir=out.parent / "cache")
    return train_identity(cfg, log=lambda *_: None)


def test_only_lora_trains(trained, tiny_bundle):
    fresh = load_base(tiny_bundle).unet.state_dict()
    state = trained.base.unet.state_dict()
    lora = [k for k in state if "lora_" in k]
    assert lora and all("attn2" in k and "motion_modules" not in k for k in lora)
    for k, v in state.items():
        if "lora_" not in k:
            assert torch.equal(v, fresh[k.replace(".base_layer", "")]), k
    for name in ("vae", "text_encoder"):
        ref = getattr(load_base(tiny_bundle), name).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in getattr(trained.base, name).state_dict().items())


def test_adapter_file_is_complete(trained, tiny_base):
    a = load_adapter(trained.adapter)
    assert a.identifier == "<me>" and a.meta["class_word"] == "man" and a.rank == 8
    assert a.base_fingerprint == tiny_base.fingerprint
    assert a.bone_lengths is not None and np.isfinite(a.bone_lengths).sum() >= 12
    assert a.meta["training"]["stages"]["stage1"]["steps"] == 6 and a.meta["training"]["caption"].startswith("a <me> man")
    assert any(b.abs().max() > 0 for b in a.lora_B.values()), "training moved B away from its zero init"
    assert trained.adapter.with_suffix(".loss.png").stat().st_size > 1000
    assert trained.adapter.with_suffix(".annotations.png").is_file()
    assert trained.adapter.stat().st_size < 400_000
    assert sorted(p.name for p in trained.adapter.parent.iterdir()) == [  # no checkpoint or work folder left
        "cache", "me.annotations.png", "me.loss.png", "me.safetensors"]


def test_adapter_drives_aa_run(trained, tiny_bundle, tmp_path):
    from aa_runtime.cli import main

    out = tmp_path / "me.mp4"
    res = CliRunner().invoke(main, ["--base", str(tiny_bundle), "--adapter", str(trained.adapter), "--prompt",
                                    "a <me> man on a snow field", "--motion", "dance", "--frames", "4", "--steps", "2",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["adapter_sha256"] == load_adapter(trained.adapter).sha256 and side["retarget"] is True


def test_separate_prior_pass_trains_only_lora(tiny_bundle, reference, tmp_path):
    """The low-memory path (prior sample in its own backward) trains the same parameters."""
    from aa_train.identity import IdentityTrainConfig, train_identity

    cfg = IdentityTrainConfig(video=reference, name="me", class_word="man", output=tmp_path / "s.safetensors",
                              base=str(tiny_bundle), stage1_steps=2, stage2_steps=1, image_batch=2, clip_frames=4,
                              prior_steps=2, separate_prior=True, cache_dir=tmp_path / "cache", preview=False)
    result = train_identity(cfg, log=lambda *_: None)
    assert all(np.isfinite(v) for v in (result.summary["stages"]["stage1"]["final_loss"],
                                        result.summary["stages"]["stage2"]["final_loss"]))
    assert any(b.abs().max() > 0 for b in load_adapter(result.adapter).lora_B.values())


def test_config_errors_are_one_line(tmp_path):
    from aa_runtime.errors import AAError
    from aa_train.identity import IdentityTrainConfig

    for kwargs, expected in [(dict(name="my name"), "name"), (dict(output=tmp_path / "x.pt"), ".safetensors"),
                             (dict(bw_alpha=2.0), "bw-alpha"), (dict(mask_attention_weight=-1), "mask-attention"),
                             (dict(stage1_steps=0, stage2_steps=0), "train at least one stage")]:
        args = dict(video=tmp_path / "v.mp4", name="me", class_word="man", output=tmp_path / "a.safetensors") | kwargs
        with pytest.raises(AAError, match=expected):
            IdentityTrainConfig(**args)
