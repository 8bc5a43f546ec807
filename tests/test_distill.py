"""`aa-train distill`: the LCD pieces against diffusers' own schedulers, and the student bundle end to end."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from aa_runtime.errors import AAError


@pytest.fixture(scope="module")
def terms(tiny_base):
    from aa_train.distill import ConsistencyTerms

    return ConsistencyTerms(tiny_base.scheduler_config, skip=20)


def test_consistency_function_is_what_the_lcm_scheduler_denoises(tiny_base, terms):
    """f(x, t) = c_skip·x + c_out·x̂₀, the student's training output, equals LCMScheduler.step's `denoised` (what
    the runtime's --scheduler lcm returns at that step) for the same ε, on the grid it samples."""
    from diffusers import LCMScheduler

    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 4, 2, 8, 8, generator=g)
    for t in (999, 499, 19):
        sched = LCMScheduler.from_config(tiny_base.scheduler_config, original_inference_steps=50)
        sched.set_timesteps(50)
        assert t in sched.timesteps.tolist()
        denoised = sched.step(eps, t, x, generator=g, return_dict=True).denoised
        ours = terms.consistency(eps, x, torch.tensor([t]))
        torch.testing.assert_close(ours, denoised, rtol=1e-5, atol=1e-5)


def test_teacher_solver_step_is_deterministic_ddim(tiny_base, terms):
    """The teacher's ODE step t → t − 20 equals diffusers' DDIM (eta 0) on the same 50-point trailing grid, the last
    step (t = 19) included, where DDIM ends at ᾱ₀."""
    from diffusers import DDIMScheduler

    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(2, 4, 2, 8, 8, generator=g)
    for t in (999, 259, 19):
        ddim = DDIMScheduler.from_config(tiny_base.scheduler_config, timestep_spacing="trailing")
        ddim.set_timesteps(50)
        assert t in ddim.timesteps.tolist()
        want = ddim.step(eps, t, x, eta=0.0).prev_sample
        tt = torch.tensor([t, t])
        torch.testing.assert_close(terms.ddim_step(eps, x, tt, (tt - 20).clamp(min=0)), want, rtol=1e-5, atol=1e-5)


def test_lcd_loss_equals_a_reference_built_from_the_diffusers_schedulers(tiny_base, terms):
    """The loss for a batch of two clips at different grid points and guidance scales, against a per-clip
    reference written with diffusers' DDPM noising, DDIM teacher step and LCMScheduler's denoised output."""
    from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

    from aa_train.distill import lcd_loss

    teacher = tiny_base.unet
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    target = copy.deepcopy(student)
    g = torch.Generator().manual_seed(2)
    b, f = 2, 2
    z, p, noise = (torch.randn(b, 4, f, 16, 16, generator=g) for _ in range(3))
    dim = teacher.config.cross_attention_dim
    text, uncond = torch.randn(b, 8, dim, generator=g), torch.randn(b, 8, dim, generator=g)
    index, guidance = torch.tensor([49, 3]), torch.tensor([5.0, 4.0])
    with torch.no_grad():
        got = lcd_loss(student, target, teacher, terms, z, p, text, uncond, noise, index, guidance, huber_c=0.001)

    def unet(net, x, pose, t, emb):
        return net(torch.cat([x, pose], 1), torch.tensor([t]), encoder_hidden_states=emb.repeat_interleave(f, 0)).sample

    def denoised(eps, t, x):
        lcm = LCMScheduler.from_config(tiny_base.scheduler_config, original_inference_steps=50)
        lcm.set_timesteps(50)
        return lcm.step(eps, t, x, return_dict=True).denoised

    losses = []
    with torch.no_grad():
        for i in range(b):
            t = 20 * (int(index[i]) + 1) - 1
            zi, pi, ti, ui = z[i:i + 1], p[i:i + 1], text[i:i + 1], uncond[i:i + 1]
            x_t = DDPMScheduler.from_config(tiny_base.scheduler_config).add_noise(zi, noise[i:i + 1], torch.tensor([t]))
            pred = denoised(unet(student, x_t, pi, t, ti), t, x_t)
            e_u, e_c = unet(teacher, x_t, pi, t, ui), unet(teacher, x_t, pi, t, ti)
            ddim = DDIMScheduler.from_config(tiny_base.scheduler_config, timestep_spacing="trailing")
            ddim.set_timesteps(50)
            x_s = ddim.step(e_u + float(guidance[i]) * (e_c - e_u), t, x_t, eta=0.0).prev_sample
            s = max(t - 20, 0)
            goal = denoised(unet(target, x_s, pi, s, ti), s, x_s)
            losses.append((torch.sqrt((pred - goal) ** 2 + 0.001 ** 2) - 0.001).flatten())
    want = torch.cat(losses).mean()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert got > 0


