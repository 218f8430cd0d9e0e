"""Drawing a scene: the RGB image and its panoptic ground truth, with PIL and numpy only.

The scene is drawn at `style.supersample` times the final size (1 = aliased edges, 2-4 = smoother)
and box-averaged down; then the whole image gets `style.noise` of uniform per-pixel noise from a PCG64
stream seeded by the scene's seed. Rendering is a pure function of the scene: the same scene gives
the same bytes on the same Pillow/FreeType build.

Panoptic ground truth: the same geometry drawn as segment ids on the supersampled canvas, and each
final pixel takes the id at the centre of its block, so a mask covers the pixels whose centre the
shape covers. Segment ids: 1 wall, 2 floor, 3 the sign (when there is one), then one per object in
`scene.objects` order. A segment only appears when it has pixels.

Categories: the 12 colour-shape things ("red circle" .. "yellow triangle", shape-major) and the 3
stuff classes `wall`, `floor`, `sign`. Colour is in the label, not left to the backbone: counting
"red circles" and describing the image are then read off the panoptic expert's segments (its crayon
maps and MoAI's segmentation text name them), which is the expert's value the world is meant to
measure; telling four saturated colours apart is no extra work for a segmenter that already sees
the pixels, and binding colour to instances is the part tiny backbones learn worst.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .scene import COLOURS, DEFAULT_WORLD, SHAPES, Box, Scene, WorldConfig, WorldError, load_font, sample_scene

THING_CATEGORIES: tuple[str, ...] = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)
STUFF_CATEGORIES: tuple[str, ...] = ("wall", "floor", "sign")
PANOPTIC_CATEGORIES: tuple[str, ...] = THING_CATEGORIES + STUFF_CATEGORIES  # label id = index
WALL_ID, FLOOR_ID, SIGN_ID = 1, 2, 3
FIRST_OBJECT_ID = 4


@dataclass(frozen=True)
class PanopticSegment:
    id: int
    category: str  # one of PANOPTIC_CATEGORIES
    is_thing: bool
    ordinal: int  # 1-based within its category, in segment-id order (stuff: 1)

    @property
    def label_id(self) -> int:
        return PANOPTIC_CATEGORIES.index(self.category)


@dataclass(frozen=True)
class PanopticTruth:
    segmentation: np.ndarray  # (H, W) int32 segment ids, every pixel in one segment
    segments: tuple[PanopticSegment, ...]


@dataclass(frozen=True)
class WorldImage:
    scene: Scene
    image: np.ndarray  # (H, W, 3) uint8
    panoptic: PanopticTruth

    def png_bytes(self) -> bytes:
        return encode_png(self.image)


def generate(seed: int, *, config: WorldConfig = DEFAULT_WORLD) -> WorldImage:
    """Sample the scene of `seed` and render it."""
    return render_scene(sample_scene(seed, config=config))


def render_scene(scene: Scene) -> WorldImage:
    factor = scene.style.supersample
    canvas = Image.new("RGB", (scene.width * factor, scene.height * factor), scene.style.wall_rgb)
    ids = Image.new("L", canvas.size, WALL_ID)
    draw_background(ImageDraw.Draw(canvas), ImageDraw.Draw(ids), scene)
    if scene.sign:
        draw_sign(ImageDraw.Draw(canvas), ImageDraw.Draw(ids), scene)
    draw_objects(ImageDraw.Draw(canvas), ImageDraw.Draw(ids), scene)
    image = np.asarray(canvas.reduce(factor) if factor > 1 else canvas)
    image = add_noise(image, scene)
    segmentation = np.asarray(ids, np.int32)[factor // 2::factor, factor // 2::factor]
    return WorldImage(scene, image, PanopticTruth(np.ascontiguousarray(segmentation),
                                                  list_segments(scene, segmentation)))


def scaled(box: Box, factor: int) -> tuple[int, int, int, int]:
    """The box on the supersampled canvas, as PIL's inclusive corner coordinates."""
    x0, y0, x1, y1 = box
    return x0 * factor, y0 * factor, x1 * factor - 1, y1 * factor - 1


def draw_background(canvas: ImageDraw.ImageDraw, ids: ImageDraw.ImageDraw, scene: Scene) -> None:
    floor = scaled((0, scene.horizon, scene.width, scene.height), scene.style.supersample)
    canvas.rectangle(floor, fill=scene.style.floor_rgb)
    ids.rectangle(floor, fill=FLOOR_ID)


def draw_sign(canvas: ImageDraw.ImageDraw, ids: ImageDraw.ImageDraw, scene: Scene) -> None:
    """The light rectangle with a thin dark border, the word centred on its ink box."""
    sign, factor = scene.sign, scene.style.supersample
    box = scaled(sign.box, factor)
    border = max(1, round(sign.font_size * factor / 16))
    canvas.rectangle(box, fill=sign.fill_rgb, outline=tuple(c // 2 for c in sign.fill_rgb), width=border)
    ids.rectangle(box, fill=SIGN_ID)
    font = load_font(sign.font, sign.font_size * factor)
    ink = font.getbbox(sign.word)
    centre_x, centre_y = (box[0] + box[2] + 1) / 2, (box[1] + box[3] + 1) / 2
    canvas.text((centre_x - (ink[0] + ink[2]) / 2, centre_y - (ink[1] + ink[3]) / 2), sign.word, font=font,
                fill=sign.text_rgb)


def draw_objects(canvas: ImageDraw.ImageDraw, ids: ImageDraw.ImageDraw, scene: Scene) -> None:
    for k, obj in enumerate(scene.objects):
        box = scaled(obj.box, scene.style.supersample)
        for draw, fill in ((canvas, obj.rgb), (ids, FIRST_OBJECT_ID + k)):
            draw_shape(draw, obj.shape, box, fill)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)
    else:
        raise WorldError(f"expected a shape of {SHAPES}; found {shape!r}")


def add_noise(image: np.ndarray, scene: Scene) -> np.ndarray:
    """Uniform noise in -noise..noise per pixel and channel, from PCG64's raw stream (stable across numpy)."""
    amount = scene.style.noise
    if amount == 0:
        return image
    bits = np.random.PCG64(scene.seed or 0).random_raw((image.size + 7) // 8).astype("<u8")
    noise = bits.view(np.uint8)[: image.size].reshape(image.shape).astype(np.int16) % (2 * amount + 1) - amount
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def list_segments(scene: Scene, segmentation: np.ndarray) -> tuple[PanopticSegment, ...]:
    present = set(np.unique(segmentation).tolist())
    segments = [PanopticSegment(i, name, False, 1) for i, name in
                ((WALL_ID, "wall"), (FLOOR_ID, "floor"), (SIGN_ID, "sign")) if i in present]
    seen: dict[str, int] = {}
    for k, obj in enumerate(scene.objects):
        if FIRST_OBJECT_ID + k in present:
            seen[obj.category] = seen.get(obj.category, 0) + 1
            segments.append(PanopticSegment(FIRST_OBJECT_ID + k, obj.category, True, seen[obj.category]))
    return tuple(segments)


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
