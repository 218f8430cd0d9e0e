"""A corpus of bad and odd image files, as a user's folder of photos may hold them."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from moai_edge.runtime.samples import sample_image


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(side: int = 30000) -> bytes:
    """A PNG header declaring side x side pixels (over Pillow's bomb limit) with a tiny compressed body."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    body = zlib.compress(b"\x00" * (1 + side // 8) * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.fromarray(sample_image(size=64, seed=s)).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def odd_but_valid() -> dict[str, bytes]:
    """Files that must be captioned."""
    rgb = Image.fromarray(sample_image(size=96, seed=1))
    out = {
        "one_pixel.png": png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))),
        "wide_3000x20.png": png_bytes(Image.new("RGB", (3000, 20), (10, 200, 10))),
        "sixteen_bit.png": png_bytes(Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64))),
        "grey_alpha.png": png_bytes(rgb.convert("LA")),
        "palette_transparent.png": png_bytes(rgb.convert("P")),
        "animated.gif": animated_gif(),
        "png_named.jpg": png_bytes(rgb),
    }
    cmyk = io.BytesIO()
    rgb.convert("CMYK").save(cmyk, format="JPEG")
    out["cmyk.jpg"] = cmyk.getvalue()
    return out


def bad_files() -> dict[str, bytes]:
    """Files that must become error records."""
    good = png_bytes(Image.fromarray(sample_image(size=96, seed=2)))
    jpeg = io.BytesIO()
    Image.fromarray(sample_image(size=96, seed=3)).save(jpeg, format="JPEG")
    return {
        "empty.png": b"",
        "random.jpg": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.png": b"this is not an image\n",
        "truncated.png": good[: len(good) // 3],
        "truncated_header.jpg": jpeg.getvalue()[:40],
        "bomb.png": decompression_bomb(),
        "garbage.avif": b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64,
        "garbage.heic": b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64,
    }


def write_corpus(root: Path) -> dict[str, set[str]]:
    """Writes the corpus under `root`; returns the ids expected as captions, as errors, and the skipped count."""
    root.mkdir(parents=True, exist_ok=True)
    valid, bad = odd_but_valid(), bad_files()
    for name, data in {**valid, **bad}.items():
        (root / name).write_bytes(data)
    (root / "dir.png").mkdir()  # a folder with an image extension: not a file, not an input
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "notes.txt").write_text("not an image")
    (root / "README").write_text("no extension")
    (root / "linked_folder").symlink_to(root, target_is_directory=True)  # a loop if it were followed
    non_utf8 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: not valid UTF-8
    (root / non_utf8).write_bytes(valid["one_pixel.png"])
    return {
        "captions": set(valid) | {non_utf8},
        "errors": set(bad) | {"dangling.png", "loop.png"},
        "skipped": {"not an image extension (.txt)", "not an image extension (none)", "symlinked folder, not followed"},
    }
