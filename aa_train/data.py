"""Training data for `aa-train base`: sources named by `--data SPEC[@WEIGHT]`, and `aa-train prepare`, which turns
folders of videos or images into shards of training clips.

    world:N[:SEED]   N clips of the synthetic world (rendered on the fly, cached)
    videos:DIR       a folder of videos (mp4/mov/webm/avi/mkv/gif, recursively)   — `aa-train prepare` only
    images:DIR       a folder of still images (png/jpg/jpeg/webp, recursively)    — `aa-train prepare` only
    shards:DIR       what `aa-train prepare` wrote                                 — `aa-train base`

Captions, first found: a Hugging Face folder-dataset `metadata.jsonl` (`{"file_name": ..., "text": ...}`), a
WebVid-style CSV (`videoid,name,page_dir`, the file at `page_dir/videoid.*`), a `.txt` beside the file, the caption
of its `.aa.json` sidecar, else the captioner (`template`: "a PERSON"; `openai`: a vision model describes person, action and scene). Poses and masks come
from a `.aa.json` sidecar beside the file when present, else MediaPipe. Each clip is cropped to one square around
the person for its whole length (the identity preprocessing's crop) and resized; clips where no person is found in
too many frames are rejected and counted with the reason, never kept.

A shard is an `.npz` of up to `clips_per_shard` clips (frames, skeleton renders, masks uint8/bool (N, F, S, S[, 3]),
captions, still flags, sources); `index.json` beside them holds the settings and their hash, every shard with the
files it covers, the counts and the rejected files with why. Re-running with the same settings skips the files the
finished shards already cover.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from aa_runtime.errors import AAError
from aa_runtime.files import atomic_path
from aa_runtime.poses import render_skeleton, sidecar_path
from aa_runtime.video import VIDEO_SUFFIXES

SHARDS_FORMAT = "aa-shards/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # training stills (the runtime's frame folders also read .bmp)
KINDS = ("world", "videos", "images", "shards")


# --------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class DataSpec:
    """One `--data` source: kind, its argument (N[:SEED] or a folder) and its sampling weight."""

    kind: str
    arg: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> "DataSpec":
        text, _, weight = spec.partition("@")
        kind, _, arg = text.partition(":")
        usage = "use world:N[:SEED], videos:DIR, images:DIR or shards:DIR, optionally @WEIGHT (e.g. world:4000@0.2)"
        if kind not in KINDS or not arg:
            raise AAError("data", repr(spec), usage)
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise AAError("data", repr(spec), f"the weight after @ must be a number; {usage}") from None
        if not (math.isfinite(w) and w > 0):
            raise AAError("data", repr(spec), "use a positive weight after @")
        if kind != "world" and not Path(arg).expanduser().is_dir():
            raise AAError("data", f"{spec}: {arg} is not a folder", "give an existing folder")
        return cls(kind, arg if kind == "world" else str(Path(arg).expanduser()), w)

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" + (f"@{self.weight:g}" if self.weight != 1 else "")


def parse_data(specs) -> tuple[DataSpec, ...]:
    """`--data` values (one string or several) → DataSpecs; at least one."""
    specs = (specs,) if isinstance(specs, str) else tuple(specs)
    if not specs:
        raise AAError("data", "(none)", "give at least one --data source, e.g. --data world:4000")
    return tuple(DataSpec.parse(s) for s in specs)


# ------------------------------------------------------------------------------------------ captions
def media_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Every file under `folder` (recursively) with one of `suffixes`, in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def caption_table(folder: Path) -> dict[str, str]:
    """Captions keyed by path relative to `folder` (posix), from `metadata.jsonl` and WebVid-style CSVs."""
    table: dict[str, str] = {}
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, text = row["file_name"], row.get("text", row.get("caption"))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise AAError("metadata.jsonl", f"{meta} line {n}: {line[:60]!r}",
                              'write one {"file_name": ..., "text": ...} object per line') from None
            if isinstance(name, str) and isinstance(text, str) and text.strip():
                table[Path(name).as_posix()] = text.strip()
    for sheet in sorted(folder.glob("*.csv")):
        with open(sheet, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"videoid", "name"} <= set(reader.fieldnames or ()):
                continue
            for row in reader:
                stem = Path(row.get("page_dir") or "") / row["videoid"]
                for suffix in sorted(VIDEO_SUFFIXES):  # WebVid names the video, not its container
                    table.setdefault(stem.with_suffix(suffix).as_posix(), (row["name"] or "").strip())
    return {k: v for k, v in table.items() if v}


def file_caption(path: Path, folder: Path, table: dict[str, str]) -> str | None:
    """The caption a folder gives `path`: its metadata/CSV row, else a `.txt` beside it; None when none."""
    rel = path.relative_to(folder).as_posix()
    if rel in table:
        return table[rel]
    txt = path.with_suffix(".txt")
    if txt.is_file():
        text = txt.read_text(encoding="utf-8", errors="replace").strip()
        return text or None
    return None


# ----------------------------------------------------------------------------------------- preparing
@dataclass(frozen=True)
class PrepareDataConfig:
    """`aa-train prepare`: what the shards hold. Everything but `output`, `workers` and `openai_timeout` goes into
    the settings hash, so a re-run with other settings refuses to mix into the same folder."""

    data: tuple[str, ...]
    output: Path
    size: int = 64
    frames: int = 8
    fps: float = 8.0
    stride: int | None = None  # output frames between clip starts (default: `frames`, clips do not overlap)
    clips_per_video: int = 8
    clips_per_shard: int = 256
    min_person_fraction: float = 0.75  # of a clip's frames that must show a person
    class_word: str = "person"  # what the template captioner names
    captioner: str = "template"
    openai_model: str = "gpt-4o"
    openai_timeout: float = 30.0
    workers: int = 1

    def __post_init__(self):
        specs = parse_data(self.data)
        bad = [str(s) for s in specs if s.kind not in ("videos", "images")]
        if bad:
            raise AAError("data", ", ".join(bad), "aa-train prepare reads videos:DIR and images:DIR (world clips "
                          "render themselves in aa-train base)")
        if not (isinstance(self.size, int) and self.size >= 16 and self.size % 16 == 0):
            raise AAError("size", self.size, "use a multiple of 16")
        if not 1 <= self.frames <= 256:
            raise AAError("frames", self.frames, "use 1 to 256 frames per clip")
        if not 0 < self.fps <= 60:
            raise AAError("fps", self.fps, "use a rate in (0, 60]")
        if self.stride is not None and self.stride < 1:
            raise AAError("stride", self.stride, "use ≥ 1 frame")
        for name in ("clips_per_video", "clips_per_shard", "workers"):
            if getattr(self, name) < 1:
                raise AAError(name.replace("_", "-"), getattr(self, name), "use ≥ 1")
        if not 0 < self.min_person_fraction <= 1:
            raise AAError("min-person-fraction", self.min_person_fraction, "use a fraction in (0, 1]")
        if self.captioner not in ("template", "openai"):
            raise AAError("captioner", self.captioner, "use template or openai")

    @property
    def settings(self) -> dict:
        skip = ("output", "workers", "openai_timeout")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in skip}

    @property
    def settings_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Clip:
    """One training clip: frames uint8 (F, S, S, 3), skeleton renders uint8 (F, S, S, 3), masks bool (F, S, S)."""

    frames: np.ndarray
    skeletons: np.ndarray
    masks: np.ndarray
    caption: str
    still: bool
    source: str  # file and first frame


@dataclass
class FileResult:
    """What one video or image gave: its clips, or why it gave none (and why clips were dropped)."""

    file: str
    clips: list[Clip] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _annotate(path: Path, frames: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Keypoints (F, 18, 3), masks (F, H, W) of `frames` (decoded frame numbers `indices`) and a caption: the
    sidecar's, else MediaPipe's (and no caption)."""
    from . import annotators
    from .preprocess import drop_outside

    h, w = frames.shape[1:3]
    side = sidecar_path(path)
    caption = None
    if side.is_file():
        keypoints, masks, ann = annotators.load_sidecar(side, (w, h), indices,
                                                        with_masks=annotators.sidecar_has_masks(side))
        caption = ann.caption.strip() or None
        if masks is None:
            masks = annotators.mediapipe_masks(frames, keypoints)
    else:
        keypoints = annotators.mediapipe_poses(frames)
        masks = annotators.mediapipe_masks(frames, keypoints)
    return drop_outside(keypoints, w, h), masks, caption


