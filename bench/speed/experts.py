"""Per-expert latency on full-size architectures with random weights: onnxruntime vs PyTorch, one image
(Mask2Former Swin-B/L, OWLv2 B/16, PSGTR-R50, PP-OCR).

    python -m moai_edge.bench.speed.experts [--device cpu] [--threads 2] [--runs 3] [--only panoptic] [--arena]

Also measures what caching OWLv2's text side saves: the 1847-query text forward the reference
repeats for every image. OCR is timed against rapidocr (the reference runs PaddleOCR; there is no
PyTorch OCR to compare with). With --arena, each graph is timed with onnxruntime's CPU memory arena on and off
(interleaved) instead of against PyTorch: the runtime runs its experts with the arena off, so their activations go
back to the system after each image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moai_edge.engines.options import DEVICES, RuntimeOptions
from moai_edge.engines.registry import open_file

from ..timing import interleaved_ms, timed_ms


def bench_graph(target, model, feeds: dict, work: Path, options: RuntimeOptions, runs: int, *,
                arena: bool = False) -> dict:
    """The expert exported to ONNX and opened on the `options` backend, timed against its PyTorch module (or, with
    `arena`, with the memory arena on against off)."""
    import torch

    from moai_edge.export.onnx_export import export_graph

    path = work / f"{target.name}.onnx"
    t0 = time.perf_counter()
    export_graph(target, model, path)
    export_s = time.perf_counter() - t0
    if arena:
        return {**arena_on_off(path, {k: v.numpy() for k, v in feeds.items()}, options, runs), "export_s": export_s}
    module = target.build(model).eval()
    engine = open_file(path, options)
    np_feeds = {k: v.numpy() for k, v in feeds.items()}
    try:
        with torch.no_grad():
            ours_ms, torch_ms = interleaved_ms(lambda: engine.run(np_feeds), lambda: module(*feeds.values()), runs)
    finally:
        engine.close()
    return {"backend": options.backend, "device": options.device, "runtime_ms": ours_ms, "pytorch_ms": torch_ms,
            "speedup": torch_ms / ours_ms, "export_s": export_s}


def arena_on_off(path: Path, feeds: dict, options: RuntimeOptions, runs: int) -> dict:
    on, off = (open_file(path, options.replace(memory_arena=a)) for a in (True, False))
    try:
        on_ms, off_ms = interleaved_ms(lambda: on.run(feeds), lambda: off.run(feeds), runs)
    finally:
        on.close()
        off.close()
    return {"arena_on_ms": on_ms, "arena_off_ms": off_ms, "on_over_off_speedup": off_ms / on_ms}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where the exported graphs run (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, of the engines and of torch (default: 2)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per side after one warm-up (default: 3)")
    p.add_argument("--queries", type=int, default=1847, help="detector text queries (default: MoAI's 1847)")
    p.add_argument("--only", choices=["panoptic", "detector", "scene_graph", "ocr"], help="one expert (default: all)")
    p.add_argument("--arena", action="store_true", help="time each graph with the CPU memory arena on against off")
    args = p.parse_args(argv)

    import torch

    options = RuntimeOptions(device=args.device, threads=args.threads)
    torch.set_num_threads(args.threads)
    report = {"device": args.device, "threads": args.threads}
    wanted = {args.only} if args.only else {"panoptic", "detector", "scene_graph", "ocr"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "panoptic" in wanted:
            report.update(bench_panoptic(options, args.runs, work, arena=args.arena))
        if "detector" in wanted:
            report.update(bench_detector(args, options, work))
        if "scene_graph" in wanted:
            report["scene_graph_psgtr_r50"] = bench_scene_graph(options, args.runs, work, arena=args.arena)
            print("scene_graph", report["scene_graph_psgtr_r50"], flush=True)
    if "ocr" in wanted and not args.arena:
        report["ocr"] = bench_ocr(options, args.runs)
    print(json.dumps(report, indent=2))
    return 0


def bench_panoptic(options: RuntimeOptions, runs: int, work: Path, *, arena: bool = False) -> dict:
    """Each family's Mask2Former (the Swin size its reference uses, export.families), at its full size."""
    import torch
    from transformers import Mask2FormerForUniversalSegmentation

    from moai_edge.export.experts.labels import COCO_PANOPTIC_CLASSES
    from moai_edge.export.experts.panoptic import PANOPTIC, panoptic_config
    from moai_edge.export.families import FAMILIES

    report = {}
    for swin, family in {f.panoptic_swin: f.name for f in FAMILIES.values()}.items():
        name = f"panoptic_swin_{swin}"
        model = Mask2FormerForUniversalSegmentation(panoptic_config("small", family, COCO_PANOPTIC_CLASSES)).eval()
        report[name] = bench_graph(PANOPTIC, model, {"pixel_values": torch.randn(1, 3, 384, 384)}, work, options, runs,
                                   arena=arena)
        print(name, report[name], flush=True)
        del model
    return report


