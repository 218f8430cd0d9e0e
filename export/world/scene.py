"""The tiny world's scenes: what one image holds, sampled from a seed (pure data; drawing is in `render`).

A scene is a camera-shaped image (4:3 at most, landscape three times in four) of a wall above a floor (the
horizon at 35-65 % of the height), 1-8 objects and, on half the images, a sign. Objects are 10-22 % of the
shorter side (at least one vision patch once the image is resized for the models), signs' letters 10-15 %.
Objects are `circle`, `square` or `triangle` in `red`, `green`, `blue` or `yellow`: 1-4 kinds (colour-shape
pairs), 1-4 objects of a kind, at most 8 in all. Every object fits in a square
box of side s (circle: inscribed; square: the box; triangle: base on the box's bottom, apex at its top
centre); no two boxes overlap or touch, and none touches the sign, so every object is whole and countable.
`Scene.objects` is in canonical order: shape (circle, square, triangle), colour (red, green, blue,
yellow), then left to right; a kind's objects are numbered in that order.

Seeds: `TRAINING_SEEDS` (0 .. 999_999) and `HELD_OUT_SEEDS` (1_000_000 .. 2**31 - 1) never overlap.
Training images draw sign words from `TRAINING_WORDS` only; held-out images draw from
`HELD_OUT_WORDS` (never seen in training) half the time and from `TRAINING_WORDS` otherwise, so an
evaluation measures both reading and copying unseen words. The two word lists are fixed, disjoint,
upper-case A-Z words of 3-8 letters.

Determinism: every draw is built on `random.Random(seed).random()`, the one stream Python promises to keep
across versions, so a seed gives the same scene wherever the same sign fonts are found (a sign's box comes
from the font's metrics; matplotlib's bundled DejaVu is looked up first, then Debian's). The rendered bytes
also depend on Pillow's FreeType text rasteriser, see `render`.
"""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

from PIL import ImageFont

from moai_edge.engines.errors import MoaiEdgeError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
BASE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 215), "yellow": (235, 210, 40)}

HELD_OUT_SEED_START = 1_000_000
TRAINING_SEEDS = range(HELD_OUT_SEED_START)
HELD_OUT_SEEDS = range(HELD_OUT_SEED_START, 2**31)

# 24 words, no two of the same letters: MoAI's compressor reads the OCR text as a bag of tokens (one capital per
# token), so a word is known by its letters; unseen words cannot be copied through it (measured, not a target)
TRAINING_WORDS: tuple[str, ...] = (
    "STOP", "EXIT", "OPEN", "PUSH", "PULL", "HELLO", "WATER", "SALE", "PARK", "SLOW", "TAXI", "HOTEL",
    "BANK", "CAFE", "ROBOT", "LASER", "RIVER", "TOWER", "GATE", "LAMP", "CLOCK", "MUSIC", "PIZZA", "TRAIN",
)
HELD_OUT_WORDS: tuple[str, ...] = (
    "ZEBRA", "VELVET", "QUARTZ", "JUNGLE", "WIZARD", "KAYAK", "FJORD", "MAGNET", "PUZZLE", "OXYGEN",
    "BANJO", "TULIP", "GLACIER", "VOLCANO", "JAZZ", "SPHINX", "WALRUS", "COMET", "DRAGON", "YOGURT",
)

FONT_FILES: tuple[str, ...] = (  # all bundled with matplotlib (and in Debian's fonts-dejavu-core)
    "DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf")
SYSTEM_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, x1 and y1 exclusive
RGB = tuple[int, int, int]
T = TypeVar("T")


class WorldError(MoaiEdgeError):
    """The world generator got a seed, font or scene it cannot use."""


class SupportsRandom(Protocol):
    def random(self) -> float: ...


