"""Fuzzing the input parsers with hypothesis: every malformed pose file, adapter, bundle or video ends in the
one-line error of the error contract (an AAError naming what, the value and the fix), never in another
exception; from the CLIs it is exit code 2 with one line on stderr, no traceback, and no output left behind.

Each property starts from a valid input and breaks it (a key removed, a value replaced by a wrong type, NaN,
inf, a negative or huge number, bytes cut or overwritten), so that most examples get past the first check.
Runs are bounded (`max_examples`) and derandomized, so `make test` tests the same examples every time; set
AA_FUZZ_SCALE=20 for a deeper, randomized search. The crashes found so far are the regression tests at the end.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aa_runtime.errors import AAError
from aa_runtime.poses import (MAX_ANNOTATION_FRAMES, Annotations, fit_poses, load_annotations, render_skeleton,
                              resample_poses)
from aa_train.captioners import template_captions, world_context

SCALE = float(os.environ.get("AA_FUZZ_SCALE", "1"))


def fuzz(max_examples: int):
    """Bounded settings: `max_examples` (× AA_FUZZ_SCALE), no deadline, no example database written."""
    deep = SCALE != 1
    return settings(max_examples=max(1, round(max_examples * SCALE)), deadline=None, database=None,
                    derandomize=not deep, print_blob=deep,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Each example is tiny work: a second torch thread only adds hand-off overhead (on a busy machine, a lot)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Blob(bytes):
    """bytes that print as their length, so that a failing example prints short."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


def assert_contract(e: AAError) -> None:
    """The one-line error: what, the value, the fix, on one line."""
    assert isinstance(e, AAError)
    assert e.what and e.fix and str(e.value) != "", repr(e)
    assert "\n" not in str(e) and len(str(e)) < 600, str(e)


def expect_aa_error(fn, *args, **kwargs):
    """Call `fn`; return its result, or None after checking that what it raised is the one-line AAError."""
    try:
        return fn(*args, **kwargs)
    except AAError as e:
        assert_contract(e)
        return None


def assert_cli_error(res, tmp_path: Path, before: set[Path]) -> None:
    """A CLI run that failed as the contract says: exit 2, one `error:` line, no traceback, nothing new written."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit)
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert "Traceback" not in res.output
    assert set(tmp_path.rglob("*")) == before, sorted(set(tmp_path.rglob("*")) - before)


# Values a parser may meet where it wanted something else: wrong types, NaN, ±inf, negative, huge, empty.
SPECIALS = [None, True, False, 0, -1, 1, 0.5, -0.0, 1e308, -1e308, 2 ** 63, 10 ** 400, "", "64", "nan", [], {},
            [0, 0, 0], {"a": 1}]
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
json_values = st.recursive(json_leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                            max_size=3), max_leaves=6)
weird = st.one_of(st.sampled_from(SPECIALS), st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                  json_values)


def _paths(node, prefix=()) -> list[tuple]:
    """Every (key, …) path into nested dicts/lists."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(_paths(v, prefix + (k,)))
    return out


