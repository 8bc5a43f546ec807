"""Train the judge on ground-truth renders of training identities, then measure it on
held-out evaluation identities.

    python -m aa_world.train_judge --out models/judge [--vae runs/aa-tiny-bundle] \
        [--report benchmarks/results/judge] [--eval-vae runs/aa-tiny-bundle]

Data: `clips` random training clips (`TRAIN_IDENTITY_SEEDS`) of `frames` frames, rendered once into
memory as uint8. Every batch is augmented so the judge tolerates generation artefacts: small
shifts / scale changes and flips, colour jitter, gaussian blur, down-up sampling, 8×8 blockiness,
posterisation and noise. With `--vae BUNDLE`, half of the batches are first replaced by that
bundle's VAE reconstructions (encode → decode). Each step feeds `batch` frames to the frame branch
(mask, scene, objects) and `identity_batch` other frames to the cheaper identity branch (attributes,
view), cropped at boxes from their true masks, jittered like predicted ones. Losses: cross-entropy
for scene, view and each attribute; binary cross-entropy for object presence; BCE + soft Dice for
the person mask. The view-dependent attributes (logo shape / colour, backpack) are supervised only
in frames whose view would show them (`judge.observable`): front views for the logo, back views for
the backpack ('none' there for identities without one).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aa_runtime.errors import AAError
from aa_runtime.files import atomic_path
from aa_runtime.skeleton import VIEWS

from .clips import render_clip, sample_clip_spec
from .identity import ATTRIBUTE_HEAD_SIZES, VIEW_DEPENDENT_ATTRIBUTES, identity_attribute_labels
from .judge import Judge, JudgeConfig, JudgeNet, JudgeOutput, frames_to_input, mask_boxes, observable
from .objects import OBJECTS
from .scenes import SCENES

ATTRS = tuple(ATTRIBUTE_HEAD_SIZES)
IGNORE = -100  # label of an attribute a frame cannot show


@dataclass(frozen=True)
class JudgeTrainConfig:
    """One training run of the judge (saved beside the weights as train_config.json)."""

    out: Path
    clips: int = 6000  # training clips (one identity each)
    frames: int = 8  # frames per clip
    steps: int = 1150
    batch: int = 56  # frames per step for the frame branch (mask, scene, objects)
    identity_batch: int = 120  # frames per step for the identity branch (attributes, view): cheaper, slower to learn
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    vae: Path | None = None  # train also on this bundle's VAE reconstructions (half of the batches)
    vae_share: float = 0.5
    log_every: int = 50
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))
        if self.vae is not None:
            object.__setattr__(self, "vae", Path(self.vae))
            if not (self.vae / "aa_bundle.json").is_file():
                raise AAError("--vae", f"{self.vae} has no aa_bundle.json", "pass an aa bundle folder (save_bundle)")
        for name in ("clips", "frames", "steps", "batch", "identity_batch"):
            if getattr(self, name) < 1:
                raise AAError(f"--{name}", getattr(self, name), "use a positive integer")
        if not (0.0 <= self.vae_share <= 1.0):
            raise AAError("vae_share", self.vae_share, "use a share in [0, 1]")


# ----------------------------------------------------------------------------------------- data
@dataclass
class JudgeData:
    """Frames with per-frame ground truth, everything indexed by frame."""

    frames: np.ndarray  # uint8 (N, S, S, 3)
    masks: np.ndarray  # bool (N, S, S)
    scene: np.ndarray  # int64 (N,)
    objects: np.ndarray  # float32 (N, len(OBJECTS)) 0/1 presence
    attributes: np.ndarray  # int64 (N, len(ATTRS)); IGNORE where the frame's view cannot show it
    visible: np.ndarray  # bool (N, len(ATTRS)): the feature itself is drawn (GT flags; True for non-view ones)
    view: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.frames)


def render_judge_data(clips: int, frames: int, split: str, seed: int, size: int = 64, log=None) -> JudgeData:
    """Render `clips` random clips of `split` identities at size×size (fps 4 or 8 for more pose variety)."""
    rng = np.random.default_rng([seed, 7])
    cols = {k: [] for k in ("frames", "masks", "scene", "objects", "attributes", "visible", "view")}
    t0 = time.perf_counter()
    for i in range(clips):
        spec = sample_clip_spec(rng, split, frames=frames, fps=float(rng.choice([4.0, 8.0])), size=size)
        clip = render_clip(spec)
        labels = identity_attribute_labels(clip.identity)
        flags = {"front": clip.logo_visible, "back": clip.backpack_visible}
        attrs = np.full((frames, len(ATTRS)), IGNORE, np.int64)
        visible = np.ones((frames, len(ATTRS)), bool)
        for j, name in enumerate(ATTRS):
            attrs[observable(clip.views, name), j] = labels[name]
            if name in VIEW_DEPENDENT_ATTRIBUTES:
                visible[:, j] = flags[VIEW_DEPENDENT_ATTRIBUTES[name]]
        present = np.zeros(len(OBJECTS), np.float32)
        present[[OBJECTS.index(o.kind) for o in spec.objects]] = 1
        cols["frames"].append(clip.frames)
        cols["masks"].append(clip.masks)
        cols["scene"].append(np.full(frames, SCENES.index(spec.scene)))
        cols["objects"].append(np.repeat(present[None], frames, 0))
        cols["attributes"].append(attrs)
        cols["visible"].append(visible)
        cols["view"].append(np.array([VIEWS.index(v) for v in clip.views]))
        if log and (i + 1) % 1000 == 0:
            log(f"rendered {i + 1}/{clips} {split} clips ({time.perf_counter() - t0:.0f} s)")
    return JudgeData(**{k: np.concatenate(v) for k, v in cols.items()})


# ----------------------------------------------------------------------------------------- augmentation
def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable blur with a per-sample sigma. x float (B, C, H, W), sigma (B,)."""
    b, c, h, w = x.shape
    r = 3
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B·C, 2r+1)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation-artefact augmentations. x float (B, 3, S, S) in [-1, 1], mask float (B, S, S) in {0, 1}."""
    b, _, h, w = x.shape

    def u(lo, hi, shape=(b,)):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    def coin(p):
        return (torch.rand(b, generator=g) < p).view(b, 1, 1, 1)

    # geometry: flip, ±3 px shift, ±8 % scale (one affine grid for frame and mask)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    scale = u(0.92, 1.08)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = flip * scale, scale
    theta[:, 0, 2], theta[:, 1, 2] = u(-3, 3) * 2 / w, u(-3, 3) * 2 / h
    grid = F.affine_grid(theta, (b, 3, h, w), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = (F.grid_sample(mask[:, None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[:, 0] > 0.5).float()
    # colour: brightness, contrast, saturation, per-channel gain (mild: colours are labels)
    grey = x.mean(1, keepdim=True)
    jit = x + (x - grey) * u(-0.15, 0.15).view(b, 1, 1, 1)
    jit = (jit - jit.mean((1, 2, 3), keepdim=True)) * u(0.9, 1.1).view(b, 1, 1, 1) + jit.mean((1, 2, 3), keepdim=True)
    jit = jit * u(0.97, 1.03, (b, 3)).view(b, 3, 1, 1) + u(-0.05, 0.05).view(b, 1, 1, 1)
    x = torch.where(coin(0.6), jit, x)
    # softness: gaussian blur, or down-up sampling by 2 (VAE-like smoothing)
    x = torch.where(coin(0.35), _gaussian_blur(x, u(0.3, 1.1)), x)
    down = F.interpolate(F.avg_pool2d(x, 2), size=(h, w), mode="bilinear", align_corners=False)
    x = torch.where(coin(0.2), down, x)
    # compression: 8×8 blockiness (pull towards block means) and posterisation
    block = F.interpolate(F.avg_pool2d(x, 8), size=(h, w), mode="nearest")
    x = torch.where(coin(0.2), x + (block - x) * u(0.1, 0.35).view(b, 1, 1, 1), x)
    x = torch.where(coin(0.15), torch.round(x * 12) / 12, x)
    # sensor / sampling noise
    x = torch.where(coin(0.5), x + torch.randn(x.shape, generator=g) * u(0.0, 0.08).view(b, 1, 1, 1), x)
    return x.clamp(-1, 1), mask


def jitter_boxes(boxes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Person boxes (B, 4) (cx, cy, half-w, half-h) from the true mask, moved ±~1 px and scaled ±5 %, as the
    boxes from a predicted mask would be."""
    b = len(boxes)
    shift = torch.randn(b, 2, generator=g) * 0.7
    scale = 0.96 + 0.1 * torch.rand(b, 1, generator=g)
    return torch.cat([boxes[:, :2] + shift, boxes[:, 2:] * scale], 1)


