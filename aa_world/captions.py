"""Captions of the synthetic world, in one fixed phrase order so a small text model can learn them.

Full caption (base training), e.g.
  "a man with short black hair, in a red and white striped shirt, blue trousers and black shoes,
   with a green hat, a yellow circle logo and a grey backpack, waving on a beach, holding a yellow balloon"
Identity caption (identity training: the identifier replaces the appearance), e.g.
  "a <me> man waving on a beach, holding a yellow balloon"
"""
from __future__ import annotations

from .identity import NONE, Identity
from .motions import MOTIONS
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


def appearance_phrase(identity: Identity) -> str:
    """'a man with short black hair, in a red shirt, blue trousers and black shoes, with a green hat'."""
    i = identity
    if i.hair_style == "bald":
        who = f"a bald {i.class_word}"
    elif i.hair_style == "ponytail":
        who = f"a {i.class_word} with a {i.hair_colour} ponytail"
    else:
        who = f"a {i.class_word} with {i.hair_style} {i.hair_colour} hair"
    shirt = {"solid": f"a {i.shirt_colour} shirt",
             "stripes": f"a {i.shirt_colour} and {i.shirt_colour2} striped shirt",
             "two-tone": f"a {i.shirt_colour} and {i.shirt_colour2} two-tone shirt"}[i.shirt_pattern]
    lower = f"{i.lower_colour} trousers" if i.lower_garment == "trousers" else f"a {i.lower_colour} skirt"
    text = f"{who}, in {shirt}, {lower} and {i.shoe_colour} shoes"
    extras = []
    if i.hat != NONE:
        extras.append(f"a {i.hat} hat")
    if i.logo_shape != NONE:
        extras.append(f"a {i.logo_colour} {i.logo_shape} logo")
    if i.backpack != NONE:
        extras.append(f"a {i.backpack} backpack")
    return text + (", with " + _and(extras) if extras else "")


def context_phrase(motion: str, scene: str, objects=()) -> str:
    """'waving on a beach, holding a yellow balloon, with a brown dog'."""
    if motion not in MOTION_VERBS:
        raise ValueError(f"motion={motion!r}: use one of {', '.join(MOTIONS)}")
    if scene not in SCENE_PHRASES:
        raise ValueError(f"scene={scene!r}: use one of {', '.join(SCENES)}")
    objects: tuple[ObjectSpec, ...] = check_objects(objects)
    text = f"{MOTION_VERBS[motion]} {SCENE_PHRASES[scene]}"
    held = [f"a {o.colour} {o.kind}" for o in objects if o.kind in HELD_OBJECTS]
    ground = [f"a {o.colour} {o.kind}" for o in objects if o.kind not in HELD_OBJECTS]
    if held:
        text += ", holding " + _and(held)
    if ground:
        text += ", with " + _and(ground)
    return text


def full_caption(identity: Identity, motion: str, scene: str, objects=()) -> str:
    """Appearance + motion + scene + objects, for base-model training."""
    return f"{appearance_phrase(identity)}, {context_phrase(motion, scene, objects)}"


def identity_caption(token: str, class_word: str, motion: str, scene: str, objects=()) -> str:
    """'a <me> man waving on a beach, …': the identifier token (inserted verbatim) replaces the appearance."""
    if not token or any(ch.isspace() for ch in token):
        raise ValueError(f"token={token!r}: use one non-empty word such as '<me>'")
    return f"a {token} {class_word} {context_phrase(motion, scene, objects)}"


def class_caption(class_word: str, motion: str, scene: str, objects=()) -> str:
    """'a man waving on a beach, …': the class prior caption (no identifier, no appearance)."""
    return f"a {class_word} {context_phrase(motion, scene, objects)}"
