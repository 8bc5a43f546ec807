"""The aa base bundle: a diffusers-style folder with `unet/` (UNetMotionModel, in_channels = 8: 4 noisy-latent + 4
pose-latent channels), `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, and `aa_bundle.json` (format, weights
fingerprint, sampling defaults, provenance); what a loaded base holds (`BaseModel`), reading and writing the folder
with one-line errors for every broken part."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import AAError, short_repr
from .files import atomic_dir
from .schedulers import CONSISTENCY, ORIGINAL_STEPS, SCHEDULERS, make_scheduler
from .tokenizer import load_clip_tokenizer

BUNDLE_FORMAT = "aa-bundle/1"
MANIFEST = "aa_bundle.json"
POSE_CHANNELS = 4
DEFAULT_SCHEDULER = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
}

# Keys that checkpoints may legitimately lack or carry beyond the module's own state (checked explicitly).
_OPTIONAL_MISSING = ("pos_embed.pe", "position_ids")
_IGNORABLE_UNEXPECTED = ("position_ids",)


# how the frames' initial noise may be tied (`aa_runtime.pipeline.frame_correlated_noise`): test, fix
NOISE_RULES = {
    "noise_correlation": (lambda v: 0 <= v < 1, "use 0 ≤ ρ < 1 (0 = independent noise per frame)"),
    "noise_shared_frequency": (lambda v: True, "use a number: r ≥ 0 cycles per latent frame, −1 = off"),
    "noise_progressive": (lambda v: 0 <= v < 1, "use 0 ≤ c < 1 (0 = off)"),
    "free_init_progressive": (lambda v: v < 1, "use 0 ≤ c < 1, or −1 = as the first run's noise"),
}


def check_noise(manifest: bool = False, **values) -> None:
    """One clear error for the first noise setting (`NOISE_RULES`) that is not a finite number in its range, named
    as the manifest writes it ("sample default noise_correlation") or as a call's setting ("noise correlation")."""
    for name, v in values.items():
        ok, fix = NOISE_RULES[name]
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)):
            raise AAError(f"sample default {name}" if manifest else name.replace("_", " "), short_repr(v), fix)


@dataclass
class SampleDefaults:
    """Sampling defaults a bundle ships with (what `aa-run` uses when a flag is not given)."""

    width: int = 64
    height: int = 64
    frames: int = 16
    fps: float = 8.0
    steps: int = 25
    guidance: float = 5.0
    scheduler: str = "dpm++"
    window: int = 16
    overlap: int = 4
    noise_correlation: float = 0.0  # share of the initial noise common to all frames (0 = independent)
    # spatial frequencies of the initial noise, within this many cycles per latent frame, common to all frames
    # (0 = each channel's mean; < 0 = off): `aa_runtime.pipeline.frame_correlated_noise`
    noise_shared_frequency: float = -1.0
    noise_progressive: float = 0.0  # correlation of each frame's initial noise with the previous frame's (0 = off)
    free_init_iters: int = 1  # FreeInit sampling runs (1 = off): `AnimatePipeline.free_init_noise`
    free_init_fast: bool = False  # FreeInit's coarse-to-fine sampling: run i of N takes i/N of the steps
    # progressive c of the fresh (high-frequency) noise of FreeInit's later runs; < 0: as `noise_progressive`
    free_init_progressive: float = -1.0

    def __post_init__(self):
        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name, lo in (("width", 1), ("height", 1), ("frames", 1), ("steps", 1), ("window", 1), ("overlap", 0),
                         ("free_init_iters", 1)):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
                raise AAError(f"sample default {name}", short_repr(v), f"use an integer ≥ {lo}")
        for name in ("fps", "guidance"):
            if not (number(getattr(self, name)) and getattr(self, name) > 0):
                raise AAError(f"sample default {name}", short_repr(getattr(self, name)), "use a positive number")
        if not isinstance(self.free_init_fast, bool):
            raise AAError("sample default free_init_fast", short_repr(self.free_init_fast), "use true or false")
        check_noise(True, noise_correlation=self.noise_correlation,
                    noise_shared_frequency=self.noise_shared_frequency, noise_progressive=self.noise_progressive,
                    free_init_progressive=self.free_init_progressive)
        if self.scheduler not in SCHEDULERS:
            raise AAError("sample default scheduler", short_repr(self.scheduler), f"use one of {', '.join(SCHEDULERS)}")