def _caption(cfg: PrepareDataConfig, given: str | None, frames: np.ndarray) -> str:
    if given:
        return given
    from .captioners import openai_captions, template_captions

    fallback = template_captions("<x>", cfg.class_word)
    if cfg.captioner == "openai":
        return openai_captions(frames, "<x>", cfg.class_word, fallback, cfg.openai_model,
                               cfg.openai_timeout).class_caption
    return fallback.class_caption


def _clip_from(cfg: PrepareDataConfig, frames, keypoints, masks, caption, still, source) -> Clip | str:
    """Crop one window around its person → a Clip, or the reason it is rejected."""
    from . import annotators
    from .preprocess import crop_clip, square_crop_box

    present = annotators.count_joints(keypoints) >= annotators.MIN_JOINTS
    if present.sum() < math.ceil(cfg.min_person_fraction * len(frames) - 1e-9) or not present.any():
        return f"clip at frame {source.rsplit('#', 1)[1]}: a person in {int(present.sum())} of {len(frames)} frames"
    h, w = frames.shape[1:3]
    box = square_crop_box(masks[present], keypoints[present], w, h)
    out_f, out_kp, out_m = crop_clip(frames, keypoints, masks, box, cfg.size)
    skeletons = np.stack([render_skeleton(k, cfg.size, cfg.size) for k in out_kp])
    return Clip(out_f, skeletons, out_m, caption, still, source)


