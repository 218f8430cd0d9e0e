"""Per-expert latency on full-size architectures with random weights: onnxruntime vs PyTorch, one image
(Mask2Former Swin-B/L, OWLv2 B/16, PSGTR-R50, PP-OCR).

    python -m moai_edge.bench.experts [--threads 2] [--runs 3] [--out DIR]

Also measures what caching OWLv2's text side saves: the 1847-query text forward the reference
repeats for every image. OCR is timed against rapidocr (the reference runs PaddleOCR; there is no
PyTorch OCR to compare with).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .timing import interleaved_ms, timed_ms


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
        ort_ms, torch_ms = interleaved_ms(lambda: engine.run(np_feeds), lambda: module(*feeds.values()), runs)
    return {"onnxruntime_ms": ort_ms, "pytorch_ms": torch_ms, "speedup": torch_ms / ort_ms, "export_s": export_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--queries", type=int, default=1847)
    p.add_argument("--only", choices=["panoptic", "detector", "scene_graph", "ocr"], help="one expert (default: all)")
    args = p.parse_args(argv)

    import torch
    from transformers import Mask2FormerForUniversalSegmentation

    from moai_edge.export.experts.labels import COCO_PANOPTIC_CLASSES
    from moai_edge.export.experts.panoptic import PANOPTIC, panoptic_config

    torch.set_num_threads(args.threads)
    report = {"threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wanted = {args.only} if args.only else {"panoptic", "detector", "scene_graph", "ocr"}
        for family, name in (("moai", "panoptic_swin_base"), ("collavo", "panoptic_swin_large")) if "panoptic" in wanted else ():
            model = Mask2FormerForUniversalSegmentation(panoptic_config("small", family, COCO_PANOPTIC_CLASSES)).eval()
            report[name] = bench_graph(PANOPTIC, model, {"pixel_values": torch.randn(1, 3, 384, 384)}, work, args.threads, args.runs)
            print(name, report[name], flush=True)
            del model
        if "detector" in wanted:
            report.update(bench_detector(args, work))
        if "scene_graph" in wanted:  # PSGTR-R50 on MoAI's 490 image rescaled to 800x800
            from moai_edge.export.experts import scene_graph as psgtr

            model = psgtr.Psgtr(psgtr.PsgtrConfig()).eval()
            feeds = {"pixel_values": torch.randn(1, 3, 800, 800)}
            report["scene_graph_psgtr_r50"] = bench_graph(psgtr.SCENE_GRAPH, model, feeds, work, args.threads, args.runs)
            print("scene_graph", report["scene_graph_psgtr_r50"], flush=True)
    if "ocr" in wanted:
        report["ocr"] = bench_ocr(args.threads, args.runs)
    print(json.dumps(report, indent=2))
    return 0


def bench_detector(args, work: Path) -> dict:
    import torch
    from transformers import Owlv2ForObjectDetection

    from moai_edge.export.experts import detector as owl

    model = Owlv2ForObjectDetection(owl.detector_config("small")).eval()
    names = [f"object {i}" for i in range(args.queries)]
    queries = torch.from_numpy(owl.query_embeddings(model, names[:8])).repeat(args.queries // 8 + 1, 1)[: args.queries]
    feeds = {"pixel_values": torch.randn(1, 3, 960, 960), "query_embeds": queries}
    report = {"detector_owlv2_b16": bench_graph(owl.DETECTOR, model, feeds, work, args.threads, args.runs),
              "detector_text_side_per_image_ms": timed_ms(lambda: owl.query_embeddings(model, names))}
    print("detector", report, flush=True)
    return report


def bench_ocr(threads: int, runs: int) -> dict:
    from PIL import Image, ImageDraw, ImageFont
    from rapidocr_onnxruntime import RapidOCR

    import rapidocr_onnxruntime

    from moai_edge.engines.ort_engine import OrtOptions
    from moai_edge.export.experts.ocr_models import MODELS
    from moai_edge.runtime.experts.ocr import OcrReader

    img = Image.new("RGB", (490, 490), "white")
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(["STOP HERE", "Main Street 42", "open daily 9-5"]):
        draw.text((20, 40 + 120 * i), text, fill="black", font=ImageFont.load_default(size=40))
    image = np.asarray(img)
    root = Path(rapidocr_onnxruntime.__file__).parent / "models"
    reader = OcrReader.load(*(root / MODELS[k] for k in ("det", "cls", "rec")), options=OrtOptions(intra_op_threads=threads))
    oracle = RapidOCR(intra_op_num_threads=threads)
    ours, theirs = interleaved_ms(lambda: reader.read(image), lambda: oracle(image), runs)
    return {"runtime_ms": ours, "rapidocr_ms": theirs}


if __name__ == "__main__":
    sys.exit(main())
