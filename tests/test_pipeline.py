"""AnimatePipeline: determinism, guidance, pose conditioning, windowed sampling, input checks."""
import numpy as np
import pytest
import torch

from aa_runtime.errors import AAError
from aa_runtime.pipeline import context_windows
from aa_runtime.poses import PoseSequence
from aa_runtime.schedulers import make_scheduler
from conftest import stick_figure

FAST = dict(num_inference_steps=3, progress=False)


def test_same_seed_same_frames_other_seed_differs(pipe, poses):
    a = pipe("a man waving on a beach", poses, seed=7, **FAST)
    b = pipe("a man waving on a beach", poses, seed=7, **FAST)
    c = pipe("a man waving on a beach", poses, seed=8, **FAST)
    assert a.frames.shape == (4, 64, 64, 3) and a.frames.dtype == np.uint8
    np.testing.assert_array_equal(a.frames, b.frames)
    assert np.abs(a.frames.astype(int) - c.frames).mean() > 1


def test_guidance_on_and_off_differ(pipe, poses):
    off = pipe("a man waving on a beach", poses, guidance_scale=1.0, seed=1, **FAST)
    on = pipe("a man waving on a beach", poses, guidance_scale=7.0, seed=1, **FAST)
    assert off.timings["unet_evals"] * 2 == on.timings["unet_evals"]
    assert np.abs(off.frames.astype(int) - on.frames).mean() > 0.5


def test_pose_channels_are_live(pipe):
    still = PoseSequence(stick_figure(4), 64, 64, 8)
    moving = PoseSequence(stick_figure(4, shift=5.0), 64, 64, 8)
    a = pipe("a man", still, seed=3, pose_fit="frame", **FAST)
    b = pipe("a man", moving, seed=3, pose_fit="frame", **FAST)
    np.testing.assert_array_equal(a.pose_frames[0], b.pose_frames[0])  # same first pose
    assert (a.pose_frames[3] != b.pose_frames[3]).any()
    assert np.abs(a.frames.astype(int) - b.frames).mean() > 0.5


def _reference_sample(pipe, prompt, poses, steps, guidance, seed):
    """Unwindowed DDIM + CFG written out directly against the UNet: the pipeline's reference."""
    text, uncond = pipe.encode_prompt(prompt), pipe.encode_prompt("")
    seq = pipe.prepare_poses(poses, poses.frames, poses.fps, 64, 64, "person", True)
    from aa_runtime.poses import render_skeletons

    pose_latents = pipe.encode_images(render_skeletons(seq), 8)
    sched = make_scheduler("ddim", pipe.scheduler_config)
    sched.set_timesteps(steps)
    f = poses.frames
    latents = torch.randn((1, 4, f, 16, 16), generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = torch.cat([latents, pose_latents], 1).repeat(2, 1, 1, 1, 1)  # (2, 8, F, h, w)
            emb = torch.cat([uncond.repeat(f, 1, 1), text.repeat(f, 1, 1)])  # (2·F, T, D)
            eps_u, eps_c = pipe.unet(x, t, encoder_hidden_states=emb).sample.chunk(2)
            latents = sched.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
    return pipe.decode_latents(latents, 8)


def test_window_covering_all_frames_equals_unwindowed_reference(pipe):
    poses = PoseSequence(stick_figure(6, shift=1.0), 64, 64, 8)
    ref = _reference_sample(pipe, "a woman dancing", poses, 3, 4.0, 11)
    for window in (6, 12):
        out = pipe("a woman dancing", poses, num_inference_steps=3, guidance_scale=4.0, seed=11,
                   scheduler="ddim", window=window, overlap=2, progress=False)
        assert np.abs(out.frames.astype(int) - ref).max() <= 1, window


def test_overlapping_windows_cover_every_frame_and_run_any_length(pipe):
    assert context_windows(10, 16, 4) == [(0, 10)]
    assert context_windows(20, 8, 2) == [(0, 8), (6, 14), (12, 20)]
    assert context_windows(21, 8, 2) == [(0, 8), (6, 14), (12, 20), (13, 21)]
    poses = PoseSequence(stick_figure(10, shift=1.0), 64, 64, 8)
    out = pipe("a man walking", poses, window=4, overlap=1, seed=0, **FAST)
    assert out.frames.shape[0] == 10 and out.timings["unet_evals"] == 3 * 2 * len(context_windows(10, 4, 1))
    whole = pipe("a man walking", poses, window=16, seed=0, **FAST)
    assert np.abs(out.frames.astype(int) - whole.frames).mean() > 0  # windows see less context: not identical


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "euler"])
def test_each_scheduler_gives_finite_video(pipe, poses, scheduler):
    out = pipe("a man", poses, scheduler=scheduler, seed=0, **FAST)
    assert out.frames.shape == (4, 64, 64, 3) and out.frames.std() > 0


def test_resamples_pose_source_to_requested_frames(pipe):
    poses = PoseSequence(stick_figure(3, shift=4.0), 64, 64, 4.0)
    out = pipe("a man", poses, num_frames=6, fps=8.0, seed=0, **FAST)
    assert out.frames.shape[0] == 6 and out.pose_frames.shape == (6, 64, 64, 3)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(prompt=""), "prompt"),
    (dict(height=60), "height: 60"),
    (dict(width=8), "width: 8"),
    (dict(num_frames=0), None),  # 0 frames means "from the pose source"; not an error
    (dict(num_inference_steps=5000), "steps: 5000"),
    (dict(guidance_scale=0.5), "guidance: 0.5"),
    (dict(scheduler="plms"), "scheduler"),
    (dict(window=64), "window: 64"),
    (dict(window=4, overlap=4), None),  # overlap is clamped below the window
])
def test_check_inputs(pipe, poses, kwargs, expected):
    args = dict(prompt="a man", poses=poses, num_inference_steps=1, progress=False) | kwargs
    if expected is None:
        pipe(args.pop("prompt"), args.pop("poses"), **args)
        return
    with pytest.raises(AAError, match=expected) as e:
        pipe(args.pop("prompt"), args.pop("poses"), **args)
    assert "\n" not in str(e.value)


def test_initial_noise_mixes_a_shared_frame_noise_with_unit_variance():
    from aa_runtime.pipeline import initial_noise

    shape = (1, 4, 16, 32, 32)  # (B, C, F, h, w)
    plain = initial_noise(shape, seed=3)
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(3)))  # ρ = 0: unchanged
    mixed = initial_noise(shape, seed=3, correlation=0.5)
    frames = mixed[0].permute(1, 0, 2, 3).reshape(16, -1)  # (F, C·h·w)
    corr = torch.corrcoef(frames)
    off_diagonal = corr[~torch.eye(16, dtype=bool)]
    assert abs(off_diagonal.mean().item() - 0.5) < 0.05  # frames correlate by ρ
    assert abs(mixed.std().item() - 1.0) < 0.03  # and every frame is still unit-variance noise
    plain_corr = torch.corrcoef(plain[0].permute(1, 0, 2, 3).reshape(16, -1))[~torch.eye(16, dtype=bool)]
    assert plain_corr.abs().max() < 0.1


def test_noise_correlation_out_of_range_is_one_clear_error(pipe):
    with pytest.raises(AAError, match="noise correlation"):
        pipe("a man", PoseSequence(stick_figure(2), 64, 64, 8), num_frames=2, num_inference_steps=1, noise_correlation=1.0, progress=False)
