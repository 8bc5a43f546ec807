"""Identity adapter files: LoRA tensors under diffusers/PEFT names plus `aa_adapter` metadata,
and merging them into the UNet through peft layers with a finite check.

An adapter may also carry its identifier's text embedding (pivotal tuning: the identifier is one token of its own,
trained with the LoRA). It is stored as a bundled embedding, `bundle_emb.<identifier>.string_to_param.*`, the key
kohya-ss and the A1111 web UI use for embeddings inside LoRA files; diffusers loads the same tensor with
`pipe.load_textual_inversion({identifier: tensor})`."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import AAError, short_repr
from .files import atomic_path

ADAPTER_FORMAT = "aa-adapter/1"
METADATA_KEY = "aa_adapter"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # read by diffusers' load_lora_weights for rank/alpha
ATTN2_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what LoRA tensors may be


def spatial_attn2_pattern(projections=ATTN2_PROJECTIONS) -> str:
    """The module regex for some of the spatial attn2 projections (all four: SPATIAL_ATTN2). Only the spatial
    transformer blocks' cross-attention: the motion modules' attn2 is temporal self-attention."""
    return r".*attentions\.\d+\.transformer_blocks\.\d+\.attn2\.(" + _alternation(projections) + ")"


def _alternation(projections) -> str:
    """Regex alternation of the given attn2 projections, in ATTN2_PROJECTIONS order."""
    return "|".join(re.escape(p) for p in ATTN2_PROJECTIONS if p in projections)


SPATIAL_ATTN2 = spatial_attn2_pattern()
# how far an identity adapter reaches into the spatial UNet (never the motion modules, conv_in or the time MLPs)
LORA_REACHES = ("attn2", "attention", "wide")


def adapter_target_pattern(reach: str = "attn2", projections=ATTN2_PROJECTIONS) -> str:
    """The module regex of an identity adapter: attn2 = some of the spatial cross-attention projections (the paper);
    attention = those plus every spatial self-attention projection and the feed-forward Linears of the same
    transformer blocks; wide = attention plus the spatial resnets' 3×3 convs."""
    if reach == "attn2":
        return spatial_attn2_pattern(projections)
    block = (r".*attentions\.\d+\.transformer_blocks\.\d+\.(attn1\.(" + _alternation(ATTN2_PROJECTIONS) +
             r")|attn2\.(" + _alternation(projections) + r")|ff\.net\.(0\.proj|2))")
    if reach == "attention":
        return block
    if reach == "wide":
        return f"({block})|(.*(down_blocks\\.\\d+|up_blocks\\.\\d+|mid_block)\\.resnets\\.\\d+\\.conv[12])"
    raise AAError("lora reach", reach, f"use one of {', '.join(LORA_REACHES)}")


def appearance_parts(appearance: str, identifier: str, class_word: str) -> tuple[str, str]:
    """Split a stored appearance phrase ('a bald <me> man, in a red shirt and blue trousers') around
    '<identifier> <class>': (the words before it without the article, the text after it): ('bald ', ', in a …')."""
    at = appearance.find(f"{identifier} {class_word}")
    if at < 0:
        raise AAError("appearance", short_repr(appearance), f"name the person as '{identifier} {class_word}' in it, "
                      f"e.g. 'a {identifier} {class_word} in a grey shirt'")
    pre = re.sub(r"^(a|an|the)\s+", "", appearance[:at].strip(), flags=re.I)
    return (f"{pre} " if pre else ""), appearance[at + len(identifier) + len(class_word) + 1:].rstrip(" ,.")


