"""The judge of the synthetic world: a small multi-head CNN that reads scene, objects,
person mask, identity attributes and view from frames, so generated videos can be scored.

It sees 64×64 RGB (other sizes are resized to 64 on the way in; the mask is resized back), and is
trained only on ground-truth renders of training identities (`aa_world.train_judge`). Two branches:
- frame branch: a 4-stage conv encoder (64 → 32 → 16 → 8 px) with a U-Net decoder for the per-pixel
  person mask; global mean / max pooling into the scene head; object presence from a per-cell object
  map at 16×16 (decoder features), pooled by a smooth max (log-sum-exp), so a small balloon anywhere counts;
- identity branch: the box around the predicted mask is cropped to 48×32 (so body parts land at
  fixed places: hat at the top, shoes at the bottom) and read by a second small encoder into the
  attribute heads (one per `ATTRIBUTE_HEAD_SIZES` entry) and the view head.

    judge = Judge.load()                      # models/judge/judge.safetensors + config.json
    out = judge.predict(frames)               # uint8 (N, H, W, 3) in [0, 255] → JudgeOutput
    out.scene.argmax(-1), out.mask > 0.5, out.attributes["shirt_colour"]
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aa_runtime.errors import AAError
from aa_runtime.files import atomic_path
from aa_runtime.skeleton import VIEWS

from .identity import ATTRIBUTE_HEAD_SIZES, VIEW_DEPENDENT_ATTRIBUTES
from .objects import OBJECTS
from .scenes import SCENES

JUDGE_FORMAT = "aa-judge/1"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JUDGE = REPO_ROOT / "models" / "judge"
WEIGHTS_NAME, CONFIG_NAME = "judge.safetensors", "config.json"
OBJECT_SHARPNESS = 4.0  # r of the log-sum-exp pool over cells: → max as r grows, → mean as r → 0


@dataclass(frozen=True)
class JudgeConfig:
    """Sizes of the judge and the vocabulary of its heads (checked against the world's on load)."""

    size: int = 64  # input side; frames of other sizes are resized to it
    widths: tuple[int, ...] = (16, 32, 64, 128)  # encoder channels at 64, 32, 16, 8 px
    decoder: tuple[int, ...] = (32, 16, 8)  # mask decoder channels at 16, 32, 64 px
    hidden: int = 128  # the pooled scene / object feature vector
    crop: tuple[int, int] = (48, 32)  # (height, width) of the person crop the identity branch reads
    crop_widths: tuple[int, ...] = (24, 48, 64, 96)  # identity-branch channels at crop/1, /2, /4, /8
    crop_hidden: int = 192  # the identity feature vector (attributes and view)
    scenes: tuple[str, ...] = SCENES
    objects: tuple[str, ...] = OBJECTS
    views: tuple[str, ...] = VIEWS
    attributes: tuple[tuple[str, int], ...] = tuple(ATTRIBUTE_HEAD_SIZES.items())

    def __post_init__(self):
        if len(self.widths) != 4 or len(self.decoder) != 3 or len(self.crop_widths) != 4 or \
                min(self.widths + self.decoder + self.crop_widths) < 1:
            raise ValueError(f"widths={self.widths}, decoder={self.decoder}, crop_widths={self.crop_widths}: give 4, 3 "
                             "and 4 widths ≥ 1")
        if self.size % 8 or any(c % 8 for c in self.crop):
            raise ValueError(f"size={self.size}, crop={self.crop}: use multiples of 8")
        object.__setattr__(self, "attributes", tuple((str(k), int(v)) for k, v in self.attributes))
        for name in ("widths", "decoder", "crop", "crop_widths", "scenes", "objects", "views"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_dict(cls, d: dict) -> "JudgeConfig":
        d = {k: v for k, v in d.items() if k != "format"}
        if "attributes" in d:
            d["attributes"] = tuple(tuple(a) for a in d["attributes"])
        return cls(**d)

    def matches_world(self) -> list[str]:
        """Differences between this config's vocabulary and the current world's (empty when it fits)."""
        diffs = []
        for name, now in (("scenes", SCENES), ("objects", OBJECTS), ("views", VIEWS),
                          ("attributes", tuple(ATTRIBUTE_HEAD_SIZES.items()))):
            if tuple(getattr(self, name)) != tuple(now):
                diffs.append(name)
        return diffs


@dataclass
class JudgeOutput:
    """What the judge reads from N frames; all float32 probabilities."""

    scene: np.ndarray  # (N, len(SCENES)) softmax
    objects: np.ndarray  # (N, len(OBJECTS)) independent sigmoids (presence)
    mask: np.ndarray  # (N, H, W) person probability at the input frames' size
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # name → (N, ATTRIBUTE_HEAD_SIZES[name]) softmax
    view: np.ndarray | None = None  # (N, len(VIEWS)) softmax

    def __len__(self) -> int:
        return len(self.scene)

    def __getitem__(self, idx) -> "JudgeOutput":
        """The output for a subset of frames (an index array, slice or boolean mask)."""
        return JudgeOutput(self.scene[idx], self.objects[idx], self.mask[idx],
                           {k: v[idx] for k, v in self.attributes.items()},
                           None if self.view is None else self.view[idx])


# ----------------------------------------------------------------------------------------- the network
def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def mask_boxes(mask: torch.Tensor, aspect: float, pad: float = 1.5) -> torch.Tensor:
    """Boxes around the person: bool (B, H, W) → float (B, 4) (cx, cy, half-width, half-height) in pixels, padded
    by `pad` px and widened or heightened to `aspect` = width / height; the whole frame where the mask is empty."""
    b, h, w = mask.shape
    rows, cols = mask.any(2), mask.any(1)  # (B, H), (B, W)
    ys, xs = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    big = float(max(h, w)) * 4
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -big).amax(1)
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -big).amax(1)
    empty = ~rows.any(1)
    y0, y1 = torch.where(empty, 0.0, y0), torch.where(empty, h - 1.0, y1)
    x0, x1 = torch.where(empty, 0.0, x0), torch.where(empty, w - 1.0, x1)
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2  # pixel-edge coordinates
    hw, hh = (x1 - x0 + 1) / 2 + pad, (y1 - y0 + 1) / 2 + pad
    hw, hh = torch.maximum(hw, hh * aspect), torch.maximum(hh, hw / aspect)
    return torch.stack([cx, cy, hw, hh], 1)


def crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear crops: float (B, C, H, W), boxes (B, 4) (cx, cy, half-w, half-h) px → (B, C, size[0], size[1])."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = boxes[:, 2] * 2 / w, boxes[:, 3] * 2 / h
    theta[:, 0, 2], theta[:, 1, 2] = boxes[:, 0] * 2 / w - 1, boxes[:, 1] * 2 / h - 1
    grid = F.affine_grid(theta, (b, x.shape[1], *size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _encoder(cin: int, widths: tuple[int, ...]) -> nn.ModuleList:
    """4 stages: one 3×3 conv at full resolution, then (stride-2 conv, conv) pairs halving the resolution."""
    stages, c = [_conv(cin, widths[0])], widths[0]
    for wd in widths[1:]:
        stages.append(nn.Sequential(_conv(c, wd, 2), _conv(wd, wd)))
        c = wd
    return nn.ModuleList(stages)


class JudgeNet(nn.Module):
    """Two branches. Frame branch: encoder + U-Net mask decoder + pooled scene / object heads. Identity branch: a
    crop around the person (from the predicted mask, or given boxes while training) → attribute and view heads.
    float (B, 3, S, S) in [-1, 1] → logits."""

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.cfg = cfg
        w, d, cw = cfg.widths, cfg.decoder, cfg.crop_widths
        self.enc = _encoder(3, w)  # (B, w_i, S/2^i, S/2^i)
        self.dec_in = nn.Conv2d(w[3], d[0], 1)
        self.dec = nn.ModuleList([_conv(d[0] + w[2], d[0]), _conv(d[0] + w[1], d[1]), _conv(d[1] + w[0], d[2])])
        self.mask_out = nn.Conv2d(d[2], 1, 1)
        self.trunk = nn.Sequential(nn.Linear(2 * w[3] + w[2], cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({"scene": nn.Linear(cfg.hidden, len(cfg.scenes))})
        self.object_map = nn.Conv2d(d[0], len(cfg.objects), 1)  # per-cell object evidence at S/4
        self.crop_enc = _encoder(3, cw)  # (B, cw_i, crop/2^i)
        self.crop_reduce = nn.Conv2d(cw[3], 32, 1)
        cells = (cfg.crop[0] // 8) * (cfg.crop[1] // 8)
        self.crop_trunk = nn.Sequential(nn.Linear(32 * cells + cw[3], cfg.crop_hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(0.1))
        self.view_head = nn.Linear(cfg.crop_hidden, len(cfg.views))
        self.attr_heads = nn.ModuleDict({name: nn.Linear(cfg.crop_hidden, n) for name, n in cfg.attributes})

    def forward_frames(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frame branch: x float (B, 3, S, S) in [-1, 1] → mask (B, S, S), scene and object logits."""
        feats, y = [], x
        for stage in self.enc:
            y = stage(y)
            feats.append(y)
        e1, e2, e3, e4 = feats  # (B, w_i, S/2^i, S/2^i)
        z = self.dec_in(e4)
        for i, (block, skip) in enumerate(zip(self.dec, (e3, e2, e1))):
            z = F.interpolate(z, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            z = block(torch.cat([z, skip], 1))
            if i == 0:  # objects: a smooth max over the S/4 × S/4 cells (multiple-instance pooling)
                cells = self.object_map(z).flatten(2)  # (B, K, (S/4)²)
                objects = (torch.logsumexp(OBJECT_SHARPNESS * cells, -1) - math.log(cells.shape[-1])) / OBJECT_SHARPNESS
        h = self.trunk(torch.cat([e4.mean((2, 3)), e4.amax((2, 3)), e3.amax((2, 3))], 1))  # (B, hidden)
        return {"mask": self.mask_out(z)[:, 0], "objects": objects, **{k: head(h) for k, head in self.heads.items()}}

    def forward_identity(self, x: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Identity branch: x float (B, 3, S, S) in [-1, 1], person boxes (B, 4) → view and attribute logits."""
        c = crop_boxes(x, boxes, self.cfg.crop)  # (B, 3, ch, cw)
        for stage in self.crop_enc:
            c = stage(c)
        g = torch.cat([self.crop_reduce(c).flatten(1), c.mean((2, 3))], 1)  # (B, 32·cells + cw[3])
        g = self.crop_trunk(g)
        return {"view": self.view_head(g), "attributes": {k: head(g) for k, head in self.attr_heads.items()}}

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Both branches; the person boxes come from the mask head unless given (see `mask_boxes`)."""
        out = self.forward_frames(x)
        if boxes is None:
            boxes = mask_boxes(out["mask"].detach() > 0, self.cfg.crop[1] / self.cfg.crop[0])
        return {**out, **self.forward_identity(x, boxes)}


def frames_to_input(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) in [0, 255] → float (N, 3, size, size) in [-1, 1] (antialiased resize when H, W ≠ size)."""
    x = torch.as_tensor(frames)
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def check_frames(frames, what: str = "frames") -> np.ndarray:
    """Validate uint8 (N, H, W, 3) frames (a single (H, W, 3) frame is accepted and gets N = 1)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{what}: got {frames.dtype} {frames.shape}; pass uint8 (N, H, W, 3) in [0, 255] with N ≥ 1")
    if min(frames.shape[1:3]) < 8:
        raise ValueError(f"{what}: frame size {frames.shape[1:3]} is too small; use sides ≥ 8 px")
    return frames


# ----------------------------------------------------------------------------------------- the predictor
class Judge:
    """Loaded judge: `predict(frames)` reads uint8 frames of any size and returns a `JudgeOutput`."""

    def __init__(self, net: JudgeNet, source: str = "in memory"):
        self.net = net.eval()
        self.cfg = net.cfg
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Judge":
        """Load from a folder holding judge.safetensors + config.json (default models/judge) or from the
        .safetensors file itself (config.json beside it). fp16 weights are loaded to fp32."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path) if path is not None else DEFAULT_JUDGE
        weights = path if path.suffix == ".safetensors" else path / WEIGHTS_NAME
        config = weights.with_name(CONFIG_NAME)
        fix = "train it with: python -m aa_world.train_judge --out models/judge (or pass the judge folder)"
        if not weights.is_file():
            raise AAError("judge weights", f"{weights} is missing", fix)
        if not config.is_file():
            raise AAError("judge config", f"{config} is missing", fix)
        try:
            raw = json.loads(config.read_text())
            cfg = JudgeConfig.from_dict(raw)
        except (ValueError, TypeError) as e:
            raise AAError("judge config", f"{config} is invalid ({type(e).__name__}: {str(e)[:80]})", fix) from None
        if raw.get("format") != JUDGE_FORMAT:
            raise AAError("judge config", f"{config}: format {raw.get('format')!r}", f"expected {JUDGE_FORMAT!r}; {fix}")
        if diffs := cfg.matches_world():
            raise AAError("judge config", f"{config}: its {', '.join(diffs)} differ from the world's vocabulary",
                          f"the world changed since the judge was trained; {fix}")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise AAError("judge weights", f"{weights} is corrupted or unreadable ({type(e).__name__})", fix) from None
        net = JudgeNet(cfg)
        own = net.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        bad = [k for k in own if k in state and own[k].shape != state[k].shape]
        if missing or unexpected or bad:
            detail = (f"{len(missing)} missing (e.g. {missing[:1]})" if missing else "") + \
                     (f" {len(unexpected)} unexpected (e.g. {unexpected[:1]})" if unexpected else "") + \
                     (f" {len(bad)} of another shape (e.g. {bad[:1]})" if bad else "")
            raise AAError("judge weights", f"{weights} does not fit {config}: {detail.strip()}", fix)
        net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        if not all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point()):
            raise AAError("judge weights", f"{weights} holds non-finite values", fix)
        return cls(net, str(weights))

    def save(self, folder: str | Path) -> Path:
        """Write judge.safetensors (fp16) + config.json into `folder`, each atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu()
                 for k, v in self.net.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": JUDGE_FORMAT})
        with atomic_path(folder / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps({"format": JUDGE_FORMAT, **asdict(self.cfg)}, indent=1))
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            (folder / name).chmod(0o644)  # the temporary files were private
        return folder

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch_size: int = 128) -> JudgeOutput:
        """uint8 (N, H, W, 3) in [0, 255] → JudgeOutput (mask probabilities at H × W)."""
        frames = check_frames(frames)
        h, w = frames.shape[1:3]
        self.net.eval()
        parts = []
        for s in range(0, len(frames), batch_size):
            out = self.net(frames_to_input(frames[s:s + batch_size], self.cfg.size))
            mask = out["mask"][:, None]  # (B, 1, S, S) logits
            if mask.shape[-2:] != (h, w):
                mask = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
            parts.append({"scene": out["scene"].softmax(-1), "objects": out["objects"].sigmoid(),
                          "mask": mask[:, 0].sigmoid(), "view": out["view"].softmax(-1),
                          **{f"attr:{k}": v.softmax(-1) for k, v in out["attributes"].items()}})
        cat = {k: torch.cat([p[k] for p in parts]).float().numpy() for k in parts[0]}
        return JudgeOutput(scene=cat["scene"], objects=cat["objects"], mask=cat["mask"], view=cat["view"],
                           attributes={k: cat[f"attr:{k}"] for k, _ in self.cfg.attributes})


def observable(views, attribute: str) -> np.ndarray:
    """(F,) bool: frames whose view would show `attribute` if the identity had it (front for the logo, back for
    the backpack; all frames for the other attributes). For an identity that has the feature this is exactly
    the clip's `logo_visible` / `backpack_visible`; for one that lacks it, these frames show its absence."""
    views = np.asarray(views)
    need = VIEW_DEPENDENT_ATTRIBUTES.get(attribute)
    return np.ones(len(views), bool) if need is None else views == need


def read_identity(judge: Judge, frames: np.ndarray, class_word: str) -> "Identity":
    """The person the judge reads in uint8 frames (F, H, W, 3) of one person: each attribute's probabilities
    averaged over the frames that would show it (the judge's own view reading decides the logo's and backpack's),
    then the most probable consistent identity (no hair colour when bald, a second shirt colour only on a patterned
    shirt, a logo colour only with a logo shape). A reader of the world, like a captioner of real footage: it
    makes the same mistakes the judge makes (hat, hair style and logo shape are its weakest)."""
    from aa_runtime.skeleton import Body

    from .identity import ATTRIBUTE_VALUES, NONE, Identity

    out = judge.predict(frames)
    views = np.asarray(VIEWS)[out.view.argmax(1)]

    def probs(name: str) -> np.ndarray:
        seen = observable(views, name)
        p = out.attributes[name][seen] if seen.any() else np.zeros((0, ATTRIBUTE_HEAD_SIZES[name]))
        if not len(p):  # never seen from the side that shows it: read as absent
            return np.eye(ATTRIBUTE_HEAD_SIZES[name])[0]
        return p.mean(0)

    def pick(name: str, exclude=(), allow_none: bool = True) -> str:
        values = ATTRIBUTE_VALUES[name]
        p = probs(name).copy()
        for k, v in enumerate(values):
            if v in exclude or (v == NONE and not allow_none):
                p[k] = -1.0
        return values[int(p.argmax())]

    read = {name: pick(name) for name in ("skin", "hair_style", "shirt_colour", "shirt_pattern", "lower_garment",
                                          "shoe_colour", "logo_shape", "backpack")}
    read["hair_colour"] = NONE if read["hair_style"] == "bald" else pick("hair_colour", allow_none=False)
    read["shirt_colour2"] = (NONE if read["shirt_pattern"] == "solid" else
                             pick("shirt_colour2", exclude=(read["shirt_colour"],), allow_none=False))
    read["lower_colour"] = pick("lower_colour")
    read["hat"] = pick("hat")
    read["logo_colour"] = NONE if read["logo_shape"] == NONE else pick("logo_colour", allow_none=False)
    return Identity(seed=0, class_word=class_word, body=Body(), **read)