# ----------------------------------------------------------------------------------------- training
def judge_loss(out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the per-head losses of the branches present in `out` (frame: mask, scene, objects; identity: view,
    attributes — each attribute head ignores frames that cannot show it)."""
    parts = {}
    if "mask" in out:
        prob, m = out["mask"].sigmoid(), batch["mask"]
        dice = 1 - (2 * (prob * m).sum((1, 2)) + 1) / (prob.sum((1, 2)) + m.sum((1, 2)) + 1)
        parts["scene"] = F.cross_entropy(out["scene"], batch["scene"])
        parts["objects"] = F.binary_cross_entropy_with_logits(out["objects"], batch["objects"])
        parts["mask"] = F.binary_cross_entropy_with_logits(out["mask"], m) + dice.mean()
    if "attributes" in out:
        parts["view"] = F.cross_entropy(out["view"], batch["view"])
        labels = batch["attributes"]
        attr = out["view"].new_zeros(())
        for j, name in enumerate(ATTRS):
            if (labels[:, j] != IGNORE).any():
                attr = attr + F.cross_entropy(out["attributes"][name], labels[:, j], ignore_index=IGNORE)
        parts["attributes"] = attr
    total = sum(parts.values())
    return total, {k: v.item() for k, v in parts.items()}


def _batch(data: JudgeData, idx: np.ndarray, size: int, vae, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Frames idx → augmented input float (B, 3, S, S) (VAE-reconstructed first when `vae` is given) and labels."""
    x = frames_to_input(data.frames[idx], size)  # (B, 3, S, S) in [-1, 1]
    if vae is not None:
        x = vae_reconstruct(vae, x)
    x, mask = augment(x, torch.from_numpy(data.masks[idx]).float(), g)
    return x.contiguous(memory_format=torch.channels_last), {
        "mask": mask, "scene": torch.from_numpy(data.scene[idx]), "objects": torch.from_numpy(data.objects[idx]),
        "view": torch.from_numpy(data.view[idx]), "attributes": torch.from_numpy(data.attributes[idx])}


def _load_vae(bundle: Path):
    from aa_runtime.model import load_base

    return load_base(bundle).vae


@torch.no_grad()
def vae_reconstruct(vae, x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, S, S) in [-1, 1] → the VAE's reconstruction (latent mean, decoded), clamped to [-1, 1]."""
    x = x.to(vae.dtype)
    return vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)