def test_distill_writes_a_few_step_student_that_serves_the_teachers_adapters(tmp_path, tiny_bundle, tiny_base):
    """Two LCD steps on two world clips: a student bundle whose defaults are the few-step sampler, whose manifest
    names the teacher and the method, whose UNet moved from the teacher's, and into which an adapter made for the
    teacher merges without --force (one made for another base still needs it)."""
    from aa_runtime.adapters import load_adapter
    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline
    from aa_runtime.pose_sources import motion_poses
    from aa_train.distill import DistillConfig, distill

    from test_adapters import random_adapter

    cfg = DistillConfig(teacher=str(tiny_bundle), output=tmp_path / "student", data=("world:2",),
                        work_dir=tmp_path / "work", frames=2, steps=2, batch=1, warmup=1, checkpoint_every=1)
    distill(cfg, log=lambda *_: None)
    manifest = json.loads((tmp_path / "student" / "aa_bundle.json").read_text())
    d = manifest["provenance"]["distill"]
    assert d["teacher"]["fingerprint"] == tiny_base.fingerprint and "latent consistency" in d["method"]
    assert manifest["sample"]["scheduler"] == "lcm" and manifest["sample"]["steps"] == 4
    assert manifest["sample"]["guidance"] == 2.0 and manifest["name"].endswith("-lcm")
    student = load_base(tmp_path / "student")
    assert student.adapter_bases == (student.fingerprint, tiny_base.fingerprint)
    moved = max((a.float() - b.float()).abs().max().item() for a, b in
                zip(student.unet.state_dict().values(), tiny_base.unet.state_dict().values()))
    assert moved > 1e-4
    pipe = AnimatePipeline.from_base(student)
    pipe.set_identity(load_adapter(random_adapter(tiny_base.unet, tmp_path / "a.safetensors", tiny_base.fingerprint)))
    out = pipe("a <sks> man on a beach", motion_poses("wave", 2, 8.0, 64, 64), progress=False)
    assert out.timings["unet_evals"] == 8 and out.frames.shape == (2, 64, 64, 3)  # 4 steps × CFG
    other = AnimatePipeline.from_base(load_base(tmp_path / "student"))
    with pytest.raises(AAError, match="made for base"):
        other.set_identity(load_adapter(random_adapter(tiny_base.unet, tmp_path / "b.safetensors", "0" * 16)))
    with pytest.raises(AAError, match="distilled bundle"):
        distill(DistillConfig(teacher=str(tmp_path / "student"), output=tmp_path / "again", data=("world:2",),
                              work_dir=tmp_path / "work2", frames=2, steps=1, batch=1), log=lambda *_: None)
    # --student-init: a later run continues that student (a step at lr ≈ 0 leaves it where it was, up to fp16
    # rounding of the saved bundle), names it in the provenance, and refuses a bundle that is not a student
    again = DistillConfig(teacher=str(tiny_bundle), output=tmp_path / "again", data=("world:2",), lr=1e-12,
                          work_dir=tmp_path / "work3", frames=2, steps=1, batch=1, student_init=str(tmp_path / "student"))
    distill(again, log=lambda *_: None)
    cont = load_base(tmp_path / "again")
    assert cont.manifest["provenance"]["distill"]["student_init"]["fingerprint"] == student.fingerprint
    for (k, a), b in zip(cont.unet.state_dict().items(), load_base(tmp_path / "student").unet.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")
    with pytest.raises(AAError, match="student-init"):
        distill(DistillConfig(teacher=str(tiny_bundle), output=tmp_path / "x", data=("world:2",), frames=2, steps=1,
                              batch=1, work_dir=tmp_path / "work4", student_init=str(tiny_bundle)), log=lambda *_: None)


@pytest.mark.parametrize("field, value", [("guidance_min", 7.0), ("steps", 0), ("skip", 7), ("loss", "l1"),
                                          ("target_ema", 1.0), ("sample_guidance", 0.5)])
def test_bad_distill_settings_are_one_clear_error(tmp_path, tiny_bundle, field, value):
    from aa_train.distill import DistillConfig

    with pytest.raises(AAError):
        DistillConfig(teacher=str(tiny_bundle), output=tmp_path / "s", data=("world:2",), **{field: value})
