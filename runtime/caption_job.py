"""`moai-edge caption`: a folder (or list file) of images -> one JSON line per image, resumable.

Each record is written with one `write` of a whole line, then flushed and fsynced, so a job killed at
any moment leaves at most one partial last line. `--resume` drops that line, skips every id already
recorded and appends the rest: no image is lost or written twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moai_edge.engines.errors import InputError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class JobSummary:
    total: int
    skipped: int  # already in the output (resume)
    captioned: int
    errors: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        done = self.captioned + self.errors
        return done / self.seconds if self.seconds > 0 else 0.0


def collect_inputs(source: str | Path) -> list[tuple[str, Path]]:
    """(id, path) pairs: a folder's image files, recursively and sorted, with ids relative to it; or the lines
    of a text file, ids as written (relative paths are taken from the file's folder)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return [(p.relative_to(source).as_posix(), p) for p in files]
    if source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        return [(line, (source.parent / line) if not Path(line).is_absolute() else Path(line)) for line in lines if line]
    raise InputError(f"caption input '{source}' is neither a folder nor a text file of image paths")


def recorded_ids(out: Path) -> set[str]:
    """Ids already in `out`; a partial last line (the job was killed mid-write) is cut off first."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(out, "r+b") as f:
            f.truncate(len(data))
    ids = set()
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            ids.add(json.loads(line)["id"])
    return ids


def progress_bar(total: int, initial: int):
    """tqdm on a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="img", file=sys.stderr)


def run_caption_job(pipe, source: str | Path, out: str | Path, *, question: str, batch_size: int = 1,
                    resume: bool = False, max_new_tokens: int | None = None) -> JobSummary:
    out = Path(out)
    inputs = collect_inputs(source)
    if out.exists() and out.stat().st_size > 0 and not resume:
        raise InputError(f"{out} already exists: pass --resume to continue that job, or choose another --out")
    done = recorded_ids(out) if resume else set()
    todo = [(i, p) for i, p in inputs if i not in done]
    bar = progress_bar(len(inputs), len(inputs) - len(todo))
    counts = {"caption": 0, "error": 0}
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        def write(record) -> None:
            image_id = todo[record.index][0]
            line = {"id": image_id}
            line.update({"caption": record.caption} if record.error is None else {"error": record.error})
            line["timings_ms"] = {k: round(v, 2) for k, v in record.timings_ms.items()}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            counts["caption" if record.error is None else "error"] += 1
            if bar is not None:
                bar.update(1)

        pipe.caption([str(p) for _, p in todo], question=question, batch_size=batch_size,
                     max_new_tokens=max_new_tokens, on_record=write)
    if bar is not None:
        bar.close()
    return JobSummary(len(inputs), len(inputs) - len(todo), counts["caption"], counts["error"], time.perf_counter() - t0)