def train_judge(cfg: JudgeTrainConfig, log=print) -> Judge:
    """Render the training data, train the judge, save it into `cfg.out` (judge.safetensors, config.json,
    train_config.json, train_log.json) and return it."""
    torch.manual_seed(cfg.seed)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    data = render_judge_data(cfg.clips, cfg.frames, "train", cfg.seed, cfg.judge.size, log=log)
    render_s = time.perf_counter() - t_wall
    log(f"{len(data)} training frames from {cfg.clips} clips in {render_s:.0f} s")
    vae = _load_vae(cfg.vae) if cfg.vae is not None else None
    net = JudgeNet(cfg.judge).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 11])
    history, running, vae_batches = [], {}, 0
    net.train()
    aspect = cfg.judge.crop[1] / cfg.judge.crop[0]
    for step in range(cfg.steps):
        use_vae = vae is not None and rng.random() < cfg.vae_share
        # frame branch (mask, scene, objects) on `batch` frames; identity branch on `identity_batch` other frames,
        # cropped at boxes from their true (augmented) masks
        idx_f = np.sort(rng.choice(len(data), size=min(cfg.batch, len(data)), replace=False))
        idx_i = np.sort(rng.choice(len(data), size=min(cfg.identity_batch, len(data)), replace=False))
        x_f, batch_f = _batch(data, idx_f, cfg.judge.size, vae if use_vae else None, g)
        x_i, batch_i = _batch(data, idx_i, cfg.judge.size, vae if use_vae else None, g)
        loss_f, parts = judge_loss(net.forward_frames(x_f), batch_f)
        boxes = jitter_boxes(mask_boxes(batch_i["mask"] > 0.5, aspect), g)
        loss_i, parts_i = judge_loss(net.forward_identity(x_i, boxes), batch_i)
        loss = loss_f + loss_i
        parts.update(parts_i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in {"loss": loss.item(), **parts}.items():
            running[k] = running.get(k, 0.0) + v
        running["n"] = running.get("n", 0) + 1
        vae_batches += use_vae
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = running.pop("n")
            row = {"step": step + 1, **{k: round(v / n, 4) for k, v in running.items()},
                   "vae_batches": vae_batches, "wall_s": round(time.perf_counter() - t_wall, 1)}
            history.append(row)
            log(" ".join(f"{k}={v}" for k, v in row.items()))
            running = {}
    judge = Judge(net.to(memory_format=torch.contiguous_format).eval(), str(cfg.out))
    judge.save(cfg.out)
    info = {"train_wall_s": round(time.perf_counter() - t_wall, 1), "train_cpu_s": round(time.process_time() - t_cpu, 1),
            "render_wall_s": round(render_s, 1), "train_frames": len(data),
            "params": sum(p.numel() for p in net.parameters()), "torch_threads": torch.get_num_threads(),
            "vae_batches": vae_batches, "history": history}
    with atomic_path(cfg.out / "train_config.json") as tmp:
        tmp.write_text(json.dumps(asdict(cfg), indent=1, default=str))
    with atomic_path(cfg.out / "train_log.json") as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    for name in ("train_config.json", "train_log.json"):
        (cfg.out / name).chmod(0o644)
    log(f"saved {cfg.out} ({info['train_cpu_s']} CPU s, {info['train_wall_s']} wall s)")
    return judge


# ----------------------------------------------------------------------------------------- evaluation
def evaluate_judge(out: JudgeOutput, data: JudgeData) -> dict:
    """Per-head held-out accuracy of a judge output against the data's ground truth."""
    res: dict = {"frames": len(data)}
    res["scene_accuracy"] = float((out.scene.argmax(-1) == data.scene).mean())
    obj_pred = out.objects > 0.5
    obj_true = data.objects > 0.5
    res["object_accuracy"] = {k: float((obj_pred[:, j] == obj_true[:, j]).mean()) for j, k in enumerate(OBJECTS)}
    res["object_exact_match"] = float((obj_pred == obj_true).all(1).mean())
    pred_mask, true_mask = out.mask > 0.5, data.masks
    inter = (pred_mask & true_mask).sum((1, 2))
    union = (pred_mask | true_mask).sum((1, 2))
    res["mask_iou"] = float(np.mean(inter / np.maximum(union, 1)))
    res["mask_iou_pooled"] = float(inter.sum() / max(union.sum(), 1))
    attrs, attrs_vis = {}, {}
    for j, name in enumerate(ATTRS):
        ok = data.attributes[:, j] != IGNORE
        hit = out.attributes[name].argmax(-1) == data.attributes[:, j]
        attrs[name] = float(hit[ok].mean()) if ok.any() else float("nan")
        if name in VIEW_DEPENDENT_ATTRIBUTES:
            vis = ok & data.visible[:, j]
            attrs_vis[name] = float(hit[vis].mean()) if vis.any() else float("nan")
    res["attribute_accuracy"] = attrs
    res["attribute_mean"] = float(np.nanmean(list(attrs.values())))
    res["view_dependent_where_drawn"] = attrs_vis  # only frames that actually show the logo / backpack
    res["view_accuracy"] = float((out.view.argmax(-1) == data.view).mean())
    return res


def write_report(results: dict, path: Path) -> tuple[Path, Path]:
    """Write `path`.json and `path`.md (a table per evaluated set)."""
    path = Path(path)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    lines = ["# Judge accuracy on held-out evaluation identities", "",
             f"{results['environment']}", "",
             f"Judge: {results['params']:,} parameters, {results['weights_bytes'] / 1e6:.2f} MB fp16; "
             f"trained on {results['training'].get('train_frames', '?')} frames of training identities in "
             f"{results['training'].get('train_cpu_s', '?')} CPU s ({results['training'].get('train_wall_s', '?')} wall s, "
             f"one thread, {'with' if results['training'].get('vae') else 'without'} VAE reconstructions).", "",
             "Aims: scene ≥ 0.95, mean attribute ≥ 0.90, mask IoU ≥ 0.90. Logo and backpack heads are scored in the "
             "frames whose view would show them (front / back; 'none' for identities without one); the "
             "'where drawn' rows count only frames that actually show the feature.", ""]
    sets = results["sets"]
    names = list(sets)
    lines += ["| head | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, get):
        lines.append(f"| {label} | " + " | ".join(f"{get(sets[n]):.3f}" for n in names) + " |")

    row("scene", lambda r: r["scene_accuracy"])
    for k in OBJECTS:
        row(f"object: {k}", lambda r, k=k: r["object_accuracy"][k])
    row("objects exact match", lambda r: r["object_exact_match"])
    row("mask IoU (mean per frame)", lambda r: r["mask_iou"])
    row("view", lambda r: r["view_accuracy"])
    for k in ATTRS:
        row(f"attribute: {k}", lambda r, k=k: r["attribute_accuracy"][k])
    for k in VIEW_DEPENDENT_ATTRIBUTES:
        row(f"attribute: {k} (where drawn)", lambda r, k=k: r["view_dependent_where_drawn"][k])
    row("**attribute mean**", lambda r: r["attribute_mean"])
    lines += ["", "Frames per set: " + ", ".join(f"{n}: {sets[n]['frames']}" for n in names)
              + (f"; reconstructions by the VAE of {results['eval']['vae_bundle']} (latent mean, decoded)"
                 if results["eval"].get("vae_bundle") else ""), ""]
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines))
    for p in (path.with_suffix(".json"), path.with_suffix(".md")):
        p.chmod(0o644)  # the temporary files were private
    return path.with_suffix(".json"), path.with_suffix(".md")


