"""AnimatePipeline: determinism, guidance, pose conditioning, windowed sampling, input checks."""
import dataclasses

import numpy as np
import pytest
import torch

from aa_runtime.bundle import SampleDefaults
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


class OracleDenoiser:
    """A UNet stand-in that knows the clean latents x0 (1, 4, F, h, w): it returns the exact noise of its input,
    ε = (x − √ᾱ_t·x0) / √(1 − ᾱ_t), with ᾱ the scaled-linear schedule of the base's scheduler config, computed here by
    hand in float64 (not by diffusers)."""

    name = "oracle"

    def __init__(self, x0: torch.Tensor, config: dict):
        assert (config["beta_schedule"], config["num_train_timesteps"], config["prediction_type"]) == \
            ("scaled_linear", 1000, "epsilon")
        betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
        self.acp, self.x0 = torch.cumprod(1 - betas, 0), x0.double()
        self.calls: list[tuple[int, torch.Tensor]] = []  # (timestep, latent channels of the input) per call

    def __call__(self, sample, timestep, text):  # sample (B, 8, F, h, w): 4 latent + 4 pose channels
        self.calls.append((int(round(float(timestep))), sample[:, :4].clone()))
        a = self.acp[self.calls[-1][0]]
        eps = (sample[:, :4].double() - a.sqrt() * self.x0) / (1 - a).sqrt()
        return eps.float()


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "euler", "euler-trailing", "lcm", "tcd"])
def test_each_scheduler_reaches_the_clean_latents_given_the_exact_noise(pipe, poses, scheduler):
    """With a denoiser that predicts the exact noise, every sampler must land on the clean latents: DPM-Solver++ and
    Euler (leading or trailing timesteps) end at σ = 0, so on x0 itself; LCM predicts x0 at every step and re-noises
    only towards the next one, so it ends on it too (its boundary weight on the input is ~1e-7 at the last timestep);
    TCD's last step, like DDIM's, lands on ᾱ_0 with the noise direction of its last input; DDIM (η = 0) keeps the starting noise direction ε and ends at ᾱ_0 (the
    config has set_alpha_to_one = false), i.e. on √ᾱ_0·x0 + √(1 − ᾱ_0)·ε with ε from the initial noise x_T at the
    first timestep, 1000 // 8 · 7 + 1 = 876 (leading spacing, offset 1). The first model input must be the
    variance-preserving x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·noise whatever the sampler's own parametrisation (init noise
    sigma and input scaling: for Euler, x_T·√(σ_max² + 1) / √(σ_t² + 1)); its std is checked to 5 % (4096 values: the
    sampling error of a std is ~1 %). Checks the pipeline's scheduler wiring, not the network. Tolerance on the end
    point 1e-4: float32 rounding over 8 steps is ~1e-6 here, while a wrong coefficient misses by more than 1e-2."""
    from aa_runtime.pipeline import initial_noise

    x0 = torch.randn((1, 4, 4, 16, 16), generator=torch.Generator().manual_seed(5)) * 0.8  # (B, C, F, h, w)
    oracle = OracleDenoiser(x0, pipe.scheduler_config)
    pipe.set_backend(oracle)
    captured = {}
    pipe.decode_latents = lambda latents, chunk: captured.setdefault("z", latents.clone()).new_zeros(0)
    pipe("a man", poses, scheduler=scheduler, seed=9, num_inference_steps=8, progress=False)
    t, first = oracle.calls[0]
    a = float(oracle.acp[t])
    assert first.std().item() == pytest.approx((a * x0.var().item() + 1 - a) ** 0.5, rel=0.05)
    if scheduler == "ddim":
        acp = oracle.acp.float()
        x_t = initial_noise(x0.shape, 9)  # DDIM's init noise sigma is 1
        eps = (x_t - acp[876].sqrt() * x0) / (1 - acp[876]).sqrt()
        expected = acp[0].sqrt() * x0 + (1 - acp[0]).sqrt() * eps
    elif scheduler == "tcd":
        acp = oracle.acp.float()
        t_last, x_last = oracle.calls[-1][0], oracle.calls[-1][1][:1]  # the CFG pair is one input; no rescaling
        eps = (x_last - acp[t_last].sqrt() * x0) / (1 - acp[t_last]).sqrt()
        expected = acp[0].sqrt() * x0 + (1 - acp[0]).sqrt() * eps
    else:
        expected = x0
    torch.testing.assert_close(captured["z"], expected, rtol=0, atol=1e-4)


