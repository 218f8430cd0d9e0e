"""A second question about the same image with the image cache on, against the first (which fills it).

    python -m moai_edge.bench.speed.image_cache --engine pkg/tiny-moai [--rounds 5] [--threads 2]

Each round takes a new image and asks two questions about it, so the first misses and the second hits: the two
latencies are measured side by side in every round (A B A B), and the answers are checked against a pipeline
without the cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from moai_edge.engines.options import RuntimeOptions
from moai_edge.runtime import Pipeline, sample_image

QUESTIONS = ("What is in the image?", "Describe the image in detail.")


def first_and_second(engine: str, options: RuntimeOptions, rounds: int, max_new_tokens: int) -> dict:
    firsts, seconds, same = [], [], True
    with Pipeline.load(engine, options.replace(image_cache_mb=256)) as cached, Pipeline.load(engine, options) as plain:
        for r in range(rounds + 1):  # round 0 warms both up
            image = sample_image(size=320, seed=1000 + r)
            times = []
            for q in QUESTIONS:
                t0 = time.perf_counter()
                got = cached.ask(image, q, max_new_tokens=max_new_tokens)
                times.append(time.perf_counter() - t0)
                same &= got.tokens == plain.ask(image, q, max_new_tokens=max_new_tokens).tokens
            if r:
                firsts.append(times[0] * 1e3)
                seconds.append(times[1] * 1e3)
        cache = cached.image_cache
        return {"first_ms": statistics.median(firsts), "second_ms": statistics.median(seconds),
                "speedup": statistics.median(f / s for f, s in zip(firsts, seconds)), "answers_identical": same,
                "hits": cache.hits, "misses": cache.misses, "cache_bytes": cache.bytes,
                "cache_max_bytes": cache.max_bytes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, help="engine package folder")
    p.add_argument("--rounds", type=int, default=5, help="images, two questions each, after one warm-up (default: 5)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads per engine (default: 2)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens per answer at most (default: 16)")
    args = p.parse_args(argv)
    report = first_and_second(args.engine, RuntimeOptions(threads=args.threads), args.rounds, args.max_new_tokens)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