@dataclass
class BaseModel:
    """The loaded components of a base, plus what identifies it."""

    unet: "UNetMotionModel"  # noqa: F821
    vae: "AutoencoderKL"  # noqa: F821
    text_encoder: "CLIPTextModel"  # noqa: F821
    tokenizer: "CLIPTokenizer"  # noqa: F821
    scheduler_config: dict
    fingerprint: str
    defaults: SampleDefaults
    source: str
    manifest: dict = field(default_factory=dict)

    @property
    def trained_stages(self) -> list[str] | None:
        """Stages `aa-train base` ran for this bundle, across the bundles it continued (--init); None when the
        bundle does not come from `aa-train base` (e.g. real SD1.5 weights)."""
        prov = self.manifest.get("provenance", {})
        if "stages" not in prov:
            return None
        stages = set()
        while prov:
            stages |= set(prov.get("stages", {}))
            prov = (prov.get("init") or {}).get("provenance")
        return sorted(stages)

    @property
    def untrained_unet(self) -> bool:
        """True for a bundle from `aa-train base` whose UNet stages have not run yet (its output is noise)."""
        stages = self.trained_stages
        return stages is not None and "image" not in stages

    @property
    def adapter_bases(self) -> tuple[str, ...]:
        """Fingerprints an identity adapter may name to merge here without --force: this base's, and for a few-step
        student (aa-train distill) its teacher's, whose adapters it serves."""
        distilled = (self.manifest.get("provenance") or {}).get("distill") or {}
        teacher = (distilled.get("teacher") or {}).get("fingerprint")
        return (self.fingerprint, teacher) if teacher else (self.fingerprint,)

    @property
    def vae_scale(self) -> int:
        """Spatial down-sampling factor of the VAE (8 for SD1.5, 4 for aa-tiny)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# ----------------------------------------------------------------------------------------- fingerprint
def fingerprint(*modules: torch.nn.Module) -> str:
    """Fingerprint of modules' weights (see `fingerprint_states`)."""
    return fingerprint_states(*(m.state_dict() for m in modules))


def fingerprint_except(module: torch.nn.Module, submodules) -> str:
    """Fingerprint of every tensor of `module` but the weights of `submodules` (module paths): what stays fixed when
    only those weights change, e.g. an identity adapter merged into the spatial attn2 projections."""
    skip = {f"{n}.weight" for n in submodules}
    return fingerprint_states({k: v for k, v in module.state_dict().items() if k not in skip})


def fingerprint_states(*states: dict[str, torch.Tensor]) -> str:
    """Content hash of weights, independent of dtype and device: every tensor's name, shape and a
    fixed strided sample of ≤ 4,096 of its values rounded to fp16 (fast at SD1.5 size)."""
    h = hashlib.sha256()
    for i, state in enumerate(states):
        for name, t in sorted(state.items()):
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].to("cpu", torch.float16)
            h.update(f"{i}:{name}:{tuple(t.shape)}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- state dicts
def load_weights(file: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file (or a `weights_only` torch checkpoint) with one-line errors."""
    if not file.is_file():
        raise AAError(what, f"{file} is missing", fix)
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        sd = torch.load(str(file), map_location="cpu", weights_only=True)
        return sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
        raise AAError(what, f"{file} is corrupted or unreadable ({type(e).__name__}: {str(e)[:80]})",
                      f"re-download or re-create it; {fix}") from None


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, file: Path) -> None:
    """load_state_dict that tolerates only known-optional keys and names what does not fit."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches are raised even with strict=False
        first = next((ln.strip() for ln in str(e).splitlines() if "mismatch" in ln), str(e).splitlines()[0])
        raise AAError(what, f"{file} does not fit the model config: {first[:160]}",
                      "check that the weights and config.json come from the same model") from None
    missing = [k for k in result.missing_keys if not k.endswith(_OPTIONAL_MISSING)]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(_IGNORABLE_UNEXPECTED)]
    if missing or unexpected:
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else "") + \
                 (", " if missing and unexpected else "") + \
                 (f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "")
        raise AAError(what, f"{file} does not fit the model config: {detail}",
                      "check that the weights and config.json come from the same model")


