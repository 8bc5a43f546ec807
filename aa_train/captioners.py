"""Captions for the identity dataset: the identifier caption ("a <me> man waving on a beach")
and the class caption without the identifier ("a man waving on a beach") for prior preservation.

- `template` — offline default: the synthetic world's captions when its sidecar gives motion, scene and
  objects; otherwise "a photo of <token> <class>" (+ ", <description>").
- `judge`    — the template captions, and the person's appearance (for --describe) read off the frames by the
  synthetic world's judge instead of taken from the sidecar's caption: a captioner of the world that can be wrong.
- `openai`   — any OpenAI-compatible endpoint through the official client (`OPENAI_API_KEY`,
  `OPENAI_BASE_URL`): three frames as PNG image parts, one sentence back about clothing, action and scene.
  Every failure (no key, timeout, auth, refusal, empty reply) falls back to `template` with one warning
  line; the key is never printed, logged or stored.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from aa_world.captions import MOTION_VERBS, SCENE_PHRASES, class_caption, identity_caption
from aa_world.objects import check_objects

Captioner = Literal["template", "openai", "judge"]
CAPTIONERS = ("template", "openai", "judge")
DEFAULT_OPENAI_MODEL = "gpt-4o"
DEFAULT_TIMEOUT_S = 30.0
CAPTION_FRAMES = 3
MAX_IMAGE_SIDE = 512
MAX_REPLY_CHARS = 300
OPENAI_PROMPT = (
    "These are {n} frames of one short video of a {cls}. Reply with ONE sentence fragment, in lowercase, "
    "with no name and no leading 'a {cls}', that describes the person's clothing, then the action, then the "
    "scene or background, e.g. 'wearing a red striped shirt and blue jeans, waving on a sunny beach'."
)
REFUSAL = re.compile(r"^(i'm sorry|i am sorry|sorry|i can(no|')t|i cannot|i am unable|i'm unable|as an ai)\b", re.I)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionResult:
    """Both captions, the captioner that produced them, and the fallback reason (None when none)."""

    caption: str
    class_caption: str
    captioner: str
    fell_back: bool = False
    warning: str | None = None


# =============================================================================================== template
def world_context(source: dict | None) -> dict | None:
    """{motion, scene, objects} from a synthetic-world sidecar's `source`, or None when it has none."""
    if not isinstance(source, dict):
        return None
    motion, scene, objects = source.get("motion"), source.get("scene"), source.get("objects", [])
    if not (isinstance(motion, str) and isinstance(scene, str) and isinstance(objects, list)):
        return None  # a hand-edited or foreign sidecar: no world context (and no unhashable dict keys below)
    if motion not in MOTION_VERBS or scene not in SCENE_PHRASES:
        return None
    try:
        pairs = [(o["kind"], o["colour"]) for o in objects]
        check_objects(pairs)
    except (KeyError, TypeError, ValueError):
        return None
    return {"motion": motion, "scene": scene, "objects": pairs}


def world_appearance(caption: str | None, context: dict | None, token: str, class_word: str) -> str | None:
    """The person's written appearance from a synthetic-world sidecar's full caption, naming '<token> <class>':
    'a woman with a black ponytail, in a grey shirt, … turning around on a beach' → 'a <token> woman with a black
    ponytail, in a grey shirt, …'. None when the caption is not the world's appearance + context."""
    from aa_world.captions import context_phrase

    if not isinstance(caption, str) or context is None:
        return None
    tail = ", " + context_phrase(context["motion"], context["scene"], context["objects"])
    if not caption.endswith(tail) or not caption.startswith("a "):
        return None
    return _name_person(caption[:-len(tail)], token, class_word)


def _name_person(phrase: str, token: str, class_word: str) -> str | None:
    """An appearance phrase with `token` before its class word ('a bald man, …' → 'a bald <me> man, …'); None when
    the phrase never names the class."""
    m = re.search(rf"(?<=\s){re.escape(class_word)}(?![\w-])", phrase)
    return None if m is None else f"{phrase[:m.start()]}{token} {phrase[m.start():]}"


def judge_appearance(frames: np.ndarray, token: str, class_word: str, judge=None) -> str:
    """The person's appearance as the world's judge reads it in uint8 frames (F, H, W, 3), naming '<token> <class>'."""
    from aa_world.captions import appearance_phrase
    from aa_world.judge import Judge, read_identity

    return _name_person(appearance_phrase(read_identity(judge or Judge.load(), frames, class_word)), token, class_word)


def described_appearance(token: str, class_word: str, description: str) -> str:
    """'in a grey shirt and a yellow skirt' → 'a <token> woman in a grey shirt and a yellow skirt'."""
    return f"a {token} {class_word} {description.strip().lstrip(',').strip()}"


