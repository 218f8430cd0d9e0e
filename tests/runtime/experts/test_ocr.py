"""OCR on rendered text with the real PP-OCR graphs, against rapidocr (the oracle) on the same images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from moai_edge.engines.manifest import load_manifest
from moai_edge.runtime.experts.ocr import OcrReader

rapidocr = pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def reader(tiny_packages):
    m = load_manifest(tiny_packages["moai"])
    o = m.experts["ocr"]
    reader = OcrReader.load(*(m.path(m.component(o[k]).file) for k in ("det", "cls", "rec")))
    yield reader
    reader.close()


def render(lines: list[tuple[str, int]], size=(640, 420), rotate_last=False) -> np.ndarray:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    y = 20
    for text, px in lines[:-1] if rotate_last else lines:
        draw.text((24, y), text, fill="black", font=ImageFont.load_default(size=px))
        y += int(px * 1.8)
    if rotate_last:
        text, px = lines[-1]
        patch = Image.new("RGB", (size[1] - 20, px * 2), "white")
        ImageDraw.Draw(patch).text((10, px // 3), text, fill="black", font=ImageFont.load_default(size=px))
        img.paste(patch.rotate(90, expand=True), (size[0] - px * 2 - 10, 10))
    return np.asarray(img)


def oracle(image: np.ndarray) -> list[str]:
    result, _ = rapidocr.RapidOCR()(image)
    return [r[1] for r in result or []]


def squash(texts: list[str]) -> list[str]:
    return [t.replace(" ", "").lower() for t in texts]


@pytest.mark.parametrize("case", ["sizes", "rotated"])
def test_reads_rendered_text_like_rapidocr(reader, case):
    lines = [("STOP HERE", 48), ("Main Street 42", 36), ("open daily", 30)]
    if case == "rotated":
        lines.append(("SIDEWAYS", 40))
    image = render(lines, rotate_last=case == "rotated")
    ours = [line.text for line in reader.read(image)]
    # spaces between words depend on where each detector's box ends; the characters must agree
    assert squash(ours) == squash(oracle(image)), (ours, oracle(image))
    for word in ("stop", "main", "street", "42", "open", "daily") + (("sideways",) if case == "rotated" else ()):
        assert any(word in t for t in squash(ours)), (word, ours)
    kept = reader.keep_confident(reader.read(image))
    assert all(line.confidence >= 0.85 for line in kept) and kept


def test_no_text_gives_nothing(reader):
    assert reader.read(np.full((300, 400, 3), 255, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert squash([line.text for line in reader.read(noise)]) == squash(oracle(noise))
