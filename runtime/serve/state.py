"""What every route of the server shares: the package (loaded on a background thread), the worker in front of it,
the pool that reads and decodes admitted requests' images, the metrics, and the bridge between the worker's thread
and the event loop."""

import asyncio
import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from ..pipeline import Pipeline
from ..request import DEFAULT_QUESTION, Request, Result
from ..samples import sample_image
from .config import ServeConfig
from .errors import RequestRefused
from .metrics import Metrics
from .request_images import decode_image
from .worker import Admission, Cancelled, Job, Worker

log = logging.getLogger("moai_edge.serve")


class Server:

    def __init__(self, load: Callable[[], Pipeline], config: ServeConfig, *, model: str, owns_pipeline: bool):
        self.config, self.model, self.owns_pipeline = config, model, owns_pipeline
        self.pipeline: Pipeline | None = None
        self.worker: Worker | None = None
        self.failure: str | None = None
        self.ready = threading.Event()
        self.metrics = Metrics(queue_depth=lambda: self.worker.depth() if self.worker else 0,
                               in_flight=lambda: self.worker.running if self.worker else 0,
                               cache_counts=self.cache_counts)
        self.loader = threading.Thread(target=self.start, args=(load,), name="serve-load", daemon=True)
        # images are read and decoded here, never on the event loop, at most `decode_workers` at once
        self.decoder = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="serve-decode")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = asyncio.Event()  # set (on the loop) the moment shutdown begins: streams end with an error

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the app serves on (the lifespan's)."""
        self.loop = loop

    def begin_shutdown(self) -> None:
        """From any thread, as soon as the server is told to stop (SIGTERM, or BackgroundServer's exit)."""
        if self.loop is not None:
            to_loop(self.loop, self.stopping.set)

    def start(self, load: Callable[[], Pipeline]) -> None:
        try:
            pipeline = load()
            if self.config.warmup:  # the first run pays for allocations and lazy initialisation, not a client
                pipeline.ask(sample_image(), DEFAULT_QUESTION, decoding="greedy", max_new_tokens=2)
            self.pipeline = pipeline
            self.worker = Worker(pipeline, max_queue=self.config.max_queue, max_batch=self.config.max_batch,
                                 batch_wait_ms=self.config.batch_wait_ms)
            self.ready.set()
            log.info("%s loaded and warm: ready", self.model)
        except Exception as exc:  # noqa: BLE001 - reported by /health/ready and to every request
            self.failure = f"{type(exc).__name__}: {exc}"
            log.error("the package failed to load: %s", self.failure)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.decoder.shutdown(cancel_futures=True)
        if self.pipeline is not None and self.owns_pipeline:
            self.pipeline.close()

    def health(self) -> tuple[bool, dict]:
        """(ready, what /health/ready says): loading, failed, stuck (one answer running longer than
        `stuck_after_s`, or the worker gone) or ready."""
        if self.failure:
            return False, {"status": "failed", "error": self.failure}
        if not self.ready.is_set():
            return False, {"status": "loading"}
        if not self.worker.thread.is_alive():
            return False, {"status": "failed", "error": "the worker thread has stopped"}
        since = self.worker.busy_since
        running_s = time.perf_counter() - since if since is not None else 0.0
        if running_s > self.config.stuck_after_s:
            return False, {"status": "stuck", "error": f"one answer has been running for {running_s:.0f} s, more "
                                                        f"than {self.config.stuck_after_s:g} s"}
        return True, {"status": "ready", "model": self.model, "family": self.pipeline.manifest.family}

    def cache_counts(self) -> tuple[int, int]:
        cache = self.pipeline.image_cache if self.pipeline is not None else None
        return (cache.hits, cache.misses) if cache is not None else (0, 0)

    def ready_pipeline(self) -> Pipeline:
        if self.failure:
            raise RequestRefused(503, f"the package failed to load: {self.failure}", kind="server_error")
        if not self.ready.is_set():
            raise RequestRefused(503, "the package is still loading", kind="server_error",
                                 headers={"Retry-After": "5"})
        return self.pipeline

    def authorize(self, headers) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise RequestRefused(401, "expected the header 'Authorization: Bearer <api key>' with this server's key",
                                 kind="authentication_error")

    def admit(self) -> Admission:
        """A place in the queue, before anything is read or decoded for the request (429 when full)."""
        try:
            return self.worker.admit()
        except RequestRefused as exc:
            if exc.status == 429:
                self.metrics.rejected.inc()
            raise

    async def image(self, read: Callable[[], bytes]) -> np.ndarray:
        """`read()`'s bytes decoded, on the decode pool: the image at the vision input size (what the pipeline's one
        resize makes of it), so a waiting request holds S x S x 3 bytes, not the photo."""
        size, max_pixels = self.pipeline.manifest.preprocess.image_size, self.config.max_pixels
        return await asyncio.get_running_loop().run_in_executor(
            self.decoder, lambda: decode_image(read(), max_pixels, size))

    def submit(self, request: Request, admission: Admission, *,
               stream: bool) -> tuple[Job, asyncio.Future, asyncio.Queue | None]:
        """The request into its admitted place; its answer settles the returned future and, when streaming, its tokens
        (then None) go into the returned queue, both on this event loop."""
        loop = asyncio.get_running_loop()
        answer, tokens = loop.create_future(), (asyncio.Queue() if stream else None)

        def done(job: Job, result: Result | None, error: Exception | None) -> None:
            if job.cancelled.is_set() or isinstance(error, Cancelled):
                self.metrics.cancelled.inc()
            elif result is not None:
                self.metrics.answered(result, job.queue_ms)
            to_loop(loop, settle, answer, result, error)
            if tokens is not None:
                to_loop(loop, tokens.put_nowait, None)

        on_token = (lambda token: to_loop(loop, tokens.put_nowait, token)) if stream else None
        job = Job(request, done, on_token)
        self.worker.submit(job, admission)
        return job, answer, tokens


def to_loop(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: the server is stopping and nobody waits for this any more
        pass


def settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if isinstance(error, Cancelled):  # nobody waits for it any more
        future.cancel()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
