"""A caption job's output: a JSONL file of records `{"id", "caption" | "error", "timings_ms"}`.

- One job at a time: `OutputLock` takes an exclusive lock on `<out>.lock`, a file holding the holder's
  pid. The lock is the kernel's (flock), so a holder that dies, even by SIGKILL, leaves no stale lock.
- Each record is one `os.write` of a whole line, then fsynced: a job killed at any moment leaves at
  most one torn last line, and only such a line (the prefix of a record) is ever cut on resume.
- Resuming keeps the latest record per id; ids whose latest record is an error are dropped from the
  file and retried, so the file ends with exactly one record per input.
- Ids are written losslessly: a name that is not valid UTF-8 (a surrogate escape) becomes a `\\udcXX`
  JSON escape, which reads back as the same string.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from moai_edge.engines.errors import InputError

RECORD_START = b'{"id": '  # every record line begins so (json.dumps keeps the key order)


def encode_record(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8", errors="backslashreplace") + b"\n"


@dataclass
class RecordFile:
    """The valid records of an output file and the byte length they span (a torn last line excluded)."""

    records: list[dict]
    valid_bytes: int
    size: int

    @property
    def torn(self) -> bool:
        return self.valid_bytes < self.size

    def latest(self) -> dict[str, dict]:
        return {r["id"]: r for r in self.records}  # later lines win


def check_record(line: bytes, out: Path, number: int) -> dict:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise not_a_record_file(out, number, f"not a JSON record ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str) or \
            ("caption" in record) == ("error" in record):
        raise not_a_record_file(out, number, "expected an object with 'id' and one of 'caption' or 'error'")
    return record


def not_a_record_file(out: Path, number: int, what: str) -> InputError:
    return InputError(f"{out} is not a moai-edge caption file (line {number}: {what}); it was left untouched: "
                      f"choose another --out")


def read_records(out: Path) -> RecordFile:
    """Validate every complete line; a last line without its newline must be the start of a record."""
    data = out.read_bytes() if out.exists() else b""
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    records = [check_record(line, out, n) for n, line in enumerate(lines, 1) if line.strip()]
    tail = data[end:]
    if tail and not tail.startswith(RECORD_START[:len(tail)]):
        raise not_a_record_file(out, len(lines) + 1, "the last line is neither a record nor the start of one")
    return RecordFile(records, end, len(data))


def rewrite(out: Path, records: list[dict]) -> None:
    """Replace `out` atomically: a temporary file, fsynced, renamed over it."""
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"".join(encode_record(r) for r in records))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    sync_folder(out.parent)


def sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_resume(out: Path) -> tuple[set[str], set[str]]:
    """Make `out` hold only the latest record of each id that has a caption. Returns the captioned ids (the
    work done) and the ids whose error records were dropped, so that their images are tried again."""
    f = read_records(out)
    latest = f.latest().values()
    keep = [r for r in latest if "caption" in r]
    if len(keep) != len(f.records):
        rewrite(out, keep)
    elif f.torn:
        with open(out, "r+b") as fh:
            fh.truncate(f.valid_bytes)
    return {r["id"] for r in keep}, {r["id"] for r in latest if "error" in r}


def recorded_ids(out: Path) -> set[str]:
    """Ids already captioned in `out`, after cutting a torn last line and dropping error records."""
    return prepare_resume(out)[0] if out.exists() else set()


class RecordWriter:
    """Appends records, each one whole-line write followed by fsync."""

    def __init__(self, out: Path):
        out.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        view = memoryview(encode_record(record))
        while view:
            view = view[os.write(self.fd, view):]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class OutputLock:
    """An exclusive lock on a caption job's output, held from `acquire` to `release`."""

    def __init__(self, out: Path):
        self.path = out.with_name(out.name + ".lock")
        self.fd = -1

    def acquire(self) -> "OutputLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise InputError(f"{self.path.with_suffix('')} is being written by another caption job "
                                 f"(pid {holder}, lock {self.path}); wait for it or choose another --out") from None
            if self.still_ours(fd):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: take the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def still_ours(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self.fd >= 0:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)  # closing drops the flock
            self.fd = -1

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