def test_resamples_pose_source_to_requested_frames(pipe):
    poses = PoseSequence(stick_figure(3, shift=4.0), 64, 64, 4.0)
    out = pipe("a man", poses, num_frames=6, fps=8.0, seed=0, **FAST)
    assert out.frames.shape[0] == 6 and out.pose_frames.shape == (6, 64, 64, 3)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(prompt=""), "prompt"),
    (dict(height=60), "height: 60"),
    (dict(width=8), "width: 8"),
    (dict(height=0), "height: 0"),  # 0 is refused, not read as "the default"
    (dict(num_frames=0), "frames: 0"),
    (dict(num_frames=-3), "frames: -3"),
    (dict(fps=0.0), "fps: 0.0"),
    (dict(fps=float("nan")), "fps: nan"),
    (dict(num_inference_steps=0), "steps: 0"),
    (dict(num_inference_steps=5000), "steps: 5000"),
    (dict(guidance_scale=0.5), "guidance: 0.5"),
    (dict(scheduler="plms"), "scheduler"),
    (dict(window=0), "window: 0"),
    (dict(window=64), "window: 64"),
    (dict(window=4, overlap=4), "overlap: 4"),  # an overlap given as long as the window is refused, not clamped
    (dict(overlap=-1), "overlap: -1"),
])
def test_check_inputs(pipe, poses, kwargs, expected):
    args = dict(prompt="a man", poses=poses, num_inference_steps=1, progress=False) | kwargs
    with pytest.raises(AAError, match=expected) as e:
        pipe(args.pop("prompt"), args.pop("poses"), **args)
    assert "\n" not in str(e.value)


def test_output_records_the_windows_that_ran(pipe):
    """Defaults resolve to what the sampler runs, and the output says what that was: a window longer than the clip
    runs as one window of the clip's length with no overlap (and gives the frames that window/overlap give when asked
    for); the default overlap (4) is shortened to fit a short window. Window lists written out by hand."""
    four = PoseSequence(stick_figure(4, shift=1.0), 64, 64, 8)
    out = pipe("a man walking", four, window=16, overlap=2, seed=0, **FAST)
    assert (out.windows, out.window, out.overlap) == ([(0, 4)], 4, 0)
    same = pipe("a man walking", four, window=out.window, overlap=out.overlap, seed=0, **FAST)
    np.testing.assert_array_equal(same.frames, out.frames)  # same seed, process and threads: the same frames
    ten = PoseSequence(stick_figure(10, shift=1.0), 64, 64, 8)
    out = pipe("a man walking", ten, window=4, seed=0, num_inference_steps=1, progress=False)
    assert out.window == 4 and out.overlap == 3  # default overlap 4 → window − 1
    assert out.windows == [(0, 4), (1, 5), (2, 6), (3, 7), (4, 8), (5, 9), (6, 10)]
    out = pipe("a man walking", ten, window=8, overlap=2, seed=0, num_inference_steps=1, progress=False)
    assert (out.windows, out.window, out.overlap) == ([(0, 8), (2, 10)], 8, 6)  # the last window ends at frame 10


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


