"""Backbone latency and memory: the runtime Backbone against the PyTorch reference backbone on the same package.

    python -m moai_edge.bench.speed.backbone --engine DIR [--device cpu] [--threads 2] [--runs 5] [--new-tokens 16]

One sample image, no expert results (the reference's "nothing detected" inputs). Vision, aux (the family's
prefill extras), prefill (image tokens + prompt) and decode ms/token, each the median of `--runs` after one
warm-up, runtime and reference interleaved (A B A B) in one process so machine noise hits both; both sides
report the same stage names, so the comparison is stage by stage. Memory is measured in a child process
that never imports torch (bench.backbone_memory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from moai_edge.engines.errors import MoaiEdgeError
from moai_edge.engines.manifest import Manifest, load_manifest
from moai_edge.engines.options import DEVICES, RuntimeOptions
from moai_edge.runtime import AuxInputs, Pipeline, Timer, sample_image

STAGES = ("vision", "aux", "prefill", "decode_per_token")
QUESTION = "Describe this image in detail."


def decoder_weight_bytes(m: Manifest) -> int:
    """Bytes of the prefill + decode weights: the two graphs and their weight files (shared or their own)."""
    return sum(m.path(f).stat().st_size for f in {*m.component_files("prefill"), *m.component_files("decode")})


def measure_memory(engine_dir: Path, options: RuntimeOptions, *, prompt_tokens: int, new_tokens: int) -> dict:
    """bench.backbone_memory in a child process, so torch (imported here) is not in its figures."""
    args = ["--engine", str(engine_dir), "--device", options.device, "--threads", str(options.threads),
            "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens)]
    out = subprocess.run([sys.executable, "-m", "moai_edge.bench.speed.backbone_memory", *args], capture_output=True,
                         text=True)
    if out.returncode:
        raise MoaiEdgeError(f"moai_edge.bench.speed.backbone_memory: expected exit 0, "
                            f"found {out.returncode}:\n{out.stderr}")
    return json.loads(out.stdout)


def stage_runner(backbone, encode, image, cfg):
    """One answer through a backbone (runtime or reference): its stage timings in ms."""
    def run() -> dict[str, float]:
        timer = Timer()
        with timer("vision"):
            features = encode([image])
        backbone.generate(features, [AuxInputs()], [QUESTION], cfg, timer=timer)
        return timer.ms
    return run


def measure_latency(engine_dir: Path, options: RuntimeOptions, *, runs: int, new_tokens: int) -> dict:
    from ..reference.pipeline import ReferencePipeline

    options = options.replace(verify_hashes=False)
    with Pipeline.load(engine_dir, options) as pipe, ReferencePipeline.load(engine_dir, options) as ref:
        image = pipe.expert_input(sample_image())
        cfg = pipe.decoding("greedy", max_new_tokens=new_tokens).replace(eos_token_ids=())  # exactly new_tokens
        ours = stage_runner(pipe.backbone, pipe.vision.encode, image, cfg)
        theirs = stage_runner(ref.backbone, ref.backbone.encode, image, cfg)
        ours(), theirs()  # the warm-up pair
        pairs = [(ours(), theirs()) for _ in range(runs)]
        prompt = pipe.prompt(QUESTION)
        prompt_tokens = len(prompt.input_ids) - 1 + pipe.manifest.model.num_image_tokens
    results = {}
    for stage in STAGES:
        a, b = [p[0][stage] for p in pairs], [p[1][stage] for p in pairs]
        results[stage] = {"runtime_ms": statistics.median(a), "reference_ms": statistics.median(b),
                          "speedup": statistics.median(y / x for x, y in zip(a, b))}
    results["prompt_tokens"] = prompt_tokens
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, help="engine package folder (with its source checkpoint)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where the runtime's engines run (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="threads per engine and of torch (default: 2)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per side after one warm-up (default: 5)")
    p.add_argument("--new-tokens", type=int, default=16,
                   help="decoded per answer, end-of-sequence ignored (default: 16)")
    args = p.parse_args(argv)
    engine, options = Path(args.engine), RuntimeOptions(device=args.device, threads=args.threads)
    latency = measure_latency(engine, options, runs=args.runs, new_tokens=args.new_tokens)
    report = {"latency": latency,
              "memory": measure_memory(engine, options, prompt_tokens=latency["prompt_tokens"],
                                       new_tokens=args.new_tokens),
              "decoder_weights_mb": decoder_weight_bytes(load_manifest(engine, verify_hashes=False)) / 2**20}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
