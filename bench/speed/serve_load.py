"""Load on `moai-edge serve`: N concurrent clients send a fixed number of chat completions on localhost; every
request is answered or refused with 429 (none lost), and the answers are checked against the Python API's.

    python -m moai_edge.bench.speed.serve_load --engine pkg/tiny-moai --clients 8 --requests 64 [--max-queue 8]
        [--max-batch 1] [--threads 2]

Reports p50/p99 latency of the answered requests (arrival to answer, queue included) and their throughput.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from moai_edge.engines.options import RuntimeOptions
from moai_edge.runtime import Pipeline, sample_image
from moai_edge.runtime.serve import BackgroundServer, ServeConfig, create_app

QUESTIONS = ("What is in the image?", "Is there a car?", "Describe the image in detail.")


@dataclass
class Load:
    statuses: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # of the answered requests
    answers: list[tuple[int, str, str]] = field(default_factory=list)  # (image index, question, answer)
    seconds: float = 0.0

    def summary(self) -> dict:
        answered = len(self.latencies_ms)
        p50, p99 = np.percentile(self.latencies_ms, [50, 99]) if answered else (float("nan"),) * 2
        return {"requests": len(self.statuses), "answered": answered, "rejected_429": self.statuses.count(429),
                "other": len(self.statuses) - answered - self.statuses.count(429),
                "p50_ms": float(p50), "p99_ms": float(p99), "answered_per_s": answered / self.seconds}


def png_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_body(url: str, question: str, max_new_tokens: int, model: str | None = None) -> dict:
    """A chat completion asking `question` about the image at `url`; `model`: the served model's name (/v1/models),
    None to leave it out."""
    body = {"temperature": 0, "max_tokens": max_new_tokens,
            "messages": [{"role": "user", "content": [{"type": "text", "text": question},
                                                      {"type": "image_url", "image_url": {"url": url}}]}]}
    return {"model": model, **body} if model is not None else body


def run_load(base_url: str, images: list[np.ndarray], *, clients: int, requests: int, max_new_tokens: int) -> Load:
    """Request k asks QUESTIONS[k % 3] about images[k % len(images)]; `clients` threads send them, each its next
    request as soon as its last one is answered or refused."""
    import httpx

    urls = [png_url(im) for im in images]
    load = Load()

    def one(k: int) -> None:
        image, question = k % len(images), QUESTIONS[k % len(QUESTIONS)]
        t0 = time.perf_counter()
        r = httpx.post(f"{base_url}/v1/chat/completions", json=chat_body(urls[image], question, max_new_tokens),
                       timeout=600)
        load.statuses.append(r.status_code)
        if r.status_code == 200:
            load.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            load.answers.append((image, question, r.json()["choices"][0]["message"]["content"]))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(requests)))
    load.seconds = time.perf_counter() - start
    return load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moai_edge.bench.speed.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--images", type=int, default=4, help="distinct images the requests cycle through (default: 4)")
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=1)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--image-cache-mb", type=int, default=256)
    args = p.parse_args(argv)
    options = RuntimeOptions(threads=args.threads, image_cache_mb=args.image_cache_mb)
    config = ServeConfig(port=0, max_queue=args.max_queue, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    images = [sample_image(size=320, seed=s) for s in range(args.images)]
    with Pipeline.load(args.engine, options) as pipe:
        with BackgroundServer(create_app(lambda: pipe, config, owns_pipeline=False)) as server:
            load = run_load(server.url, images, clients=args.clients, requests=args.requests,
                            max_new_tokens=args.max_new_tokens)
        expected = {(i, q): pipe.ask(images[i], q, decoding="greedy", max_new_tokens=args.max_new_tokens).answer
                    for i in range(len(images)) for q in QUESTIONS}
    report = {**load.summary(), "answers_identical": all(expected[i, q] == a for i, q, a in load.answers),
              **{k: getattr(args, k) for k in ("clients", "max_queue", "max_batch", "max_new_tokens")}}
    print(json.dumps(report, indent=2))
    return 0 if report["answers_identical"] and report["other"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
