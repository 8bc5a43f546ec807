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