def prepare_file(cfg: PrepareDataConfig, path: Path, kind: str, caption: str | None, name: str) -> FileResult:
    """One video (up to `clips_per_video` windows of `frames` at `fps`, `stride` apart) or one image (a still
    clip) → its clips. A file that cannot be read or shows no person is a rejection, not an error."""
    from aa_runtime.video import read_image

    from .preprocess import read_resampled

    result = FileResult(name)
    try:
        if kind == "videos":  # decode only what the windows need
            span = (cfg.clips_per_video - 1) * (cfg.stride or cfg.frames) + cfg.frames
            clip, indices, fps, _ = read_resampled(path, cfg.fps, span, default_fps=cfg.fps)
        else:
            still = read_image(path)[None]
    except AAError as e:
        result.rejected.append(f"unreadable ({str(e)[:120]})")
        return result
    if kind == "images":
        frames, indices, windows = still, np.zeros(1, int), [(0, 1)]
    else:
        frames = clip.frames[indices]
        stride = cfg.stride or cfg.frames
        windows = [(s, s + cfg.frames) for s in range(0, len(frames) - cfg.frames + 1, stride)][:cfg.clips_per_video]
        if not windows:
            result.rejected.append(f"{len(frames)} frames at {fps:g} fps, fewer than {cfg.frames}")
            return result
    try:
        keypoints, masks, sidecar_caption = _annotate(path, frames, indices)
    except AAError as e:
        result.rejected.append(f"annotation failed ({str(e)[:120]})")
        return result
    text = _caption(cfg, caption or sidecar_caption, frames)
    for lo, hi in windows:
        got = _clip_from(cfg, frames[lo:hi], keypoints[lo:hi], masks[lo:hi], text, kind == "images",
                         f"{name}#{lo}")
        (result.rejected.append if isinstance(got, str) else result.clips.append)(got)
    return result


def _job(args) -> FileResult:
    import torch

    torch.set_num_threads(1)
    return prepare_file(*args)


def _work_items(cfg: PrepareDataConfig) -> list[tuple[Path, str, str | None, str]]:
    """(path, kind, caption, name) of every input file; `name` is `spec-index/relative path`."""
    items = []
    for k, spec in enumerate(parse_data(cfg.data)):
        folder = Path(spec.arg)
        table = caption_table(folder)
        for path in media_files(folder, VIDEO_SUFFIXES if spec.kind == "videos" else IMAGE_SUFFIXES):
            items.append((path, spec.kind, file_caption(path, folder, table),
                          f"{k}/{path.relative_to(folder).as_posix()}"))
    return items


