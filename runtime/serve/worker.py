"""One thread answers the server's requests, in arrival order, behind a bounded queue.

A request takes its place in the queue before any of its work is done (`admit`, before its image is read or
decoded); one that finds the queue full is refused at once (429 with a Retry-After from the recent service time), so
neither the backlog nor the images being prepared for it grow past `max_queue`. With `max_batch` > 1 the first
waiting request waits up to `batch_wait_ms` for others with the same decoding settings, and they are answered as one
batch. A job cancelled while it waits is never run; one cancelled while it decodes stops at its next step, whatever
its decoding strategy (the pipeline's `should_stop`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..pipeline import Pipeline
from ..request import Request, Result
from .errors import RequestRefused

Done = Callable[["Job", "Result | None", "Exception | None"], None]


class Cancelled(Exception):
    """The client went away before its answer was done."""


@dataclass(eq=False)  # compared by identity
class Job:
    request: Request
    done: Done  # called once, on the worker thread, with the result or the exception
    on_token: Callable[[int], None] | None = None  # each generated token id, on the worker thread
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def batch_key(self) -> tuple[str, str | None]:
        return repr(self.request.decoding), self.request.template

    @property
    def queue_ms(self) -> float:
        return ((self.started or time.perf_counter()) - self.submitted) * 1e3


class Admission:
    """A place in the queue, taken before the request's image is prepared; `Worker.submit` fills it with the job,
    `release` gives it back (the request failed first)."""

    def __init__(self, worker: "Worker"):
        self.worker, self.held = worker, True

    def release(self) -> None:
        with self.worker.cond:
            if self.held:
                self.held = False
                self.worker.admitted -= 1


class Worker:
    def __init__(self, pipeline: Pipeline, *, max_queue: int, max_batch: int = 1, batch_wait_ms: float = 0.0):
        self.pipeline, self.max_queue, self.max_batch = pipeline, max_queue, max_batch
        self.batch_wait_s = batch_wait_ms / 1e3
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.admitted = 0  # places taken by requests whose image is still being prepared
        self.running = 0  # requests taken from the queue and not yet answered
        self.busy_since: float | None = None  # when the batch in flight started (perf_counter)
        self.batch_s = 1.0  # a recent batch's service time, for Retry-After; refined by every batch
        self.thread = threading.Thread(target=self.serve, name="serve-worker", daemon=True)
        self.thread.start()

    def admit(self) -> Admission:
        """A place in the queue, or 503 (shutting down) / 429 (full) before any work is done for the request."""
        with self.cond:
            if self.closed:
                raise RequestRefused(503, "the server is shutting down", kind="server_error")
            waiting = len(self.pending) + self.admitted
            if waiting >= self.max_queue:
                wait = max(1, math.ceil(self.batch_s * (waiting / self.max_batch + 1)))
                raise RequestRefused(429, f"the queue is full ({self.max_queue} requests waiting): retry in {wait} s",
                                     kind="rate_limit_error", headers={"Retry-After": str(wait)})
            self.admitted += 1
            return Admission(self)

    def submit(self, job: Job, admission: Admission) -> None:
        """The job into the place `admission` holds."""
        with self.cond:
            if not admission.held:
                raise RequestRefused(503, "the request's place in the queue was given back", kind="server_error")
            admission.held = False
            self.admitted -= 1
            if self.closed:
                raise RequestRefused(503, "the server is shutting down", kind="server_error")
            self.pending.append(job)
            self.cond.notify()

    def depth(self) -> int:
        return len(self.pending) + self.admitted

    def serve(self) -> None:
        while (batch := self.take()) is not None:
            self.busy_since = time.perf_counter()
            try:
                self.answer(batch)
            finally:
                self.busy_since = None
                with self.cond:
                    self.running -= len(batch)

    def take(self) -> list[Job] | None:
        with self.cond:
            while not self.pending and not self.closed:
                self.cond.wait()
            if not self.pending:
                return None
            batch = [self.pending.popleft()]
            deadline = time.perf_counter() + self.batch_wait_s
            while len(batch) < self.max_batch:
                key = batch[0].batch_key
                batch += [j for j in self.pending if j.batch_key == key][:self.max_batch - len(batch)]
                self.pending = deque(j for j in self.pending if j not in batch)
                left = deadline - time.perf_counter()
                if len(batch) == self.max_batch or left <= 0 or self.closed:
                    break
                self.cond.wait(left)
            self.running += len(batch)
        for job in batch:
            job.started = time.perf_counter()
        return batch

    def answer(self, batch: list[Job]) -> None:
        live = [j for j in batch if not j.cancelled.is_set()]
        for job in batch:
            if job.cancelled.is_set():
                job.done(job, None, Cancelled("the client went away while the request waited"))
        if not live:
            return

        def on_token(row: int, token: int) -> bool | None:
            job = live[row]
            if job.cancelled.is_set():
                return False
            if job.on_token is not None:
                job.on_token(token)
            return None

        start = time.perf_counter()
        try:
            results = self.pipeline.run([j.request for j in live], on_token=on_token,
                                        should_stop=lambda row: live[row].cancelled.is_set())
        except Exception as exc:  # noqa: BLE001 - reported to each request; the server goes on
            if len(live) > 1:  # one request the batch cannot take must not sink the others
                for job in live:
                    self.answer([job])
                return
            live[0].done(live[0], None, exc)
            return
        self.batch_s = 0.7 * self.batch_s + 0.3 * (time.perf_counter() - start)
        for job, result in zip(live, results):
            job.done(job, result, None)

    def close(self) -> None:
        """Refuse what still waits (503) and stop after the batch in flight."""
        with self.cond:
            self.closed = True
            waiting, self.pending = list(self.pending), deque()
            self.cond.notify_all()
        for job in waiting:
            job.done(job, None, RequestRefused(503, "the server is shutting down", kind="server_error"))
        self.thread.join()
