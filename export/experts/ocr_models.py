"""The OCR expert's graphs: the real PP-OCR det/cls/rec ONNX models shipped in the rapidocr-onnxruntime wheel,
copied into the package. (rapidocr itself is only their source and a test oracle, never a runtime dependency.)"""

from __future__ import annotations

import shutil
from pathlib import Path

from moai_edge.engines.errors import require
from moai_edge.engines.manifest import Component, sha256_of

MODELS = {"det": "ch_PP-OCRv4_det_infer.onnx", "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "rec": "ch_PP-OCRv4_rec_infer.onnx"}


def export_ocr(out_dir: Path) -> tuple[dict, dict]:
    """Returns (components, experts manifest section)."""
    rapidocr = require("rapidocr_onnxruntime", "export")
    source = Path(rapidocr.__file__).parent / "models"
    (out_dir / "ocr").mkdir(parents=True, exist_ok=True)
    components = {}
    for part, name in MODELS.items():
        dest = out_dir / "ocr" / name
        shutil.copyfile(source / name, dest)
        components[f"ocr_{part}"] = Component(file=f"ocr/{name}", sha256=sha256_of(dest))
    section = {"det": "ocr_det", "cls": "ocr_cls", "rec": "ocr_rec", "source": f"rapidocr-onnxruntime {source}",
               "min_confidence": 0.85}
    return components, {"ocr": section}
