"""`moai-edge caption --ray`: the caption job on a Ray cluster, through Ray Data.

    summary = run_ray_caption_job("pkg/moai", "photos/", "captions/", workers=RayWorkers(count=4, memory_mb=1500))

The driver lists the inputs (caption_inputs) and what the output folder already holds; Ray Data streams the
rest through two stages: tasks read each image's bytes, and a pool of actors (`CaptionWorker`), each of which
loads the Pipeline once, caption them with the id-keyed Captioner. Bad images become error records with the
messages of the single-machine job.

The output is a folder of shards, `part-<time>-<uuid>.jsonl`, one per actor process, each in the format of
the single-machine job (caption_output): every record is appended and fsynced as soon as its batch is done,
so an interrupted job keeps all it finished, and no two processes ever write one file.

A worker that dies (killed, out of memory, its node lost) loses nothing: Ray Data restarts the actor, in a
new process and so a new shard, and runs again every batch the dead one had not returned. The records the
dead one wrote of such a batch are then in two shards. Reading merges by id (`read_shards`): the latest
shard's record wins, except that an error never replaces a caption. `--resume` makes the folder so on disk
(`prepare_shards`: one caption per id, error records dropped and their images tried again, torn last lines
cut), shard by shard, each rewrite atomic, before any work is done.

On a real cluster the inputs, the package and the output folder must be at the same path on every node
(a shared filesystem).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moai_edge.engines.errors import ImageError, InputError, require
from moai_edge.engines.manifest import load_manifest
from moai_edge.engines.options import RuntimeOptions, usable_cores

from .inputs import collect_inputs
from .job import JobSummary, record_line
from .output import OutputLock, RecordFile, RecordWriter, read_records, rewrite, sync_folder
from .captioner import DEFAULT_QUESTION, CaptionRecord, Captioner
from ..images import open_path
from ..limits import check_batch_size, check_new_tokens
from ..pipeline import Pipeline

SHARD_PATTERN = "part-*.jsonl"


@dataclass(frozen=True)
class RayWorkers:
    """How many caption actors run, and what each one reserves on its node."""

    count: int = 1
    cpus: float = 1.0  # also the actor's onnxruntime threads, unless RuntimeOptions.threads says otherwise
    memory_mb: int | None = None  # the peak RSS `moai-edge bench` reports at the batch size, plus headroom
    gpus: float = 0.0

    def check(self, options: RuntimeOptions) -> None:
        memory = self.memory_mb if self.memory_mb is not None else 1
        for option, value, low in (("--num-workers", self.count, 1), ("--worker-cpus", self.cpus, 0.01),
                                   ("--worker-memory-mb", memory, 1), ("--worker-gpus", self.gpus, 0)):
            if value < low:
                raise InputError(f"{option}: expected at least {low}, found {value}")
        if options.device != "cpu" and self.gpus == 0:
            raise InputError(f"--device {options.device} on Ray needs --worker-gpus: Ray hides the GPUs from an "
                             f"actor that reserves none")


@dataclass(frozen=True)
class WorkerSettings:
    """What each caption actor is built from."""

    engine: str  # absolute paths: the actors' working folder is not the driver's
    out: str
    options: RuntimeOptions
    cpus: float
    question: str
    batch_size: int
    max_new_tokens: int | None


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob(SHARD_PATTERN))  # by name, so by the time each was started


def latest_by_id(files: list[RecordFile]) -> dict[str, dict]:
    """One record per id: the latest (later shards, later lines), except that an error never replaces a caption."""
    merged: dict[str, dict] = {}
    for f in files:
        for image_id, record in f.latest().items():
            kept = merged.get(image_id)
            if kept is None or "caption" in record or "error" in kept:
                merged[image_id] = record
    return merged


def read_shards(out: str | Path) -> dict[str, dict]:
    """The records of a `--ray` output folder, merged by id."""
    return latest_by_id([read_records(p) for p in shard_files(Path(out))])


def prepare_shards(out: Path) -> tuple[set[str], set[str]]:
    """Leave in the shards only the merged caption of each id, rewriting (or removing) only the shards that hold
    anything else. Returns the captioned ids and the ids whose error records were dropped, to be tried again.
    A crash between two rewrites loses nothing: a caption is dropped only where the one kept is in another shard."""
    paths = shard_files(out)
    files = [read_records(p) for p in paths]
    merged = latest_by_id(files)
    for path, f in zip(paths, files):
        keep = [r for r in f.records if merged[r["id"]] is r and "caption" in r]
        if not keep:
            path.unlink()
        elif len(keep) != len(f.records) or f.torn:
            rewrite(path, keep)
    if paths:
        sync_folder(out)
    return {i for i, r in merged.items() if "caption" in r}, {i for i, r in merged.items() if "error" in r}


def read_image_bytes(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data task: each path's bytes, or no bytes where it cannot be read (then the worker opens the path itself,
    so that the error record says what the single-machine job's would; a readable image file is never empty)."""
    images = []
    for image_id, path in zip(batch["id"], batch["path"]):
        try:
            images.append(open_path(Path(path), f"'{image_id}'").read_bytes())
        except (ImageError, OSError):
            images.append(b"")
    return {"id": batch["id"], "path": batch["path"], "image": np.array(images, dtype=object)}