def test_shared_low_frequencies_are_common_to_all_frames_and_each_frame_stays_white():
    """`noise_shared_frequency` r: the spatial frequencies within r cycles per latent frame are the same in every
    frame, every other frequency is the plain noise's own (checked with numpy's FFT), so each frame is still white
    unit-variance noise; r < 0 is the plain noise, bit for bit."""
    from aa_runtime.pipeline import initial_noise

    shape = (8, 4, 6, 16, 16)  # (B, C, F, h, w)
    plain = initial_noise(shape, seed=3)
    assert torch.equal(initial_noise(shape, seed=3, shared_frequency=-1.0), plain)
    dc = initial_noise(shape, seed=3, shared_frequency=0.0)
    means = dc.mean((-2, -1))  # (B, C, F): each frame's mean, one per channel
    assert torch.allclose(means, means[:, :, :1].expand_as(means), atol=1e-6)  # the same in every frame
    assert torch.allclose(dc - means[..., None, None], plain - plain.mean((-2, -1), keepdim=True), atol=1e-5)
    assert means[:, :, 0].std().item() == pytest.approx(1 / 16, rel=0.3)  # a white frame's mean: σ / √(h·w)

    low = initial_noise(shape, seed=3, shared_frequency=1.5)
    f_low, f_plain = np.fft.fft2(low.numpy()), np.fft.fft2(plain.numpy())
    fy, fx = np.meshgrid(np.fft.fftfreq(16) * 16, np.fft.fftfreq(16) * 16, indexing="ij")
    inside = np.hypot(fy, fx) <= 1.5  # the mean and its 8 neighbours
    assert inside.sum() == 9
    assert np.allclose(f_low[..., inside], f_low[:, :, :1][..., inside], atol=1e-3)  # common to the frames
    assert np.allclose(f_low[..., ~inside], f_plain[..., ~inside], atol=1e-3)  # the rest is each frame's own
    power = (np.abs(f_low) ** 2).mean((0, 1, 2)) / (16 * 16)  # per frequency, 1 for white unit-variance noise
    assert power[inside].mean() == pytest.approx(1, rel=0.2) and power[~inside].mean() == pytest.approx(1, rel=0.05)
    both = initial_noise(shape, seed=3, correlation=0.5, shared_frequency=0.0)  # with ρ: the rest mixes as before
    assert abs(both.std().item() - 1) < 0.03
    assert torch.allclose(both.mean((-2, -1)), both.mean((-2, -1))[:, :, :1].expand(8, 4, 6), atol=1e-6)


def test_progressive_noise_ties_neighbouring_frames_and_each_frame_stays_unit_gaussian():
    """`noise_progressive` c: frame f = c × frame f−1 + √(1−c²) × its own draw, so frames k apart correlate by cᵏ
    and every frame is still unit-variance noise; with a shared frequency as well, the mean is then common."""
    from aa_runtime.pipeline import initial_noise

    shape = (4, 4, 8, 32, 32)
    plain = initial_noise(shape, seed=5)
    tied = initial_noise(shape, seed=5, progressive=0.6)
    assert torch.equal(tied[:, :, 0], plain[:, :, 0])  # the recursion starts from the first frame's own draw
    assert torch.allclose(tied[:, :, 3], 0.6 * tied[:, :, 2] + 0.8 * plain[:, :, 3], atol=1e-6)
    frames = tied.permute(2, 0, 1, 3, 4).reshape(8, -1)  # (F, 16,384 values)
    corr = torch.corrcoef(frames)
    for k in (1, 2, 3):
        lag = torch.diagonal(corr, offset=k)
        assert abs(lag.mean().item() - 0.6 ** k) < 0.03, k
    assert abs(frames.std(1) - 1).max() < 0.03
    both = initial_noise(shape, seed=5, shared_frequency=0.0, progressive=0.6)
    means = both.mean((-2, -1))
    assert torch.allclose(means, means[:, :, :1].expand_as(means), atol=1e-6)
    assert torch.allclose(both - means[..., None, None], tied - tied.mean((-2, -1), keepdim=True), atol=1e-5)


def test_noise_shared_frequency_comes_from_the_bundle_and_bad_values_are_one_clear_error(pipe):
    poses = PoseSequence(stick_figure(2), 64, 64, 8)
    kw = dict(num_frames=2, num_inference_steps=1, progress=False)
    assert pipe.defaults.noise_shared_frequency == -1.0 and pipe.defaults.noise_progressive == 0.0  # off by default
    off = pipe("a man", poses, **kw).frames
    assert np.array_equal(off, pipe("a man", poses, noise_shared_frequency=-1.0, **kw).frames)
    assert not np.array_equal(off, pipe("a man", poses, noise_shared_frequency=0.0, **kw).frames)
    with pytest.raises(AAError, match="noise shared frequency"):
        pipe("a man", poses, noise_shared_frequency=float("nan"), **kw)
    with pytest.raises(AAError, match="noise progressive"):
        pipe("a man", poses, noise_progressive=1.0, **kw)
    with pytest.raises(AAError, match="noise_shared_frequency"):
        SampleDefaults(noise_shared_frequency="low")
    with pytest.raises(AAError, match="noise_progressive"):
        SampleDefaults(noise_progressive=-0.1)