def describe_identifier(prompt: str, identifier: str, class_word: str, appearance: str,
                        keep_identifier: bool = False) -> str:
    """Write the person's appearance into `prompt` where it names '<identifier> <class>':
    'a <me> woman dancing in a snow field' → 'a woman with a black ponytail, in a grey shirt, a yellow skirt and red
    shoes, dancing in a snow field' — the world captions' order (appearance, then action and scene), so the base
    draws the described person and the adapter only adds what words do not say. The identifier itself is dropped
    unless `keep_identifier` (a token of its own, carried by the adapter): as ordinary word pieces ('<', 'me', '>')
    it would only push the words after it off the meaning the base learnt. A prompt that already describes the person, or
    never names '<identifier> <class>', keeps its words (only the identifier goes, unless kept)."""
    pre, post = appearance_parts(appearance, identifier, class_word)
    m = re.search(re.escape(identifier) + r"\s+" + re.escape(class_word) + r"(?![\w-])", prompt)
    if m is None:
        return prompt
    name = f"{identifier} {class_word}" if keep_identifier else class_word
    if post.strip(" ,") and post.strip(" ,") in prompt:  # already described: only the identifier goes
        return f"{prompt[:m.start()]}{name}{prompt[m.end():]}"
    rest = prompt[m.end():]
    joint = "," if rest.strip() and not rest.lstrip().startswith((",", ".", ";", ":")) else ""
    start = m.start()
    if pre and prompt[:start].rstrip().endswith(pre.strip()):
        pre = ""  # the words before the identifier are already there ('a bald <me> man')
    return f"{prompt[:start]}{pre}{name}{post}{joint}{rest}"


