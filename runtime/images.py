"""Image loading and the reference's preprocessing, in numpy (no torch).

The reference resizes the uint8 CHW tensor with torchvision's Resize(antialias=False): a float32
bilinear interpolation (align_corners False), rounded half-to-even back to uint8. `resize_bilinear`
reproduces that computation, then the first three channels are normalised in 0-255 space.
"""

from __future__ import annotations

import errno
import io
import stat
from pathlib import Path

import numpy as np

from moai_edge.engines.errors import ImageError, InputError
from moai_edge.engines.manifest import PreprocessConfig


def _describe(src, index: int | None = None) -> str:
    if isinstance(src, (str, Path)):
        return f"'{src}'"
    return f"image #{index}" if index is not None else f"{type(src).__name__} image"


def _from_pil(img, name: str) -> np.ndarray:
    from PIL import ImageOps

    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt input
        raise ImageError(f"{name} could not be decoded: {type(exc).__name__}: {exc}") from exc
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        arr = ((arr.astype(np.uint32) >> 8).astype(np.uint8) if mode.startswith("I;16")
               else np.clip(arr, 0, 255).astype(np.uint8))
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "RGBA":
        return np.asarray(img)[..., :3].copy()  # the reference keeps the first 3 channels: no compositing
    if mode in ("P", "PA") and "transparency" in img.info:
        return np.asarray(img.convert("RGBA"))[..., :3].copy()
    return np.asarray(img.convert("RGB"))


def _from_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise ImageError(f"{name}: expected a uint8 array, found dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or 0 in arr.shape:
        raise ImageError(f"{name}: expected an HxW, HxWx3 or HxWx4 array, found shape {arr.shape}")
    return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3])