def bench_detector(args, options: RuntimeOptions, work: Path) -> dict:
    import torch
    from transformers import Owlv2ForObjectDetection

    from moai_edge.export.experts import detector as owl

    model = Owlv2ForObjectDetection(owl.detector_config("small")).eval()
    names = [f"object {i}" for i in range(args.queries)]
    queries = torch.from_numpy(owl.query_embeddings(model, names[:8])).repeat(args.queries // 8 + 1, 1)[: args.queries]
    feeds = {"pixel_values": torch.randn(1, 3, 960, 960), "query_embeds": queries}
    report = {"detector_owlv2_b16": bench_graph(owl.DETECTOR, model, feeds, work, options, args.runs, arena=args.arena)}
    if not args.arena:
        report["detector_text_side_per_image_ms"] = timed_ms(lambda: owl.query_embeddings(model, names))
    print("detector", report, flush=True)
    return report


def bench_scene_graph(options: RuntimeOptions, runs: int, work: Path, *, arena: bool = False) -> dict:
    """PSGTR-R50 on MoAI's 490 image rescaled to 800x800: the trunk graph, then the mask heads on the queries
    post-processing reads, against the whole PyTorch model. Also with the mask heads on all 100 queries, the most
    an image can need (random weights pass few or none of post-processing's score cuts)."""
    import torch

    from moai_edge.export.experts import scene_graph as psgtr
    from moai_edge.export.onnx_export import export_graph
    from moai_edge.runtime.experts import LOGITS, SceneGraphConfig, top_triplets

    model = psgtr.Psgtr(psgtr.PsgtrConfig()).eval()
    pixels = torch.randn(1, 3, 800, 800)
    paths = {}
    for target in (psgtr.SCENE_GRAPH, psgtr.SCENE_GRAPH_MASKS):
        paths[target.name] = work / f"{target.name}.onnx"
        export_graph(target, model, paths[target.name])
    feeds = {"pixel_values": pixels.numpy()}
    if arena:
        with open_file(paths["scene_graph"], options) as trunk:
            out = trunk.run(feeds)
        return {"trunk": arena_on_off(paths["scene_graph"], feeds, options, runs),
                "masks_all_queries": arena_on_off(paths["scene_graph_masks"],
                                                  {k: out[k] for k in psgtr.MASK_INPUTS}, options, runs)}
    trunk, masks = open_file(paths["scene_graph"], options), open_file(paths["scene_graph_masks"], options)

    def ours(queries):
        out = trunk.run(feeds)
        if len(queries):
            masks.run({k: out[k][:, queries] if k.endswith("attention") else out[k] for k in psgtr.MASK_INPUTS})

    out = trunk.run(feeds)
    needed = top_triplets(*(out[k][0] for k in LOGITS), SceneGraphConfig()).mask_queries()
    report = {"mask_queries": len(needed)}
    try:
        with torch.no_grad():
            for name, queries in (("", needed), ("all_queries_", np.arange(model.cfg.num_queries))):
                ours_ms, torch_ms = interleaved_ms(lambda q=queries: ours(q), lambda: model(pixels), runs)
                report.update({f"{name}runtime_ms": ours_ms, f"{name}pytorch_ms": torch_ms,
                               f"{name}speedup": torch_ms / ours_ms})
    finally:
        trunk.close()
        masks.close()
    return report


def bench_ocr(options: RuntimeOptions, runs: int) -> dict:
    from PIL import Image, ImageDraw, ImageFont
    from rapidocr_onnxruntime import RapidOCR

    import rapidocr_onnxruntime

    from moai_edge.export.experts.ocr_models import MODELS
    from moai_edge.runtime.experts import OcrReader

    img = Image.new("RGB", (490, 490), "white")
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(["STOP HERE", "Main Street 42", "open daily 9-5"]):
        draw.text((20, 40 + 120 * i), text, fill="black", font=ImageFont.load_default(size=40))
    image = np.asarray(img)
    root = Path(rapidocr_onnxruntime.__file__).parent / "models"
    reader = OcrReader.load(*(root / MODELS[k] for k in ("det", "cls", "rec")), options=options)
    oracle = RapidOCR(intra_op_num_threads=options.threads)
    ours, theirs = interleaved_ms(lambda: reader.read(image), lambda: oracle(image), runs)
    return {"runtime_ms": ours, "rapidocr_ms": theirs}


if __name__ == "__main__":
    sys.exit(main())
