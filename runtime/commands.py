"""What each `moai-edge` verb does. Export, verify, bench and eval are imported lazily (export and verify need
torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from moai_edge.engines.errors import InputError, require, require_installed
from moai_edge.engines.options import RuntimeOptions


def runtime_options(args) -> RuntimeOptions:
    """--device, --threads, --memory-budget and --allow-cpu-fallback mean the same on every verb that runs engines."""
    return RuntimeOptions(device=args.device, threads=args.threads, memory_budget_mb=args.memory_budget,
                          allow_cpu_fallback=args.allow_cpu_fallback)


def cmd_export(args) -> int:
    require("torch", "export")
    from moai_edge.export.build import export_checkpoint, export_tiny

    if args.world:
        from moai_edge.export.world.build import export_world

        ignored = [flag for flag, given in (
            ("--no-experts", args.no_experts), ("--labels", args.labels), ("--moai-repo", args.moai_repo),
            ("--preset", args.preset != "tiny"), ("--family", args.family), ("--panoptic", args.panoptic),
            ("--detector", args.detector), ("--scene-graph", args.scene_graph),
            ("--vision-config", args.vision_config)) if given]
        if ignored:
            raise InputError(f"--world exports the shipped world models with their own experts and labels; "
                             f"{', '.join(ignored)} cannot apply")
        m = export_world(args.world, Path(args.out), validate=not args.no_validate, seed=args.seed,
                         precision=args.precision)
    else:
        labels = {}
        if args.labels or args.moai_repo:
            from moai_edge.export.experts.detector import read_labels

            read = read_labels(args.labels, args.moai_repo)
            labels = {"queries": read["detector_queries"],
                      **({"predicates": read["psg_predicates"]} if "psg_predicates" in read else {})}
        if args.tiny:
            m = export_tiny(args.tiny, Path(args.out), preset=args.preset, seed=args.seed,
                            validate=not args.no_validate, with_experts=not args.no_experts, labels=labels,
                            precision=args.precision)
        else:
            experts = {k: v for k, v in (("panoptic", args.panoptic), ("detector", args.detector),
                                         ("scene_graph", args.scene_graph)) if v}
            m = export_checkpoint(args.checkpoint, Path(args.out), family=args.family, validate=not args.no_validate,
                                  experts={**experts, **labels}, with_experts=not args.no_experts,
                                  vision_config=args.vision_config, precision=args.precision)
    print(f"engine package written to {args.out} ({m.family}, {len(m.components)} components)")
    for note in m.source.get("load_notes", []):
        print(f"  note: {note}")
    for name, diff in m.source.get("validation_max_abs_diff", {}).items():
        print(f"  {name:<12} max abs diff vs PyTorch {diff:.2e}")
    for part, check in m.source.get("precision_check", {}).items():
        if part != "against":
            print(f"  {m.source['precision']} {part} against fp32 on {check['questions']} world questions: token "
                  f"agreement {check['token_agreement']:.2%}, mean KL {check['kl']:.2g} nats, "
                  f"same answers {check['same_answers']:.0%}"
                  + (f" ({check['skipped']} skipped: longer than the context)" if check.get("skipped") else ""))
    return 0


def cmd_ask(args) -> int:
    """The full pipeline; a package without experts gets the reference's "nothing detected" inputs. The answer is
    streamed as text pieces whose concatenation is the answer (runtime.decoding.text_stream)."""
    from .pipeline import Pipeline

    with Pipeline.load(args.engine, runtime_options(args)) as pipe:
        stream = not args.json and (args.decoding or pipe.manifest.generation.strategy) != "beam"
        text = pipe.text_stream()

        def on_token(row: int, token: int) -> None:
            print(text.push(token), end="", flush=True)

        result = pipe.ask(args.image, args.question, decoding=args.decoding, max_new_tokens=args.max_new_tokens,
                          seed=args.seed, template=args.template, on_token=on_token if stream else None)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(text.finish(result.answer)) if stream else print(result.answer)
        print_timings(result.timings_ms)
    return 0


RAY_ONLY = ("ray_address", "num_workers", "worker_cpus", "worker_memory_mb", "worker_gpus")


def cmd_caption(args) -> int:
    if args.ray:
        return cmd_caption_ray(args)
    from .caption.job import CaptionJob
    from .caption.captioner import Captioner
    from .limits import check_batch_size
    from .pipeline import Pipeline

    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) is not None]
    if given:
        raise InputError(f"{', '.join(given)} only apply with --ray")
    check_batch_size(args.batch_size)  # everything that can be refused is, before the package loads
    options = runtime_options(args)
    with CaptionJob.open(args.input, args.out, resume=args.resume) as job, Pipeline.load(args.engine, options) as pipe:
        captioner = Captioner(pipe, question=args.question, batch_size=args.batch_size,
                              decoding=pipe.decoding("greedy", max_new_tokens=args.max_new_tokens))
        summary = job.run(captioner)
    print(summary.line(args.out), file=sys.stderr)
    return 0


def cmd_caption_ray(args) -> int:
    """`caption --ray`: the same job on Ray Data actors, into a folder of shards (runtime/caption/on_ray.py)."""
    from .caption.on_ray import RayWorkers, run_ray_caption_job

    workers = RayWorkers(count=1 if args.num_workers is None else args.num_workers,
                         cpus=1.0 if args.worker_cpus is None else args.worker_cpus, memory_mb=args.worker_memory_mb,
                         gpus=0.0 if args.worker_gpus is None else args.worker_gpus)
    summary = run_ray_caption_job(args.engine, args.input, args.out, options=runtime_options(args),
                                  question=args.question, batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens, resume=args.resume, workers=workers,
                                  address=args.ray_address)
    print(summary.line(args.out), file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    """The package behind a localhost HTTP server; the package is checked here so a wrong path fails at once."""
    import os

    from moai_edge.engines.manifest import load_manifest

    require("uvicorn", "serve")
    from .pipeline import Pipeline
    from .serve import ServeConfig, create_app
    from .serve.listener import uvicorn_server

    options = runtime_options(args).replace(image_cache_mb=args.image_cache_mb)
    load_manifest(args.engine, verify_hashes=False)
    config = ServeConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("MOAI_EDGE_API_KEY"),
                         allow_paths=tuple(Path(p) for p in args.allow_path), max_queue=args.max_queue,
                         max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                         max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                         max_new_tokens=args.max_new_tokens, shutdown_timeout_s=args.shutdown_timeout,
                         read_timeout_s=args.read_timeout, stuck_after_s=args.stuck_after,
                         allow_origins=tuple(args.allow_origin),
                         allow_hosts=tuple(args.allow_host))
    app = create_app(lambda: Pipeline.load(args.engine, options), config, model=Path(args.engine).resolve().name)
    uvicorn_server(app, config).run()
    return 0


def cmd_experts(args) -> int:
    from moai_edge.engines.manifest import load_manifest

    from .experts import Experts
    from .families import family_of
    from .images import load_resized

    manifest = load_manifest(args.engine)
    if not manifest.experts:
        raise InputError(f"the package in {args.engine} has no experts (exported with --no-experts)")
    experts = Experts(manifest, runtime_options(args))
    try:
        result = experts.run([load_resized(args.image, manifest.preprocess.image_size)])[0]
    finally:
        experts.close()
    family = family_of(manifest.family)
    aux = family.aux_inputs(result)
    report = {**result.to_json(), family.display_name: family.display_text(aux)}
    if family.question(aux, ""):  # what the family puts before every question
        report["question_prefix"] = family.question(aux, "")
    print(json.dumps(report) if args.json else render_experts(report))
    return 0


def render_experts(report: dict) -> str:
    lines = [f"{len(report['segments'])} segments"]
    lines += [f"  #{s['id']:<3} {s['label']:<20} score {s['score']:.3f}  box {s['box']}" for s in report["segments"]]
    lines.append(f"{len(report['detections'])} detections")
    lines += [f"  {d['label']:<24} score {d['score']:.3f}  box {d['box']}" for d in report["detections"]]
    lines.append(f"{len(report['relations'])} relations")
    lines += [f"  {r['subject']} is {r['predicate']} {r['object']}" for r in report["relations"]]
    lines.append(f"{len(report['ocr'])} OCR lines")
    lines += [f"  {line['text']!r:<30} confidence {line['confidence']:.3f}" for line in report["ocr"]]
    lines += [f"{key}: {report[key]!r}" for key in ("crayon_text", "question_prefix", "verbalized") if key in report]
    return "\n".join(lines)


def print_timings(ms: dict[str, float]) -> None:
    print("stage               ms")
    for stage, value in ms.items():
        print(f"{stage:<18}{value:>8.1f}")


def cmd_verify(args) -> int:
    """Against the PyTorch reference (needs torch), or with --golden against a saved run (torch-free)."""
    if args.golden:
        from moai_edge.bench.compare.golden import compare_golden

        rows = compare_golden(Path(args.engine), Path(args.golden), runtime_options(args))
        print(f"each graph on {args.device} against the golden run in {args.golden}:")
        print("\n".join(row.render() for row in rows))
        return 0
    require("torch", "export")
    from moai_edge.bench.compare.verify import verify_package

    report = verify_package(Path(args.engine), images=args.images, question=args.question,
                            max_new_tokens=args.max_new_tokens, options=runtime_options(args))
    print(report.render())
    if args.save_golden:
        from moai_edge.bench.compare.golden import save_golden
        from moai_edge.runtime import load_image, sample_image

        images = [load_image(p) for p in args.images] or [sample_image()]
        index = save_golden(Path(args.engine), Path(args.save_golden), images, question=args.question,
                            max_new_tokens=args.max_new_tokens, options=runtime_options(args))
        print(f"golden inputs and outputs of {len(index['runs'])} graphs written to {args.save_golden}")
    return 0 if report.ok else 1


def cmd_bench(args) -> int:
    from moai_edge.bench.speed.pipeline import BenchConfig, PipelineBench
    from moai_edge.bench.speed.report import summary, write_report

    try:
        sizes = tuple(int(v) for v in args.batch_sizes.split(","))
    except ValueError:
        raise InputError(f"--batch-sizes: expected comma-separated integers like 1,2,4,8, "
                         f"found '{args.batch_sizes}'") from None
    if not sizes or min(sizes) < 1 or args.runs < 1 or args.warmup < 0:
        raise InputError(f"expected batch sizes >= 1, --runs >= 1, --warmup >= 0; "
                         f"found {sizes}, {args.runs}, {args.warmup}")
    if args.reference or args.compare:  # checked, not imported: the runtime's memory is measured before torch loads
        require_installed("torch", "export")
    if args.compare:
        require_installed("onnxruntime_genai", "compare")
    cfg = BenchConfig(engine_dir=Path(args.engine), batch_sizes=sizes, warmup=args.warmup, runs=args.runs,
                      reference=args.reference, options=runtime_options(args).replace(concurrent=not args.sequential),
                      max_new_tokens=args.max_new_tokens, images=args.images)
    report = PipelineBench(cfg).run()
    if args.compare:
        from moai_edge.bench.compare.genai import CompareConfig, compare_genai

        report["compare"] = {"genai": compare_genai(CompareConfig(engine_dir=Path(args.engine), batch_sizes=sizes,
                                                                  options=runtime_options(args)))}
    files = write_report(report, Path(args.out))
    print(summary(report))
    print("report: " + ", ".join(str(f) for f in files))
    return 0


def cmd_eval(args) -> int:
    from moai_edge.bench.accuracy.eval import EvalConfig, run_eval
    from moai_edge.bench.accuracy.paired import load_baseline, paired
    from moai_edge.bench.accuracy.report import summary, write_eval_report

    cfg = EvalConfig(engine_dir=Path(args.engine), images=args.images, seed=args.seed, blank_experts=args.blank_experts,
                     batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, options=runtime_options(args))
    baseline = load_baseline(Path(args.against)) if args.against else None  # refused before the package loads
    report = run_eval(cfg)
    if baseline is not None:
        report["against"] = {"baseline": args.against, "package": baseline["package"],
                             "by_key": paired(report, baseline)}
    files = write_eval_report(report, Path(args.out))
    print(summary(report))
    print("report: " + ", ".join(str(f) for f in files))
    return 0
