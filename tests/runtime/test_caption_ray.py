"""`moai-edge caption --ray` on a local Ray cluster: the single-machine job's records, resume, a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from moai_edge.engines.errors import InputError
from moai_edge.runtime import Pipeline, RuntimeOptions
from moai_edge.runtime.caption.job import run_caption_job
from moai_edge.runtime.caption.output import read_records
from moai_edge.runtime.caption.on_ray import RayWorkers, prepare_shards, read_shards, run_ray_caption_job, shard_files
from moai_edge.runtime.cli import main
from moai_edge.runtime.samples import sample_image

N_GOOD = 8
MAX_NEW_TOKENS = 3


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-in")
    for i in range(N_GOOD):
        Image.fromarray(sample_image(size=96, seed=i)).save(root / f"img_{i}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def single_machine(tiny_packages, folder, tmp_path_factory):
    """The records of the single-machine job on `folder`, without timings."""
    out = tmp_path_factory.mktemp("single") / "captions.jsonl"
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1)) as pipe:
        run_caption_job(pipe, folder, out, max_new_tokens=MAX_NEW_TOKENS)
    return untimed({r["id"]: r for r in read_records(out).records})


def untimed(records: dict[str, dict]) -> dict[str, dict]:
    return {i: {k: v for k, v in r.items() if k != "timings_ms"} for i, r in records.items()}


def ray_job(package, folder, out, **kw):
    return run_ray_caption_job(package, folder, out, options=RuntimeOptions(threads=1), max_new_tokens=MAX_NEW_TOKENS,
                               **kw)


def test_the_ray_job_writes_the_single_machine_records(ray_cluster, tiny_packages, folder, single_machine, tmp_path,
                                                       capsys):
    assert len(single_machine) == N_GOOD + 1 and "cannot identify" in single_machine["broken.jpg"]["error"]
    out = tmp_path / "shards"
    code = main(["caption", str(folder), "--engine", str(tiny_packages["moai"]), "--out", str(out), "--ray",
                 "--num-workers", "2", "--batch-size", "2", "--max-new-tokens", str(MAX_NEW_TOKENS), "--threads", "1"])
    assert code == 0
    assert f"{N_GOOD + 1} images: {N_GOOD} captioned, 1 errors, 0 already done" in capsys.readouterr().err
    lines = [r for p in shard_files(out) for r in read_records(p).records]
    assert len(lines) == N_GOOD + 1 and all("timings_ms" in r for r in lines)  # each image once, in the same format
    assert untimed(read_shards(out)) == single_machine


def test_resume_skips_captioned_ids_and_retries_errors(ray_cluster, tiny_packages, folder, single_machine, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    earlier = [{"id": "img_0.png", "caption": "kept"}, {"id": "img_1.png", "caption": "kept"},
               {"id": "img_2.png", "error": "a failure that went away"}]
    (out / "part-0-earlier.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier) + '{"id": "img_3')
    with pytest.raises(InputError, match="pass --resume"):
        ray_job(tiny_packages["moai"], folder, out)

    summary = ray_job(tiny_packages["moai"], folder, out, resume=True)
    assert (summary.total, summary.skipped, summary.retried) == (N_GOOD + 1, 2, 1)
    assert (summary.captioned, summary.errors) == (N_GOOD - 2, 1)
    assert read_records(out / "part-0-earlier.jsonl").records == earlier[:2]  # the error and the torn line cut
    merged = untimed(read_shards(out))
    assert merged == {**single_machine, "img_0.png": earlier[0], "img_1.png": earlier[1]}
    again = ray_job(tiny_packages["moai"], folder, out, resume=True)
    assert (again.skipped, again.captioned, again.errors, again.retried) == (N_GOOD, 0, 1, 1)  # the bad image, again


def test_duplicates_merge_by_id_and_resume_keeps_one_record_each(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    shards = {"part-1.jsonl": [{"id": "a", "caption": "old"}, {"id": "b", "error": "e1"}, {"id": "c", "error": "e1"}],
              "part-2.jsonl": [{"id": "a", "caption": "new"}, {"id": "b", "caption": "ok"}, {"id": "c", "error": "e2"}],
              "part-3.jsonl": [{"id": "b", "error": "after the caption"}]}
    for name, records in shards.items():
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    expected = {"a": {"id": "a", "caption": "new"}, "b": {"id": "b", "caption": "ok"}, "c": {"id": "c", "error": "e2"}}
    assert read_shards(out) == expected
    assert prepare_shards(out) == ({"a", "b"}, {"c"})
    assert [p.name for p in shard_files(out)] == ["part-2.jsonl"]  # the others held nothing to keep
    assert read_records(out / "part-2.jsonl").records == [expected["a"], expected["b"]]


def shard_writer(shard) -> int | None:
    """The pid of the process that holds `shard` open: the caption actor writing it."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if any(f.path == os.path.realpath(shard) for f in proc.open_files()):
                return proc.pid
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return None


def kill_the_first_writer(out, deadline: float) -> tuple:
    """SIGKILL the actor that wrote the first record, at once; returns (its shard, its pid)."""
    while time.time() < deadline:
        for shard in shard_files(out):
            if shard.read_bytes().count(b"\n") and (pid := shard_writer(shard)):
                os.kill(pid, signal.SIGKILL)
                return shard, pid
        time.sleep(0.05)
    raise AssertionError("no caption actor wrote a record in time")


def test_a_worker_killed_mid_job_loses_nothing(ray_cluster, tiny_packages, folder, single_machine, tmp_path):
    out = tmp_path / "shards"
    result = {}

    def run() -> None:
        try:
            result["summary"] = ray_job(tiny_packages["moai"], folder, out, workers=RayWorkers(count=1))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    shard, pid = kill_the_first_writer(out, time.time() + 120)
    job.join(timeout=240)
    assert not job.is_alive() and "summary" in result, f"the job should end after its worker is restarted: {result}"
    summary = result["summary"]
    assert summary.captioned + summary.errors == N_GOOD + 1

    assert len(read_records(shard).records) < N_GOOD + 1, "the kill should land before the job ends"
    assert len(shard_files(out)) >= 2, "the restarted actor writes a shard of its own"
    assert untimed(read_shards(out)) == single_machine  # nothing lost
    done, errored = prepare_shards(out)
    assert len(done) == N_GOOD and errored == {"broken.jpg"}
    assert sum(len(read_records(p).records) for p in shard_files(out)) == N_GOOD  # a batch run twice: kept once


def test_ray_only_options_and_bad_values_are_refused_before_any_work(tiny_packages, folder, tmp_path, capsys):
    base = ["caption", str(folder), "--engine", str(tiny_packages["moai"])]
    refusals = [
        (["--out", str(tmp_path / "a.jsonl"), "--num-workers", "2", "--worker-gpus", "1"],
         "--num-workers, --worker-gpus only apply with --ray"),
        (["--out", str(tmp_path / "b"), "--ray", "--max-new-tokens", "100000"], "max_new_tokens: expected an integer"),
        (["--out", str(tmp_path / "c"), "--ray", "--device", "cuda"], "needs --worker-gpus"),
        (["--out", str(tmp_path / "d"), "--ray", "--num-workers", "0"], "--num-workers: expected at least 1"),
        (["--out", str(folder / "img_0.png"), "--ray"], "is a file"),
    ]
    for extra, message in refusals:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not any(tmp_path.iterdir())


def test_the_ray_job_module_imports_neither_ray_nor_torch():
    code = ("import sys, moai_edge.runtime.caption.on_ray; "
            "bad = [m for m in ('ray', 'torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
