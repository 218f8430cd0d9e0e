"""The whole model as users call it: experts -> verbalization / maps -> vision -> prefill -> decode.

    with Pipeline.load("pkg/tiny-moai", threads=2) as pipe:
        result = pipe.ask("photo.jpg", "Describe this image.", on_token=print)
        records = pipe.caption(["a.jpg", "b.png"], batch_size=8)

The experts of one image and the vision tower run concurrently on a thread pool (`concurrent=True`):
on CPU each expert session has one intra-op thread and spinning off; on a GPU (`device="cuda"` or
`"tensorrt"`) each session has its own CUDA stream (engines.cuda_streams). Sequentially, every
session gets `threads`. Calls are serialized by a lock, so one Pipeline may be shared between threads.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from moai_edge.engines.cuda_streams import CudaStreams
from moai_edge.engines.errors import EngineError, InputError, MoaiEdgeError
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.ort_engine import OrtOptions

from .experts.runner import Experts
from .generation import DecodingConfig
from .images import _describe, load_image, resize_bilinear
from .limits import check_batch_size, check_threads
from .model import Model, RuntimeOptions, Timer

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
DEFAULT_QUESTION = "Describe this image in detail."


@dataclass
class PipelineResult:
    answer: str
    tokens: list[int]
    experts: dict  # the experts' structured results (segments, detections, relations, OCR lines)
    verbalized: str | None  # MoAI: the verbalized text; CoLLaVO: the segment text put before the question
    timings_ms: dict[str, float]
    kv_cache_bytes: int = 0
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # (stage, start, end) in perf_counter seconds


@dataclass
class CaptionRecord:
    """One image of a caption job: `caption` or `error`, never both."""

    index: int
    caption: str | None = None
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class Pipeline:
    def __init__(self, manifest: Manifest, *, device: str = "cpu", threads: int = 0, concurrent: bool = True,
                 expert_batch: int | None = None):
        """`expert_batch`: images per expert graph run. None: 1 on CPU, where the experts are compute-bound so
        batching them gains nothing while their activations grow with the batch (the full-size MoAI experts need
        over 20 GB at batch 8); the whole batch on a GPU. Prefill and decode always take the whole batch."""
        if device not in PROVIDERS:
            raise InputError(f"device must be one of {sorted(PROVIDERS)}, found '{device}'")
        if not manifest.experts:
            raise InputError(f"the package in {manifest.root} has no experts (exported with --no-experts): use Model")
        check_threads(threads)
        self.closed = False
        self.manifest = manifest
        self.streams = CudaStreams() if device != "cpu" and concurrent else None  # one per concurrent session
        self.expert_batch = expert_batch if expert_batch is not None else (1 if device == "cpu" else None)
        self.model = Model(manifest, RuntimeOptions(providers=PROVIDERS[device], threads=threads), streams=self.streams)
        expert_threads = 1 if concurrent else threads
        # the experts run once per image with large activations: returned to the system after each run, not pooled
        self.experts = Experts(manifest, OrtOptions(providers=PROVIDERS[device], intra_op_threads=expert_threads,
                                                    memory_arena=False), streams=self.streams)
        workers = len(self.experts.steps()) + 1  # + the vision tower
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="expert") if concurrent else None
        self.lock = threading.RLock()  # close() waits for a call in flight; a token callback may close

    @classmethod
    def load(cls, engine_dir: str | Path, *, device: str = "cpu", threads: int = 0, concurrent: bool = True,
             expert_batch: int | None = None) -> "Pipeline":
        return cls(Manifest.load(engine_dir), device=device, threads=threads, concurrent=concurrent, expert_batch=expert_batch)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
            self.experts.close()
            self.model.close()
            if self.streams is not None:
                self.streams.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def family(self) -> str:
        return self.manifest.family

    def expert_input(self, image) -> np.ndarray:
        """The experts see what the reference gives them: the image resized to the vision input (490), RGB."""
        return resize_bilinear(load_image(image), self.manifest.preprocess.image_size)[..., :3]

    def ask(self, image, question: str, *, decoding: DecodingConfig | str | None = None, max_new_tokens: int | None = None,
            seed: int | None = None, template: str | None = None,
            on_token: Callable[[int], None] | None = None) -> PipelineResult:
        stream = (lambda row, tok: on_token(tok)) if on_token else None
        return self.ask_batch([image], [question], decoding=decoding, max_new_tokens=max_new_tokens, seed=seed,
                              template=template, on_token=stream)[0]

    def ask_batch(self, images: list, questions: list[str], *, decoding=None, max_new_tokens=None, seed=None,
                  template: str | None = None, on_token: Callable[[int, int], None] | None = None) -> list[PipelineResult]:
        """Images are paths, bytes, PIL images or HxWx3 uint8 arrays; any bad one raises (see `caption`)."""
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images but {len(questions)} questions: expected one question per image")
        with self.lock:
            if self.closed:
                raise EngineError("this Pipeline is closed: load the package again to ask more")
            t0, timer = time.perf_counter(), Timer()
            with timer("load"):
                pixels = [self.expert_input(img) for img in images]
            if self.pool is not None:  # the vision tower needs nothing from the experts: it runs beside them
                features = self.pool.submit(self.model.encode_images, pixels, timer)
                with timer("experts"):
                    results = self.experts.run(pixels, pool=self.pool, timings=timer.ms, max_batch=self.expert_batch)
                features = features.result()
            else:
                with timer("experts"):
                    results = self.experts.run(pixels, timings=timer.ms, max_batch=self.expert_batch)
                features = self.model.encode_images(pixels, timer)
            with timer("verbalize"):
                aux = [self.experts.aux_inputs(r) for r in results]
            answers = self.model.ask_batch(pixels, questions, aux=aux, decoding=decoding, max_new_tokens=max_new_tokens,
                                           seed=seed, template=template, on_token=on_token, image_features=features,
                                           timer=timer)
            total = (time.perf_counter() - t0) * 1e3
        out = []
        for r, a, ans in zip(results, aux, answers):
            timings = {**ans.timings_ms, "total": total}
            out.append(PipelineResult(ans.answer, ans.tokens, r.to_json(),
                                      a.verbalized if self.family == "moai" else a.segment_text, timings,
                                      ans.kv_cache_bytes, timer.spans))
        return out

    def caption(self, images: list, *, question: str = DEFAULT_QUESTION, batch_size: int = 1,
                max_new_tokens: int | None = None, on_record: Callable[[CaptionRecord], None] | None = None
                ) -> list[CaptionRecord]:
        """Greedy captions in batches; an image that cannot be read becomes an error record, the rest go on."""
        check_batch_size(batch_size)
        records = []
        for start in range(0, len(images), batch_size):
            batch = list(enumerate(images[start:start + batch_size], start))
            done = self.caption_batch(batch, question, max_new_tokens)
            for rec in done:
                if on_record:
                    on_record(rec)
            records += done
        return records

    def caption_batch(self, batch: list[tuple[int, object]], question: str, max_new_tokens: int | None) -> list[CaptionRecord]:
        records, good = {}, []
        for i, src in batch:
            try:
                good.append((i, load_image(src, name=_describe(src, i))))
            except MoaiEdgeError as exc:
                records[i] = CaptionRecord(i, error=str(exc))
        if len(good) > 1:
            try:
                self.caption_decoded(good, records, question, max_new_tokens)
            except MoaiEdgeError:  # one image the batch cannot take must not sink the others: one by one
                for item in good:
                    self.caption_one(item, records, question, max_new_tokens)
        elif good:
            self.caption_one(good[0], records, question, max_new_tokens)
        return [records[i] for i, _ in batch]

    def caption_one(self, item, records: dict, question: str, max_new_tokens: int | None) -> None:
        try:
            self.caption_decoded([item], records, question, max_new_tokens)
        except MoaiEdgeError as exc:
            records[item[0]] = CaptionRecord(item[0], error=str(exc))

    def caption_decoded(self, good: list[tuple[int, np.ndarray]], records: dict, question: str, max_new_tokens) -> None:
        results = self.ask_batch([img for _, img in good], [question] * len(good), decoding="greedy",
                                 max_new_tokens=max_new_tokens)
        for (i, _), r in zip(good, results):
            per_image = r.timings_ms["total"] / len(good)  # the batch's wall time, shared out
            records[i] = CaptionRecord(i, caption=r.answer, timings_ms={**r.timings_ms, "per_image": per_image})

