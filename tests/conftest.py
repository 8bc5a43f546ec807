"""Shared fixtures: tiny random components built in code (seeded), no downloads."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A random aa-tiny-shaped bundle saved to disk (fp32 so reloads are exact)."""
    from aa_runtime.bundle import save_bundle
    from aa_runtime.tiny import TinyConfig, build_random_base

    base = build_random_base(TinyConfig(), seed=0)
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    save_bundle(base, path, half=False, name="tiny-random")
    return path


@pytest.fixture(scope="session")
def tiny_base(tiny_bundle):
    from aa_runtime.model import load_base

    return load_base(tiny_bundle)


@pytest.fixture()
def pipe(tiny_bundle):
    """A fresh pipeline per test (adapters merge into the UNet, so it is not shared)."""
    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline

    return AnimatePipeline.from_base(load_base(tiny_bundle))


def stick_figure(frames: int = 4, size: int = 64, shift: float = 0.0) -> np.ndarray:
    """A standing OpenPose-18 figure, drifting right by `shift` px a frame: float32 (F, 18, 3)."""
    s = size / 64
    base = np.array([
        [32, 10], [32, 18], [26, 18], [23, 27], [21, 35], [38, 18], [41, 27], [43, 35],
        [28, 36], [27, 46], [27, 56], [36, 36], [37, 46], [37, 56], [30, 9], [34, 9], [28, 10], [36, 10],
    ], dtype=np.float32) * s
    kp = np.zeros((frames, 18, 3), dtype=np.float32)
    kp[:, :, :2] = base
    kp[:, :, 0] += np.arange(frames, dtype=np.float32)[:, None] * shift
    kp[:, :, 2] = 1.0
    return kp


@pytest.fixture()
def poses():
    from aa_runtime.poses import PoseSequence

    return PoseSequence(stick_figure(4), 64, 64, 8.0)


def tiny_sd15(tmp_path):
    """A tiny SD-shaped model saved in the diffusers SD1.5 folder layout, plus a motion adapter folder."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import json

    from aa_runtime.bundle import DEFAULT_SCHEDULER
    from aa_runtime.tokenizer import load_clip_tokenizer, train_clip_tokenizer

    torch.manual_seed(0)
    root = tmp_path / "sd15"
    tok_dir = train_clip_tokenizer(["a man on a beach", "a woman in a forest"] * 10, root / "tokenizer", 300, 16)
    tok = load_clip_tokenizer(tok_dir)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=16, eos_token_id=tok.eos_token_id,
                                 bos_token_id=tok.bos_token_id)).save_pretrained(root / "text_encoder")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(DEFAULT_SCHEDULER))
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=8,
                            motion_num_attention_heads=8, motion_max_seq_length=32)
    for p in adapter.parameters():  # a trained adapter is not the identity: make its output projections live
        torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else None
    adapter.save_pretrained(tmp_path / "motion")
    return root, tmp_path / "motion"


@pytest.fixture(scope="session")
def sd15(tmp_path_factory):
    """(SD1.5-layout folder, motion adapter folder) of tiny random weights."""
    return tiny_sd15(tmp_path_factory.mktemp("sd"))