def test_lcm_renoising_ties_its_frames_as_the_initial_noise(pipe, poses):
    """With a shared frequency, LCM's fresh noise between steps (x = √ᾱ·x̂₀ + √(1−ᾱ)·z) gets z's mean common to
    all frames, the rest of z untouched; with progressive noise z's frames are chained as the initial noise's are; in the pipeline this is seeded like the rest (the same seed repeats the
    video) and changes it."""
    from aa_runtime.pipeline import tied_renoise

    g = torch.Generator().manual_seed(0)
    denoised, z = torch.randn(2, 4, 5, 8, 8, generator=g), torch.randn(2, 4, 5, 8, 8, generator=g)
    alpha = torch.tensor(0.3)
    out = tied_renoise(alpha.sqrt() * denoised + (1 - alpha).sqrt() * z, denoised, alpha, g, 0.0, 0.0)
    z2 = (out - alpha.sqrt() * denoised) / (1 - alpha).sqrt()
    means = z2.mean((-2, -1))
    assert torch.allclose(means, means[:, :, :1].expand_as(means), atol=1e-5)
    assert torch.allclose(z2 - means[..., None, None], z - z.mean((-2, -1), keepdim=True), atol=1e-5)
    out = tied_renoise(alpha.sqrt() * denoised + (1 - alpha).sqrt() * z, denoised, alpha, g, -1.0, 0.6)
    z3 = (out - alpha.sqrt() * denoised) / (1 - alpha).sqrt()  # progressive: frame 1 = 0.6 frame 0 + 0.8 its own
    assert torch.allclose(z3[:, :, 1], 0.6 * z[:, :, 0] + 0.8 * z[:, :, 1], atol=1e-5)

    kw = dict(scheduler="lcm", guidance_scale=1.0, seed=4, **FAST)
    shared = pipe("a man", poses, noise_shared_frequency=0.0, **kw).frames
    assert np.array_equal(shared, pipe("a man", poses, noise_shared_frequency=0.0, **kw).frames)
    assert not np.array_equal(shared, pipe("a man", poses, noise_shared_frequency=-1.0, **kw).frames)


def test_noise_correlation_out_of_range_is_one_clear_error(pipe):
    with pytest.raises(AAError, match="noise correlation"):
        pipe("a man", PoseSequence(stick_figure(2), 64, 64, 8), num_frames=2, num_inference_steps=1, noise_correlation=1.0, progress=False)


@pytest.mark.parametrize("scheduler", ["lcm", "tcd"])
def test_consistency_schedulers_renoise_from_the_seed(pipe, poses, scheduler):
    """LCM and TCD draw fresh noise between steps: from the seed's own generator, so the same seed repeats the video
    exactly (same process, same threads) and another seed changes more than the initial noise would alone."""
    def run(seed):
        return pipe("a man", poses, scheduler=scheduler, seed=seed, guidance_scale=1.0, **FAST).frames

    a, b = run(4), run(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, run(5))


def test_consistency_schedulers_refuse_more_steps_than_their_schedule(pipe, poses):
    with pytest.raises(AAError) as e:
        pipe("a man", poses, scheduler="lcm", num_inference_steps=60, progress=False)
    assert str(e.value) == "steps: 60 — the lcm scheduler runs 1 to 50 steps (4 is typical)"


def _butterworth_low_pass(f: int, h: int, w: int, d_s: float, d_t: float, order: int) -> np.ndarray:
    """FreeInit's low-pass filter (Wu et al. 2024, eq. 5) in numpy, in FFT order: 1 / (1 + (d² / d_s²)^n) with
    d² = ((d_s / d_t) · ν_t)² + ν_h² + ν_w², each ν the frequency in cycles per sample × 2 (so ±1 at Nyquist)."""
    nt, nh, nw = np.meshgrid(2 * np.fft.fftfreq(f), 2 * np.fft.fftfreq(h), 2 * np.fft.fftfreq(w), indexing="ij")
    d2 = ((d_s / d_t) * nt) ** 2 + nh ** 2 + nw ** 2
    return 1 / (1 + (d2 / d_s ** 2) ** order)


