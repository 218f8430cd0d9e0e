"""`moai-edge caption`: a folder (or list file) of images -> one JSON line per image, resumable.

The job holds an exclusive lock on its output, so two jobs never write the same file. `--resume`
keeps every captioned id and retries the images whose record is an error, once per run; the file
ends with exactly one record per input, the latest (see caption_output for how records are written).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moai_edge.engines.errors import InputError

from .inputs import InputScan, collect_inputs
from .output import OutputLock, RecordWriter, prepare_resume
from .captioner import DEFAULT_QUESTION, CaptionRecord, Captioner
from ..pipeline import Pipeline


@dataclass
class JobSummary:
    total: int
    skipped: int  # already captioned in the output (resume)
    captioned: int
    errors: int
    seconds: float
    retried: int = 0  # images whose earlier error record was tried again
    ignored: str = ""  # files found but not inputs, with reasons (InputScan.skipped_text)

    @property
    def images_per_s(self) -> float:
        done = self.captioned + self.errors
        return done / self.seconds if self.seconds > 0 else 0.0

    def line(self, out: Path | str) -> str:
        retried = f" ({self.retried} earlier errors retried)" if self.retried else ""
        ignored = f"; {self.ignored}" if self.ignored else ""
        return (f"{self.total} images: {self.captioned} captioned, {self.errors} errors{retried}, {self.skipped} "
                f"already done{ignored}; {self.images_per_s:.2f} images/s -> {out}")


def record_line(record: CaptionRecord) -> dict:
    """A record as the output holds it: {"id", "caption" | "error", "timings_ms"}."""
    line = {"id": record.id}
    line.update({"caption": record.caption} if record.error is None else {"error": record.error})
    line["timings_ms"] = {k: round(v, 2) for k, v in record.timings_ms.items()}
    return line


def progress_bar(total: int, initial: int):
    """tqdm on a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="img", file=sys.stderr)


class CaptionJob:
    """A caption job's output locked and its work planned, before any model is loaded:

        with CaptionJob.open(source, out, resume=True) as job, Pipeline.load(pkg) as pipe:
            summary = job.run(Captioner(pipe, batch_size=8))
    """

    def __init__(self, scan: InputScan, out: Path, lock: OutputLock, todo: list[tuple[str, Path]], retried: int):
        self.scan, self.out, self.lock, self.todo, self.retried = scan, out, lock, todo, retried

    @classmethod
    def open(cls, source: str | Path, out: str | Path, *, resume: bool) -> "CaptionJob":
        out = Path(out)
        scan = collect_inputs(source)
        lock = OutputLock(out).acquire()
        try:
            if not resume:
                if out.exists() and out.stat().st_size > 0:
                    raise InputError(f"{out} already exists: pass --resume to continue that job, "
                                     "or choose another --out")
                return cls(scan, out, lock, scan.items, 0)
            done, errored = prepare_resume(out)
            todo = [(i, p) for i, p in scan.items if i not in done]
            return cls(scan, out, lock, todo, sum(i in errored for i, _ in todo))
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> "CaptionJob":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, captioner: Captioner) -> JobSummary:
        total, todo = len(self.scan.items), self.todo
        bar = progress_bar(total, total - len(todo))
        counts = {"caption": 0, "error": 0}
        t0 = time.perf_counter()
        writer = RecordWriter(self.out)

        def write(record: CaptionRecord) -> None:
            writer.write(record_line(record))
            counts["caption" if record.error is None else "error"] += 1
            if bar is not None:
                bar.update(1)

        try:
            captioner.caption([i for i, _ in todo], [p for _, p in todo], on_record=write)
        finally:
            writer.close()
            if bar is not None:
                bar.close()
        return JobSummary(total, total - len(todo), counts["caption"], counts["error"], time.perf_counter() - t0,
                          self.retried, self.scan.skipped_text())


def run_caption_job(pipe: Pipeline, source: str | Path, out: str | Path, *, question: str = DEFAULT_QUESTION,
                    batch_size: int = 1, resume: bool = False, max_new_tokens: int | None = None) -> JobSummary:
    captioner = Captioner(pipe, question=question, batch_size=batch_size,
                          decoding=pipe.decoding("greedy", max_new_tokens=max_new_tokens))
    with CaptionJob.open(source, out, resume=resume) as job:
        return job.run(captioner)