class Draws:
    """Uniform draws built only on `rng.random()` (a `random.Random` or a numpy Generator)."""

    def __init__(self, rng: SupportsRandom):
        self.rng = rng

    @classmethod
    def from_seed(cls, seed: int) -> Draws:
        return cls(random.Random(seed))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.rng.random()

    def integer(self, lo: int, hi: int) -> int:
        """lo .. hi inclusive."""
        return lo + min(int(self.rng.random() * (hi - lo + 1)), hi - lo)

    def choice(self, items: Sequence[T]) -> T:
        return items[self.integer(0, len(items) - 1)]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """The sampler's ranges. Sizes are in pixels of the final image."""

    min_short_side: int = 240
    max_short_side: int = 480
    max_aspect: float = 4 / 3  # long side / short side, as cameras
    landscape_probability: float = 0.75
    horizon_range: tuple[float, float] = (0.35, 0.65)
    max_kinds: int = 4
    max_per_kind: int = 4
    max_objects: int = 8
    min_object_side: int = 20
    object_side_range: tuple[float, float] = (0.10, 0.22)  # of the shorter image side
    sign_probability: float = 0.5
    held_out_word_probability: float = 0.5
    min_font_size: int = 16
    font_size_range: tuple[float, float] = (0.10, 0.15)  # of the shorter image side
    supersample_range: tuple[int, int] = (1, 4)  # 1 = aliased edges
    colour_jitter: int = 15  # +- per channel
    max_noise: int = 4  # +- per pixel and channel, drawn per image in 0..max_noise
    margin: int = 4  # free pixels between boxes and from the image border


DEFAULT_WORLD = WorldConfig()


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    box: Box
    rgb: RGB  # the colour word's base RGB with this object's jitter

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Sign:
    word: str
    box: Box
    font: str  # one of FONT_FILES
    font_size: int
    fill_rgb: RGB
    text_rgb: RGB


@dataclass(frozen=True)
class Style:
    """How the scene is drawn: renderer variety that does not change what the image shows."""

    supersample: int
    noise: int
    wall_rgb: RGB
    floor_rgb: RGB


@dataclass(frozen=True)
class Scene:
    seed: int | None  # None for hand-built scenes
    width: int
    height: int
    horizon: int  # first floor row
    objects: tuple[WorldObject, ...]
    sign: Sign | None = None
    style: Style = field(default_factory=lambda: Style(2, 0, (180, 180, 180), (100, 90, 80)))

    @property
    def sign_word(self) -> str | None:
        return self.sign.word if self.sign else None

    def counts(self) -> Counter[tuple[str, str]]:
        """(colour, shape) -> number of objects."""
        return Counter((o.colour, o.shape) for o in self.objects)

    def shape_count(self, shape: str) -> int:
        return sum(o.shape == shape for o in self.objects)


def is_held_out_seed(seed: int) -> bool:
    check_seed(seed)
    return seed in HELD_OUT_SEEDS


def check_seed(seed: int) -> None:
    if not isinstance(seed, int) or not (0 <= seed < HELD_OUT_SEEDS.stop):
        raise WorldError(f"expected a world seed, an int in 0..{HELD_OUT_SEEDS.stop - 1}; found {seed!r}")


def sample_scene(seed: int, *, config: WorldConfig = DEFAULT_WORLD) -> Scene:
    """The scene of `seed`: the same seed (and config) always gives the same scene."""
    check_seed(seed)
    draws = Draws.from_seed(seed)
    width, height = sample_size(draws, config)
    horizon = round(height * draws.uniform(*config.horizon_range))
    style = sample_style(draws, config)
    sign = None
    if draws.chance(config.sign_probability):
        sign = sample_sign(draws, width, height, sample_word(draws, seed, config), config)
    kinds = sample_kinds(draws, config)
    objects = place_objects(draws, kinds, width, height, [sign.box] if sign else [], config)
    return Scene(seed, width, height, horizon, canonical_order(objects), sign, style)


def sample_size(draws: Draws, config: WorldConfig) -> tuple[int, int]:
    """(width, height): the shorter side, then the longer one at an aspect of up to `max_aspect`."""
    short = draws.integer(config.min_short_side, config.max_short_side)
    long = round(short * draws.uniform(1.0, config.max_aspect))
    return (long, short) if draws.chance(config.landscape_probability) else (short, long)


def sample_style(draws: Draws, config: WorldConfig) -> Style:
    wall = draws.integer(150, 215)
    floor = draws.integer(70, 130)
    return Style(
        supersample=draws.integer(*config.supersample_range),
        noise=draws.integer(0, config.max_noise),
        wall_rgb=jitter_rgb(draws, (wall, wall, wall), 12),
        floor_rgb=jitter_rgb(draws, (floor + 15, floor + 5, floor - 10), 10))


def jitter_rgb(draws: Draws, rgb: RGB, amount: int) -> RGB:
    r, g, b = (min(255, max(0, c + draws.integer(-amount, amount))) for c in rgb)
    return (r, g, b)


def sample_word(draws: Draws, seed: int, config: WorldConfig) -> str:
    if is_held_out_seed(seed) and draws.chance(config.held_out_word_probability):
        return draws.choice(HELD_OUT_WORDS)
    return draws.choice(TRAINING_WORDS)