_TENSOR_NAME = re.compile(r"^unet\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_EMBEDDING_NAME = re.compile(r"^bundle_emb\.(?P<token>[^.]+)\.string_to_param\.\*$")


def embedding_key(identifier: str) -> str:
    """The tensor name of an identifier's bundled embedding."""
    return f"bundle_emb.{identifier}.string_to_param.*"


@dataclass
class Adapter:
    """A loaded adapter: LoRA tensors keyed by UNet module path, and its metadata."""

    path: Path
    lora_A: dict[str, torch.Tensor]  # module path → (r, in)
    lora_B: dict[str, torch.Tensor]  # module path → (out, r)
    meta: dict
    sha256: str = ""
    embedding: torch.Tensor | None = None  # the identifier's token embedding (1, D), when it was trained

    @property
    def rank(self) -> int:
        return int(self.meta["rank"])

    @property
    def alpha(self) -> float:
        return float(self.meta["alpha"])

    @property
    def base_fingerprint(self) -> str:
        return self.meta.get("base_fingerprint", "")

    @property
    def identifier(self) -> str:
        return self.meta.get("identifier", "")

    @property
    def appearance(self) -> str | None:
        """The person's written appearance the adapter was trained with ('a <me> woman in a grey shirt …'), if any."""
        return self.meta.get("appearance")

    @property
    def bone_lengths(self) -> np.ndarray | None:
        b = self.meta.get("bone_lengths")
        return None if b is None else np.array([np.nan if v is None else v for v in b], dtype=np.float32)


def adapter_metadata(*, identifier: str, class_word: str, rank: int, alpha: float, base_fingerprint: str,
                     target_modules: str = SPATIAL_ATTN2, bone_lengths=None, training: dict | None = None,
                     appearance: str | None = None) -> dict:
    """The `aa_adapter` metadata document; `appearance`: the person's written appearance naming
    '<identifier> <class>' (aa-run writes it into prompts), when the adapter was trained with it."""
    if bone_lengths is not None:
        bone_lengths = [None if not np.isfinite(v) else round(float(v), 5) for v in bone_lengths]
    return {"format": ADAPTER_FORMAT, "identifier": identifier, "class_word": class_word, "rank": int(rank),
            "alpha": float(alpha), "target_modules": target_modules, "base_fingerprint": base_fingerprint,
            "bone_lengths": bone_lengths, "training": training or {},
            **({"appearance": appearance} if appearance else {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save_adapter(path: str | Path, lora_A: dict[str, torch.Tensor], lora_B: dict[str, torch.Tensor],
                 meta: dict, dtype: torch.dtype = torch.float32, embedding: torch.Tensor | None = None) -> Path:
    """Write an adapter file atomically (safetensors; never pickle); `embedding` (1, D): the identifier's token."""
    if set(lora_A) != set(lora_B) or not lora_A:
        raise AAError("adapter tensors", f"{len(lora_A)} A vs {len(lora_B)} B matrices", "give matching non-empty A/B")
    tensors = {}
    if embedding is not None:
        vector = embedding.detach().to("cpu", torch.float32).reshape(1, -1).contiguous()
        tensors[embedding_key(meta["identifier"])] = vector
    for name in sorted(lora_A):
        tensors[f"unet.{name}.lora_A.weight"] = lora_A[name].detach().to("cpu", dtype).contiguous()
        tensors[f"unet.{name}.lora_B.weight"] = lora_B[name].detach().to("cpu", dtype).contiguous()
    diffusers_meta = {"unet.r": meta["rank"], "unet.lora_alpha": meta["alpha"],
                      "unet.target_modules": sorted(lora_A)}
    header = {"format": "pt", METADATA_KEY: json.dumps(meta),
              DIFFUSERS_METADATA_KEY: json.dumps(diffusers_meta, sort_keys=True)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read a megabyte at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_metadata(meta: object, path: Path) -> dict:
    """The `aa_adapter` document, type- and range-checked before anything reads it."""
    if not isinstance(meta, dict):
        raise AAError("adapter metadata", f"{path}: '{METADATA_KEY}' is {type(meta).__name__} {short_repr(meta)}",
                      "expected a JSON object; re-create the adapter with aa-train identity")
    if meta.get("format") != ADAPTER_FORMAT:
        raise AAError("adapter format", f"{path}: {short_repr(meta.get('format'))}", f"expected {ADAPTER_FORMAT!r}")

    def bad(key: str, want: str) -> AAError:
        return AAError(f"adapter metadata {key}", f"{path}: {short_repr(meta.get(key))}" + ("" if key in meta else
                       " (missing)"), f"{want}; re-create the adapter with aa-train identity")

    rank, alpha = meta.get("rank"), meta.get("alpha")
    if not (isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= 4096):
        raise bad("rank", "expected an integer from 1 to 4096")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha < math.inf):
        raise bad("alpha", "expected a positive finite number")
    for key in ("identifier", "class_word", "base_fingerprint"):
        if not isinstance(meta.get(key, ""), str):
            raise bad(key, "expected a string")
    appearance = meta.get("appearance")
    if appearance is not None:
        if not isinstance(appearance, str) or len(appearance) > 1000:
            raise bad("appearance", "expected a string of at most 1000 characters")
        try:
            appearance_parts(appearance, meta.get("identifier", ""), meta.get("class_word", ""))
        except AAError:
            raise bad("appearance", f"expected a phrase naming '{meta.get('identifier')} {meta.get('class_word')}'") from None
    bones = meta.get("bone_lengths")
    if bones is not None and not (isinstance(bones, list) and len(bones) == 17 and all(
            v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6 for v in bones)):
        raise bad("bone_lengths", "expected null or 17 positive bone lengths (null for a bone never seen)")
    return meta


def load_adapter(path: str | Path) -> Adapter:
    """Read and validate an adapter file: metadata, tensor names, dtypes, shapes and values."""
    path = Path(path)
    if not path.is_file():
        raise AAError("adapter", f"{path} does not exist", "pass the .safetensors written by aa-train identity")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise AAError("adapter", f"{path} is not a readable safetensors file ({str(e)[:80]!r})",
                      "re-create it with aa-train identity") from None
    if METADATA_KEY not in header:
        raise AAError("adapter", f"{path} has no '{METADATA_KEY}' metadata",
                      "this is not an AnimateAnywhere identity adapter; re-create it with aa-train identity")
    try:
        meta = json.loads(header[METADATA_KEY])
    except (json.JSONDecodeError, RecursionError):
        raise AAError("adapter metadata", f"{path}: '{METADATA_KEY}' is not JSON", "re-create the adapter") from None
    rank = _check_metadata(meta, path)["rank"]
    lora_A, lora_B = {}, {}
    embedding = None
    for key, t in tensors.items():
        m = _TENSOR_NAME.match(key)
        e = _EMBEDDING_NAME.match(key)
        if not (m or e):
            raise AAError("adapter tensor", f"{path}: unexpected tensor {short_repr(key)}", "adapters hold only "
                          "unet.<module>.lora_A/B.weight tensors and the identifier's bundle_emb embedding")
        if e and (e["token"] != meta.get("identifier") or embedding is not None):
            raise AAError("adapter embedding", f"{path}: {short_repr(key)} is not the embedding of the identifier "
                          f"{short_repr(meta.get('identifier'))}", "re-create the adapter with aa-train identity")
        if t.dtype not in FLOAT_DTYPES or t.ndim not in ((2,) if e else (2, 4)):
            raise AAError("adapter tensor", f"{path}: {key} is {str(t.dtype).removeprefix('torch.')} "
                          f"{tuple(t.shape)}", "expected a float16/bfloat16/float32/float64 matrix (Linear: 2-D; "
                          "Conv2d: 4-D)")
        if not torch.isfinite(t).all():
            raise AAError("adapter tensor", f"{path}: {key} holds NaN or inf", "the adapter is broken; re-train it")
        if e:
            if t.shape[0] != 1:
                raise AAError("adapter embedding", f"{path}: {key} has {t.shape[0]} vectors",
                              "expected one vector (1, D); re-create the adapter")
            embedding = t.float()
        else:
            (lora_A if m["ab"] == "A" else lora_B)[m["module"]] = t
    if set(lora_A) != set(lora_B) or not lora_A:
        raise AAError("adapter", f"{path}: A/B tensors do not pair up", "re-create the adapter")
    for name in lora_A:
        a, b = lora_A[name], lora_B[name]
        if a.ndim != b.ndim or a.shape[0] != rank or b.shape[1] != rank or (b.ndim == 4 and b.shape[2:] != (1, 1)):
            raise AAError("adapter", f"{path}: {name} shapes {tuple(lora_A[name].shape)}/{tuple(lora_B[name].shape)} "
                          f"do not match rank {rank}", "re-create the adapter")
    return Adapter(path, lora_A, lora_B, meta, file_sha256(path), embedding)


def add_identifier_token(tokenizer, text_encoder, identifier: str, embedding: torch.Tensor | None = None) -> int:
    """Make `identifier` one token of its own (an added token: never split into word pieces), growing the text
    encoder's embedding table when it is new, and set its vector to `embedding` (1, D) when given. A new token
    without an embedding starts as the vocabulary's first whole reserved rare word (DreamBooth's rare identifier),
    else as the mean embedding. Returns the token id."""
    from .tokenizer import RESERVED_WORDS

    table = text_encoder.get_input_embeddings()
    if embedding is not None and tuple(embedding.reshape(1, -1).shape) != (1, table.weight.shape[1]):
        raise AAError("adapter embedding", f"{identifier}: {tuple(embedding.shape)}", f"this text encoder's "
                      f"embeddings are (1, {table.weight.shape[1]}); use the base it was trained on")
    vocab = tokenizer.get_vocab()
    new = identifier not in vocab
    if new:
        tokenizer.add_tokens([identifier])
    tid = tokenizer.convert_tokens_to_ids(identifier)
    if tid >= table.weight.shape[0]:
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set below
        table = text_encoder.get_input_embeddings()
    with torch.no_grad():
        if embedding is not None:
            table.weight[tid] = embedding.reshape(-1).to(table.weight)
        elif new:
            rare = [vocab[w + "</w>"] for w in RESERVED_WORDS if w + "</w>" in vocab]
            table.weight[tid] = table.weight[rare[0]] if rare else table.weight[:tid].mean(0)
    return tid


def attach_lora(unet: torch.nn.Module, rank: int, alpha: float, target_modules: str | list[str],
                adapter_name: str = "identity") -> None:
    """Wrap the target modules of `unet` in peft LoRA layers (B starts at zero: output unchanged)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules, init_lora_weights=True)
    inject_adapter_in_model(config, unet, adapter_name=adapter_name)


def merge_adapter(unet: torch.nn.Module, adapter: Adapter, *, base_fingerprint: str | tuple[str, ...],
                  force: bool = False,
                  scale: float = 1.0, adapter_name: str = "identity") -> None:
    """Fold an adapter into the UNet's weights: W ← W + scale · (alpha / r) · B A, through peft's safe merge
    (`scale` as diffusers' `fuse_lora(lora_scale=...)`: 0 leaves the base, 1 is the adapter as trained).
    `base_fingerprint`: the base's, or every fingerprint an adapter may name (BaseModel.adapter_bases)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import set_peft_model_state_dict

    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 <= scale <= 2):
        raise AAError("adapter scale", scale, "use a number from 0 (base only) to 2; 1 is the adapter as trained")
    accepted = (base_fingerprint,) if isinstance(base_fingerprint, str) else tuple(base_fingerprint)
    if adapter.base_fingerprint not in accepted and not force:
        raise AAError("adapter", f"{adapter.path} was made for base {adapter.base_fingerprint or 'unknown'}, "
                      f"this base is {accepted[0]}", "use the base it was trained on, or pass --force")
    modules = dict(unet.named_modules())
    missing = [n for n in adapter.lora_A if n not in modules]
    if missing:
        raise AAError("adapter", f"{adapter.path}: {len(missing)} target modules not in this UNet (e.g. {missing[0]})",
                      "use an adapter trained for this base architecture")
    for name in adapter.lora_A:  # B A must have the shape of the layer's weight: (out, in) or (out, in, kh, kw)
        layer = modules[name]
        a, b = adapter.lora_A[name], adapter.lora_B[name]
        got = (b.shape[0], *a.shape[1:])
        kind = torch.nn.Linear if a.ndim == 2 else torch.nn.Conv2d
        if not isinstance(layer, kind) or got != tuple(layer.weight.shape):
            have = "x".join(map(str, layer.weight.shape)) if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) \
                else type(layer).__name__
            raise AAError("adapter", f"{adapter.path}: {name} is {'x'.join(map(str, got))}, this UNet's layer is "
                          f"{have}", "use an adapter trained for this base architecture")
    attach_lora(unet, adapter.rank, adapter.alpha, sorted(adapter.lora_A), adapter_name)
    state = {}
    for name in adapter.lora_A:
        state[f"{name}.lora_A.weight"] = adapter.lora_A[name]
        state[f"{name}.lora_B.weight"] = adapter.lora_B[name] * scale
    result = set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
    bad = [k for k in result.unexpected_keys if "lora_" in k]
    if bad:
        raise AAError("adapter", f"{adapter.path}: {len(bad)} tensors were not loaded (e.g. {bad[0]})",
                      "the adapter does not fit this UNet")
    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            try:
                module.merge(safe_merge=True, adapter_names=[adapter_name])
            except ValueError as e:
                raise AAError("adapter", f"{adapter.path}: merging {name} gives non-finite weights ({e})",
                              "the adapter is broken; re-train it") from None
            parent, _, child = name.rpartition(".")
            setattr(modules[parent] if parent else unet, child, module.get_base_layer())
    configs = getattr(unet, "peft_config", None)
    if isinstance(configs, dict):
        configs.pop(adapter_name, None)
        if not configs:
            del unet.peft_config


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """'PATH' or 'PATH:WEIGHT' (as `aa-run --lora` takes it) → (path, weight); weight 1 by default."""
    path, _, weight = spec.rpartition(":")
    if path and not Path(spec).exists():
        try:
            return Path(path), float(weight)
        except ValueError:
            pass
    return Path(spec), 1.0


def merge_lora(unet: torch.nn.Module, path: str | os.PathLike, weight: float = 1.0, name: str = "lora") -> int:
    """Fold a LoRA made for the Stable Diffusion 1.5 UNet into `unet` at `weight` — kohya or diffusers/peft naming,
    e.g. LCM-LoRA or AnimateLCM's spatial LoRA (few-step sampling) — through diffusers' LoRA loader and peft's safe
    fuse, then drop the LoRA layers. Returns how many layers it changed."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    path = Path(path)
    fix = "pass a LoRA .safetensors made for Stable Diffusion 1.5 (kohya or diffusers naming)"
    if not path.is_file():
        raise AAError("lora", f"{path} does not exist", fix)
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and -4 <= weight <= 4):
        raise AAError("lora weight", weight, "use a number from -4 to 4, e.g. --lora fast.safetensors:1.0")
    try:
        state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
        unet.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name=name)
    except Exception as e:  # safetensors, diffusers' converters and peft raise many kinds on a foreign file
        raise AAError("lora", f"{path} could not be read as a UNet LoRA ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0][:100] if str(e).strip() else ''})", fix) from None
    layers = sum(isinstance(m, BaseTunerLayer) for m in unet.modules())
    if layers == 0:
        raise AAError("lora", f"{path} names no layer of this UNet", fix)
    try:
        unet.fuse_lora(lora_scale=weight, safe_fusing=True, adapter_names=[name])
    except ValueError as e:
        raise AAError("lora", f"{path}: fusing gives non-finite weights ({str(e)[:80]})", "the LoRA is broken") from None
    finally:
        unet.unload_lora()
    return layers