@st.composite
def mutated(draw, doc: dict, depths=(1, 2, 3, 4, 5), max_mutations: int = 3):
    """`doc` with 1..max_mutations of its keys (at a drawn depth) deleted or replaced by a weird value."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = [p for p in _paths(doc) if len(p) in depths]
        if not paths:
            break
        depth = draw(st.sampled_from(sorted({len(p) for p in paths})))
        path = draw(st.sampled_from([p for p in paths if len(p) == depth]))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(weird))  # a copy: SPECIALS' lists must not change
    return doc


# ============================================================================================ .aa.json pose files
@st.composite
def pose_docs(draw):
    """A valid `.aa.json` document: 1-3 frames of finite keypoints, masks, caption, source."""
    n = draw(st.integers(1, 3))
    coord = st.floats(-100, 200, allow_nan=False, width=32)
    frames = [{"pose": [[draw(coord), draw(coord), draw(st.sampled_from([0.0, 0.5, 1.0]))] for _ in range(18)],
               "mask": draw(st.sampled_from([None, f"masks/{i:06d}.png"]))} for i in range(n)]
    return {"format": "aa-annotations/1", "width": draw(st.integers(1, 256)), "height": draw(st.integers(1, 256)),
            "fps": draw(st.floats(0.5, 60)), "keypoints": "openpose18", "frames": frames,
            "caption": draw(st.text(max_size=8)),
            "source": {"motion": "wave", "scene": "beach", "objects": [{"kind": "ball", "colour": "red"}]}}


def check_annotations(ann: Annotations) -> None:
    """What the loader promises, and that what aa-run / aa-train then do with it runs."""
    f = ann.keypoints.shape[0]
    assert ann.keypoints.dtype == np.float32 and ann.keypoints.shape == (f, 18, 3) and f >= 1
    assert np.isfinite(ann.keypoints).all()
    assert isinstance(ann.width, int) and isinstance(ann.height, int) and ann.width >= 1 and ann.height >= 1
    assert math.isfinite(ann.fps) and ann.fps > 0
    assert len(ann.masks) == f and all(m is None or isinstance(m, str) for m in ann.masks)
    assert isinstance(ann.caption, str) and isinstance(ann.source, dict)
    template_captions("<me>", "man", world_context(ann.source))  # aa-train's caption from the source
    seq = ann.poses()
    frames = max(1, round(seq.frames / seq.fps * 8.0))  # aa-run's default frame count at 8 fps (overflows on fps ≈ 0)
    out = resample_poses(seq, min(frames, 4), 8.0)
    for mode in ("frame", "person"):
        fitted = fit_poses(out, 32, 32, mode)
        assert np.isfinite(fitted.keypoints).all()
        assert render_skeleton(fitted.keypoints[0], 32, 32).shape == (32, 32, 3)


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))  # NaN and ±inf are written as NaN / Infinity, which json.loads reads back
    return path


@fuzz(250)
@given(doc=st.one_of(pose_docs().flatmap(mutated), pose_docs().flatmap(mutated), pose_docs(), json_values))
def test_fuzz_pose_file(tmp_path, doc):
    ann = expect_aa_error(load_annotations, write_json(tmp_path / "poses.aa.json", doc))
    if ann is not None:
        check_annotations(ann)


@fuzz(100)
@given(data=st.one_of(
    st.binary(max_size=200),
    pose_docs().map(lambda d: json.dumps(d).encode()).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # truncated
    pose_docs().map(lambda d: json.dumps(d).encode()).flatmap(
        lambda b: st.tuples(st.integers(0, len(b) - 1), st.binary(min_size=1, max_size=4)).map(
            lambda t: b[:t[0]] + t[1] + b[t[0] + len(t[1]):])),  # overwritten bytes
    st.sampled_from([b"", b"\xff\xfe", b"[" * 100_000, b"null", b"\x00" * 16])).map(Blob))
def test_fuzz_pose_file_bytes(tmp_path, data):
    path = tmp_path / "poses.aa.json"
    path.write_bytes(data)
    ann = expect_aa_error(load_annotations, path)
    if ann is not None:
        check_annotations(ann)


# ============================================================================================ adapter .safetensors
ADAPTER_RANK = 2
TENSOR_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.uint8,
                 torch.bool, torch.float8_e4m3fn]


@dataclass
class AdapterTarget:
    """The tiny UNet that fuzzed adapters merge into (a copy each time), its fingerprint, and two of its spatial
    attn2 projections: module path → (in_features, out_features). Prints short in a failing example."""

    unet: torch.nn.Module
    fingerprint: str
    modules: dict[str, tuple[int, int]]

    def __repr__(self) -> str:
        return f"AdapterTarget(tiny UNet {self.fingerprint}, {list(self.modules)})"


@pytest.fixture(scope="module")
def adapter_target(tiny_base) -> AdapterTarget:
    from aa_runtime.adapters import SPATIAL_ATTN2

    names = [n for n, _ in tiny_base.unet.named_modules() if re.fullmatch(SPATIAL_ATTN2, n)][:2]
    layers = {n: tiny_base.unet.get_submodule(n) for n in names}
    return AdapterTarget(tiny_base.unet, tiny_base.fingerprint,
                         {n: (m.in_features, m.out_features) for n, m in layers.items()})


def adapter_meta(fingerprint: str) -> dict:
    from aa_runtime.adapters import adapter_metadata

    return adapter_metadata(identifier="<me>", class_word="man", rank=ADAPTER_RANK, alpha=2.0,
                            base_fingerprint=fingerprint, bone_lengths=np.linspace(0.3, 1.0, 17),
                            training={"steps": 3})


@st.composite
def adapter_recipes(draw):
    """How to break an adapter file: edits to its tensors, to its metadata, and how the metadata is stored
    (a small description, so that a failing example prints short; `build_adapter` makes the file)."""
    kinds = st.sampled_from(["dtype", "shape", "width", "value", "delete", "rename", "extra"])
    edits = [(draw(st.integers(0, 3)), draw(kinds), draw(st.integers(0, 10 ** 6)))
             for _ in range(draw(st.integers(0, 2)))]
    meta = adapter_meta("FP")
    if draw(st.booleans()):
        meta = draw(mutated(meta, depths=(1, 2)))
    how = draw(st.sampled_from(["json", "json", "json", "missing", "text", "weird"]))
    stored = {"json": json.dumps(meta), "missing": None, "text": draw(st.text(max_size=12)),
              "weird": json.dumps(draw(weird))}[how]
    return {"seed": draw(st.integers(0, 9)), "edits": edits, "aa_adapter": stored}


def build_adapter(recipe: dict, target: AdapterTarget) -> tuple[dict, dict]:
    """(tensors, header) for `recipe` on the modules of `target`."""
    g = torch.Generator().manual_seed(recipe["seed"])
    tensors = {}
    for name, (fin, fout) in target.modules.items():
        tensors[f"unet.{name}.lora_A.weight"] = torch.randn(ADAPTER_RANK, fin, generator=g) * 0.05
        tensors[f"unet.{name}.lora_B.weight"] = torch.randn(fout, ADAPTER_RANK, generator=g) * 0.05
    for which, kind, arg in recipe["edits"]:
        if not tensors:
            break
        key = sorted(tensors)[which % len(tensors)]
        t = tensors[key]
        if kind == "dtype":
            tensors[key] = t.to(TENSOR_DTYPES[arg % len(TENSOR_DTYPES)])
        elif kind == "shape":  # 0 to 3 dims of 0 to 69
            tensors[key] = torch.zeros([(arg // 70 ** i) % 70 for i in range(arg % 4)])
        elif kind == "width" and t.ndim == 2:  # right rank, wrong in/out features
            tensors[key] = torch.zeros(ADAPTER_RANK, t.shape[1] + 1) if "lora_A" in key else torch.zeros(
                t.shape[0] + 1, ADAPTER_RANK)
        elif kind == "value" and t.numel():
            t = t.clone()
            t.view(-1)[arg % t.numel()] = (float("nan"), float("inf"), -float("inf"), 1e30, 3e38)[arg % 5]
            tensors[key] = t
        elif kind == "delete":
            del tensors[key]
        elif kind == "rename":
            new = (key.replace("unet.", ""), key.replace("lora_A", "lora_C"), key.replace("attn2", "attn1"),
                   "unet.x.lora_A.weight")[arg % 4]
            tensors[new] = tensors.pop(key)
        elif kind == "extra":
            tensors["unet.extra.lora_B.weight"] = torch.zeros(4, ADAPTER_RANK)
    header = {"format": "pt"}
    if recipe["aa_adapter"] is not None:
        header["aa_adapter"] = recipe["aa_adapter"].replace('"FP"', json.dumps(target.fingerprint))
    return tensors, header


def check_adapter(adapter, target: AdapterTarget, force: bool) -> None:
    """What load_adapter promises, and that merging it either works (finite weights) or is the one-line error."""
    from aa_runtime.adapters import merge_adapter

    assert adapter.rank >= 1 and math.isfinite(adapter.alpha)
    assert adapter.lora_A and set(adapter.lora_A) == set(adapter.lora_B)
    for name in adapter.lora_A:
        a, b = adapter.lora_A[name], adapter.lora_B[name]
        assert a.is_floating_point() and b.is_floating_point() and a.ndim == b.ndim == 2
        assert a.shape[0] == b.shape[1] == adapter.rank
    bones = adapter.bone_lengths
    assert bones is None or bones.shape == (17,)
    assert isinstance(adapter.base_fingerprint, str) and isinstance(adapter.identifier, str)
    unet = copy.deepcopy(target.unet)
    try:
        merge_adapter(unet, adapter, base_fingerprint=target.fingerprint, force=force)
    except AAError as e:
        assert_contract(e)
        return
    assert all(torch.isfinite(p).all() for p in unet.parameters())
    assert not any("lora" in n for n, _ in unet.named_modules())


@fuzz(80)
@given(recipe=adapter_recipes(), force=st.booleans())
def test_fuzz_adapter_file(tmp_path, adapter_target, recipe, force):
    from safetensors.torch import save_file

    from aa_runtime.adapters import load_adapter

    tensors, header = build_adapter(recipe, adapter_target)
    path = tmp_path / "me.safetensors"
    save_file(tensors, str(path), metadata=header)
    adapter = expect_aa_error(load_adapter, path)
    if adapter is not None:
        check_adapter(adapter, adapter_target, force)


@pytest.fixture(scope="module")
def adapter_bytes(adapter_target, tmp_path_factory) -> bytes:
    """A valid adapter file's bytes."""
    from aa_runtime.adapters import save_adapter

    g = torch.Generator().manual_seed(0)
    A = {n: torch.randn(ADAPTER_RANK, i, generator=g) for n, (i, _) in adapter_target.modules.items()}
    B = {n: torch.randn(o, ADAPTER_RANK, generator=g) for n, (_, o) in adapter_target.modules.items()}
    folder = tmp_path_factory.mktemp("adapter")
    path = save_adapter(folder / "me.safetensors", A, B, adapter_meta(adapter_target.fingerprint))
    return Blob(path.read_bytes())


