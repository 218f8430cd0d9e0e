"""The image of a request: a `data:` URL, a local file inside an allowed folder, or raw bytes.

Nothing is read or decoded before it is known to fit: a local file is opened without blocking and must be a regular
file no larger than the body limit (a FIFO or a device in an allowed folder would otherwise hold a worker thread);
an image's size is read from its header before any pixel is decoded (413 above `max_pixels`, and for a
decompression bomb); once decoded, a request holds only the image at the vision input size.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from moai_edge.engines.errors import ImageError

from ..images import load_image, resize_bilinear
from .errors import RequestRefused


def image_bytes_from_url(url: str, allow_paths: tuple[Path, ...], max_bytes: int) -> bytes:
    if not isinstance(url, str) or not url:
        raise RequestRefused(400, f"image_url: expected a data: URL or a file path, found {url!r}")
    if "\0" in url:
        raise RequestRefused(400, "image_url: expected a data: URL or a file path, found a NUL character in it")
    if url.startswith("data:"):
        return decode_data_url(url)
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        raise RequestRefused(400, "image_url: remote URLs are not fetched by this server; send the image as a "
                                  "data:image/...;base64 URL")
    if scheme not in ("", "file"):
        raise RequestRefused(400, f"image_url: expected a data: URL or a file path, found a {scheme}: URL")
    path = unquote(urlparse(url).path) if scheme == "file" else url
    if "\0" in path:
        raise RequestRefused(400, "image_url: expected a file path, found a NUL character in it")
    return read_allowed(Path(path), allow_paths, max_bytes)


def decode_data_url(url: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise RequestRefused(400, "image_url: expected data:<type>;base64,<data>, found a data: URL without "
                                  "';base64,'")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestRefused(400, f"image_url: the data: URL's base64 could not be decoded ({exc})") from exc


def read_allowed(path: Path, allow_paths: tuple[Path, ...], max_bytes: int) -> bytes:
    """A local regular file of at most `max_bytes`, only when it lies (symlinks resolved) inside one of
    `allow_paths`. Opened without blocking and checked on the opened file, so nothing can be swapped in between."""
    if not allow_paths:
        raise RequestRefused(403, f"image_url: local files are not allowed ('{path}'); start the server with "
                                  f"--allow-path DIR to allow a folder", kind="permission_error")
    real = path.resolve()
    if not any(real.is_relative_to(folder.resolve()) for folder in allow_paths):
        raise RequestRefused(403, f"image_url: '{path}' is outside the allowed folders "
                                  f"({', '.join(map(str, allow_paths))})", kind="permission_error")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise RequestRefused(400, f"image_url: '{path}' could not be read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise RequestRefused(400, f"image_url: '{path}' is not a regular file (a FIFO, socket or device is never "
                                      f"read)")
        if st.st_size > max_bytes:
            raise RequestRefused(413, f"image_url: '{path}' is {st.st_size} bytes, more than this server's limit of "
                                      f"{max_bytes}")
        return f.read(max_bytes + 1)[:max_bytes]


def image_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None when it is no image (decoding then says so); 413 above
    `max_pixels` and for what Pillow refuses as a decompression bomb."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise RequestRefused(413, f"the image is refused as a decompression bomb: {exc}") from exc
    except Exception:  # noqa: BLE001 - not an image at all: load_image says so with its own message
        return None
    if width * height > max_pixels:
        raise RequestRefused(413, f"the image is {width}x{height} = {width * height} pixels, more than this server's "
                                  f"limit of {max_pixels}")
    return width, height


def check_pixels(data: bytes, max_pixels: int) -> None:
    image_size(data, max_pixels)


def decode_image(data: bytes, max_pixels: int, size: int | None = None) -> np.ndarray:
    """HxWx3 uint8, resized to `size` x `size` when given (the pipeline's own one resize, done here so a waiting
    request holds the small image); 413 (too many pixels) / 400 (not an image)."""
    if not data:
        raise RequestRefused(400, "the image is empty (0 bytes)")
    image_size(data, max_pixels)
    try:
        image = load_image(data, name="the request's image")
    except ImageError as exc:
        raise RequestRefused(400, str(exc)) from exc
    return image if size is None else resize_bilinear(image, size)[..., :3]