def write_shard(file: Path, clips: list[Clip], frames: int) -> None:
    """Clips → one compressed .npz (a still clip's single frame repeated to `frames`), atomically."""
    def stack(attr):
        return np.stack([np.repeat(getattr(c, attr), frames // len(getattr(c, attr)), 0) for c in clips])

    with atomic_path(file) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, frames=stack("frames"), skeletons=stack("skeletons"), masks=stack("masks"),
                                captions=json.dumps([c.caption for c in clips]),
                                still=np.array([c.still for c in clips]),
                                sources=json.dumps([c.source for c in clips]))


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="file", dynamic_ncols=True)


def prepare_data(cfg: PrepareDataConfig, log=print) -> dict:
    """Every input file → clips → shards under cfg.output; returns the index (also written as index.json). A shard
    closes at the first file boundary after `clips_per_shard` clips, so each file's clips sit in one shard and a
    re-run can skip whole files."""
    out = Path(cfg.output)
    index_file = out / "index.json"
    index = {"format": SHARDS_FORMAT, "settings": cfg.settings, "settings_hash": cfg.settings_hash,
             "shards": [], "rejected": [], "counts": {}}
    if index_file.is_file():
        old = read_index(out)
        if old["settings_hash"] != cfg.settings_hash:
            raise AAError("output", f"{out} holds shards prepared with other settings ({old['settings_hash']})",
                          "give a new -o folder, or the settings of that run")
        index = old
    done = {f for s in index["shards"] for f in s["files"]}
    items = [it for it in _work_items(cfg) if it[3] not in done]
    if not items and not done:
        raise AAError("data", ", ".join(cfg.data), "no video or image files found there")
    out.mkdir(parents=True, exist_ok=True)
    pending: list[Clip] = []
    files: list[str] = []
    rejected: list[dict] = []
    t0, clips_made = time.time(), 0

    def close_shard():
        name = None
        if pending:
            name = f"shard-{sum(1 for s in index['shards'] if s['file']):05d}.npz"
            write_shard(out / name, pending, cfg.frames)
        index["shards"].append({"file": name, "clips": len(pending), "files": list(files)})
        index["rejected"] += rejected
        pending.clear(), files.clear(), rejected.clear()
        _write_index(index_file, index)

    bar = _progress(len(items) + len(done), len(done))
    pool = None
    try:
        jobs = [(cfg, *it) for it in items]
        if cfg.workers > 1:
            import multiprocessing

            pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))
            results: Iterator[FileResult] = pool.map(_job, jobs, chunksize=1)
        else:
            results = (prepare_file(*job) for job in jobs)
        for res in results:
            files.append(res.file)
            pending += res.clips
            rejected += [{"file": res.file, "reason": r} for r in res.rejected]
            clips_made += len(res.clips)
            bar.update(1)
            bar.set_postfix_str(f"{clips_made / max(time.time() - t0, 1e-6):.2f} clips/s")
            if len(pending) >= cfg.clips_per_shard:
                close_shard()
        if files:
            close_shard()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    shards = [s for s in index["shards"] if s["file"]]
    index["counts"] = {"files": sum(len(s["files"]) for s in index["shards"]),
                       "clips": sum(s["clips"] for s in shards), "shards": len(shards),
                       "rejected": len(index["rejected"]),
                       "bytes": sum((out / s["file"]).stat().st_size for s in shards)}
    _write_index(index_file, index)
    log(f"prepared {index['counts']['clips']} clips in {len(shards)} shard(s) from {index['counts']['files']} "
        f"file(s), {index['counts']['rejected']} rejected → {out}")
    return index


def _write_index(file: Path, index: dict) -> None:
    with atomic_path(file) as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1))


def read_index(folder: Path) -> dict:
    """`index.json` of a shard folder, checked, with one-line errors."""
    file = Path(folder) / "index.json"
    fix = "run aa-train prepare -o that folder first"
    if not file.is_file():
        raise AAError("shards", f"{file} is missing", fix)
    try:
        index = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AAError("shards", f"{file} is not valid JSON ({type(e).__name__})", fix) from None
    if not (isinstance(index, dict) and index.get("format") == SHARDS_FORMAT and isinstance(index.get("shards"), list)
            and isinstance(index.get("settings"), dict)):
        raise AAError("shards", f"{file} is not an {SHARDS_FORMAT} index", fix)
    return index


