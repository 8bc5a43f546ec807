"""Captions of the synthetic world, in one fixed phrase order so a small text model can learn them.

Full caption (base training), e.g.
  "a man with short black hair, in a red and white striped shirt, blue trousers and black shoes,
   with a green hat, a yellow circle logo and a grey backpack, waving on a beach, holding a yellow balloon"
Identity caption (identity training: the identifier replaces the appearance), e.g.
  "a <me> man waving on a beach, holding a yellow balloon"
"""
from __future__ import annotations

from aa_runtime.motions import MOTIONS

from .identity import CLASS_WORDS, NONE, Identity
from .objects import HELD_OBJECTS, ObjectSpec, check_objects
from .scenes import SCENES

SCENE_PHRASES: dict[str, str] = {
    "beach": "on a beach",
    "forest": "in a forest",
    "city street": "on a city street",
    "snow field": "in a snow field",
    "night sky": "under a night sky",
    "desert": "in a desert",
    "indoor room": "in a room",
    "stage": "on a stage",
    "park": "in a park",
}
MOTION_VERBS: dict[str, str] = {
    "walk": "walking",
    "run": "running",
    "wave": "waving",
    "jump": "jumping",
    "dance": "dancing",
    "turn": "turning around",
    "squat": "squatting",
}
if set(SCENE_PHRASES) != set(SCENES) or set(MOTION_VERBS) != set(MOTIONS):
    raise RuntimeError("aa_world.captions: SCENE_PHRASES / MOTION_VERBS out of sync with SCENES / MOTIONS")


def _and(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _appearance_pieces(identity: Identity) -> list[tuple[str, str | None]]:
    """The appearance phrase as (text, region) pieces: each attribute phrase with the part it describes."""
    i = identity
    if i.hair_style == "bald":
        pieces = [("a bald ", None), (i.class_word, "person")]
    elif i.hair_style == "ponytail":
        pieces = [("a ", None), (i.class_word, "person"), (" with a ", None), (f"{i.hair_colour} ponytail", "hair")]
    else:
        pieces = [("a ", None), (i.class_word, "person"), (" with ", None),
                  (f"{i.hair_style} {i.hair_colour} hair", "hair")]
    shirt = {"solid": f"{i.shirt_colour} shirt",
             "stripes": f"{i.shirt_colour} and {i.shirt_colour2} striped shirt",
             "two-tone": f"{i.shirt_colour} and {i.shirt_colour2} two-tone shirt"}[i.shirt_pattern]
    lower = (f"{i.lower_colour} trousers", "") if i.lower_garment == "trousers" else (f"{i.lower_colour} skirt", "a ")
    pieces += [(", in a ", None), (shirt, "shirt"), (", " + lower[1], None), (lower[0], "lower"), (" and ", None),
               (f"{i.shoe_colour} shoes", "shoes")]
    extras = []
    if i.hat != NONE:
        extras.append((f"{i.hat} hat", "hat"))
    if i.logo_shape != NONE:
        extras.append((f"{i.logo_colour} {i.logo_shape} logo", "logo"))
    if i.backpack != NONE:
        extras.append((f"{i.backpack} backpack", "backpack"))
    if extras:
        pieces.append((", with ", None))
        for k, (text, region) in enumerate(extras):
            if k:
                pieces.append((", " if k < len(extras) - 1 else " and ", None))
            pieces += [("a ", None), (text, region)]
    return pieces


def appearance_phrase(identity: Identity) -> str:
    """'a man with short black hair, in a red shirt, blue trousers and black shoes, with a green hat'."""
    return "".join(text for text, _ in _appearance_pieces(identity))


def _context_pieces(motion: str, scene: str, objects=()) -> list[tuple[str, str | None]]:
    """The context phrase as (text, region) pieces: the scene words name the background, each object itself."""
    if motion not in MOTION_VERBS:
        raise ValueError(f"motion={motion!r}: use one of {', '.join(MOTIONS)}")
    if scene not in SCENE_PHRASES:
        raise ValueError(f"scene={scene!r}: use one of {', '.join(SCENES)}")
    objects: tuple[ObjectSpec, ...] = check_objects(objects)
    words = SCENE_PHRASES[scene].split(" ")
    pieces = [(f"{MOTION_VERBS[motion]} ", None), (" ".join(words[:-1]) + " ", None), (words[-1], "background")]
    if words[-1] in ("field", "street", "sky"):  # two-word scenes: "snow field", "city street", "night sky"
        lead = words[:-2]
        pieces[1:] = [(" ".join(lead) + " ", None), (" ".join(words[-2:]), "background")]
    for lead, group in ((", holding ", [o for o in objects if o.kind in HELD_OBJECTS]),
                        (", with ", [o for o in objects if o.kind not in HELD_OBJECTS])):
        for k, o in enumerate(group):
            pieces.append((lead if k == 0 else (", " if k < len(group) - 1 else " and "), None))
            pieces += [("a ", None), (f"{o.colour} {o.kind}", o.kind)]
    return pieces


def context_phrase(motion: str, scene: str, objects=()) -> str:
    """'waving on a beach, holding a yellow balloon, with a brown dog'."""
    return "".join(text for text, _ in _context_pieces(motion, scene, objects))


def full_caption(identity: Identity, motion: str, scene: str, objects=()) -> str:
    """Appearance + motion + scene + objects, for base-model training."""
    return f"{appearance_phrase(identity)}, {context_phrase(motion, scene, objects)}"


def full_caption_spans(identity: Identity, motion: str, scene: str, objects=()) -> tuple[tuple[int, int, str], ...]:
    """Where `full_caption` names a region: (start, end, region) character spans, region a part name of
    `aa_world.parts` ('background' for the scene words, an object kind, 'person' for the class word)."""
    spans, at = [], 0
    for text, region in [*_appearance_pieces(identity), (", ", None), *_context_pieces(motion, scene, objects)]:
        if region is not None:
            spans.append((at, at + len(text), region))
        at += len(text)
    return tuple(spans)


def class_caption_of(caption: str) -> str | None:
    """The class caption a `full_caption` implies: its class word, motion, scene and objects without the appearance
    ('a woman with long brown hair, …, running in a desert' → 'a woman running in a desert'); None for any other text
    (a user's or a captioner's caption)."""
    words = caption.split(" ", 3)
    class_word = next((w.rstrip(",") for w in words[1:3] if w.rstrip(",") in CLASS_WORDS), None) \
        if words[0] == "a" else None
    starts = [k for k in (caption.find(f", {verb} ") for verb in MOTION_VERBS.values()) if k >= 0]
    if class_word is None or not starts:
        return None
    return f"a {class_word} {caption[min(starts) + 2:]}"


def identity_caption(token: str, class_word: str, motion: str, scene: str, objects=()) -> str:
    """'a <me> man waving on a beach, …': the identifier token (inserted verbatim) replaces the appearance."""
    if not token or any(ch.isspace() for ch in token):
        raise ValueError(f"token={token!r}: use one non-empty word such as '<me>'")
    return f"a {token} {class_word} {context_phrase(motion, scene, objects)}"


def class_caption(class_word: str, motion: str, scene: str, objects=()) -> str:
    """'a man waving on a beach, …': the class prior caption (no identifier, no appearance)."""
    return f"a {class_word} {context_phrase(motion, scene, objects)}"