def _read_json(file: Path, what: str, fix: str) -> dict:
    """A JSON object from `file`, with one-line errors when it is missing, unreadable, not JSON or not an object."""
    if not file.is_file():
        raise AAError(what, f"{file} is missing", fix)
    try:
        doc = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise AAError(what, f"{file} is not valid JSON ({e.msg})", fix) from None
    except (UnicodeDecodeError, RecursionError, OSError) as e:
        raise AAError(what, f"{file} is not valid JSON ({type(e).__name__})", fix) from None
    if not isinstance(doc, dict):
        raise AAError(what, f"{file} holds a JSON {type(doc).__name__}, not an object", fix)
    return doc


def _read_config(folder: Path, what: str, fix: str) -> dict:
    return _read_json(folder / "config.json", what, fix)


def _build(make, what: str, file: Path, fix: str):
    """`make()` builds a library object from the contents of `file`; whatever a wrong value there makes the library
    raise (TypeError, ValueError, KeyError, its own Exception subclasses, bare Exception) is the file's fault."""
    try:
        return make()
    except Exception as e:
        raise AAError(what, f"{file} is not usable ({type(e).__name__}: {_first_line(e)[:100]})", fix) from None


def _weights_file(folder: Path, names: tuple[str, ...], what: str, fix: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise AAError(what, f"no weights in {folder} (looked for {', '.join(names)})", fix)


def _pretrained(load, what: str, folder: Path, file: Path, fix: str):
    """`load()` is a library `from_pretrained(..., output_loading_info=True)` on `folder`; returns (model, info) with
    the library's failures as one line that names the file at fault: the weights file when it cannot be read or a
    tensor does not fit, else config.json."""
    try:
        return load()
    except (SafetensorError, OSError, EOFError) as e:
        raise AAError(what, f"{file} is corrupted or unreadable ({type(e).__name__}: {_first_line(e)[:80]})",
                      f"re-download or re-create it; {fix}") from None
    except Exception as e:  # a wrong config value makes the library raise whatever it raises
        if isinstance(e, (ValueError, RuntimeError)) and any(
                w in str(e) for w in ("shape", "size mismatch", "mismatched_sizes")):
            raise AAError(what, f"{file} does not fit the model config ({type(e).__name__}: {_first_line(e)[:120]})",
                          "check that the weights and config.json come from the same model") from None
        raise AAError(what, f"{folder / 'config.json'} is not usable ({type(e).__name__}: {_first_line(e)[:100]})",
                      fix) from None


@contextmanager
def _no_progress_bars():
    """transformers draws a progress bar while it loads or saves weights; the CLIs keep stderr for their own lines."""
    from transformers.utils import logging as transformers_logging

    was = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            transformers_logging.enable_progress_bar()


def copy_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A CPU copy of `module` in `dtype`, for writing (the original is left as it is)."""
    copy = deepcopy(module).to("cpu", dtype)
    copy.requires_grad_(False)
    return copy


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _check_loading_info(info: dict, what: str, file: Path) -> None:
    """Strict loading on top of from_pretrained's report: no weight left at its random start, none left over."""
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(_OPTIONAL_MISSING)]
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(_IGNORABLE_UNEXPECTED)]
    mismatched = [str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys", [])]
    if missing or unexpected or mismatched:
        parts = [f"{len(v)} {label} (e.g. {v[0]})" for v, label in
                 ((missing, "missing"), (unexpected, "unexpected"), (mismatched, "of another shape")) if v]
        raise AAError(what, f"{file} does not fit the model config: {', '.join(parts)}",
                      "check that the weights and config.json come from the same model")


def load_diffusers_model(cls, folder: Path, what: str, fix: str):
    """`cls.from_pretrained` on a local folder, strictly: every weight in the file, none left over."""
    _read_config(folder, what, fix)  # missing, not JSON or not an object: said before the library reads it
    file = _weights_file(folder, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"), what, fix)
    model, info = _pretrained(lambda: cls.from_pretrained(
        folder, local_files_only=True, output_loading_info=True, use_safetensors=file.suffix == ".safetensors",
        torch_dtype=torch.float32), what, folder, file, fix)  # fp32 as the library's default; callers cast
    _check_loading_info(info, what, file)
    return model


def load_text_encoder(folder: Path, fix: str):
    from transformers import CLIPTextModel

    what = "text encoder"
    _read_config(folder, what, fix)
    file = _weights_file(folder, ("model.safetensors", "pytorch_model.bin"), what, fix)
    with _no_progress_bars():
        model, info = _pretrained(lambda: CLIPTextModel.from_pretrained(
            folder, local_files_only=True, output_loading_info=True, use_safetensors=file.suffix == ".safetensors",
            dtype=torch.float32), what, folder, file, fix)  # fp32 whatever the file stores, as the UNet and VAE
    _check_loading_info(info, what, file)
    # some config values (eos_token_id, layer_norm_eps, a negative head count) fail or give NaN only when run
    with torch.no_grad():
        out = _build(lambda: model(torch.zeros(1, 2, dtype=torch.long))[0], what, folder / "config.json", fix)
    if not torch.isfinite(out).all():
        raise AAError(what, f"{folder / 'config.json'} gives a text encoder whose output is not finite", fix)
    return model


def load_tokenizer(folder: Path, fix: str):
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).is_file():
            raise AAError("tokenizer", f"{folder / name} is missing", fix)
    return _build(lambda: load_clip_tokenizer(folder), "tokenizer", folder, fix)


def read_scheduler_config(folder: Path, steps: int) -> dict:
    """The scheduler config, checked by building every scheduler on it for `steps` steps (at most the consistency
    schedulers' own limit)."""
    file, fix = folder / "scheduler_config.json", "copy scheduler/scheduler_config.json from the model"
    config = _read_json(file, "scheduler", fix)
    for name in SCHEDULERS:
        n = min(steps, ORIGINAL_STEPS) if name in CONSISTENCY else steps
        _build(lambda: make_scheduler(name, config).set_timesteps(n), "scheduler", file, fix)
    return config


def load_bundle(path: Path) -> BaseModel:
    from diffusers import AutoencoderKL, UNetMotionModel

    manifest = _read_json(path / MANIFEST, "bundle manifest", "re-create the bundle or restore it")
    defaults = _check_manifest(manifest, path / MANIFEST)
    fix = "the bundle is incomplete: re-create it or restore it from the repository"
    unet = load_diffusers_model(UNetMotionModel, path / "unet", "bundle UNet", fix)
    vae = load_diffusers_model(AutoencoderKL, path / "vae", "bundle VAE", fix)
    text_encoder = load_text_encoder(path / "text_encoder", fix)
    tokenizer = load_tokenizer(path / "tokenizer", fix)
    te = text_encoder.config
    if not (len(tokenizer) <= te.vocab_size and 2 <= tokenizer.model_max_length <= te.max_position_embeddings):
        raise AAError("bundle tokenizer", f"{path / 'tokenizer'}: {len(tokenizer)} tokens, {tokenizer.model_max_length}"
                      f" per prompt; the text encoder takes {te.vocab_size}, {te.max_position_embeddings}", fix)
    fp = fingerprint(unet, vae, text_encoder)
    if manifest["fingerprint"] != fp:
        raise AAError("bundle weights", f"{path}: fingerprint {fp} ≠ manifest {manifest['fingerprint']}",
                      "the weights were changed or corrupted; restore the bundle")
    scheduler = read_scheduler_config(path / "scheduler", defaults.steps)
    return BaseModel(unet, vae, text_encoder, tokenizer, scheduler, fp, defaults, str(path), manifest)


def _check_manifest(manifest: dict, file: Path) -> SampleDefaults:
    """Check what loading and `BaseModel.trained_stages` read from `aa_bundle.json`; returns its sample defaults."""
    fix = "re-create the bundle or restore it"
    if manifest.get("format") != BUNDLE_FORMAT:
        raise AAError("bundle manifest", f"{file}: format {short_repr(manifest.get('format'))}",
                      f"expected {BUNDLE_FORMAT!r}; re-create the bundle")
    if not isinstance(manifest.get("fingerprint"), str):
        raise AAError("bundle manifest", f"{file}: fingerprint {short_repr(manifest.get('fingerprint'))}",
                      f"expected the weights' fingerprint (16 hex digits); {fix}")
    sample = manifest.get("sample", {})
    if not isinstance(sample, dict) or not set(sample) <= {f.name for f in fields(SampleDefaults)}:
        raise AAError("bundle manifest", f"{file}: sample {short_repr(sample)}",
                      f"expected an object of {', '.join(f.name for f in fields(SampleDefaults))}; {fix}")
    prov = manifest.get("provenance", {})
    while True:  # each continued bundle's provenance: {stages: [...] or {...}, init: {provenance: ...}}
        stages = prov.get("stages", []) if isinstance(prov, dict) else None
        init = prov.get("init") if isinstance(prov, dict) else None
        if not (isinstance(stages, (list, dict)) and all(isinstance(s, str) for s in stages)
                and (init is None or isinstance(init, dict))):
            raise AAError("bundle manifest", f"{file}: provenance {short_repr(prov)}",
                          f"expected an object with a list of stages and the init bundle's provenance; {fix}")
        if not (init and init.get("provenance")):
            break
        prov = init["provenance"]
    return SampleDefaults(**sample)


def save_bundle(base: BaseModel, path: str | os.PathLike, *, half: bool = True, name: str | None = None,
                provenance: dict | None = None, tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Write `base` as a bundle folder (fp16 weights by default), atomically: a temp folder renamed at the end.
    The fingerprint is computed from the weights as stored, so loading reproduces it."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        dtype = torch.float16 if half else torch.float32
        stored = {}
        for sub, module in (("unet", base.unet), ("vae", base.vae), ("text_encoder", base.text_encoder)):
            copy = copy_module(module, dtype)  # the live modules keep their dtype and device
            with _no_progress_bars():
                copy.save_pretrained(tmp / sub, safe_serialization=True)
            stored[sub] = copy.state_dict()
        tok_src = Path(tokenizer_dir or getattr(base, "_tokenizer_dir", None) or "")
        tok_files = None if tokenizer_dir else getattr(base, "_tokenizer_files", None)
        if tok_files:  # a random base's tokenizer, kept in memory
            (tmp / "tokenizer").mkdir()
            for file_name, data in tok_files.items():
                (tmp / "tokenizer" / file_name).write_bytes(data)
        elif not (tok_src / "vocab.json").is_file():
            raise AAError("tokenizer", f"no vocab.json/merges.txt at {tok_src}", "pass tokenizer_dir")
        else:
            shutil.copytree(tok_src, tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(base.scheduler_config, indent=1))
        fp = fingerprint_states(stored["unet"], stored["vae"], stored["text_encoder"])
        manifest = {"format": BUNDLE_FORMAT, "name": name or base.manifest.get("name", path.name),
                    "fingerprint": fp, "dtype": str(dtype).removeprefix("torch."),
                    "sample": asdict(base.defaults),
                    "provenance": provenance if provenance is not None else base.manifest.get("provenance", {})}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return path
