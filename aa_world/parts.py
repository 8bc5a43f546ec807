"""Part labels of a rendered frame: which scene element each pixel shows (the renderer's segmentation truth).

Label 0 is the scene's background; 1–8 are the figure's parts, 9–12 the objects. Captions name their phrases'
regions by these names (`captions.full_caption_spans`), which is what a grounding loss needs to tie each word's
cross-attention to the pixels it describes (TokenCompose, Wang et al., CVPR 2024).
"""
from __future__ import annotations

from .objects import OBJECTS

PARTS: tuple[str, ...] = ("background", "hair", "skin", "shirt", "lower", "shoes", "hat", "logo", "backpack",
                          *OBJECTS)
PERSON_PARTS: tuple[str, ...] = PARTS[1:9]


def part_id(name: str) -> int:
    """The label of a part name (ValueError names the known parts)."""
    try:
        return PARTS.index(name)
    except ValueError:
        raise ValueError(f"part={name!r}: use one of {', '.join(PARTS)}") from None


def region_bits(names) -> int:
    """A set of part names as a bit mask over labels (bit k = label k); 'person' stands for every figure part."""
    bits = 0
    for name in names:
        for part in (PERSON_PARTS if name == "person" else (name,)):
            bits |= 1 << part_id(part)
    return bits


def _check_object_labels() -> None:
    from .objects import OBJECT_LABELS

    if any(PARTS[label] != kind for kind, label in OBJECT_LABELS.items()):
        raise RuntimeError("aa_world.parts: PARTS out of sync with objects.OBJECT_LABELS")


_check_object_labels()
