"""Base training: a step lowers the loss on a fixed batch; two accelerate processes end with identical weights."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from aa_runtime.errors import AAError
from aa_runtime.model import load_base
from aa_runtime.tiny import TinyConfig, build_random_base


def test_image_stage_steps_lower_the_loss_on_a_fixed_batch():
    from diffusers import DDPMScheduler

    from aa_train.base import denoising_loss, encode_all, trainable_parameters, zero_motion_outputs
    from aa_train.world_data import WorldSource, render_world

    base = build_random_base(TinyConfig(max_tokens=64), seed=0)
    zero_motion_outputs(base.unet)
    clips = render_world(WorldSource(2, 64, 2, 8.0), cache_dir=_tmp_cache())
    z = encode_all(base.vae, clips.frames.reshape(-1, 64, 64, 3)).float()[:, :, None]  # (4, 4, 1, 16, 16)
    p = encode_all(base.vae, clips.skeletons.reshape(-1, 64, 64, 3)).float()[:, :, None]
    caps = [c for c in clips.captions for _ in range(2)]
    noise_scheduler = DDPMScheduler.from_config(base.scheduler_config)
    g = torch.Generator().manual_seed(0)
    noise, t = torch.randn(z.shape, generator=g), torch.tensor([100, 300, 500, 700])
    params = trainable_parameters(base, "image")
    assert not any(p.requires_grad for n, p in base.unet.named_parameters() if "motion_modules" in n)
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(8):
        loss = denoising_loss(base, noise_scheduler, z, p, caps, t, noise, train_text=True, device="cpu")
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_person_weights_mark_every_latent_pixel_the_person_touches():
    from aa_train.base import person_weights
    from aa_train.losses import latent_masks

    masks = torch.zeros(6, 64, 64, dtype=torch.bool)
    masks[1, 5, 9] = True  # one pixel → latent (1, 2) at 4× down
    masks[5, 60:64, 0:8] = True  # a 4×8 block → latent row 15, columns 0 and 1
    w = person_weights(latent_masks(masks, (16, 16), pool="max")[:, 0], 4.0)
    expected = torch.ones(6, 16, 16)
    expected[1, 1, 2] = 4.0
    expected[5, 15, 0:2] = 4.0
    assert w.shape == (6, 16, 16) and torch.equal(w, expected)


def test_weighted_denoising_loss_is_the_weighted_mean_of_per_sample_losses():
    from diffusers import DDPMScheduler

    from aa_train.base import denoising_loss

    base = build_random_base(TinyConfig(max_tokens=64), seed=0)
    g = torch.Generator().manual_seed(1)
    z, p, noise = (torch.randn(2, 4, 1, 16, 16, generator=g) for _ in range(3))
    t, caps = torch.tensor([200, 600]), ["a man in a park", "a woman on a beach"]
    noise_scheduler = DDPMScheduler.from_config(base.scheduler_config)
    with torch.no_grad():
        plain = denoising_loss(base, noise_scheduler, z, p, caps, t, noise, train_text=False, device="cpu")
        each = [denoising_loss(base, noise_scheduler, z[i:i + 1], p[i:i + 1], caps[i:i + 1], t[i:i + 1], noise[i:i + 1],
                               train_text=False, device="cpu") for i in range(2)]
        equal = denoising_loss(base, noise_scheduler, z, p, caps, t, noise, train_text=False, device="cpu",
                               weights=torch.full((2, 1, 1, 16, 16), 3.0))
        w = torch.ones(2, 1, 1, 16, 16)
        w[0] = 4.0  # sample 0 counts four times
        weighted = denoising_loss(base, noise_scheduler, z, p, caps, t, noise, train_text=False, device="cpu", weights=w)
    torch.testing.assert_close(equal, plain, rtol=1e-6, atol=0)
    torch.testing.assert_close(weighted, (4 * each[0] + each[1]) / 5, rtol=1e-5, atol=0)


def test_denoise_person_weight_below_one_is_refused(tmp_path):
    from aa_runtime.errors import AAError
    from aa_train.base import BaseTrainConfig

    with pytest.raises(AAError, match="denoise-person-weight"):
        BaseTrainConfig(output=tmp_path / "b", denoise_person_weight=0.5)
    for bad, word in ((dict(grounding_token_weight=-1.0), "grounding-token-weight"),
                      (dict(grounding_pixel_weight=float("nan")), "grounding-pixel-weight"),
                      (dict(grounding_pixel_regions="scene"), "grounding-pixel-regions"),
                      (dict(mixed_precision="fp8"), "mixed-precision")):
        with pytest.raises(AAError, match=word):
            BaseTrainConfig(output=tmp_path / "b", **bad)


def _tmp_cache():
    import tempfile

    return tempfile.mkdtemp(prefix="aa-world-")


@pytest.mark.slow
def test_two_process_accelerate_run_ends_with_identical_weights(tmp_path):
    # accelerate 1.15's `launch --cpu --num_processes 2` starts ONE process (multi-CPU goes through mpirun);
    # torchrun sets the distributed environment that `Accelerator` reads (MULTI_CPU, gloo).
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    work, out = tmp_path / "work", tmp_path / "bundle"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "aa_train.cli", "base", "--data", "world:6", "--frames", "2", "-o", str(out),
           "--work-dir", str(work), "--vae-steps", "2", "--image-steps", "2", "--video-steps", "2",
           "--vae-batch", "2", "--image-batch", "2", "--video-batch", "1", "--warmup", "1", "--checkpoint-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    hashes = json.loads((work / "state.json").read_text())["rank_hashes"]  # gathered from both ranks
    assert set(hashes) == {"vae", "image", "video"}
    assert all(len(h) == 2 and len(set(h)) == 1 for h in hashes.values()), hashes
    manifest = json.loads((out / "aa_bundle.json").read_text())
    assert set(manifest["provenance"]["stages"]) == {"vae", "image", "video"}
    assert load_base(out).unet.config.in_channels == 8
    # continuing from that bundle (--init, one process) records what it started from
    more = tmp_path / "more"
    cmd = [sys.executable, "-m", "aa_train.cli", "base", "--data", "world:6", "--frames", "2", "-o", str(more),
           "--work-dir", str(tmp_path / "work2"), "--stages", "image", "--image-steps", "1", "--image-batch", "2",
           "--warmup", "1", "--init", str(out), "--denoise-person-weight", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    prov = json.loads((more / "aa_bundle.json").read_text())["provenance"]
    assert set(prov["stages"]) == {"image"} and prov["recipe"]["denoise_person_weight"] == 4.0
    assert prov["init"]["fingerprint"] == manifest["fingerprint"]
    assert prov["init"]["provenance"]["stages"] == manifest["provenance"]["stages"]
    assert load_base(more).trained_stages == ["image", "vae", "video"]  # across the --init chain


def test_latents_are_encoded_once_and_keyed_by_the_vae(tmp_path):
    from aa_train.base import cached_latents, encode_all
    from aa_train.losses import latent_masks
    from aa_train.world_data import WorldSource, render_world

    base = build_random_base(TinyConfig(max_tokens=64), seed=0)
    clips = render_world(WorldSource(2, 64, 2, 8.0), cache_dir=tmp_path)
    z, p, person = cached_latents(base.vae, clips, tmp_path / "latents", log=lambda *_: None)  # (N, F, 4, h, w)
    assert z.shape == p.shape == (2, 2, 4, 16, 16) and z.dtype == torch.float16
    ref = encode_all(base.vae, clips.frames.reshape(-1, 64, 64, 3)).view(z.shape)
    torch.testing.assert_close(z, ref, rtol=0, atol=0)  # one block of 4 frames, as encode_all's one chunk
    masks = latent_masks(torch.from_numpy(clips.masks.reshape(-1, 64, 64)), (16, 16), pool="max")
    assert person.dtype == torch.uint8 and torch.equal(person, masks.to(torch.uint8).view(2, 2, 16, 16))
    assert 0 < person.float().mean() < 0.5
    folders = list(tmp_path.glob("latents-*"))
    assert len(folders) == 1 and not list(tmp_path.glob(".latents-*"))  # published, no scratch left
    keep = z.clone()
    z.zero_()  # copy-on-write: the cache on disk is never changed through the tensors
    z2, p2, person2 = cached_latents(base.vae, clips, tmp_path / "latents", log=lambda *_: None)  # read back
    assert torch.equal(keep, z2) and torch.equal(p, p2) and torch.equal(person, person2)
    with torch.no_grad():  # another VAE gets its own cache entry, never the stale latents
        base.vae.encoder.conv_in.weight.mul_(1.5)
    cached_latents(base.vae, clips, tmp_path / "latents", log=lambda *_: None)
    assert len(list(tmp_path.glob("latents-*"))) == 2


def test_latents_encoded_in_rank_blocks_fill_one_cache(tmp_path):
    """Ranks fill their own rows of the same scratch arrays, a few clips at a time, in any order; the published
    folder equals a one-process encoding (up to fp16 rounding of other batch sizes)."""
    from aa_train import arrays
    from aa_train.base import LATENT_ARRAYS, cached_latents, encode_latent_rows
    from aa_train.world_data import WorldSource, render_world

    base = build_random_base(TinyConfig(max_tokens=64), seed=0)
    clips = render_world(WorldSource(3, 64, 2, 8.0), cache_dir=tmp_path)
    one = cached_latents(base.vae, clips, tmp_path / "one" / "latents", log=lambda *_: None)
    folder, scratch = tmp_path / "two" / "latents-x", tmp_path / "two" / ".latents-x.tmp-encode"
    arrays.create(scratch, {"latents": ((3, 2, 4, 16, 16), np.float16), "pose_latents": ((3, 2, 4, 16, 16), np.float16),
                            "person": ((3, 2, 16, 16), np.uint8)})
    for lo, hi in ((1, 3), (0, 1)):  # two ranks' blocks, the second rank first; one clip per encoder batch
        encode_latent_rows(base.vae, clips, arrays.open_rows(scratch, LATENT_ARRAYS), lo, hi, frames_per_block=2)
    arrays.publish(scratch, folder, {})
    assert [q.name for q in folder.parent.iterdir()] == [folder.name]
    two, _ = arrays.read(folder, LATENT_ARRAYS)
    for a, k in zip(one, LATENT_ARRAYS):
        torch.testing.assert_close(a.float(), torch.from_numpy(np.array(two[k])).float(), rtol=0, atol=2e-3)


def test_train_base_runs_every_module_and_batch_on_the_accelerator_device(tmp_path, tiny_bundle, monkeypatch):
    """Each UNet, VAE and text-encoder call sees its inputs on the module's device, and that device is
    accelerate's (the CPU here, the GPU where one is present); grounding losses land in the provenance."""
    from accelerate import PartialState

    import aa_train.base as base_mod

    seen = []

    def check(module, args, kwargs):
        device = next(module.parameters()).device
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        seen.append((type(module).__name__, device, {t.device for t in tensors}))

    def load_with_hooks(path, motion_module=None):
        b = load_base(path, motion_module)
        for m in (b.unet, b.vae.encoder, b.text_encoder):  # the VAE runs through encode(), not forward()
            m.register_forward_pre_hook(check, with_kwargs=True)
        return b

    monkeypatch.setattr(base_mod, "load_base", load_with_hooks)
    cfg = base_mod.BaseTrainConfig(output=tmp_path / "out", data="world:2", stages=("image", "video"),
                                   work_dir=tmp_path / "work", frames=2, image_steps=2, video_steps=1, image_batch=2,
                                   video_batch=1, warmup=1, checkpoint_every=2, init=str(tiny_bundle),
                                   grounding_token_weight=0.5, grounding_pixel_weight=0.05)
    base_mod.train_base(cfg, log=lambda *_: None)
    device = PartialState().device
    assert {name for name, _, _ in seen} >= {"UNetMotionModel", "Encoder", "CLIPTextModel"}
    assert all(d.type == device.type and devs <= {d} for _, d, devs in seen), seen
    stages = json.loads((tmp_path / "out" / "aa_bundle.json").read_text())["provenance"]["stages"]
    assert stages["image"]["grounding_token"] > 0 and stages["image"]["grounding_pixel"] > 0
    assert "grounding_token" not in stages["video"]