def benchmark_judge(judge: Judge, eval_clips: int, frames: int, seed: int, eval_vae: Path | None,
                    training: dict, weights: Path, log=print) -> dict:
    """Held-out accuracy on ground truth of evaluation identities (and on `eval_vae` reconstructions)."""
    data = render_judge_data(eval_clips, frames, "eval", seed)
    sets = {"ground truth": evaluate_judge(judge.predict(data.frames), data)}
    if eval_vae is not None:
        vae = _load_vae(eval_vae)
        rec = np.concatenate([((vae_reconstruct(vae, frames_to_input(data.frames[s:s + 64], judge.cfg.size)) + 1)
                               * 127.5).round().byte().permute(0, 2, 3, 1).numpy() for s in range(0, len(data), 64)])
        sets[f"VAE reconstruction ({Path(eval_vae).name})"] = evaluate_judge(judge.predict(rec), data)
    for name, r in sets.items():
        log(f"{name}: scene {r['scene_accuracy']:.3f}, objects exact {r['object_exact_match']:.3f}, "
            f"mask IoU {r['mask_iou']:.3f}, attributes {r['attribute_mean']:.3f}, view {r['view_accuracy']:.3f}")
    return {"environment": f"torch {torch.__version__}, Python {platform.python_version()}, "
                           f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
                           f"{os.cpu_count()} CPUs (shared), {time.strftime('%Y-%m-%dT%H:%M:%S')}",
            "params": sum(p.numel() for p in judge.net.parameters()), "weights_bytes": weights.stat().st_size,
            "eval": {"clips": eval_clips, "frames_per_clip": frames, "seed": seed, "split": "eval",
                     "vae_bundle": None if eval_vae is None else str(eval_vae)},
            "training": training, "sets": sets}