# ------------------------------------------------------------------------------------------- loading
def shards_source(folder: Path, size: int, frames: int) -> tuple[dict, int, str]:
    """A prepared folder's index (checked against the training size and frame count), its clip count and a key
    naming its contents (settings, every shard's files and byte size) for the caches built from it."""
    index = read_index(folder)
    s = index["settings"]
    if (s.get("size"), s.get("frames")) != (size, frames):
        raise AAError("shards", f"{folder} holds {s.get('frames')}-frame clips at {s.get('size')} px",
                      f"train with --size {s.get('size')} --frames {s.get('frames')}, or prepare again at "
                      f"--size {size} --frames {frames}")
    shards = [sh for sh in index["shards"] if sh["file"]]
    n = sum(sh["clips"] for sh in shards)
    if not n:
        raise AAError("shards", f"{folder} holds no clips", "prepare it from videos that show a person")
    files = [Path(folder) / sh["file"] for sh in shards]
    sizes = [f.stat().st_size if f.is_file() else None for f in files]
    digest = hashlib.sha256(json.dumps([shards, sizes]).encode()).hexdigest()[:8]
    return index, n, f"shards-{index['settings_hash']}-{n}-{digest}"


def shard_blocks(folder: Path, index: dict) -> Iterator[dict]:
    """The clips of a prepared folder, one shard at a time: frames, skeletons, masks, captions, still flags."""
    for shard in index["shards"]:
        if not shard["file"]:
            continue
        file = Path(folder) / shard["file"]
        try:
            with np.load(file) as z:
                block = {k: z[k] for k in ("frames", "skeletons", "masks", "still")}
                block["captions"] = json.loads(str(z["captions"]))
        except (OSError, ValueError, KeyError) as e:
            raise AAError("shards", f"{file} is missing or unreadable ({type(e).__name__})",
                          "prepare the folder again") from None
        if len(block["captions"]) != shard["clips"]:
            raise AAError("shards", f"{file} holds {len(block['captions'])} clips, its index says {shard['clips']}",
                          "prepare the folder again")
        yield block


@dataclass
class TrainingData:
    """Every source of a `--data` list as one set of clips: `clips` (WorldClips), which are stills (N,), each
    source's [start, stop) rows and weight, and a key naming the whole (for the latent cache)."""

    clips: object
    still: np.ndarray
    sources: list[tuple[int, int, float]]
    key: str
    described: list[dict]

    def draw(self, rng: np.random.Generator, count: int, video: bool) -> np.ndarray:
        """`count` clip rows: a source by weight, then a clip of it uniformly (only moving clips when `video`).
        One source of moving clips draws exactly as training always did: rng.integers(0, N, count)."""
        n = len(self.still)
        if len(self.sources) == 1 and not self.still.any():
            return rng.integers(0, n, count)
        pools = [np.flatnonzero(~self.still[a:b]) + a if video else np.arange(a, b) for a, b, _ in self.sources]
        weights = np.array([w if len(p) else 0.0 for p, (_, _, w) in zip(pools, self.sources)])
        if weights.sum() == 0:
            raise AAError("data", "no moving clips", "the video stage needs videos:/world: data, not only images")
        picks = rng.choice(len(pools), size=count, p=weights / weights.sum())
        return np.array([pools[k][rng.integers(0, len(pools[k]))] for k in picks])


def check_training_specs(specs, size: int, frames: int, fps: float) -> tuple[DataSpec, ...]:
    """The `--data` of `aa-train base`: world and shards sources (folders of media are prepared first)."""
    from .world_data import WorldSource

    parsed = parse_data(specs)
    for spec in parsed:
        if spec.kind in ("videos", "images"):
            raise AAError("data", str(spec), f"prepare the folder first: aa-train prepare --data {spec.kind}:"
                          f"{spec.arg} -o SHARDS --size {size} --frames {frames}, then --data shards:SHARDS")
        if spec.kind == "world":
            WorldSource.parse(f"world:{spec.arg}", size, frames, fps)
    return parsed