def sample_sign(draws: Draws, width: int, height: int, word: str, config: WorldConfig) -> Sign:
    """A light rectangle around `word`, fully inside the image; its size comes from the font's metrics."""
    font = draws.choice(FONT_FILES)
    lo, hi = (max(config.min_font_size, round(f * min(width, height))) for f in config.font_size_range)
    size = draws.integer(lo, hi)
    box_w, box_h = sign_box_size(word, font, size)
    while box_w > width - 2 * config.margin and size > config.min_font_size:
        size -= 1
        box_w, box_h = sign_box_size(word, font, size)
    x0 = draws.integer(config.margin, max(config.margin, width - box_w - config.margin))
    y0 = draws.integer(config.margin, height - box_h - config.margin)
    light = draws.integer(232, 255)
    dark = draws.integer(0, 60)
    return Sign(word, (x0, y0, x0 + box_w, y0 + box_h), font, size,
                fill_rgb=jitter_rgb(draws, (light, light, light - 8), 6), text_rgb=(dark, dark, dark))


def font_dirs() -> list[Path]:
    """Where sign fonts are looked for: matplotlib's bundled fonts first (CI installs it), then Debian's."""
    spec = importlib.util.find_spec("matplotlib")
    dirs = [Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"] if spec and spec.origin else []
    return dirs + [SYSTEM_FONT_DIR]


@cache
def font_path(name: str) -> Path:
    for folder in font_dirs():
        if (folder / name).is_file():
            return folder / name
    raise WorldError(f"the sign font {name} was not found in {', '.join(map(str, font_dirs()))}: "
                     "pip install matplotlib (it bundles DejaVu; moai-edge[test] has it) "
                     "or apt install fonts-dejavu-core")


@lru_cache(maxsize=512)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(name)), size)


def sign_box_size(word: str, font: str, size: int) -> tuple[int, int]:
    """(width, height) of the sign around `word`: the text's ink box plus a padding of ~0.4 em."""
    x0, y0, x1, y1 = load_font(font, size).getbbox(word)
    return (x1 - x0) + 2 * round(0.45 * size), (y1 - y0) + 2 * round(0.35 * size)


def sample_kinds(draws: Draws, config: WorldConfig) -> list[tuple[str, str, int]]:
    """Distinct (colour, shape) kinds with their counts, at most `max_objects` objects in all."""
    while True:
        n_kinds = draws.integer(1, config.max_kinds)
        pairs = [(c, s) for s in SHAPES for c in COLOURS]
        kinds = []
        for _ in range(n_kinds):
            colour, shape = pairs.pop(draws.integer(0, len(pairs) - 1))
            kinds.append((colour, shape, draws.integer(1, config.max_per_kind)))
        if sum(k[2] for k in kinds) <= config.max_objects:
            return kinds


def place_objects(draws: Draws, kinds: list[tuple[str, str, int]], width: int, height: int,
                  taken: list[Box], config: WorldConfig) -> list[WorldObject]:
    """Each object at a random free spot; a crowded image tries ever smaller sizes down to the minimum."""
    lo = max(config.min_object_side, round(config.object_side_range[0] * min(width, height)))
    hi = max(lo, round(config.object_side_range[1] * min(width, height)))
    taken = list(taken)
    objects = []
    for colour, shape, count in kinds:
        for _ in range(count):
            box = free_box(draws, lo, hi, width, height, taken, config.margin)
            taken.append(box)
            objects.append(WorldObject(shape, colour, box, jitter_rgb(draws, BASE_RGB[colour], config.colour_jitter)))
    return objects


def free_box(draws: Draws, lo: int, hi: int, width: int, height: int, taken: list[Box], margin: int) -> Box:
    for attempt in range(400):
        top = hi - (hi - lo) * min(attempt, 200) // 200
        side = draws.integer(lo, top)
        x0 = draws.integer(margin, width - side - margin)
        y0 = draws.integer(margin, height - side - margin)
        box = (x0, y0, x0 + side, y0 + side)
        if not any(boxes_near(box, other, margin) for other in taken):
            return box
    raise WorldError(f"no free {lo}px spot left in a {width}x{height} image with {len(taken)} boxes")


def boxes_near(a: Box, b: Box, gap: int) -> bool:
    """Whether a and b overlap or come closer than `gap` pixels."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def canonical_order(objects: list[WorldObject]) -> tuple[WorldObject, ...]:
    return tuple(sorted(objects, key=lambda o: (SHAPES.index(o.shape), COLOURS.index(o.colour), o.box[0], o.box[1])))