class CaptionWorker:
    """A Ray Data actor: the Pipeline loaded once, the id-keyed Captioner, and this process's own shard."""

    def __init__(self, settings: WorkerSettings):
        options = settings.options
        if options.threads == 0:  # onnxruntime's default is every core of the node, shared with other actors
            options = options.replace(threads=max(1, min(int(settings.cpus), usable_cores())))
        self.pipe = Pipeline.load(settings.engine, options)
        self.captioner = Captioner(self.pipe, question=settings.question, batch_size=settings.batch_size,
                                   decoding=self.pipe.decoding("greedy", max_new_tokens=settings.max_new_tokens))
        self.shard = Path(settings.out) / f"part-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}.jsonl"
        self.writer: RecordWriter | None = None  # the shard is created with its first record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.pipe.close()

    def __del__(self) -> None:  # Ray Data's hook when it retires the actor (a killed one leaves whole lines only)
        if hasattr(self, "writer"):  # fully built
            self.close()

    def write(self, record: CaptionRecord) -> None:
        if self.writer is None:
            self.writer = RecordWriter(self.shard)
        self.writer.write(record_line(record))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"]]
        images = [bytes(image) if len(image) else str(path) for image, path in zip(batch["image"], batch["path"])]
        records = self.captioner.caption(ids, images, on_record=self.write)
        return {"error": np.array([r.error is not None for r in records])}


def run_ray_caption_job(engine: str | Path, source: str | Path, out: str | Path, *,
                        options: RuntimeOptions | None = None, question: str = DEFAULT_QUESTION,
                        batch_size: int = 1, max_new_tokens: int | None = None, resume: bool = False,
                        workers: RayWorkers | None = None, address: str | None = None) -> JobSummary:
    """Caption `source` into the folder `out` on the Ray cluster at `address` (None: RAY_ADDRESS, or a new local
    one; "auto": the cluster this machine belongs to). A process that has called ray.init keeps its cluster."""
    options, workers = options or RuntimeOptions(), workers or RayWorkers()
    check_batch_size(batch_size)  # what can be refused is, here, not in every actor
    workers.check(options)
    dims = load_manifest(engine, verify_hashes=False).model
    if max_new_tokens is not None:
        check_new_tokens(dims, max_new_tokens)
    out, scan = Path(out), collect_inputs(source)
    if out.exists() and not out.is_dir():
        raise InputError(f"with --ray, --out is a folder of JSONL shards; {out} is a file")
    with OutputLock(out):
        if not resume and shard_files(out):
            raise InputError(f"{out} already holds caption shards: pass --resume to continue that job, or choose "
                             f"another --out")
        done, errored = prepare_shards(out) if resume else (set(), set())
        todo = [(i, str(p)) for i, p in scan.items if i not in done]
        t0 = time.perf_counter()
        settings = WorkerSettings(str(Path(engine).resolve()), str(out.resolve()), options, workers.cpus, question,
                                  batch_size, max_new_tokens)
        errors = caption_on_ray(todo, settings, workers, address) if todo else np.zeros(0, bool)
    total = len(scan.items)
    return JobSummary(total, total - len(todo), int((~errors).sum()), int(errors.sum()), time.perf_counter() - t0,
                      sum(i in errored for i, _ in todo), scan.skipped_text())


def caption_on_ray(todo: list[tuple[str, str]], settings: WorkerSettings, workers: RayWorkers,
                   address: str | None) -> np.ndarray:
    """Run the two stages over `todo`; returns, per image, whether its record is an error."""
    ray = require("ray", "ray")
    data = require("ray.data", "ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address)
    try:
        # One block per caption batch: the unit an actor takes, and all that a dead one leaves to run again.
        rows = data.from_items([{"id": i, "path": p} for i, p in todo],
                               override_num_blocks=math.ceil(len(todo) / settings.batch_size))
        # Reading is I/O: its tasks reserve no CPU, so they never wait on CPUs the caption actors hold.
        images = rows.map_batches(read_image_bytes, batch_size=None, batch_format="numpy", num_cpus=0)
        # Actor-pool actors are restarted, and their unfinished batches retried, without limit (Ray Data's default).
        results = images.map_batches(CaptionWorker, fn_constructor_args=(settings,), batch_size=settings.batch_size,
                                     batch_format="numpy", compute=data.ActorPoolStrategy(size=workers.count),
                                     num_cpus=workers.cpus, num_gpus=workers.gpus,
                                     memory=workers.memory_mb * 2**20 if workers.memory_mb else None)
        flags = [batch["error"] for batch in results.iter_batches(batch_size=None, batch_format="numpy")]
    finally:
        if started:
            ray.shutdown()
    return np.concatenate(flags) if flags else np.zeros(0, bool)