def main(argv=None) -> None:
    import click

    @click.command(help="Train the judge of the synthetic world and report its held-out accuracy.")
    @click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for judge.safetensors.")
    @click.option("--vae", type=click.Path(path_type=Path), default=None,
                  help="An aa bundle: train half of the batches on its VAE reconstructions.")
    @click.option("--clips", type=int, default=JudgeTrainConfig.clips, show_default=True)
    @click.option("--frames", type=int, default=JudgeTrainConfig.frames, show_default=True)
    @click.option("--steps", type=int, default=JudgeTrainConfig.steps, show_default=True)
    @click.option("--batch", type=int, default=JudgeTrainConfig.batch, show_default=True,
                  help="Frames per step for the frame branch (mask, scene, objects).")
    @click.option("--identity-batch", type=int, default=JudgeTrainConfig.identity_batch, show_default=True,
                  help="Frames per step for the identity branch (attributes, view).")
    @click.option("--lr", type=float, default=JudgeTrainConfig.lr, show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--eval-only", is_flag=True, help="Skip training: evaluate the judge already in --out.")
    @click.option("--eval-clips", type=int, default=0, show_default=True,
                  help="Held-out evaluation clips (0: no evaluation).")
    @click.option("--eval-vae", type=click.Path(path_type=Path), default=None,
                  help="Also evaluate on this bundle's VAE reconstructions.")
    @click.option("--report", type=click.Path(path_type=Path), default=None,
                  help="Write the evaluation to REPORT.json and REPORT.md (needs --eval-clips).")
    def cli(out, vae, clips, frames, steps, batch, identity_batch, lr, seed, eval_only, eval_clips, eval_vae, report):
        torch.set_num_threads(1)
        if report is not None and eval_clips < 1:
            raise click.UsageError("--report needs --eval-clips N (N ≥ 1)")
        if eval_only and vae is not None:
            raise click.UsageError("--vae trains on reconstructions; with --eval-only use --eval-vae")
        if eval_vae is not None and not (eval_vae / "aa_bundle.json").is_file():
            raise click.UsageError(f"--eval-vae {eval_vae}: no aa_bundle.json there")
        try:
            if eval_only:
                judge = Judge.load(out)
            else:
                judge = train_judge(JudgeTrainConfig(out=out, vae=vae, clips=clips, frames=frames, steps=steps,
                                                     batch=batch, identity_batch=identity_batch, lr=lr,
                                                     seed=seed))
            if eval_clips > 0:
                log_file = out / "train_log.json"
                training = json.loads(log_file.read_text()) if log_file.is_file() else {}
                training.pop("history", None)
                cfg_file = out / "train_config.json"
                if cfg_file.is_file():
                    training.update({k: v for k, v in json.loads(cfg_file.read_text()).items() if k != "judge"})
                results = benchmark_judge(judge, eval_clips, frames, 12345, eval_vae, training, out / "judge.safetensors")
                if report is not None:
                    for p in write_report(results, report):
                        print(f"wrote {p}")
        except AAError as e:
            raise click.ClickException(str(e)) from None

    cli.main(args=argv, prog_name="python -m aa_world.train_judge", standalone_mode=True)


if __name__ == "__main__":
    main()