def load_training_data(specs, size: int, frames: int, fps: float, cache_dir: Path, log=print) -> TrainingData:
    """Render or read every source and join them. World sources alone stay in memory, as rendered (and cached).
    With shards, the joined clips are written once into a memory-mapped folder of the cache (`arrays`), one shard
    at a time, so peak memory is one shard, whatever the data set's size."""
    from .world_data import WorldSource

    plan, sources, keys, described, at = [], [], [], [], 0
    for spec in check_training_specs(specs, size, frames, fps):
        if spec.kind == "world":
            src = WorldSource.parse(f"world:{spec.arg}", size, frames, fps)
            n, key = src.clips, src.key
            plan.append(("world", src))
            described.append({"kind": "world", **asdict(src), "weight": spec.weight})
        else:
            index, n, key = shards_source(Path(spec.arg), size, frames)
            plan.append(("shards", (Path(spec.arg), index)))
            described.append({"kind": "shards", "folder": spec.arg, "settings_hash": index["settings_hash"],
                              "clips": n, "weight": spec.weight})
        keys.append(key)
        sources.append((at, at + n, spec.weight))
        at += n
    key = keys[0] if len(keys) == 1 else hashlib.sha256("|".join(keys).encode()).hexdigest()[:12]
    if all(kind == "world" for kind, _ in plan):
        clips = _world_in_memory([src for _, src in plan], cache_dir, log)
        still = np.zeros(at, bool)
    else:
        clips, still = _clips_on_disk(plan, at, size, frames, Path(cache_dir) / f"clips-{key}", cache_dir, log)
    return TrainingData(clips, still, sources, key, described)


def _world_in_memory(srcs, cache_dir: Path, log):
    from .world_data import WorldClips, render_world

    parts = [render_world(src, cache_dir, log=log) for src in srcs]
    if len(parts) == 1:
        return parts[0]
    return WorldClips(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("frames", "skeletons", "masks")),
                      [c for p in parts for c in p.captions], np.concatenate([p.parts for p in parts]),
                      [s for p in parts for s in p.spans])


def _clips_on_disk(plan, n: int, size: int, frames: int, folder: Path, cache_dir: Path, log):
    """Every source of `plan`, block by block, into one memory-mapped WorldClips (+ still flags) at `folder`. Part
    labels exist only where a world source grounds captions; shards-only data gets a zero view that takes no
    memory."""
    from . import arrays
    from .world_data import WorldClips, render_world

    grounded = any(kind == "world" for kind, _ in plan)
    names = ("frames", "skeletons", "masks") + (("parts",) if grounded else ())
    if not arrays.is_complete(folder):
        log(f"writing {n} clips to {folder} (memory-mapped training data)")
        f, s = frames, size
        shapes = {"frames": ((n, f, s, s, 3), np.uint8), "skeletons": ((n, f, s, s, 3), np.uint8),
                  "masks": ((n, f, s, s), np.bool_)} | ({"parts": ((n, f, s, s), np.uint8)} if grounded else {})
        with arrays.building(folder, shapes) as (out, meta):
            captions, spans, still, at = [], [], [], 0
            for kind, src in plan:
                if kind == "world":
                    w = render_world(src, cache_dir, log=log)
                    blocks = [{"frames": w.frames, "skeletons": w.skeletons, "masks": w.masks, "parts": w.parts,
                               "captions": w.captions, "spans": w.spans, "still": np.zeros(len(w.captions), bool)}]
                else:
                    blocks = shard_blocks(*src)
                for block in blocks:
                    k = len(block["captions"])
                    if at + k > n:
                        raise AAError("shards", f"{src[0]} changed while it was read", "train again")
                    for name in names:
                        if name in block:
                            out[name][at:at + k] = block[name]
                    captions += block["captions"]
                    spans += block.get("spans", [[] for _ in range(k)])
                    still += [bool(x) for x in block["still"]]
                    at += k
            if at != n:
                raise AAError("shards", f"read {at} clips where the indexes count {n}", "prepare the folders again")
            meta.update(captions=captions, spans=spans, still=still)
    got, meta = arrays.read(folder, names)
    parts = got["parts"] if grounded else np.broadcast_to(np.zeros((), np.uint8), got["masks"].shape)
    spans = [[tuple(x) for x in row] for row in meta["spans"]]
    clips = WorldClips(got["frames"], got["skeletons"], got["masks"], meta["captions"], parts, spans)
    return clips, np.array(meta["still"], bool)
