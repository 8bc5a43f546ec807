"""Which base to load: an aa bundle folder (`aa_runtime.bundle`), or a local Stable Diffusion 1.5 folder plus an
AnimateDiff motion module (`aa_runtime.sd15`); the embedded aa-tiny bundle by default. Nothing is ever downloaded."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .bundle import MANIFEST, BaseModel, load_bundle
from .errors import AAError
from .sd15 import load_sd15

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO_ROOT / "models" / "aa-tiny"


def resolve_base(base: str | os.PathLike | None) -> Path:
    """The base path to load: the argument, else $AA_BASE, else the embedded bundle."""
    if base is None:
        base = os.environ.get("AA_BASE") or DEFAULT_BUNDLE
    return Path(base)


def load_base(base: str | os.PathLike | None = None, motion_module: str | os.PathLike | None = None,
              *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load a base: an aa bundle folder, or an SD1.5 diffusers folder plus an AnimateDiff motion module."""
    path = resolve_base(base)
    if not path.exists():
        if path == DEFAULT_BUNDLE:
            raise AAError("base model", f"the embedded bundle {path} is missing",
                          "restore models/aa-tiny from the repository or pass --base PATH")
        raise AAError("base model", f"{path} does not exist",
                      "pass an aa bundle folder or a local Stable Diffusion 1.5 folder")
    if (path / MANIFEST).is_file():
        model = load_bundle(path)
    elif path.is_dir() and (path / "unet").is_dir():
        if motion_module is None:
            raise AAError("motion module", "not given for the Stable Diffusion folder " + str(path),
                          "pass --motion-module PATH (an AnimateDiff motion adapter, e.g. "
                          "guoyww/animatediff-motion-adapter-v1-5-2 downloaded by you)")
        model = load_sd15(path, motion_module)
    elif path.is_file():
        raise AAError("base model", f"{path} is a single file",
                      "convert it to a diffusers folder first (diffusers' convert_original_stable_diffusion_to_diffusers.py) "
                      "and pass that folder with --motion-module")
    else:
        raise AAError("base model", f"{path} is neither an aa bundle ({MANIFEST}) nor an SD1.5 folder (unet/)",
                      "pass the folder that holds unet/, vae/, text_encoder/, tokenizer/, scheduler/")
    model.unet.to(device=device, dtype=dtype)
    model.vae.to(device=device, dtype=dtype)
    model.text_encoder.to(device=device, dtype=dtype)
    for m in (model.unet, model.vae, model.text_encoder):
        m.eval().requires_grad_(False)
    return model
