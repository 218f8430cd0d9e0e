"""The caption job under crashes, signals, a second job on the same output, and files it must not touch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from moai_edge.engines.errors import InputError
from moai_edge.runtime.caption.output import OutputLock, read_records, recorded_ids
from moai_edge.runtime.samples import sample_image

N_IMAGES = 6


def make_folder(root, n: int = N_IMAGES):
    root.mkdir()
    for i in range(n):
        Image.fromarray(sample_image(size=160, seed=i)).save(root / f"img_{i}.png")
    return root


@pytest.fixture()
def folder(tmp_path):
    return make_folder(tmp_path / "in")


def caption_cmd(package, folder, out, *extra):
    return [sys.executable, "-m", "moai_edge.runtime.cli", "caption", str(folder), "--engine", str(package),
            "--out", str(out), "--max-new-tokens", "3", "--threads", "1", *extra]


def lines_in(out) -> int:
    return out.read_bytes().count(b"\n") if out.exists() else 0


def start_and_wait(cmd, out, records: int, timeout: float = 120):
    """Start a job and return it once `out` holds `records` complete lines (0: once the job holds its lock)."""
    # SIGINT as a terminal delivers it: a job started from a background shell inherits it ignored
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = out.with_name(out.name + ".lock")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (lines_in(out) >= records) if records else (lock.exists() and lock.read_text().strip()):
            return proc
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"the job did not reach {records} records: {proc.stderr.read()}")


def assert_one_record_per_image(out, n: int = N_IMAGES):
    ids = [r["id"] for r in read_records(out).records]
    assert sorted(ids) == sorted(f"img_{i}.png" for i in range(n)), ids


def test_sigkill_at_several_points_then_resume_loses_nothing(tiny_packages, folder, tmp_path):
    out = tmp_path / "captions.jsonl"
    cmd = caption_cmd(tiny_packages["moai"], folder, out)
    kills = []
    for i, after in enumerate((0, 1, 3)):  # while loading, after the first record, mid-job
        proc = start_and_wait(cmd + (["--resume"] if i else []), out, after)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(lines_in(out))
    assert kills[-1] < N_IMAGES, "the last kill should land before the job ends"
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_one_record_per_image(out)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_job_promptly_with_one_line_and_a_consistent_file(tiny_packages, folder, tmp_path, sig, code):
    out = tmp_path / "captions.jsonl"
    cmd = caption_cmd(tiny_packages["moai"], folder, out)
    proc = start_and_wait(cmd, out, 1)
    sent = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert time.time() - sent < 20
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("moai-edge: interrupted by SIG")
    assert "--resume" in err
    assert out.read_bytes().endswith(b"\n") and read_records(out).records  # whole records only
    assert not out.with_name(out.name + ".lock").exists()
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_one_record_per_image(out)


def test_a_second_job_on_the_same_output_is_refused_naming_the_holder(tiny_packages, tmp_path):
    out = tmp_path / "captions.jsonl"
    cmd = caption_cmd(tiny_packages["moai"], make_folder(tmp_path / "in", 30), out)
    first = start_and_wait(cmd, out, 0)
    for extra in ([], ["--resume"]):
        second = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    assert first.poll() is None, "the first job should still be running: the test proves nothing otherwise"
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_one_record_per_image(out, 30)


def test_the_lock_is_exclusive_and_a_dead_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "o.jsonl"
    stale = out.with_name(out.name + ".lock")
    stale.write_text("999999\n")  # a lock file left by a process that died: no kernel lock on it
    with OutputLock(out):
        assert stale.read_text().strip() == str(os.getpid())
        with pytest.raises(InputError, match=f"pid {os.getpid()}"):
            OutputLock(out).acquire()
    assert not stale.exists()
    with OutputLock(out):
        pass


@pytest.mark.parametrize("content", [b"my notes about the trip", b'{"note": 1}\n{"id": "a.png", "caption": "x"}\n',
                                     b'{"id": "a.png", "caption": "x"}\nplain text tail', b"\xff\xfe binary\n"])
def test_resume_refuses_a_file_that_is_not_a_caption_file_and_leaves_it_untouched(tmp_path, content):
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    with pytest.raises(InputError, match="not a moai-edge caption file"):
        recorded_ids(out)
    assert out.read_bytes() == content


def test_resume_cuts_only_a_torn_record_and_keeps_the_latest_record_per_id(tmp_path):
    out = tmp_path / "o.jsonl"
    records = [{"id": "a", "error": "bad"}, {"id": "b", "caption": "x"}, {"id": "a", "caption": "y"},
               {"id": "c", "error": "bad"}]
    out.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"id": "d", "capt')
    assert recorded_ids(out) == {"a", "b"}
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"id": "a", "caption": "y"}, records[1]]
