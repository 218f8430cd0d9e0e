"""Per-expert latency on full-size architectures with random weights: onnxruntime vs PyTorch, one image.

    python -m moai_edge.bench.experts [--threads 2] [--runs 3] [--out DIR]

Also measures what caching OWLv2's text side saves: the 1847-query text forward the reference
repeats for every image. OCR is timed against rapidocr (the reference runs PaddleOCR; there is no
PyTorch OCR to compare with).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_graph(target, model, feeds: dict, work: Path, threads: int, runs: int) -> dict:
    import torch

    from moai_edge.engines.ort_engine import OrtEngine, OrtOptions
    from moai_edge.export.onnx_export import export_graph

    path = work / f"{target.name}.onnx"
    t0 = time.perf_counter()
    export_graph(target, model, path)
    export_s = time.perf_counter() - t0
    module = target.build(model).eval()
    engine = OrtEngine.load(path, options=OrtOptions(intra_op_threads=threads))
    np_feeds = {k: v.numpy() for k, v in feeds.items()}
    with torch.no_grad():
        torch_ms = median_ms(lambda: module(*feeds.values()), runs)
    ort_ms = median_ms(lambda: engine.run(np_feeds), runs)
    return {"onnxruntime_ms": ort_ms, "pytorch_ms": torch_ms, "speedup": torch_ms / ort_ms, "export_s": export_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--queries", type=int, default=1847)
    p.add_argument("--skip-panoptic", action="store_true")
    args = p.parse_args(argv)

    import torch
    from transformers import Mask2FormerForUniversalSegmentation, Owlv2ForObjectDetection

    from moai_edge.export.experts import detector as owl
    from moai_edge.export.experts.labels import COCO_PANOPTIC_CLASSES
    from moai_edge.export.experts.panoptic import PANOPTIC, panoptic_config

    torch.set_num_threads(args.threads)
    report = {"threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family, name in () if args.skip_panoptic else (("moai", "panoptic_swin_base"), ("collavo", "panoptic_swin_large")):
            model = Mask2FormerForUniversalSegmentation(panoptic_config("small", family, COCO_PANOPTIC_CLASSES)).eval()
            report[name] = bench_graph(PANOPTIC, model, {"pixel_values": torch.randn(1, 3, 384, 384)}, work, args.threads, args.runs)
            print(name, report[name], flush=True)
            del model
        model = Owlv2ForObjectDetection(owl.detector_config("small")).eval()
        names = [f"object {i}" for i in range(args.queries)]
        queries = torch.from_numpy(owl.query_embeddings(model, names[:8]))
        report["detector_owlv2_b16"] = bench_graph(owl.DETECTOR, model, {"pixel_values": torch.randn(1, 3, 960, 960),
                                                                        "query_embeds": queries.repeat(args.queries // 8 + 1, 1)[: args.queries]},
                                                   work, args.threads, args.runs)
        t0 = time.perf_counter()
        owl.query_embeddings(model, names)
        report["detector_text_side_per_image_ms"] = (time.perf_counter() - t0) * 1e3
        print("detector", report["detector_owlv2_b16"], "text side", report["detector_text_side_per_image_ms"], flush=True)
    report["ocr"] = bench_ocr(args.threads, args.runs)
    print(json.dumps(report, indent=2))
    return 0


def bench_ocr(threads: int, runs: int) -> dict:
    from PIL import Image, ImageDraw, ImageFont
    from rapidocr_onnxruntime import RapidOCR

    from moai_edge.engines.ort_engine import OrtEngine, OrtOptions
    from moai_edge.export.experts.ocr_models import MODELS
    from moai_edge.runtime.experts.ocr import OcrReader
    import rapidocr_onnxruntime

    img = Image.new("RGB", (490, 490), "white")
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(["STOP HERE", "Main Street 42", "open daily 9-5"]):
        draw.text((20, 40 + 120 * i), text, fill="black", font=ImageFont.load_default(size=40))
    image = np.asarray(img)
    root = Path(rapidocr_onnxruntime.__file__).parent / "models"
    opts = OrtOptions(intra_op_threads=threads)
    det, cls, rec = (OrtEngine.load(root / MODELS[k], options=opts) for k in ("det", "cls", "rec"))
    reader = OcrReader(det, cls, rec, rec.metadata()["character"].splitlines())
    oracle = RapidOCR(intra_op_num_threads=threads)
    return {"runtime_ms": median_ms(lambda: reader.read(image), runs), "rapidocr_ms": median_ms(lambda: oracle(image), runs)}


if __name__ == "__main__":
    sys.exit(main())
