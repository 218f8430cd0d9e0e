"""Image loading and preprocessing: bit-exact to the reference's torchvision path, odd modes, bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moai_edge.engines.errors import ImageError
from moai_edge.engines.manifest import PreprocessConfig
from moai_edge.runtime.images import load_image, preprocess_image, resize_bilinear, resize_planes

CFG = PreprocessConfig(image_size=112, mean=[0.48145466, 0.4578275, 0.40821073],
                       std=[0.26862954, 0.26130258, 0.27577711])
SHAPES = [(37, 53), (640, 480), (1000, 700), (490, 490), (3, 5), (1, 1), (300, 200), (245, 980), (491, 489)]


def photo(h=120, w=160, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def torchvision_resize(img: np.ndarray, size: int) -> np.ndarray:
    import torch
    from torchvision.transforms import Resize

    chw = torch.from_numpy(img).permute(2, 0, 1)
    return Resize((size, size), antialias=False)(chw).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [490, 112, 64, 14, 7])
def test_resize_is_bit_exact_to_torchvision(shape, size, channels):
    pytest.importorskip("torch")
    img = np.random.default_rng(sum(shape) + size).integers(0, 256, (*shape, channels), dtype=np.uint8)
    np.testing.assert_array_equal(resize_bilinear(img, size), torchvision_resize(img, size))


@pytest.mark.parametrize("shape", [(640, 480), (37, 53), (1000, 700)])
def test_resize_matches_single_threaded_torch(shape):
    """On one thread PyTorch takes its channels-last kernel for 3 channels too."""
    torch = pytest.importorskip("torch")
    img = np.random.default_rng(7).integers(0, 256, (*shape, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = torchvision_resize(img, 490)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(resize_bilinear(img, 490, single_thread=True), ref)


@pytest.mark.parametrize("shape, size", [((19, 24, 24), (96, 96)), ((11, 96, 96), (122, 122)),
                                         ((9, 40, 30), (170, 530))])
def test_float_planes_resize_is_torchs_bilinear(shape, size):
    """Mask logits (more planes than one chunk) as the panoptic post-processing resizes them: F.interpolate's
    float32 values, to the bit."""
    torch = pytest.importorskip("torch")
    planes = np.random.default_rng(3).normal(scale=6, size=shape).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(planes)[None], size=size, mode="bilinear",
                                          align_corners=False)[0].numpy()
    np.testing.assert_array_equal(resize_planes(planes, *size), ref)


def test_preprocess_equals_the_reference_formula():
    pytest.importorskip("torch")
    from moai_edge.bench.reference.pixels import reference_pixels

    img = photo(333, 250)
    np.testing.assert_allclose(preprocess_image(img, CFG), reference_pixels(img, CFG.image_size)[0].numpy(), atol=1e-6)


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB"])
def test_plain_modes_become_rgb(tmp_path, mode):
    src = Image.fromarray(photo()).convert(mode)
    out = load_image(save(src, tmp_path / f"x-{mode}.png"))
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(src.convert("RGB")))


def test_rgba_keeps_the_colour_channels_without_compositing(tmp_path):
    rgba = np.dstack([photo(), np.zeros((120, 160), np.uint8)])  # fully transparent
    out = load_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_palette_with_transparency(tmp_path):
    p = Image.fromarray(photo()).convert("P")
    p.info["transparency"] = 0
    out = load_image(save(p, tmp_path / "p.png", transparency=0))
    assert out.shape == (120, 160, 3)


def test_sixteen_bit_is_scaled_to_eight(tmp_path):
    arr = np.zeros((4, 4), np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 65535, 256, 255
    out = load_image(save(Image.fromarray(arr), tmp_path / "d.png"))
    assert out[0, 0].tolist() == [255] * 3 and out[0, 1].tolist() == [1] * 3 and out[0, 2].tolist() == [0] * 3


def test_cmyk_jpeg(tmp_path):
    out = load_image(save(Image.fromarray(photo()).convert("CMYK"), tmp_path / "c.jpg"))
    assert out.shape == (120, 160, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, :50] = 255  # left half white
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(save(pil, tmp_path / "r.jpg", exif=exif, quality=95))
    assert out.shape == (100, 60, 3)
    assert out[:40].mean() > 200 and out[60:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_odd_modes_preprocess(tmp_path, mode):
    src = Image.fromarray(photo())
    src = src.convert("L").convert("I;16") if mode == "I;16" else src.convert(mode)
    x = preprocess_image(save(src, tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")), CFG)
    assert x.shape == (3, 112, 112) and x.dtype == np.float32 and np.isfinite(x).all()


def test_path_bytes_pil_and_array_agree(tmp_path):
    path = save(Image.fromarray(photo()), tmp_path / "x.png")
    expected = preprocess_image(path, CFG)
    for src in (str(path), path.read_bytes(), Image.open(path), photo()):
        np.testing.assert_array_equal(preprocess_image(src, CFG), expected)


def bad_files(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(photo()).save(jpeg, format="JPEG")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "notes.jpg").write_text("this is not an image")
    return [tmp_path / "missing.png", tmp_path / "empty.jpg", tmp_path / "truncated.jpg", tmp_path / "notes.jpg"]


def test_bad_files_name_themselves(tmp_path):
    for path in bad_files(tmp_path):
        with pytest.raises(ImageError, match=path.name):
            load_image(path)
    with pytest.raises(ImageError, match="float64"):
        load_image(np.zeros((4, 4, 3)))


def test_array_inputs():
    rgba = np.random.default_rng(3).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(rgba), rgba[..., :3])
    gray = rgba[..., 0]
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray[..., None], 3, axis=2))
    assert load_image(np.full((2, 2), 65535, np.uint16)).max() == 255
