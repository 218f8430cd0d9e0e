"""The `moai-edge` command line: the parser and the exit codes. What each verb does is in runtime/commands.py."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from moai_edge.engines.decoding import STRATEGIES
from moai_edge.engines.errors import MoaiEdgeError
from moai_edge.engines.options import DEVICES

from . import commands, demo, doctor
from .families import FAMILIES
from .request import DEFAULT_QUESTION

DEFAULT_DEMO_DIR = Path("artifacts/world-moai")


def package_version() -> str:
    try:
        return version("moai-edge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def engine_options(p: argparse.ArgumentParser, *, engine_required: bool = True) -> None:
    """The options every verb that runs engines shares, with one meaning everywhere."""
    p.add_argument("--engine", required=engine_required, default=None if engine_required else str(DEFAULT_DEMO_DIR),
                   help="engine package folder (made by 'moai-edge export')")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where the engines run (default: cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads per engine; 0 lets onnxruntime choose (default: 0)")
    p.add_argument("--memory-budget", type=int, default=None, metavar="MB",
                   help="run no more experts at once than fit in MB of RSS, measured on the first image "
                        "(default: no budget; at most one expert per core)")
    p.add_argument("--allow-cpu-fallback", action="store_true",
                   help="where the GPU providers cannot load, run on the CPU with a warning (default: refuse)")


def generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate at most (default: the package's)")
    p.add_argument("--decoding", choices=STRATEGIES, help="default: the package's")
    p.add_argument("--template", help="a prompt template of the package (the reference's: eval, demo; default: the "
                                      "package's)")
    p.add_argument("--seed", type=int, help="seed for sampling")


def add_export(sub) -> None:
    from moai_edge.export.config import SIZE_PRESETS  # torch-free tables: the choices come from the registries
    from moai_edge.export.precision import PRECISION_PRESETS

    families = sorted(FAMILIES)
    e = sub.add_parser("export", help="checkpoint -> engine package (needs moai-edge[export])")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", choices=families, help="build a seeded tiny checkpoint and export it")
    src.add_argument("--world", choices=families, help="the trained tiny-world checkpoints shipped with moai-edge "
                                                       "(see `moai-edge eval`)")
    src.add_argument("--checkpoint", help="checkpoint folder or hub id (BK-Lee/MoAI-7B layout)")
    e.add_argument("--family", choices=families, help="check the checkpoint is of this family")
    e.add_argument("--preset", default="tiny", choices=[k for k in SIZE_PRESETS if k != "world"],
                   help="size of a --tiny checkpoint")
    e.add_argument("--seed", type=int, default=0, help="seed of a --tiny checkpoint's weights (--world: of the "
                                                                    "untrained detector and scene graph)")
    e.add_argument("--out", required=True, help="the engine package folder to write")
    e.add_argument("--precision", default="fp32", metavar="PRESET",
                   help=f"what each component is stored and computed in, one of {', '.join(PRECISION_PRESETS)}: fp16 "
                        f"and int4-fp16 for GPUs, int8 and int4 for CPUs (weight-only decoder, int8 tower and "
                        f"experts), fp16-int8 for TensorRT (docs/precision.md). Below fp32 the package is held to the "
                        f"fp32 one on world questions (token agreement, KL)")
    e.add_argument("--no-validate", action="store_true", help="skip the ONNX-vs-PyTorch validation")
    e.add_argument("--no-experts", action="store_true", help="backbone only")
    e.add_argument("--panoptic", help="Mask2Former checkpoint folder or hub id (default: the reference's)")
    e.add_argument("--detector", help="OWLv2 checkpoint folder or hub id (MoAI; default: the reference's)")
    e.add_argument("--scene-graph", help="OpenPSG's PSGTR checkpoint file, psgtr_r50_epoch_60.pth (MoAI; required)")
    e.add_argument("--labels", help="the detector's text queries: a JSON list or one per line, or a JSON object with "
                                    "'detector_queries' and 'psg_predicates' (MoAI)")
    e.add_argument("--moai-repo", help="a local clone of ByungKwanLee/MoAI to read the detector queries from, as data")
    e.add_argument("--vision-config",
                   help="the vision tower's fields no tensor gives, as JSON, e.g. '{\"num_heads\": 12}'")
    e.set_defaults(func=commands.cmd_export)


def add_runtime_verbs(sub) -> None:
    a = sub.add_parser("ask", help="ask one question about one image (streams the answer)")
    a.add_argument("image", help="an image file")
    a.add_argument("question", help="the question, in quotes")
    engine_options(a)
    generation_options(a)
    a.add_argument("--json", action="store_true", help="print one JSON object: answer, tokens, experts, timings")
    a.set_defaults(func=commands.cmd_ask)

    x = sub.add_parser("experts", help="run the package's experts on one image and print their results")
    x.add_argument("image", help="an image file")
    engine_options(x)
    x.add_argument("--json", action="store_true", help="print one JSON object")
    x.set_defaults(func=commands.cmd_experts)

    c = sub.add_parser("caption", help="caption a folder (or list file) of images into JSON lines, resumable")
    c.add_argument("input", help="a folder (searched recursively) or a text file with one image path per line")
    engine_options(c)
    c.add_argument("--out", required=True, help="JSONL file: one record per image (id, caption or error, timings_ms); "
                                                 "with --ray a folder of such files")
    c.add_argument("--batch-size", type=int, default=1, help="images per batch (default: 1)")
    c.add_argument("--question", default=DEFAULT_QUESTION, help="what to ask about every image")
    c.add_argument("--resume", action="store_true", help="keep the captions in --out, retry its errors, do the rest")
    c.add_argument("--max-new-tokens", type=int, help="tokens to generate at most (default: the package's)")
    r = c.add_argument_group("on a Ray cluster (needs moai-edge[ray])")
    r.add_argument("--ray", action="store_true", help="caption with Ray Data actors; --out is then a folder of JSONL "
                                                      "shards, merged by id")
    r.add_argument("--ray-address", metavar="ADDR", help="the cluster to join: 'auto' for the one this machine is a "
                                                         "node of (default: $RAY_ADDRESS, else a new local cluster)")
    r.add_argument("--num-workers", type=int, help="caption actors, each loading the package once (default: 1)")
    r.add_argument("--worker-cpus", type=float, help="CPUs each actor reserves, and its threads unless --threads "
                                                     "(default: 1)")
    r.add_argument("--worker-memory-mb", type=int, metavar="MB", help="memory each actor reserves: the peak RSS "
                   "'moai-edge bench' reports at this --batch-size, plus headroom (default: none reserved)")
    r.add_argument("--worker-gpus", type=float, help="GPUs each actor reserves; needed with --device cuda (default: 0)")
    c.set_defaults(func=commands.cmd_caption,
                   interrupted="the records finished so far are kept: run again with --resume")

    d = sub.add_parser("demo", help="build the trained tiny-world MoAI package if missing; caption and "
                                             "question held-out world images, each answer beside the truth")
    engine_options(d, engine_required=False)
    d.add_argument("--max-new-tokens", type=int, help="tokens per answer (default: 48)")
    d.set_defaults(func=demo.cmd_demo)


def add_serve(sub) -> None:
    s = sub.add_parser("serve", help="an HTTP server for the package: OpenAI chat completions (streamed), /v1/ask, "
                                     "a camera WebSocket, health and Prometheus metrics (needs moai-edge[serve])")
    engine_options(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="default: 8000")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $MOAI_EDGE_API_KEY if set, else "
                                     "no key)")
    s.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="a folder whose files an image_url may name (repeatable; default: no local files)")
    s.add_argument("--max-queue", type=int, default=8, help="requests waiting at most; more get 429 (default: 8)")
    s.add_argument("--max-batch", type=int, default=1, help="requests answered as one batch (default: 1)")
    s.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default: 5)")
    s.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (default: 20)")
    s.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (default: 40M)")
    s.add_argument("--max-new-tokens", type=int, help="the most tokens a request may ask for (default: no limit "
                                                       "beyond the package's context)")
    s.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="S",
                   help="on SIGTERM, how long answers in flight may take before they are cut; a cut stream ends with "
                        "an error event (default: 10)")
    s.add_argument("--read-timeout", type=float, default=30.0, metavar="S",
                   help="how long a request's head, and then its body, may take to arrive; 408 after (default: 30)")
    s.add_argument("--stuck-after", type=float, default=300.0, metavar="S",
                   help="/health/ready answers 503 'stuck' while one answer has run longer than this (default: 300)")
    s.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser origin (e.g. http://localhost:3000) allowed to call without an API key "
                        "(repeatable; default: none: cross-origin requests are refused)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host name accepted without an API key besides loopback names and --host (repeatable)")
    s.add_argument("--image-cache-mb", type=int, default=256,
                   help="keep recent images' features and expert results for their next question "
                        "(default: 256; 0: off)")
    s.set_defaults(func=commands.cmd_serve, interrupted="the server stopped")


def add_bench_verbs(sub) -> None:
    v = sub.add_parser("verify", help="runtime vs the PyTorch reference on the package's checkpoint")
    engine_options(v)
    v.add_argument("--images", nargs="*", default=[], help="images to run end to end (experts, text, tokens)")
    v.add_argument("--question", default=DEFAULT_QUESTION, help="the question asked about each image")
    v.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens compared per image (default: 16)")
    v.add_argument("--save-golden", metavar="DIR", help="also write each graph's inputs and outputs of this run, for "
                                                        "a run on another device to be compared against")
    v.add_argument("--golden", metavar="DIR", help="instead: feed each graph the inputs saved in DIR (--save-golden) "
                                                   "on --device and report how far its outputs are (no torch needed)")
    v.set_defaults(func=commands.cmd_verify)

    b = sub.add_parser("bench", help="per-stage latency, memory, roofline and (--reference) PyTorch side by side")
    engine_options(b)
    b.add_argument("--batch-sizes", default="1,2,4,8", help="comma-separated, e.g. 1,8")
    b.add_argument("--warmup", type=int, default=1, help="untimed runs per batch size (default: 1)")
    b.add_argument("--runs", type=int, default=5, help="timed runs per batch size (default: 5)")
    b.add_argument("--reference", action="store_true", help="also time the PyTorch reference (needs moai-edge[export])")
    b.add_argument("--out", default="bench-report", help="folder for report.json, report.md and the plots")
    b.add_argument("--max-new-tokens", type=int, default=32, help="decoded per answer, end-of-sequence ignored")
    b.add_argument("--images", nargs="*", default=[], help="default: generated sample images")
    b.add_argument("--sequential", action="store_true", help="experts one after another (default: concurrently)")
    b.add_argument("--compare", choices=["genai"], help="also time onnxruntime-genai's decoder built from the same "
                   "weights against ours, fp32 and int4, at each batch size (needs moai-edge[compare])")
    b.set_defaults(func=commands.cmd_bench)

    q = sub.add_parser("eval", help="accuracy per question type on held-out tiny-world images: report.json, report.md")
    engine_options(q)
    q.add_argument("--images", type=int, default=100, help="held-out world images to ask about (default: 100)")
    q.add_argument("--seed", type=int, default=0,
                   help="which held-out images: S selects seeds 1_000_000 * (S + 1) onward; seeds never overlap "
                        "(default: 0)")
    q.add_argument("--blank-experts", action="store_true",
                   help="replace every expert result by the reference's empty case (the ablation)")
    q.add_argument("--out", default="eval-report", help="folder for report.json and report.md (default: eval-report)")
    q.add_argument("--batch-size", type=int, default=8, help="questions per batch (default: 8)")
    q.add_argument("--max-new-tokens", type=int, help="tokens per answer at most, greedy (default: the package's)")
    q.add_argument("--against", metavar="REPORT", help="an earlier eval's report.json (or its folder) on the same "
                   "images: compare the answers question by question (McNemar's exact test)")
    q.set_defaults(func=commands.cmd_eval)


def add_gpu_verbs(sub) -> None:
    d = sub.add_parser("doctor", help="versions, GPU, CUDA, cuDNN, TensorRT, Jetson power mode; with --engine where "
                                      "each graph would run")
    d.add_argument("--engine", help="an engine package: its graphs' placement from the static checks")
    d.add_argument("--device", choices=("cuda", "tensorrt"), default="tensorrt", help="default: tensorrt")
    d.set_defaults(func=doctor.cmd_doctor)
    b = sub.add_parser("build-engines", help="build and cache every TensorRT engine of a package ahead of time")
    engine_options(b)
    b.set_defaults(func=doctor.cmd_build_engines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moai-edge", description="Edge runtime for CoLLaVO and MoAI")
    p.add_argument("--version", action="version", version=f"moai-edge {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    add_export(sub)
    add_runtime_verbs(sub)
    add_serve(sub)
    add_bench_verbs(sub)
    add_gpu_verbs(sub)
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