def test_free_init_noise_keeps_the_diffused_result_low_frequencies_and_fresh_high_ones(pipe):
    """FreeInit's re-initialisation against numpy: z = √ᾱ·x + √(1−ᾱ)·ε, then F⁻¹(L·F(z) + (1−L)·F(fresh)) with
    the Butterworth low-pass L over time, height and width."""
    g = torch.Generator().manual_seed(0)
    x, eps, fresh = (torch.randn(1, 4, 8, 16, 16, generator=g) for _ in range(3))
    alpha = torch.tensor(0.01)
    got = pipe.free_init_noise(x, eps, fresh, alpha).numpy()
    z = (alpha.sqrt() * x + (1 - alpha).sqrt() * eps).numpy()
    low = _butterworth_low_pass(8, 16, 16, 0.25, 0.25, 4)
    axes = (-3, -2, -1)
    want = np.fft.ifftn(low * np.fft.fftn(z, axes=axes) + (1 - low) * np.fft.fftn(fresh.numpy(), axes=axes),
                        axes=axes).real
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert abs(got.std() - 1) < 0.05  # still unit-variance noise to the sampler


def test_free_init_reruns_the_sampler_from_its_own_result(pipe, poses):
    """free_init_iters = 1 is the plain sampler bit for bit; N runs it N times, the second run starting from
    `free_init_noise` of the first's result with its own seeded fresh noise; coarse-to-fine runs fewer steps first.
    `sampling` reports what ran."""
    from aa_runtime.pipeline import initial_noise

    plain = pipe("a man", poses, seed=2, **FAST)
    assert np.array_equal(plain.frames, pipe("a man", poses, seed=2, free_init_iters=1, **FAST).frames)
    assert plain.sampling["free_init_iters"] == pipe.defaults.free_init_iters == 1

    def spied(**kw):
        starts, results, denoise = [], [], pipe.denoise

        def spy(latents, sched, *args, **kwargs):
            starts.append((latents.clone(), sched.alphas_cumprod[int(sched.timesteps[0])]))
            results.append(denoise(latents, sched, *args, **kwargs))
            return results[-1]

        pipe.denoise = spy
        try:
            return pipe("a man", poses, seed=2, free_init_iters=2, **kw, **FAST), starts, results
        finally:
            del pipe.denoise

    for fresh_progressive in (None, 0.6):  # None: the fresh noise tied as the first run's (here: not at all)
        twice, starts, results = spied(free_init_progressive=fresh_progressive)
        assert len(starts) == 2 and twice.timings["unet_evals"] == 2 * plain.timings["unet_evals"]
        noise = initial_noise(tuple(starts[0][0].shape), 2)
        assert torch.equal(starts[0][0], noise)  # DDIM's first noise level is 1
        fresh = initial_noise(tuple(noise.shape), 2 + 3 + 1, progressive=fresh_progressive or 0.0)
        want = pipe.free_init_noise(results[0].float(), noise, fresh, starts[1][1])
        assert torch.allclose(starts[1][0], want, atol=1e-6)
        assert not np.array_equal(twice.frames, plain.frames)
        assert (twice.sampling["free_init_iters"], twice.sampling["free_init_progressive"]) == (
            2, fresh_progressive or 0.0)

    pipe.enable_free_init(num_iters=2, use_fast_sampling=True)
    try:
        fast = pipe("a man", poses, seed=2, **FAST)
    finally:
        pipe.disable_free_init()
    assert fast.sampling["free_init_iters"] == 2
    assert fast.timings["unet_evals"] == plain.timings["unet_evals"] // 3 * (1 + 3)  # 1 step, then 3
    shipped = pipe.defaults
    pipe.defaults = dataclasses.replace(shipped, free_init_iters=2, free_init_fast=True)  # a bundle's defaults
    try:
        from_bundle = pipe("a man", poses, seed=2, **FAST)
    finally:
        pipe.defaults = shipped
    np.testing.assert_array_equal(from_bundle.frames, fast.frames)
    with pytest.raises(AAError, match="FreeInit iterations"):
        pipe("a man", poses, free_init_iters=0, **FAST)
    with pytest.raises(AAError, match="free_init_iters"):
        SampleDefaults(free_init_iters=0)
    with pytest.raises(AAError, match="free_init_fast"):
        SampleDefaults(free_init_fast="yes")
    with pytest.raises(AAError, match="free init progressive"):
        pipe("a man", poses, free_init_iters=2, free_init_progressive=1.0, **FAST)
