"""The image of a request: a `data:` URL, a local file inside an allowed folder, or raw bytes; its size is checked
from the header before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from moai_edge.engines.errors import ImageError

from ..images import load_image
from .errors import RequestRefused


def image_bytes_from_url(url: str, allow_paths: tuple[Path, ...]) -> bytes:
    if not isinstance(url, str) or not url:
        raise RequestRefused(400, f"image_url: expected a data: URL or a file path, found {url!r}")
    if url.startswith("data:"):
        return decode_data_url(url)
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        raise RequestRefused(400, "image_url: remote URLs are not fetched by this server; send the image as a "
                                  "data:image/...;base64 URL")
    if scheme not in ("", "file"):
        raise RequestRefused(400, f"image_url: expected a data: URL or a file path, found a {scheme}: URL")
    return read_allowed(Path(unquote(urlparse(url).path) if scheme == "file" else url), allow_paths)


def decode_data_url(url: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise RequestRefused(400, "image_url: expected data:<type>;base64,<data>, found a data: URL without "
                                  "';base64,'")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestRefused(400, f"image_url: the data: URL's base64 could not be decoded ({exc})") from exc


def read_allowed(path: Path, allow_paths: tuple[Path, ...]) -> bytes:
    """A local file, only when it lies (symlinks resolved) inside one of `allow_paths`."""
    if not allow_paths:
        raise RequestRefused(403, f"image_url: local files are not allowed ('{path}'); start the server with "
                                  f"--allow-path DIR to allow a folder", kind="permission_error")
    real = path.resolve()
    if not any(real.is_relative_to(folder.resolve()) for folder in allow_paths):
        raise RequestRefused(403, f"image_url: '{path}' is outside the allowed folders "
                                  f"({', '.join(map(str, allow_paths))})", kind="permission_error")
    try:
        return real.read_bytes()
    except OSError as exc:
        raise RequestRefused(400, f"image_url: '{path}' could not be read: {exc.strerror}") from exc


def check_pixels(data: bytes, max_pixels: int) -> None:
    """413 for an image larger than `max_pixels`, read from its header; a file that is no image passes here and is
    refused when decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - not an image at all: load_image says so with its own message
        return
    if width * height > max_pixels:
        raise RequestRefused(413, f"the image is {width}x{height} = {width * height} pixels, more than this server's "
                                  f"limit of {max_pixels}")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """HxWx3 uint8, or 413 (too many pixels) / 400 (not an image)."""
    if not data:
        raise RequestRefused(400, "the image is empty (0 bytes)")
    check_pixels(data, max_pixels)
    try:
        return load_image(data, name="the request's image")
    except ImageError as exc:
        raise RequestRefused(400, str(exc)) from exc
