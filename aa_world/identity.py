"""Identities of the synthetic world: body proportions, clothing and the attribute vocabulary.

An identity is a pure function of its seed: `sample_identity(seed)` draws everything from
`numpy.random.default_rng(seed)`. Training identities come from `TRAIN_IDENTITY_SEEDS`
(0 … 999,999) and evaluation identities from `EVAL_IDENTITY_SEEDS` (1,000,000 … 1,009,999); the
two ranges are disjoint, so an evaluation identity is never seen during base training.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from aa_runtime.skeleton import Body  # proportions live with the kinematics that use them

TRAIN_IDENTITY_SEEDS = range(0, 1_000_000)
EVAL_IDENTITY_SEEDS = range(1_000_000, 1_010_000)

# Named palette (plain English names, so captions and the judge can use them), RGB 0–255.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 40),
    "orange": (240, 135, 25),
    "yellow": (245, 215, 35),
    "green": (40, 155, 60),
    "blue": (35, 80, 205),
    "purple": (125, 50, 170),
    "pink": (245, 135, 185),
    "brown": (115, 70, 35),
    "white": (242, 242, 242),
    "grey": (128, 128, 132),
    "black": (28, 28, 30),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

SKIN_RGB: dict[str, tuple[int, int, int]] = {
    "pale": (250, 222, 200),
    "light": (235, 195, 160),
    "medium": (205, 155, 115),
    "tan": (165, 115, 75),
    "dark": (105, 70, 45),
}
HAIR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (22, 18, 16),
    "brown": (95, 55, 25),
    "blonde": (225, 190, 105),
    "red": (170, 60, 25),
    "grey": (170, 170, 170),
}

CLASS_WORDS = ("man", "woman")
SKIN_TONES: tuple[str, ...] = tuple(SKIN_RGB)
HAIR_COLOURS: tuple[str, ...] = tuple(HAIR_RGB)
HAIR_STYLES = ("bald", "short", "long", "ponytail")
SHIRT_PATTERNS = ("solid", "stripes", "two-tone")
LOWER_GARMENTS = ("trousers", "skirt")
SHOE_COLOURS = ("black", "white", "brown", "grey", "red", "blue")
LOGO_SHAPES = ("circle", "square", "triangle")
NONE = "none"

# One classifier head per attribute; "none" is index 0 where the feature is optional.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "class_word": CLASS_WORDS,
    "skin": SKIN_TONES,
    "hair_style": HAIR_STYLES,
    "hair_colour": (NONE,) + HAIR_COLOURS,
    "shirt_colour": COLOURS,
    "shirt_pattern": SHIRT_PATTERNS,
    "shirt_colour2": (NONE,) + COLOURS,
    "lower_garment": LOWER_GARMENTS,
    "lower_colour": COLOURS,
    "shoe_colour": SHOE_COLOURS,
    "hat": (NONE,) + COLOURS,
    "logo_shape": (NONE,) + LOGO_SHAPES,
    "logo_colour": (NONE,) + COLOURS,
    "backpack": (NONE,) + COLOURS,
}
ATTRIBUTE_HEAD_SIZES: dict[str, int] = {name: len(values) for name, values in ATTRIBUTE_VALUES.items()}
# Attributes that a single frame shows only from one side (count them only where visible).
VIEW_DEPENDENT_ATTRIBUTES: dict[str, str] = {"logo_shape": "front", "logo_colour": "front", "backpack": "back"}




@dataclass(frozen=True)
class Identity:
    """One person of the synthetic world; every field is a name from the vocabulary above."""

    seed: int
    class_word: str
    body: Body
    skin: str
    hair_style: str
    hair_colour: str  # "none" when bald
    shirt_colour: str
    shirt_pattern: str
    shirt_colour2: str  # "none" for solid shirts
    lower_garment: str
    lower_colour: str
    shoe_colour: str
    hat: str  # colour or "none"
    logo_shape: str  # shape or "none"; seen only from the front
    logo_colour: str
    backpack: str  # colour or "none"; seen only from the back

    def __post_init__(self):
        for name, values in ATTRIBUTE_VALUES.items():
            if getattr(self, name) not in values:
                raise ValueError(f"Identity.{name}={getattr(self, name)!r}: use one of {', '.join(values)}")
        if (self.shirt_pattern == "solid") != (self.shirt_colour2 == NONE):
            raise ValueError(f"Identity.shirt_colour2={self.shirt_colour2!r} with pattern {self.shirt_pattern!r}: "
                             "solid shirts have no second colour, patterned shirts need one")
        if (self.logo_shape == NONE) != (self.logo_colour == NONE):
            raise ValueError(f"Identity.logo_shape={self.logo_shape!r}, logo_colour={self.logo_colour!r}: "
                             "give both or neither")
        if (self.hair_style == "bald") != (self.hair_colour == NONE):
            raise ValueError(f"Identity.hair_colour={self.hair_colour!r} with style {self.hair_style!r}: "
                             "bald means hair colour 'none'")

    @property
    def attributes(self) -> dict[str, str]:
        """Attribute name → value name, in `ATTRIBUTE_VALUES` order."""
        return {name: getattr(self, name) for name in ATTRIBUTE_VALUES}


def check_seed(seed: int, what: str = "seed") -> int:
    """Validate a non-negative integer seed (numpy's default_rng accepts exactly these)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what}={seed!r}: use a non-negative integer")
    return int(seed)


def identity_split(seed: int) -> str:
    """'train' or 'eval' for seeds in the two documented ranges; ValueError otherwise."""
    seed = check_seed(seed, "identity seed")
    if seed in TRAIN_IDENTITY_SEEDS:
        return "train"
    if seed in EVAL_IDENTITY_SEEDS:
        return "eval"
    raise ValueError(f"identity seed={seed}: outside TRAIN_IDENTITY_SEEDS {TRAIN_IDENTITY_SEEDS} "
                     f"and EVAL_IDENTITY_SEEDS {EVAL_IDENTITY_SEEDS}")


def _pick(rng: np.random.Generator, values, exclude=()) -> str:
    """One name drawn uniformly from `values` minus `exclude`."""
    pool = [v for v in values if v not in exclude]
    return pool[int(rng.integers(len(pool)))]


def sample_body(rng: np.random.Generator, class_word: str) -> Body:
    """Per-identity proportions around the default, with mild man/woman differences."""
    man = class_word == "man"
    u = [float(v) for v in rng.uniform(-1.0, 1.0, size=9)]
    return Body(
        height=0.68 + 0.035 * u[0] + (0.01 if man else -0.01),
        head=0.068 * (1 + 0.08 * u[1]),
        torso=0.29 * (1 + 0.05 * u[2]),
        shoulder=(0.105 if man else 0.088) * (1 + 0.08 * u[3]),
        hip=(0.058 if man else 0.07) * (1 + 0.08 * u[4]),
        upper_arm=0.165 * (1 + 0.06 * u[5]),
        forearm=0.15 * (1 + 0.06 * u[5]),
        thigh=0.245 * (1 + 0.05 * u[6]),
        shin=0.235 * (1 + 0.05 * u[6]),
        depth=0.06 * (1 + 0.1 * u[7]),
        limb=(1.06 if man else 0.94) * (1 + 0.08 * u[8]),
    )


def sample_identity(seed: int) -> Identity:
    """The identity of `seed`, drawn deterministically from `numpy.random.default_rng(seed)`."""
    rng = np.random.default_rng(check_seed(seed, "identity seed"))
    class_word = CLASS_WORDS[int(rng.integers(2))]
    man = class_word == "man"
    body = sample_body(rng, class_word)
    skin = _pick(rng, SKIN_TONES)
    styles_p = [0.15, 0.6, 0.13, 0.12] if man else [0.02, 0.28, 0.45, 0.25]
    hair_style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=styles_p))]
    hair_colour = NONE if hair_style == "bald" else _pick(rng, HAIR_COLOURS)
    shirt_colour = _pick(rng, COLOURS)
    shirt_pattern = SHIRT_PATTERNS[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    shirt_colour2 = NONE if shirt_pattern == "solid" else _pick(rng, COLOURS, exclude=(shirt_colour,))
    lower_garment = "skirt" if rng.random() < (0.06 if man else 0.5) else "trousers"
    lower_colour = _pick(rng, COLOURS, exclude=(shirt_colour,))
    shoe_colour = _pick(rng, SHOE_COLOURS)
    hat = _pick(rng, COLOURS, exclude=(hair_colour,)) if rng.random() < 0.35 else NONE
    if rng.random() < 0.5:
        logo_shape = _pick(rng, LOGO_SHAPES)
        logo_colour = _pick(rng, COLOURS, exclude=(shirt_colour, shirt_colour2))
    else:
        logo_shape = logo_colour = NONE
    backpack = _pick(rng, COLOURS, exclude=(shirt_colour, shirt_colour2)) if rng.random() < 0.5 else NONE
    return Identity(seed=int(seed), class_word=class_word, body=body, skin=skin, hair_style=hair_style,
                    hair_colour=hair_colour, shirt_colour=shirt_colour, shirt_pattern=shirt_pattern,
                    shirt_colour2=shirt_colour2, lower_garment=lower_garment, lower_colour=lower_colour,
                    shoe_colour=shoe_colour, hat=hat, logo_shape=logo_shape, logo_colour=logo_colour,
                    backpack=backpack)


def identity_attribute_labels(identity: Identity) -> dict[str, int]:
    """Attribute name → class index into `ATTRIBUTE_VALUES[name]` (one classifier head each)."""
    return {name: ATTRIBUTE_VALUES[name].index(value) for name, value in identity.attributes.items()}
