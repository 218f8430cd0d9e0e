"""The `moai-edge` command. Export and verify need the `export` extra and are imported lazily."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from moai_edge.engines.errors import MoaiEdgeError

DEFAULT_DEMO_DIR = Path("artifacts/tiny-moai")


def cmd_export(args) -> int:
    from moai_edge.engines.errors import require

    require("torch", "export")
    from moai_edge.export.build import export_checkpoint, export_tiny

    labels = {}
    if args.labels or args.moai_repo:
        from moai_edge.export.experts.detector import read_labels

        read = read_labels(args.labels, args.moai_repo)
        labels = {"queries": read["detector_queries"], **({"predicates": read["psg_predicates"]} if "psg_predicates" in read else {})}
    if args.tiny:
        m = export_tiny(args.tiny, Path(args.out), preset=args.preset, seed=args.seed, validate=not args.no_validate,
                        with_experts=not args.no_experts, labels=labels)
    else:
        experts = {k: v for k, v in (("panoptic", args.panoptic), ("detector", args.detector),
                                     ("scene_graph", args.scene_graph)) if v}
        m = export_checkpoint(args.checkpoint, Path(args.out), family=args.family, validate=not args.no_validate,
                              experts={**experts, **labels}, with_experts=not args.no_experts,
                              vision_config=args.vision_config)
    print(f"engine package written to {args.out} ({m.family}, {len(m.components)} components)")
    for note in m.source.get("load_notes", []):
        print(f"  note: {note}")
    for name, diff in m.source.get("validation_max_abs_diff", {}).items():
        print(f"  {name:<12} max abs diff vs PyTorch {diff:.2e}")
    return 0


def load_model(args):
    from .model import Model, RuntimeOptions

    return Model.load(args.engine, options=RuntimeOptions(threads=args.threads))


def cmd_ask(args) -> int:
    """The full pipeline (experts on) when the package has experts, else the backbone with empty expert inputs."""
    from moai_edge.engines.manifest import Manifest

    from .pipeline import Pipeline

    streamed = []
    full = bool(Manifest.load(args.engine).experts)
    with (Pipeline.load(args.engine, threads=args.threads) if full else load_model(args)) as runner:
        tokenizer = runner.model.tokenizer if full else runner.tokenizer

        def on_token(*row_token):
            if not args.json and args.decoding != "beam":
                streamed.append(row_token[-1])
                print(tokenizer.decode(streamed[-1:]), end="", flush=True)

        ans = runner.ask(args.image, args.question, decoding=args.decoding, max_new_tokens=args.max_new_tokens,
                         seed=args.seed, template=args.template, on_token=on_token)
    if args.json:
        extra = {"experts": ans.experts, "verbalized": ans.verbalized} if full else {}
        print(json.dumps({"answer": ans.answer, "tokens": ans.tokens, **extra, "timings_ms": ans.timings_ms}))
    else:
        print() if streamed else print(ans.answer)
        print_timings(ans.timings_ms)
    return 0


def cmd_caption(args) -> int:
    from .caption_job import CaptionJob
    from .limits import check_batch_size, check_threads
    from .pipeline import Pipeline

    check_batch_size(args.batch_size)  # everything that can be refused is, before the package loads
    check_threads(args.threads)
    with CaptionJob.open(args.input, args.out, resume=args.resume) as job, \
            Pipeline.load(args.engine, threads=args.threads) as pipe:
        s = job.run(pipe, question=args.question, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    print(s.line(args.out), file=sys.stderr)
    return 0


def cmd_experts(args) -> int:
    from moai_edge.engines.manifest import Manifest
    from moai_edge.engines.ort_engine import OrtOptions

    from .experts.runner import Experts
    from .experts.verbalize import collavo_question
    from .images import load_image

    manifest = Manifest.load(args.engine)
    if not manifest.experts:
        print(f"moai-edge: the package in {args.engine} has no experts (exported with --no-experts)", file=sys.stderr)
        return 2
    experts = Experts(manifest, OrtOptions(intra_op_threads=args.threads))
    result = experts.run([load_image(args.image)])[0]
    aux = experts.aux_inputs(result)
    report = result.to_json()
    if manifest.family == "collavo":
        report["crayon_text"] = aux.segment_text
        report["question_prefix"] = collavo_question(aux.segment_text, "")
    else:
        report["verbalized"] = aux.verbalized
    experts.close()
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{len(report['segments'])} segments")
    for s in report["segments"]:
        print(f"  #{s['id']:<3} {s['label']:<20} score {s['score']:.3f}  box {s['box']}")
    print(f"{len(report['detections'])} detections")
    for d in report["detections"]:
        print(f"  {d['label']:<24} score {d['score']:.3f}  box {d['box']}")
    print(f"{len(report['relations'])} relations")
    for r in report["relations"]:
        print(f"  {r['subject']} is {r['predicate']} {r['object']}")
    print(f"{len(report['ocr'])} OCR lines")
    for line in report["ocr"]:
        print(f"  {line['text']!r:<30} confidence {line['confidence']:.3f}")
    for key in ("crayon_text", "question_prefix", "verbalized"):
        if key in report:
            print(f"{key}: {report[key]!r}")
    return 0


def print_timings(ms: dict[str, float]) -> None:
    print("stage               ms")
    for stage, value in ms.items():
        print(f"{stage:<18}{value:>8.1f}")


def cmd_verify(args) -> int:
    from moai_edge.engines.errors import require

    require("torch", "export")
    from moai_edge.bench.verify import verify_package

    report = verify_package(Path(args.engine), images=args.images, question=args.question,
                            max_new_tokens=args.max_new_tokens)
    print(report.render())
    return 0 if report.ok else 1


def cmd_bench(args) -> int:
    from moai_edge.bench.pipeline_bench import BenchConfig, PipelineBench
    from moai_edge.bench.report import summary, write_report
    from moai_edge.engines.errors import InputError, require_installed

    try:
        sizes = tuple(int(v) for v in args.batch_sizes.split(","))
    except ValueError:
        raise InputError(f"--batch-sizes: expected comma-separated integers like 1,2,4,8, found '{args.batch_sizes}'") from None
    if not sizes or min(sizes) < 1 or args.runs < 1 or args.warmup < 0:
        raise InputError(f"expected batch sizes >= 1, --runs >= 1, --warmup >= 0; found {sizes}, {args.runs}, {args.warmup}")
    if args.reference:  # checked, not imported: the runtime's memory is measured before torch loads
        require_installed("torch", "export")
    cfg = BenchConfig(engine_dir=Path(args.engine), batch_sizes=sizes, warmup=args.warmup, runs=args.runs,
                      reference=args.reference, threads=args.threads, concurrent=not args.sequential,
                      max_new_tokens=args.max_new_tokens, images=args.images)
    report = PipelineBench(cfg).run()
    files = write_report(report, Path(args.out))
    print(summary(report))
    print("report: " + ", ".join(str(f) for f in files))
    return 0


def cmd_demo(args) -> int:
    """The built-in default: a tiny MoAI package built on the spot captions a folder of generated images."""
    out = Path(args.engine)
    if not (out / "manifest.json").is_file():
        print(f"building the tiny MoAI engine package in {out} ...")
        cmd_export(argparse.Namespace(tiny="moai", preset="tiny", seed=0, out=str(out), no_validate=False,
                                      checkpoint=None, family=None, no_experts=False, panoptic=None,
                                      detector=None, scene_graph=None, labels=None, moai_repo=None))
    from PIL import Image

    from .caption_job import run_caption_job
    from .pipeline import DEFAULT_QUESTION, Pipeline
    from .samples import sample_image

    images = out.parent / "demo-images"
    images.mkdir(parents=True, exist_ok=True)
    for seed in range(4):
        Image.fromarray(sample_image(size=320 + 40 * seed, seed=seed)).save(images / f"sample_{seed}.png")
    captions = out.parent / "demo-captions.jsonl"
    captions.unlink(missing_ok=True)
    with Pipeline.load(out, threads=args.threads) as pipe:
        summary = run_caption_job(pipe, images, captions, question=DEFAULT_QUESTION, batch_size=2,
                                  max_new_tokens=args.max_new_tokens or 16)
    records = [json.loads(line) for line in captions.read_text().splitlines()]
    print(f"captions of {len(records)} images in {images} (seeded random weights: the text is noise, "
          f"the tokens match PyTorch's) -> {captions}")
    for r in records:
        print(f"  {r['id']:<16} {r.get('caption', r.get('error'))!r}")
    stages = [k for k in records[0]["timings_ms"] if k != "per_image"]
    print(f"\nper-stage latency, ms (batch 2; {summary.images_per_s:.2f} images/s)")
    print("stage".ljust(18) + "".join(r["id"][:12].rjust(14) for r in records))
    for stage in stages:
        print(stage.ljust(18) + "".join(f"{r['timings_ms'].get(stage, 0):14.1f}" for r in records))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moai-edge", description="Edge runtime for CoLLaVO and MoAI")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="checkpoint -> engine package (needs moai-edge[export])")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", choices=["collavo", "moai"], help="build a seeded tiny checkpoint and export it")
    src.add_argument("--checkpoint", help="checkpoint folder or hub id (BK-Lee/MoAI-7B layout)")
    e.add_argument("--family", choices=["collavo", "moai"])
    e.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True)
    e.add_argument("--no-validate", action="store_true", help="skip the ONNX-vs-PyTorch validation")
    e.add_argument("--no-experts", action="store_true", help="backbone only")
    e.add_argument("--panoptic", help="Mask2Former checkpoint folder or hub id (default: the reference's)")
    e.add_argument("--detector", help="OWLv2 checkpoint folder or hub id (MoAI; default: the reference's)")
    e.add_argument("--scene-graph", help="OpenPSG's PSGTR checkpoint file, psgtr_r50_epoch_60.pth (MoAI; required)")
    e.add_argument("--labels", help="the detector's text queries: a JSON list or one per line, or a JSON object with "
                                    "'detector_queries' and 'psg_predicates' (MoAI)")
    e.add_argument("--vision-config", help="with --checkpoint: JSON object of vision tower fields no tensor gives, "
                                           "e.g. '{\"num_heads\": 12}' (needed when the tower is not CLIP-L's width)")
    e.add_argument("--moai-repo", help="a local clone of ByungKwanLee/MoAI to read the detector queries from, as data")
    e.set_defaults(func=cmd_export)

    def runtime_args(q):
        q.add_argument("--max-new-tokens", type=int)
        q.add_argument("--decoding", choices=["greedy", "sample", "beam"])
        q.add_argument("--template", choices=["eval", "demo"])
        q.add_argument("--seed", type=int)
        q.add_argument("--threads", type=int, default=0)
        q.add_argument("--json", action="store_true", help="print one JSON object")

    a = sub.add_parser("ask", help="ask one question about one image")
    a.add_argument("--engine", required=True)
    a.add_argument("image")
    a.add_argument("question")
    runtime_args(a)
    a.set_defaults(func=cmd_ask)

    v = sub.add_parser("verify", help="runtime vs the PyTorch reference on the package's checkpoint")
    v.add_argument("--engine", required=True)
    v.add_argument("--images", nargs="*", default=[])
    v.add_argument("--question", default="Describe this image in detail.")
    v.add_argument("--max-new-tokens", type=int, default=16)
    v.set_defaults(func=cmd_verify)

    x = sub.add_parser("experts", help="run the package's experts on one image and print their results")
    x.add_argument("--engine", required=True)
    x.add_argument("image")
    x.add_argument("--threads", type=int, default=0)
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_experts)

    c = sub.add_parser("caption", help="caption a folder (or list file) of images into JSON lines, resumable")
    c.add_argument("input", help="a folder (searched recursively) or a text file with one image path per line")
    c.add_argument("--engine", required=True)
    c.add_argument("--out", required=True, help="JSONL file: one record per image (id, caption or error, timings_ms)")
    c.add_argument("--batch-size", type=int, default=1)
    c.add_argument("--question", default="Describe this image in detail.")
    c.add_argument("--resume", action="store_true", help="skip the ids already in --out and append the rest")
    c.add_argument("--max-new-tokens", type=int)
    c.add_argument("--threads", type=int, default=0)
    c.set_defaults(func=cmd_caption, interrupted="the records finished so far are kept: run again with --resume")

    b = sub.add_parser("bench", help="per-stage latency, memory, roofline and (--reference) PyTorch side by side")
    b.add_argument("--engine", required=True)
    b.add_argument("--batch-sizes", default="1,2,4,8", help="comma-separated, e.g. 1,8")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--reference", action="store_true", help="also time the PyTorch reference (needs moai-edge[export])")
    b.add_argument("--out", default="bench-report", help="folder for report.json, report.md and the plots")
    b.add_argument("--max-new-tokens", type=int, default=32, help="decoded per answer, end-of-sequence ignored")
    b.add_argument("--images", nargs="*", default=[], help="default: generated sample images")
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--sequential", action="store_true", help="experts one after another (default: concurrently)")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="build the tiny MoAI package if missing and caption generated sample images")
    d.add_argument("--engine", default=str(DEFAULT_DEMO_DIR))
    runtime_args(d)
    d.set_defaults(func=cmd_demo)
    return p


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


def raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 an operating-system error (disk, permissions), 2 bad input, 130 SIGINT, 143 SIGTERM."""
    args = build_parser().parse_args(argv)
    in_main = threading.current_thread() is threading.main_thread()  # only there may signal handlers be set
    previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main else None
    try:
        return args.func(args)
    except MoaiEdgeError as exc:
        print(f"moai-edge: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"moai-edge: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        name, code = ("SIGINT", 130) if isinstance(exc, KeyboardInterrupt) else ("SIGTERM", 143)
        hint = getattr(args, "interrupted", "")
        print(f"moai-edge: interrupted by {name}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return code
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
