"""Full gradient checkpointing: same gradients, every motion module recomputed exactly once, reversible."""
from __future__ import annotations

import pytest
import torch

from aa_train.checkpointing import CheckpointedModule, enable_full_gradient_checkpointing, motion_module_slots


@pytest.fixture(scope="module")
def unet():
    from aa_runtime.tiny import TinyConfig, build_unet

    torch.manual_seed(0)
    return build_unet(TinyConfig(unet_layers=1)).train().requires_grad_(True)


def inputs(frames: int = 3):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 8, frames, 16, 16, generator=g), torch.tensor(500),
            torch.randn(frames, 8, 64, generator=g))  # (B, 8, F, h, w), (), (B·F, T, D)


def grads(unet) -> dict[str, torch.Tensor]:
    unet.zero_grad(set_to_none=True)
    sample, t, text = inputs()
    out = unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]
    (out.square() * torch.linspace(0, 1, out.numel()).view_as(out)).mean().backward()
    return {n: p.grad.clone() for n, p in unet.named_parameters()}


def count_motion_calls(unet) -> list[int]:
    """How often each motion module starts in one forward + backward (2 = recomputed once; a pre-hook, since
    non-reentrant checkpointing stops a recomputation early once it has what backward needs)."""
    mods = [modules[j] for _, modules, j in motion_module_slots(unet)]
    mods = [m.inner if isinstance(m, CheckpointedModule) else m for m in mods]
    counts = [0] * len(mods)
    handles = [m.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, m in enumerate(mods)]
    try:
        grads(unet)
    finally:
        for h in handles:
            h.remove()
    return counts


def saved_bytes(unet) -> int:
    """Bytes autograd keeps for backward during one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    sample, t, text = inputs()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(sample, t, encoder_hidden_states=text, return_dict=False)[0].mean().backward()
    return total


def test_gradients_equal_and_every_motion_module_recomputed_once(unet):
    keys = list(unet.state_dict())
    reference = grads(unet)
    assert sum(g.abs().sum() for g in reference.values()) > 0

    unet.enable_gradient_checkpointing()
    partial = count_motion_calls(unet)
    assert 1 in partial, "diffusers now checkpoints every motion module: drop the wrapper"
    partial_bytes = saved_bytes(unet)
    unet.disable_gradient_checkpointing()

    restore = enable_full_gradient_checkpointing(unet)
    assert count_motion_calls(unet) == [2] * len(partial)  # every one recomputed, none twice
    full = {n.replace(".inner.", "."): g for n, g in grads(unet).items()}
    full_bytes = saved_bytes(unet)
    for name, g in reference.items():
        torch.testing.assert_close(full[name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert full_bytes < 0.8 * partial_bytes  # the motion modules' activations are no longer kept

    restore()
    assert list(unet.state_dict()) == keys
    assert not any(isinstance(m, CheckpointedModule) for m in unet.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in unet.modules())
    after = grads(unet)
    for name, g in reference.items():
        torch.testing.assert_close(after[name], g, rtol=1e-5, atol=1e-7)


def test_grads_match_with_wrapper_names(unet):
    """While enabled, parameter names gain `.inner.`; the gradients map one-to-one back onto the originals."""
    reference = grads(unet)
    restore = enable_full_gradient_checkpointing(unet)
    try:
        with pytest.raises(RuntimeError, match="already enabled"):
            enable_full_gradient_checkpointing(unet)
        wrapped = grads(unet)
    finally:
        restore()
    renamed = {n.replace(".inner.", "."): g for n, g in wrapped.items()}
    assert renamed.keys() == reference.keys()
    for name, g in reference.items():
        torch.testing.assert_close(renamed[name], g, rtol=1e-4, atol=1e-6)