def template_captions(token: str, class_word: str, context: dict | None = None,
                      description: str | None = None) -> CaptionResult:
    """World caption when `context` is given, else "a photo of <token> <class>"; `description` is appended."""
    if context is not None:
        cap = identity_caption(token, class_word, context["motion"], context["scene"], context["objects"])
        cls = class_caption(class_word, context["motion"], context["scene"], context["objects"])
    else:
        cap, cls = f"a photo of {token} {class_word}", f"a photo of {class_word}"
    if description:
        cap, cls = f"{cap}, {description}", f"{cls}, {description}"
    return CaptionResult(cap, cls, "template")


# ================================================================================================= openai
def sample_frames(frames: np.ndarray, n: int = CAPTION_FRAMES) -> list[np.ndarray]:
    """`n` frames spread evenly over uint8 (F, H, W, 3) (first, middle, last for n = 3)."""
    idx = np.unique(np.round(np.linspace(0, len(frames) - 1, n)).astype(int))
    return [frames[i] for i in idx]


def png_data_url(frame: np.ndarray, max_side: int = MAX_IMAGE_SIDE) -> str:
    """uint8 (H, W, 3) → 'data:image/png;base64,…', downscaled so the longer side is at most `max_side`."""
    img = Image.fromarray(frame)
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def clean_reply(text: str | None, class_word: str) -> str | None:
    """One caption fragment from the model's reply: first line, no quotes, no leading 'a man', no final period;
    None for an empty reply or a refusal."""
    if not text or not text.strip():
        return None
    line = text.strip().splitlines()[0].strip().strip("\"'“”").strip()
    if REFUSAL.match(line):
        return None
    line = re.sub(rf"^(a|an|the)\s+({re.escape(class_word)}|person)\b[\s,]*", "", line, flags=re.I)
    line = re.sub(r"\s+", " ", line).rstrip(" .")
    if len(line) > MAX_REPLY_CHARS:
        line = line[:MAX_REPLY_CHARS].rsplit(" ", 1)[0]
    if len(line.split()) < 3:
        return None
    return line[0].lower() + line[1:] if not line[:2].isupper() else line


def _request_caption(frames: list[np.ndarray], class_word: str, model: str, timeout: float, key: str) -> str | None:
    """One chat.completions call; returns the raw reply (None when the model refused)."""
    from openai import OpenAI

    client = OpenAI(api_key=key, base_url=os.environ.get("OPENAI_BASE_URL") or None, timeout=timeout, max_retries=0)
    content = [{"type": "text", "text": OPENAI_PROMPT.format(n=len(frames), cls=class_word)}]
    content += [{"type": "image_url", "image_url": {"url": png_data_url(f), "detail": "low"}} for f in frames]
    resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          max_tokens=100, temperature=0.0)
    if not resp.choices:
        return None
    msg = resp.choices[0].message
    if getattr(msg, "refusal", None):
        return None
    return msg.content


def _failure_reason(e: Exception, timeout: float) -> str:
    """A short description of an OpenAI client error that never repeats server text (it may echo the key)."""
    import openai

    if isinstance(e, openai.APITimeoutError):
        return f"no reply within {timeout:g} s (timeout)"
    if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return f"the endpoint rejected the API key (HTTP {e.status_code})"
    if isinstance(e, openai.APIStatusError):
        return f"the endpoint answered HTTP {e.status_code}"
    if isinstance(e, openai.APIConnectionError):
        return "cannot connect to the endpoint (check OPENAI_BASE_URL)"
    return f"{type(e).__name__}"


def openai_captions(frames: np.ndarray, token: str, class_word: str, fallback: CaptionResult,
                    model: str = DEFAULT_OPENAI_MODEL, timeout: float = DEFAULT_TIMEOUT_S) -> CaptionResult:
    """Caption uint8 (F, H, W, 3) frames with an OpenAI-compatible vision model →
    "a <token> <class>, <reply>" / "a <class>, <reply>"; on any failure `fallback` with one warning line."""
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        reason = "OPENAI_API_KEY is not set"
    else:
        try:
            import openai
        except ImportError:
            openai = None
            reason = "the 'openai' package is not installed (pip install 'animate-anywhere[real]')"
        if openai is not None:
            try:
                raw = _request_caption(sample_frames(frames), class_word, model, timeout, key)
                reply = clean_reply(raw, class_word)
                reason = "the model refused or gave an empty reply" if reply is None else None
            except openai.OpenAIError as e:
                reason = _failure_reason(e, timeout)
            if reason is None:
                return CaptionResult(f"a {token} {class_word}, {reply}", f"a {class_word}, {reply}", "openai")
    warning = f"openai captioner ({model}): {reason} — using the template caption {fallback.caption!r}"
    if key:
        warning = warning.replace(key, "***")
    log.warning(warning)
    return CaptionResult(fallback.caption, fallback.class_caption, fallback.captioner, True, warning)