def test_resume_from_saved_state_continues_the_run(tmp_path, tiny_bundle, monkeypatch):
    """A run stopped after its step-2 checkpoint and resumed (accelerate's save_state / load_state: weights,
    optimizer, LR schedule, EMA, RNG, step and losses) takes the steps the uninterrupted run took: its first two
    losses are the checkpoint's own, the next two equal the uninterrupted run's to float rounding. Bit-identical
    weights are not promised: with every restored tensor equal, the first backward pass after a restart still
    differs from the uninterrupted one in the last bits (≤ 5e-8 in the gradients, measured), and Adam turns
    near-zero gradients into steps of up to lr either way, so the weights are compared within 2·lr per step."""
    import aa_train.base as base_mod
    from aa_runtime.model import load_base

    def cfg(work):
        return base_mod.BaseTrainConfig(output=tmp_path / f"{work}-out", data="world:2", stages=("image",),
                                        work_dir=tmp_path / work, frames=2, image_steps=4, image_batch=2, warmup=1,
                                        checkpoint_every=2, init=str(tiny_bundle), resume=True)

    def losses(work):
        return torch.load(tmp_path / work / "image-state" / "custom_checkpoint_1.pkl", weights_only=False)["losses"]

    base_mod.train_base(cfg("straight"), log=lambda *_: None)
    real_rng = base_mod._batch_rng

    def stop_at_step_2(c, stage, step, rank):
        if step == 2:
            raise KeyboardInterrupt  # after the step-2 checkpoint, before step 3 draws its batch
        return real_rng(c, stage, step, rank)

    monkeypatch.setattr(base_mod, "_batch_rng", stop_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        base_mod.train_base(cfg("stopped"), log=lambda *_: None)
    at_stop = losses("stopped")
    monkeypatch.setattr(base_mod, "_batch_rng", real_rng)
    seen = []
    base_mod.train_base(cfg("stopped"), log=seen.append)
    assert any("resumed at step 2/4" in m for m in seen), seen
    last = torch.load(tmp_path / "stopped" / "image-state" / "custom_checkpoint_1.pkl", weights_only=False)
    summary = json.loads((tmp_path / "stopped-out" / "aa_bundle.json").read_text())["provenance"]["stages"]["image"]
    # the whole run's seconds: the first part's (from its checkpoint) and this part's
    assert summary["resumed_at"] == 2 and summary["total_seconds"] > summary["seconds"] > 0
    assert summary["total_seconds"] - summary["seconds"] < last["seconds"] <= summary["total_seconds"]
    straight, resumed = losses("straight"), losses("stopped")
    assert len(at_stop) == 2 and resumed[:2] == at_stop == straight[:2]
    np.testing.assert_allclose(resumed[2:], straight[2:], rtol=1e-5)
    a, b = load_base(tmp_path / "straight" / "current"), load_base(tmp_path / "stopped" / "current")
    for part in ("unet", "text_encoder"):
        for (k, x), (_, y) in zip(getattr(a, part).state_dict().items(), getattr(b, part).state_dict().items()):
            assert (x - y).abs().max() <= 2 * 2 * 3e-4, (part, k)  # 2 steps after the restart at lr ≤ 3e-4


def test_previews_are_sampled_with_the_ema_weights_into_a_grid(tmp_path, tiny_bundle):
    import aa_train.base as base_mod
    from PIL import Image

    cfg = base_mod.BaseTrainConfig(output=tmp_path / "out", data="world:2", stages=("image",),
                                   work_dir=tmp_path / "work", frames=2, image_steps=2, image_batch=2, warmup=1,
                                   checkpoint_every=2, sample_every=1, init=str(tiny_bundle))
    base_mod.train_base(cfg, log=lambda *_: None)
    files = sorted((tmp_path / "work" / "samples").glob("*.png"))
    assert [f.name for f in files] == ["image-000001.png", "image-000002.png"]
    grid = np.asarray(Image.open(files[-1]))
    assert grid.shape == (4 * 64, 2 * 64, 3) and grid.std() > 1  # 2 captions × 2 motions, 2 frames each


def test_gradient_accumulation_and_tensorboard_flags(tmp_path, tiny_bundle):
    import aa_train.base as base_mod
    from aa_runtime.errors import AAError

    with pytest.raises(AAError, match="gradient-accumulation"):
        base_mod.BaseTrainConfig(output=tmp_path / "b", gradient_accumulation=0)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(AAError, match="pip install tensorboard"):
            base_mod.BaseTrainConfig(output=tmp_path / "b", report_to="tensorboard")
    cfg = base_mod.BaseTrainConfig(output=tmp_path / "out", data="world:2", stages=("image",),
                                   work_dir=tmp_path / "work", frames=2, image_steps=2, image_batch=1, warmup=1,
                                   gradient_accumulation=2, init=str(tiny_bundle))
    base_mod.train_base(cfg, log=lambda *_: None)
    stages = json.loads((tmp_path / "out" / "aa_bundle.json").read_text())["provenance"]["stages"]
    assert stages["image"]["steps"] == 2  # optimizer steps, each over 2 micro-batches


def test_gradient_checkpointing_gives_the_same_losses_and_a_plain_bundle(tmp_path, tiny_bundle):
    """Checkpointing recomputes activations in the backward pass; the forward is the same computation, so each
    step's loss matches the plain run's (the updates may differ in the last bits: a recomputed backward sums in
    another order), and the bundle is written with the plain module names."""
    import aa_train.base as base_mod
    from aa_runtime.model import load_base

    def run(work, ckpt):
        cfg = base_mod.BaseTrainConfig(output=tmp_path / f"{work}-out", data="world:2", stages=("image", "video"),
                                       work_dir=tmp_path / work, frames=2, image_steps=2, video_steps=1,
                                       image_batch=2, video_batch=1, warmup=1, init=str(tiny_bundle),
                                       gradient_checkpointing=ckpt)
        base_mod.train_base(cfg, log=lambda *_: None)
        return {s: torch.load(tmp_path / work / f"{s}-state" / "custom_checkpoint_1.pkl", weights_only=False)["losses"]
                for s in ("image", "video")}

    plain, checkpointed = run("plain", False), run("ckpt", True)
    for stage in ("image", "video"):
        np.testing.assert_allclose(checkpointed[stage], plain[stage], rtol=1e-4)
    keys = [load_base(tmp_path / f"{w}-out").unet.state_dict().keys() for w in ("ckpt", "plain")]
    assert keys[0] == keys[1]


def test_batches_stream_through_a_dataloader_with_workers_unchanged(tmp_path, tiny_bundle):
    """The stage's micro-batches come from a DataLoader: with 2 worker processes they are the batches the training
    process draws itself (same rows, noise, timesteps, captions, grounding maps; in step order from a resume point),
    and a run with workers takes the same losses as one without (exactly: the same batches into the same process)."""
    import aa_train.base as base_mod
    from aa_train.data import load_training_data

    def cfg(work, workers):
        return base_mod.BaseTrainConfig(output=tmp_path / f"{work}-out", data="world:3", stages=("image",),
                                        work_dir=tmp_path / work, frames=2, image_steps=3, image_batch=2, warmup=1,
                                        checkpoint_every=3, init=str(tiny_bundle), loader_workers=workers,
                                        denoise_person_weight=2.0, grounding_token_weight=0.1)

    c = cfg("a", 0)
    data = load_training_data(c.data, c.size, c.frames, c.fps, tmp_path / "cache", log=lambda *_: None)
    n = len(data.clips.captions)
    lat, pose = torch.randn(n, 2, 4, 16, 16).half(), torch.randn(n, 2, 4, 16, 16).half()
    person, bits = torch.randint(0, 2, (n, 2, 16, 16), dtype=torch.uint8), torch.randint(0, 2, (n, 64)).bool()
    for stage in ("image", "video"):
        batches = base_mod.StageBatches(c, stage, 0, data, lat, pose, person, bits if stage == "image" else None,
                                        1000, first=2, last=6)
        plain = list(base_mod.stage_loader(batches, torch.device("cpu"), 0))
        pooled = list(base_mod.stage_loader(batches, torch.device("cpu"), 2))
        assert [b["step"] for b in plain] == [b["step"] for b in pooled] == [2, 3, 4, 5]
        for x, y in zip(plain, pooled):
            assert x["captions"] == y["captions"]
            for k in ("z", "p", "w", "noise", "t", "bits", "parts"):
                assert (x[k] is None) == (y[k] is None) and (x[k] is None or torch.equal(x[k], y[k])), (stage, k)
        assert plain[0]["z"].shape[2] == (1 if stage == "image" else 2)
    base_mod.train_base(cfg("a", 0), log=lambda *_: None)
    base_mod.train_base(cfg("b", 2), log=lambda *_: None)
    losses = [torch.load(tmp_path / w / "image-state" / "custom_checkpoint_1.pkl", weights_only=False)["losses"]
              for w in ("a", "b")]
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_video_noise_correlation_mixes_a_shared_frame_noise_and_becomes_the_bundle_default(tmp_path, tiny_bundle):
    """`--noise-correlation ρ`: each training clip's noise is √ρ of one draw shared by its frames + √(1-ρ) of each
    frame's own (frame-to-frame correlation ρ, unit variance; the image stage and ρ = 0 keep independent noise,
    ρ = 0 exactly as before), and the bundle after the video stage samples with ρ."""
    import aa_train.base as base_mod
    from aa_runtime.pipeline import frame_correlated_noise
    from aa_train.data import load_training_data

    def cfg(rho, work="w"):
        return base_mod.BaseTrainConfig(output=tmp_path / f"{work}-out", data="world:3", stages=("video",),
                                        work_dir=tmp_path / work, frames=8, video_steps=1, video_batch=4, warmup=1,
                                        init=str(tiny_bundle), noise_correlation=rho)

    data = load_training_data(cfg(0).data, 64, 8, 8.0, tmp_path / "cache", log=lambda *_: None)
    lat = torch.zeros(3, 8, 4, 16, 16).half()

    def noise(rho, stage):
        return base_mod.StageBatches(cfg(rho), stage, 0, data, lat, lat, None, None, 1000, 0, 1)[0]["noise"]

    mixed = noise(0.5, "video")  # (4, 4, 8, 16, 16)
    x = mixed.permute(2, 0, 1, 3, 4).reshape(8, -1)  # frame × elements
    corr = torch.corrcoef(x)[~torch.eye(8, dtype=torch.bool)]
    assert abs(corr.mean() - 0.5) < 0.05 and abs(mixed.std() - 1) < 0.05  # 28 pairs of 4,096 elements
    plain = noise(0.0, "video")
    g = torch.Generator().manual_seed(0)
    assert torch.equal(frame_correlated_noise((2, 3), g.manual_seed(5), 0.0),
                       torch.randn((2, 3), generator=g.manual_seed(5)))
    assert torch.corrcoef(plain.permute(2, 0, 1, 3, 4).reshape(8, -1)).fill_diagonal_(0).abs().max() < 0.1
    assert torch.equal(noise(0.5, "image"), noise(0.0, "image"))
    base_mod.train_base(cfg(0.3), log=lambda *_: None)
    assert load_base(tmp_path / "w-out").defaults.noise_correlation == 0.3
    # a sampling ρ of its own (--sample-noise-correlation) is the bundle's default instead; out of range is refused
    base_mod.train_base(replace(cfg(0.3, "s"), sample_noise_correlation=0.8), log=lambda *_: None)
    assert load_base(tmp_path / "s-out").defaults.noise_correlation == 0.8
    with pytest.raises(AAError, match="sample-noise-correlation"):
        replace(cfg(0.3), sample_noise_correlation=1.0)
    with pytest.raises(AAError, match="noise-correlation"):
        base_mod.BaseTrainConfig(output=tmp_path / "x", noise_correlation=1.0)


def test_short_captions_replace_world_captions_by_their_class_caption(tmp_path, tiny_bundle):
    """`--short-captions s`: about a share s of the world's captions become the class caption of the same clip (its
    class word, motion, scene and objects, as `class_caption` writes them from the clip's spec), never a dropped
    one; in the image stage those ground nothing. At 0 the batches are the ones drawn before the option existed."""
    import aa_train.base as base_mod
    from aa_train.data import load_training_data
    from aa_world.captions import class_caption, class_caption_of, full_caption
    from aa_world.clips import sample_clip_spec
    from aa_world.identity import sample_identity

    rng = np.random.default_rng(3)
    for _ in range(200):  # the derivation against the world's own writer of both captions
        s = sample_clip_spec(rng)
        who = sample_identity(s.identity_seed)
        assert class_caption_of(full_caption(who, s.motion, s.scene, s.objects)) == \
            class_caption(who.class_word, s.motion, s.scene, s.objects)
    assert class_caption_of("a photo of a person") is None and class_caption_of("a woman dancing on a beach") is None

    def cfg(share):
        return base_mod.BaseTrainConfig(output=tmp_path / "o", data="world:3", stages=("image",), work_dir=tmp_path / "w",
                                        frames=2, image_batch=32, init=str(tiny_bundle), short_captions=share)

    data = load_training_data(cfg(0).data, 64, 2, 8.0, tmp_path / "cache", log=lambda *_: None)
    full, n = data.clips.captions, len(data.clips.captions)
    lat, person = torch.zeros(n, 2, 4, 16, 16).half(), torch.zeros(n, 2, 16, 16, dtype=torch.uint8)
    bits = torch.ones(n, 64, dtype=torch.bool)

    def batches(share):
        return [base_mod.StageBatches(cfg(share), "image", 0, data, lat, lat, person, bits, 1000, 0, 40)[i]
                for i in range(40)]

    plain, half = batches(0.0), batches(0.5)
    shortened = whole = 0
    for a, b in zip(plain, half):
        for k in ("z", "noise", "t", "parts"):
            assert torch.equal(a[k], b[k])
        for j, (ca, cb) in enumerate(zip(a["captions"], b["captions"])):
            assert ca in full or ca == ""
            if ca == "":
                assert cb == "" and not b["bits"][j].any()
            elif cb == ca:
                whole += 1
                assert b["bits"][j].all()
            else:
                shortened += 1
                assert cb == class_caption_of(ca) and not b["bits"][j].any()
    assert abs(shortened / (shortened + whole) - 0.5) < 0.05  # ~1,150 captions
    assert [b["captions"] for b in batches(1.0)][0] == [c and class_caption_of(c) for c in plain[0]["captions"]]
    with pytest.raises(AAError, match="short-captions"):
        cfg(1.5)