def _header_length(blob: bytes) -> int:
    return struct.unpack("<Q", blob[:8])[0]


@st.composite
def broken_safetensors(draw, valid: bytes):
    """A valid file cut short, with bytes overwritten (mostly in its JSON header), with a lying length prefix,
    or with a hand-written header of wrong dtypes, shapes and offsets."""
    how = draw(st.sampled_from(["truncate", "overwrite", "length", "header", "garbage"]))
    if how == "truncate":
        return Blob(valid[:draw(st.integers(0, len(valid) - 1))])
    if how == "overwrite":
        end = 8 + _header_length(valid) if draw(st.booleans()) else len(valid)
        at = draw(st.integers(0, end - 1))
        patch = draw(st.binary(min_size=1, max_size=8))
        return Blob(valid[:at] + patch + valid[at + len(patch):])
    if how == "length":
        n = draw(st.sampled_from([0, 1, 2, _header_length(valid) + 1, _header_length(valid) - 1, len(valid), 2 ** 40,
                                  2 ** 63, 2 ** 64 - 1]))
        return Blob(struct.pack("<Q", n) + valid[8:])
    if how == "header":
        entry = {"dtype": draw(st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F8_E4M3", "X", 1, None])),
                 "shape": draw(st.one_of(st.lists(st.integers(-2, 2 ** 40), max_size=3), weird)),
                 "data_offsets": draw(st.one_of(st.lists(st.integers(-2, 2 ** 40), max_size=3), weird))}
        doc = {"unet.m.lora_A.weight": entry}
        if draw(st.booleans()):
            doc["__metadata__"] = draw(st.one_of(st.just({"aa_adapter": json.dumps(adapter_meta(""))}), weird))
        header = json.dumps(doc).encode()
        return Blob(struct.pack("<Q", len(header)) + header + draw(st.binary(max_size=64)))
    return Blob(draw(st.binary(max_size=64)))


@fuzz(80)
@given(data=st.data())
def test_fuzz_adapter_bytes(tmp_path, adapter_target, adapter_bytes, data):
    from aa_runtime.adapters import load_adapter

    path = tmp_path / "me.safetensors"
    path.write_bytes(data.draw(broken_safetensors(adapter_bytes)))
    adapter = expect_aa_error(load_adapter, path)
    if adapter is not None:
        check_adapter(adapter, adapter_target, force=False)


# ============================================================================================ bundle folders
BUNDLE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
BUNDLE_FILES = ("aa_bundle.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json")
# Small wrong values for model configs (a huge size there would make the model itself huge: not a parser case).
SMALL_WEIRD = [None, True, "", "x", -1, 0, 3, 0.5, [], {}, [7], float("nan")]


@pytest.fixture(scope="module")
def micro_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """A bundle smaller still than tiny_bundle (8 channels, one layer; its tokenizer): loads in ~0.1 s."""
    from aa_runtime.bundle import save_bundle
    from aa_runtime.tiny import TinyConfig, build_random_base

    cfg = TinyConfig(sample_size=16, unet_channels=(8, 8), unet_layers=1, unet_heads=1, motion_heads=1,
                     vae_channels=(8, 8), text_dim=8, text_layers=1, text_heads=1)
    base = build_random_base(cfg, seed=0, tokenizer_dir=tiny_bundle / "tokenizer")
    return save_bundle(base, tmp_path_factory.mktemp("micro") / "micro", half=False, name="micro",
                       tokenizer_dir=tiny_bundle / "tokenizer")


@st.composite
def bundle_recipes(draw):
    """How to break a bundle: its manifest's keys, or one file cut short, overwritten, emptied, removed, or (JSON
    files) with a key removed or given a wrong value."""
    recipe = {"file": draw(st.sampled_from(BUNDLE_FILES)),
              "how": draw(st.sampled_from(["truncate", "overwrite", "empty", "remove", "json-key", "json-value"])),
              "at": draw(st.floats(0, 1)), "patch": draw(st.binary(min_size=1, max_size=8)),
              "key": draw(st.integers(0, 10 ** 6)), "value": draw(st.sampled_from(SMALL_WEIRD))}
    if recipe["file"] == "aa_bundle.json" and draw(st.booleans()):
        recipe["how"] = "replace"
        recipe["doc"] = draw(st.one_of(
            mutated({"format": "aa-bundle/1", "name": "tiny", "fingerprint": "FP", "dtype": "float32",
                     "sample": {"width": 64, "height": 64, "frames": 16, "fps": 8.0, "steps": 25, "guidance": 5.0,
                                "scheduler": "dpm++", "window": 16, "overlap": 4, "noise_correlation": 0.0},
                     "provenance": {"stages": {"image": 10}, "init": {"provenance": {"stages": ["vae"]}}}},
                    depths=(1, 2, 3)),
            weird))
    return recipe


def build_bundle(recipe: dict, good: Path, out: Path) -> Path:
    """A copy of the bundle `good` at `out` broken as `recipe` says (unbroken parts are symlinks: cheap)."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    part = recipe["file"].split("/")[0] if "/" in recipe["file"] else None
    for sub in BUNDLE_PARTS:
        if sub == part:
            shutil.copytree(good / sub, out / sub)
        else:
            (out / sub).symlink_to(good / sub)
    shutil.copy(good / "aa_bundle.json", out / "aa_bundle.json")
    file = out / recipe["file"]
    blob = file.read_bytes()
    how, at = recipe["how"], int(recipe["at"] * max(len(blob) - 1, 0))
    if how == "replace":  # the whole JSON document; "FP" stands for the bundle's fingerprint
        fp = json.loads((good / "aa_bundle.json").read_text())["fingerprint"]
        file.write_text(json.dumps(recipe["doc"]).replace('"FP"', json.dumps(fp)))
    elif how == "truncate":
        file.write_bytes(blob[:at])
    elif how == "overwrite":  # weights: inside the JSON header, where a changed byte cannot go unnoticed
        if file.suffix == ".safetensors":
            at = 8 + int(recipe["at"] * (_header_length(blob) - 1))
        file.write_bytes(blob[:at] + recipe["patch"] + blob[at + len(recipe["patch"]):])
    elif how == "empty":
        file.write_bytes(b"")
    elif how == "remove":
        file.unlink()
    elif file.suffix == ".json":  # json-key / json-value
        doc = json.loads(blob)
        if isinstance(doc, dict) and doc:
            key = recipe["key"] if isinstance(recipe["key"], str) else sorted(doc)[recipe["key"] % len(doc)]
            if how == "json-key":
                del doc[key]
            else:
                doc[key] = recipe["value"]
        file.write_text(json.dumps(doc))
    return out


def check_base(base) -> None:
    """What load_base promises: usable defaults, schedulers, tokenizer, provenance."""
    from aa_runtime.bundle import SampleDefaults
    from aa_runtime.schedulers import SCHEDULERS, make_scheduler

    d = base.defaults
    assert isinstance(d, SampleDefaults)
    for k in ("width", "height", "frames", "steps", "window", "overlap"):
        assert isinstance(getattr(d, k), int) and not isinstance(getattr(d, k), bool)
    assert d.width > 0 and d.height > 0 and d.frames > 0 and d.steps > 0 and d.window > 0 and d.overlap >= 0
    assert math.isfinite(d.fps) and d.fps > 0 and math.isfinite(d.guidance) and 0 <= d.noise_correlation < 1
    assert d.scheduler in SCHEDULERS
    assert base.trained_stages is None or all(isinstance(s, str) for s in base.trained_stages)
    assert isinstance(base.untrained_unet, bool)
    for name in SCHEDULERS:
        make_scheduler(name, base.scheduler_config).set_timesteps(2)
    ids = base.tokenizer("a man", padding="max_length", max_length=base.tokenizer.model_max_length,
                         truncation=True).input_ids  # as AnimatePipeline.encode_prompt
    assert len(ids) == base.tokenizer.model_max_length and max(ids) < base.text_encoder.config.vocab_size
    with torch.no_grad():  # what encode_prompt does with them
        assert torch.isfinite(base.text_encoder(torch.tensor([ids]))[0]).all()


@fuzz(60)
@given(recipe=bundle_recipes())
def test_fuzz_bundle_folder(tmp_path, micro_bundle, recipe):
    from aa_runtime.model import load_base

    base = expect_aa_error(load_base, build_bundle(recipe, micro_bundle, tmp_path / "bundle"))
    if base is not None:
        check_base(base)


# ============================================================================================ video inputs
def write_1x1_video(path: Path, frames: int = 4) -> Path:
    """A 1×1 H.264 mp4 (yuv444p: yuv420p needs even sizes)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 1, 1, "yuv444p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((1, 1, 3), 40 * i % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only_mp4(path: Path) -> Path:
    """An mp4 holding a short AAC audio stream and no video stream."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> dict[str, bytes]:
    """A valid 4-frame 16×16 clip as mp4 and as gif."""
    from aa_runtime.video import write_video

    folder = tmp_path_factory.mktemp("videos")
    frames = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return {s: Blob(write_video(folder / f"clip{s}", frames, 8).read_bytes()) for s in (".mp4", ".gif")}


@st.composite
def broken_bytes(draw, valid: bytes):
    """`valid` cut short, with a few bytes overwritten, or replaced by garbage."""
    how = draw(st.sampled_from(["truncate", "truncate", "overwrite", "overwrite", "garbage"]))
    if how == "truncate":
        return Blob(valid[:draw(st.integers(0, len(valid) - 1))])
    if how == "overwrite":
        for _ in range(draw(st.integers(1, 3))):
            at, patch = draw(st.integers(0, len(valid) - 1)), draw(st.binary(min_size=1, max_size=8))
            valid = valid[:at] + patch + valid[at + len(patch):]
        return Blob(valid)
    return Blob(draw(st.binary(max_size=256)))


def check_clip(clip) -> None:
    f, h, w, c = clip.frames.shape
    assert clip.frames.dtype == np.uint8 and c == 3 and f >= 1 and h >= 1 and w >= 1
    assert math.isfinite(clip.fps) and clip.fps > 0


@fuzz(200)
@given(data=st.data(), suffix=st.sampled_from([".mp4", ".gif"]))
def test_fuzz_video_file(tmp_path, video_bytes, data, suffix):
    from aa_runtime.video import read_video

    path = tmp_path / f"clip{suffix}"
    path.write_bytes(data.draw(broken_bytes(video_bytes[suffix])))
    clip = expect_aa_error(read_video, path)
    if clip is not None:
        check_clip(clip)


@fuzz(50)
@given(data=st.data())
def test_fuzz_image_folder(tmp_path, video_bytes, data):
    """A folder of frames where one image file is broken."""
    import shutil

    from PIL import Image

    from aa_runtime.video import read_video

    folder = tmp_path / "frames"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "000.png")
    good = (folder / "000.png").read_bytes()
    (folder / "001.png").write_bytes(data.draw(broken_bytes(good)))
    clip = expect_aa_error(read_video, folder)
    if clip is not None:
        check_clip(clip)


# ============================================================================================ the CLIs
@pytest.fixture()
def cli_inputs(tmp_path, micro_bundle, adapter_bytes, video_bytes) -> dict[str, Path]:
    """One broken input of each kind, written before the CLI runs."""
    kp = [[10.0, 10.0, 1.0]] * 18
    doc = {"format": "aa-annotations/1", "width": 64, "height": 64, "fps": 8.0, "frames": [{"pose": kp}]}
    paths = {"inf-width.aa.json": json.dumps({**doc, "width": float("inf")}),
             "million.aa.json": json.dumps({**doc, "frames": [{}] * 10 ** 6}),
             "text.mp4": "this is not a video\n", "zero.mp4": ""}
    out = {}
    for name, text in paths.items():
        out[name] = tmp_path / name
        out[name].write_text(text)
    out["truncated.mp4"] = tmp_path / "truncated.mp4"
    out["truncated.mp4"].write_bytes(video_bytes[".mp4"][: len(video_bytes[".mp4"]) // 2])
    out["audio.mp4"] = write_audio_only_mp4(tmp_path / "audio.mp4")
    out["one.mp4"] = write_1x1_video(tmp_path / "one.mp4", frames=8)
    out["truncated.safetensors"] = tmp_path / "truncated.safetensors"
    out["truncated.safetensors"].write_bytes(adapter_bytes[:-100])
    out["bundle"] = build_bundle({"file": "aa_bundle.json", "how": "truncate", "at": 0.5}, micro_bundle,
                                 tmp_path / "bundle")
    out["base"] = micro_bundle
    return out


@pytest.mark.parametrize("args", [
    ["--pose", "inf-width.aa.json"],
    ["--pose", "million.aa.json"],
    ["--pose", "text.mp4"],
    ["--pose", "zero.mp4"],
    ["--pose", "truncated.mp4"],
    ["--pose", "audio.mp4"],
    ["--pose", "one.mp4"],  # decodes; mediapipe finds no person
    ["--motion", "wave", "--adapter", "truncated.safetensors"],
    ["--motion", "wave", "--base", "bundle"],
])
def test_aa_run_broken_inputs_exit_2(tmp_path, cli_inputs, args):
    from aa_runtime.cli import main

    args = [str(cli_inputs.get(a, a)) for a in args]
    if "--base" not in args:
        args += ["--base", str(cli_inputs["base"])]
    before = set(tmp_path.rglob("*"))
    res = CliRunner().invoke(main, ["--prompt", "a man", "--steps", "1", "-o", str(tmp_path / "out" / "x.mp4"), *args])
    assert_cli_error(res, tmp_path, before)


@pytest.mark.parametrize("video", ["text.mp4", "zero.mp4", "truncated.mp4", "audio.mp4", "one.mp4"])
def test_aa_train_identity_broken_video_exit_2(tmp_path, cli_inputs, monkeypatch, video):
    from aa_train.cli import main

    monkeypatch.setenv("AA_CACHE_DIR", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    before = set(tmp_path.rglob("*"))
    res = CliRunner().invoke(main, ["identity", str(cli_inputs[video]), "--name", "me", "--class-word", "man",
                                    "--base", str(cli_inputs["base"]), "--device", "cpu",
                                    "-o", str(tmp_path / "out" / "me.safetensors")])
    assert_cli_error(res, tmp_path, before)


# ============================================================================================ regressions
# The exact inputs the fuzzer (or the issue) named, without hypothesis. Where a comment names an exception, that
# input crashed the parser, or aa-run / aa-train right after it, before the fix; the others were already refused
# or were silently accepted, and now pin the contract.
KP = [[10.0, 10.0, 1.0]] * 18
POSE_DOC = {"format": "aa-annotations/1", "width": 64, "height": 64, "fps": 8.0, "frames": [{"pose": KP}]}


@pytest.mark.parametrize("text, expected", [
    (json.dumps({**POSE_DOC, "width": float("inf")}), "annotation width"),  # OverflowError in int()
    (json.dumps({**POSE_DOC, "height": -float("inf")}), "annotation height"),  # OverflowError in int()
    (json.dumps({**POSE_DOC, "fps": float("inf")}), "annotation fps"),  # IndexError in resample_poses
    (json.dumps({**POSE_DOC, "fps": 5e-324}), "annotation fps"),  # OverflowError in aa-run's frame count
    (json.dumps({**POSE_DOC, "frames": [{"pose": [[10 ** 400, 0, 1]] + KP[1:]}]}), "beyond"),  # OverflowError
    (json.dumps({**POSE_DOC, "width": 10 ** 400}), "annotation width"),  # OverflowError in fit_poses
    (json.dumps({**POSE_DOC, "frames": [{"pose": KP, "mask": 5}]}), "mask 5"),  # TypeError in aa-train's masks
    ("[" * 100_000, "nests JSON too deeply"),  # RecursionError in json.loads
    (json.dumps({**POSE_DOC, "frames": [{"pose": [[float("nan"), 0, 1]] + KP[1:]}]}), "NaN"),
    (json.dumps({**POSE_DOC, "width": -64}), "annotation width"),
    (json.dumps({**POSE_DOC, "width": "64"}), "annotation width"),
    (json.dumps({**POSE_DOC, "frames": []}), "0 frames"),
    (json.dumps({k: v for k, v in POSE_DOC.items() if k != "fps"}), "(missing)"),
])
def test_pose_file_regressions(tmp_path, text, expected):
    path = tmp_path / "poses.aa.json"
    path.write_text(text)
    with pytest.raises(AAError, match=re.escape(expected)) as e:
        load_annotations(path)
    assert_contract(e.value)


def test_pose_file_with_a_million_frames_is_refused_before_its_frames_are_read(tmp_path):
    path = write_json(tmp_path / "poses.aa.json", {**POSE_DOC, "frames": [{}] * 10 ** 6})  # 4 MB, no poses
    with pytest.raises(AAError, match=f"1000000 frames.*1 to {MAX_ANNOTATION_FRAMES:,}") as e:
        load_annotations(path)
    assert_contract(e.value)


def test_pose_file_that_is_a_folder(tmp_path):
    from aa_runtime.pose_sources import load_pose_source

    (tmp_path / "poses.aa.json").mkdir()
    with pytest.raises(AAError, match="cannot be read"):  # IsADirectoryError before
        load_pose_source(tmp_path / "poses.aa.json")


@pytest.mark.parametrize("source", [
    {"motion": ["wave"], "scene": "beach"},  # TypeError: unhashable list in world_context
    {"motion": "wave", "scene": "beach", "objects": [{"kind": "piano", "colour": "red"}]},  # ValueError in captions
    {"motion": "wave", "scene": "beach", "objects": [{"kind": "ball", "colour": "red"}] * 3},  # ValueError
])
def test_sidecar_source_that_is_not_a_world_context(tmp_path, source):
    ann = load_annotations(write_json(tmp_path / "poses.aa.json", {**POSE_DOC, "source": source}))
    assert world_context(ann.source) is None
    assert template_captions("<me>", "man", world_context(ann.source)).caption == "a photo of <me> man"


def _adapter_file(path: Path, tensors: dict, meta) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt", "aa_adapter": meta if isinstance(meta, str) else
                                            json.dumps(meta)})
    return path


@pytest.mark.parametrize("change, expected", [
    (lambda t, m: (t, "null"), "is NoneType None"),  # AttributeError: None has no .get
    (lambda t, m: (t, "1.5"), "is float 1.5"),  # AttributeError
    (lambda t, m: (t, {k: v for k, v in m.items() if k != "rank"}), "rank: "),  # KeyError: 'rank'
    (lambda t, m: (t, {**m, "rank": "2"}), "rank: "),
    (lambda t, m: (t, {**m, "alpha": float("nan")}), "alpha: "),
    (lambda t, m: (t, {**m, "bone_lengths": ["x"] * 17}), "bone_lengths"),  # ValueError in Adapter.bone_lengths
    (lambda t, m: (t, {**m, "bone_lengths": {"a": 1}}), "bone_lengths"),  # TypeError in Adapter.bone_lengths
    (lambda t, m: ({k: v[:, 0].clone() if "lora_B" in k else v for k, v in t.items()}, m), "Linear: 2-D"),  # IndexError
    (lambda t, m: ({k: v.to(torch.int8) for k, v in t.items()}, m), "is int8"),  # merged as integers
    (lambda t, m: ({k: v * float("nan") for k, v in t.items()}, m), "NaN or inf"),
    # the identifier embedding (pivotal tuning): another token's, a 3-D or NaN tensor, or two vectors
    (lambda t, m: ({**t, "bundle_emb.<x>.string_to_param.*": torch.zeros(1, 64)}, m), "not the embedding of"),
    (lambda t, m: ({**t, f"bundle_emb.{m['identifier']}.string_to_param.*": torch.zeros(1, 1, 64)}, m), "Linear: 2-D"),
    (lambda t, m: ({**t, f"bundle_emb.{m['identifier']}.string_to_param.*": torch.full((1, 64), float("nan"))}, m),
     "NaN or inf"),
    (lambda t, m: ({**t, f"bundle_emb.{m['identifier']}.string_to_param.*": torch.zeros(2, 64)}, m), "2 vectors"),
    (lambda t, m: ({**t, "bundle_emb.a.b.string_to_param.*": torch.zeros(1, 64)}, m), "unexpected tensor"),
])
def test_adapter_file_regressions(tmp_path, adapter_target, change, expected):
    from aa_runtime.adapters import load_adapter

    tensors, header = build_adapter({"seed": 0, "edits": [], "aa_adapter": json.dumps(adapter_meta("FP"))},
                                    adapter_target)
    tensors, meta = change(tensors, json.loads(header["aa_adapter"]))
    with pytest.raises(AAError, match=re.escape(expected)) as e:
        load_adapter(_adapter_file(tmp_path / "me.safetensors", tensors, meta))
    assert_contract(e.value)


def test_adapter_for_other_layer_sizes_is_refused_at_merge(tmp_path, adapter_target):
    """Right rank, wrong in_features: load_state_dict's size-mismatch RuntimeError before."""
    from aa_runtime.adapters import load_adapter, merge_adapter

    tensors, header = build_adapter({"seed": 0, "edits": [(0, "width", 0), (1, "width", 0)],
                                     "aa_adapter": json.dumps(adapter_meta("FP"))}, adapter_target)
    adapter = load_adapter(_adapter_file(tmp_path / "me.safetensors", tensors, header["aa_adapter"]))
    unet = copy.deepcopy(adapter_target.unet)
    with pytest.raises(AAError, match="this UNet's layer is") as e:
        merge_adapter(unet, adapter, base_fingerprint=adapter_target.fingerprint)
    assert_contract(e.value)


def _manifest(**keys) -> dict:
    """A bundle recipe: aa_bundle.json replaced by {format, the right fingerprint} and `keys`."""
    return {"file": "aa_bundle.json", "how": "replace", "doc": {"format": "aa-bundle/1", "fingerprint": "FP", **keys}}


@pytest.mark.parametrize("recipe, expected", [
    ({"file": "aa_bundle.json", "how": "empty"}, "not valid JSON"),  # JSONDecodeError
    ({"file": "aa_bundle.json", "how": "overwrite", "at": 0.5, "patch": b"\xff\xfe"}, "not valid JSON"),  # Unicode…
    ({"file": "aa_bundle.json", "how": "replace", "doc": 1.5}, "not an object"),  # AttributeError
    (_manifest(sample=0.5), "sample 0.5"),  # TypeError
    (_manifest(sample={"size": 64}), "sample {'size'"),  # TypeError
    (_manifest(sample={"width": "64"}), "width: '64'"),  # ValueError in aa-run
    (_manifest(provenance=None), "provenance None"),  # TypeError in aa-run (BaseModel.trained_stages)
    (_manifest(provenance={"stages": 0.5}), "provenance"),  # TypeError in aa-run
    (_manifest(provenance={"stages": [], "init": 3}), "provenance"),  # AttributeError in aa-run
    ({"file": "aa_bundle.json", "how": "replace", "doc": {"format": "aa-bundle/1"}}, "fingerprint None"),
    ({"file": "aa_bundle.json", "how": "replace", "doc": {"format": "aa-bundle/1", "fingerprint": "0" * 16}},
     "fingerprint"),
    ({"file": "unet/config.json", "how": "overwrite", "at": 0.5, "patch": b"\xff\xfe"}, "not valid JSON"),  # Unicode…
    ({"file": "vae/config.json", "how": "json-value", "key": "block_out_channels", "value": 3},
     "is not usable (TypeError"),  # TypeError
    ({"file": "text_encoder/config.json", "how": "json-value", "key": "pad_token_id", "value": [7]},
     "is not usable (StrictDataclassFieldValidationError"),  # StrictDataclassFieldValidationError
    ({"file": "text_encoder/config.json", "how": "json-key", "key": "vocab_size"},
     "does not fit the model config"),  # RuntimeError: the default vocabulary is larger than the weights
    ({"file": "text_encoder/config.json", "how": "json-value", "key": "eos_token_id", "value": None},
     "is not usable (AttributeError"),  # AttributeError when aa-run encodes the prompt
    ({"file": "text_encoder/config.json", "how": "json-value", "key": "layer_norm_eps", "value": float("nan")},
     "output is not finite"),  # NaN prompt embeddings
    ({"file": "unet/diffusion_pytorch_model.safetensors", "how": "truncate", "at": 0.5}, "corrupted or unreadable"),
    ({"file": "tokenizer/vocab.json", "how": "truncate", "at": 0.5}, "not usable (JSONDecodeError"),  # JSONDecode…
    ({"file": "tokenizer/merges.txt", "how": "truncate", "at": 0.03}, "tokenizer"),  # bare Exception from BPE
    ({"file": "tokenizer/tokenizer_config.json", "how": "replace", "doc": 3}, "not usable (AttributeError"),  # Attr…
    ({"file": "tokenizer/tokenizer_config.json", "how": "replace", "doc": {"model_max_length": -1}},
     "-1 per prompt"),  # OverflowError when aa-run tokenizes the prompt
    ({"file": "scheduler/scheduler_config.json", "how": "truncate", "at": 0.5}, "not valid JSON"),  # JSONDecodeError
])
def test_bundle_regressions(tmp_path, micro_bundle, recipe, expected):
    from aa_runtime.model import load_base

    recipe = {"at": 0.0, "patch": b"\x00", "key": 0, "value": None, **recipe}
    with pytest.raises(AAError, match=re.escape(expected)) as e:
        load_base(build_bundle(recipe, micro_bundle, tmp_path / "bundle"))
    assert_contract(e.value)


@pytest.mark.parametrize("make, expected", [
    (lambda p, v: p.write_bytes(b""), "cannot be decoded"),
    (lambda p, v: p.write_text("this is a text file\n"), "cannot be decoded"),
    (lambda p, v: p.write_bytes(v[".mp4"][: len(v[".mp4"]) // 2]), "cannot be decoded"),
    (lambda p, v: write_audio_only_mp4(p), "has no video stream"),
])
def test_broken_mp4_is_one_line(tmp_path, video_bytes, make, expected):
    from aa_runtime.video import read_video

    make(tmp_path / "clip.mp4", video_bytes)
    with pytest.raises(AAError, match=expected) as e:
        read_video(tmp_path / "clip.mp4")
    assert_contract(e.value)


def test_1x1_video_reads_and_has_no_person(tmp_path):
    from aa_runtime.pose_sources import load_pose_source
    from aa_runtime.video import read_video

    path = write_1x1_video(tmp_path / "one.mp4")
    assert read_video(path).frames.shape == (4, 1, 1, 3)
    with pytest.raises(AAError, match="no person found") as e:
        load_pose_source(path)
    assert_contract(e.value)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_truncated_gif_is_one_line(tmp_path, video_bytes, cut):
    """IndexError and struct.error from Pillow's GIF parser before."""
    from aa_runtime.video import read_video

    gif = video_bytes[".gif"]
    (tmp_path / "clip.gif").write_bytes(gif[: int(len(gif) * cut)])
    clip = expect_aa_error(read_video, tmp_path / "clip.gif")
    if clip is not None:
        check_clip(clip)


def test_folder_with_a_file_that_is_not_an_image(tmp_path):
    from aa_runtime.video import read_video

    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "000.png").write_text("not a png")
    with pytest.raises(AAError, match="000.png is not a readable image") as e:  # UnidentifiedImageError before
        read_video(tmp_path / "frames")
    assert_contract(e.value)