def open_path(path: Path, name: str):
    """A readable regular file, or an ImageError that says what the path is instead."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(f"{name} is a symlink loop") from exc
        kind = "a dangling symlink" if path.is_symlink() else "no such file"
        raise ImageError(f"{name}: {kind}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{name} is a directory, expected an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{name} is not a regular file")
    if st.st_size == 0:
        raise ImageError(f"{name} is an empty file (0 bytes)")
    return path


def load_image(src, *, name: str | None = None) -> np.ndarray:
    """A path, bytes, PIL image or array -> HxWx3 uint8 RGB, EXIF orientation applied."""
    from PIL import Image, UnidentifiedImageError

    name = name or _describe(src)
    if isinstance(src, np.ndarray):
        return _from_array(src, name)
    if isinstance(src, Image.Image):
        return _from_pil(src, name)
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(bytes(src))
    elif isinstance(src, (str, Path)):
        fp = open_path(Path(src), name)
    else:
        raise ImageError(f"{name}: expected a path, bytes, PIL image or uint8 array, found {type(src).__name__}")
    try:
        with Image.open(fp) as img:
            return _from_pil(img, name)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is refused as a decompression bomb: {exc}") from exc
    except ImageError:
        raise
    except UnidentifiedImageError as exc:  # Pillow's text names the source, bytes by a memory address: the same image,
        # as a path or as bytes (a Ray worker's), must get the same record
        raise ImageError(f"{name} is not a readable image: UnidentifiedImageError: cannot identify the image "
                         f"format") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types (struct.error, IndexError, ...) on corrupt input
        raise ImageError(f"{name} is not a readable image: {type(exc).__name__}: {exc}") from exc


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a*b+c rounded once, as the compiled kernel's fused multiply-add does (exact in float64)."""
    t = np.multiply(a, b, dtype=np.float64)
    t += c
    return t.astype(np.float32)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's upsample_bilinear2d source indices and weights (align_corners False), in float32:
    src = fma(in/out, dst + 0.5, -0.5) clamped at 0, i0 = floor, i1 = min(i0 + 1, in - 1)."""
    if n_in == n_out:
        idx = np.arange(n_out)
        return idx, idx, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    scale = np.float32(n_in / n_out)
    src = _fma(scale, np.arange(n_out, dtype=np.float32) + np.float32(0.5), np.float32(-0.5))
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)  # floor of a non-negative value
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = src - i0.astype(np.float32)
    return i0, i1, np.float32(1.0) - l1, l1


def _bilinear_channels_last(img: np.ndarray, size: int) -> np.ndarray:
    """PyTorch's channels-last kernel: per pixel four float32 weights h*w, summed as the compiled scalar
    loop does, fma(d, w11, fma(c, w10, fma(a, w00, b*w01)))."""
    h0, h1, hl0, hl1 = _linear_taps(img.shape[0], size)
    w0, w1, wl0, wl1 = _linear_taps(img.shape[1], size)
    x = img.astype(np.float32)

    def weight(h: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (h[:, None] * w[None, :])[..., None]

    a, b, c, d = x[h0][:, w0], x[h0][:, w1], x[h1][:, w0], x[h1][:, w1]
    ab = _fma(a, weight(hl0, wl0), b * weight(hl0, wl1))
    return _fma(d, weight(hl1, wl1), _fma(c, weight(hl1, wl0), ab))


def resize_bilinear(img: np.ndarray, size: int, *, single_thread: bool = False) -> np.ndarray:
    """HxWxC uint8 -> (size, size, C) uint8, bit-exact to torchvision's Resize((size, size), antialias=False)
    on the uint8 CHW tensor `torch.from_numpy(img).permute(2, 0, 1)`: torchvision casts to float32 (keeping
    the channels-last strides), PyTorch interpolates, torchvision rounds half to even and casts back.
    PyTorch picks its channels-last kernel when C > 3, when out_h + out_w <= 128, or when it runs on one
    thread with C == 3 (`single_thread`); otherwise its generic kernel. Both are reproduced."""
    if img.shape[:2] == (size, size):
        return img.copy()  # torchvision returns the image untouched
    channels_last = img.shape[2] > 3 or 2 * size <= 128 or (single_thread and img.shape[2] == 3)
    if channels_last:
        out = _bilinear_channels_last(img, size)
    else:  # the generic kernel, plane by plane
        out = resize_planes(img.transpose(2, 0, 1).astype(np.float32), size, size).transpose(1, 2, 0)
    return np.round(out).astype(np.uint8)


def resize_planes(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N,H,W) float32 -> (N,height,width): PyTorch's generic bilinear kernel (width then height, each
    `w0*t0 + w1*t1` fused), as `F.interpolate(mode="bilinear", align_corners=False)` runs it on a contiguous
    tensor. For small float outputs PyTorch may take another kernel; the two can differ by 1 ulp."""
    h0, h1, hl0, hl1 = _linear_taps(x.shape[1], height)
    w0, w1, wl0, wl1 = _linear_taps(x.shape[2], width)
    x = x.astype(np.float32, copy=False)
    out = np.empty((len(x), height, width), np.float32)
    for i in range(0, len(x), 8):  # a few planes at a time, so the float64 steps stay in cache
        planes = x[i:i + 8]
        rows = _fma(wl0, planes[:, :, w0], wl1 * planes[:, :, w1])  # each source row along the width, once
        out[i:i + 8] = _fma(hl0[:, None], rows[:, h0], hl1[:, None] * rows[:, h1])
    return out


def load_resized(src, size: int) -> np.ndarray:
    """The one decode and resize of an image: RGB uint8 (size, size, 3)."""
    return resize_bilinear(load_image(src), size)[..., :3]


def normalize(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """HxWx3 -> (3,H,W) float32, `(x - scale*mean) / (scale*std)`."""
    mean = np.asarray(cfg.mean, np.float32) * np.float32(cfg.scale)
    std = np.asarray(cfg.std, np.float32) * np.float32(cfg.scale)
    x = (pixels.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def normalize_unit(cmap: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """MoAI's colour map holds values in 0..1 yet goes through the same 0-255 normalisation (a reference quirk)."""
    return normalize(cmap, cfg)


def check_resize(cfg: PreprocessConfig) -> None:
    if cfg.resize != "bilinear" or cfg.antialias:
        raise InputError(f"only bilinear resizing without antialias is supported, the package asks for "
                         f"{cfg.resize} with antialias={cfg.antialias}")


def preprocess_image(src, cfg: PreprocessConfig, *, name: str | None = None) -> np.ndarray:
    """What the vision tower gets for an image: (3,S,S) float32 (Pipeline: load_resized once, then normalize)."""
    check_resize(cfg)
    return normalize(resize_bilinear(load_image(src, name=name), cfg.image_size)[..., :3], cfg)
