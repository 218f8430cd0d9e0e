"""The full pipeline (experts -> backbone) and the caption job on tiny packages of both families."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from moai_edge.runtime.caption.inputs import collect_inputs
from moai_edge.runtime.caption.job import run_caption_job
from moai_edge.runtime.caption.output import recorded_ids
from moai_edge.runtime import Pipeline, RuntimeOptions
from moai_edge.runtime.samples import sample_image

FAMILIES = ("collavo", "moai")
QUESTION = "What is in the image?"


def four_images() -> list[np.ndarray]:
    return [sample_image(size=s, seed=seed) for seed, s in enumerate((490, 320, 600, 410))]


@pytest.fixture(scope="module")
def pipelines(tiny_packages):
    pipes = {fam: Pipeline.load(path, threads=2) for fam, path in tiny_packages.items()}
    yield pipes
    for p in pipes.values():
        p.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_equals_the_pytorch_reference_pipeline(pipelines, tiny_packages, tiny_references, family):
    """Image -> runtime pipeline (batch of 4) == image -> PyTorch experts with the reference's post-processing
    -> verbalizer -> PyTorch reference model: the experts' results, the verbalized text, the greedy tokens."""
    pytest.importorskip("torch")
    from moai_edge.bench.compare.results import compare_results
    from moai_edge.bench.reference.pipeline import ReferencePipeline

    pipe = pipelines[family]
    with ReferencePipeline(pipe.manifest, tiny_references[family],
                           tiny_packages[family] / "checkpoint" / "tokenizer.model") as ref:
        theirs = ref.ask_batch(four_images(), [QUESTION] * 4, decoding="greedy", max_new_tokens=10)
    batch = pipe.ask_batch(four_images(), [QUESTION] * 4, decoding="greedy", max_new_tokens=10)
    assert compare_results(batch, theirs) == []  # experts, display text, tokens
    assert [got.verbalized for got in batch] == [r.verbalized for r in theirs]  # the text exactly, not up to rounding
    assert [got.prompt_tokens for got in batch] == [r.prompt_tokens for r in theirs]  # the usage a server reports
    assert batch[0].prompt_tokens > pipe.manifest.model.num_image_tokens
    found = sum(len(got.experts["segments"]) + len(got.experts["detections"]) + len(got.experts["relations"])
                for got in batch)
    assert found > 0  # the experts found something, so the comparison could fail
    assert {"experts", "vision", "prefill", "decode", "total"} <= set(batch[0].timings_ms)
    assert set(theirs[0].timings_ms) == set(batch[0].timings_ms)  # the reference reports the runtime's stages


def test_verify_covers_experts_verbalization_and_tokens(tiny_packages, tmp_path):
    from moai_edge.bench.compare.verify import verify_package

    Image.fromarray(sample_image(size=300, seed=2)).save(tmp_path / "a.png")
    report = verify_package(tiny_packages["moai"], images=[str(tmp_path / "a.png")], question=QUESTION,
                            max_new_tokens=6, options=RuntimeOptions(threads=2))
    text = report.render()
    assert report.ok, text
    assert "experts on" in text and "verbalized text on" in text and "greedy tokens on" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_concurrent_experts_and_batches_equal_sequential_single_images(pipelines, tiny_packages, family):
    with Pipeline.load(tiny_packages[family], RuntimeOptions(threads=2, concurrent=False)) as sequential:
        singles = [sequential.ask(img, QUESTION, max_new_tokens=8) for img in four_images()]
    batch = pipelines[family].ask_batch(four_images(), [QUESTION] * 4, max_new_tokens=8)
    # experts batched too
    with Pipeline.load(tiny_packages[family], RuntimeOptions(threads=2, expert_batch=4)) as whole:
        batch_experts = whole.ask_batch(four_images(), [QUESTION] * 4, max_new_tokens=8)
    for one, row, other in zip(singles, batch, batch_experts):
        assert one.tokens == row.tokens and one.experts == row.experts and one.verbalized == row.verbalized
        assert other.tokens == one.tokens and other.experts == one.experts


def test_pipeline_is_safe_to_share_between_threads(pipelines):
    pipe = pipelines["moai"]
    expected = [pipe.ask(img, QUESTION, max_new_tokens=6).tokens for img in four_images()[:2]]
    got = {}

    def worker(i, img):
        got[i] = pipe.ask(img, QUESTION, max_new_tokens=6).tokens

    threads = [threading.Thread(target=worker, args=(i, img)) for i, img in enumerate(four_images()[:2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[0], got[1]] == expected


def make_folder(root):
    (root / "sub").mkdir(parents=True)
    for i, size in enumerate((300, 420)):
        Image.fromarray(sample_image(size=size, seed=i)).save(root / f"good_{i}.png")
    Image.fromarray(sample_image(size=200, seed=5)).save(root / "sub" / "nested.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not an image")
    good = (root / "good_0.png").read_bytes()
    (root / "sub" / "truncated.png").write_bytes(good[: len(good) // 3])
    (root / "notes.txt").write_text("not an image extension: not an input")
    return {"good_0.png", "good_1.png", "sub/nested.jpg", "empty.jpg", "text.png", "sub/truncated.png"}


def test_caption_job_writes_one_record_per_file_and_bad_files_become_errors(pipelines, tmp_path):
    ids = make_folder(tmp_path / "in")
    out = tmp_path / "captions.jsonl"
    summary = run_caption_job(pipelines["moai"], tmp_path / "in", out, question=QUESTION, batch_size=4,
                              max_new_tokens=4)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(ids)
    errors = {r["id"] for r in records if "error" in r}
    assert errors == {"empty.jpg", "text.png", "sub/truncated.png"}
    assert all("caption" in r and "timings_ms" in r for r in records if r["id"] not in errors)
    assert (summary.captioned, summary.errors, summary.skipped) == (3, 3, 0)
    with pytest.raises(Exception, match="--resume"):
        run_caption_job(pipelines["moai"], tmp_path / "in", out, question=QUESTION)


def test_list_file_inputs_and_partial_last_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "list.txt").write_text("a.png\nmissing.jpg\n\n")
    assert [i for i, _ in collect_inputs(tmp_path / "list.txt").items] == ["a.png", "missing.jpg"]
    out = tmp_path / "o.jsonl"
    out.write_text('{"id": "a.png", "caption": "x"}\n{"id": "missing.j')
    assert recorded_ids(out) == {"a.png"}
    assert out.read_text() == '{"id": "a.png", "caption": "x"}\n'


def test_caption_job_killed_and_resumed_has_exactly_one_record_per_image(tiny_packages, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(sample_image(size=240, seed=i)).save(folder / f"img_{i}.png")
    out = tmp_path / "captions.jsonl"
    cmd = [sys.executable, "-m", "moai_edge.runtime.cli", "caption", str(folder),
           "--engine", str(tiny_packages["moai"]), "--out", str(out), "--max-new-tokens", "4", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = out.read_text().count("\n")
    assert 2 <= before < 8, "the job should have been killed part-way"
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == [f"img_{i}.png" for i in range(8)]  # every image once: none lost, none twice


def test_latest_frame_wins(pipelines):
    """Frames arriving faster than the pipeline answers: the newest is answered, the older ones dropped and counted."""
    from moai_edge.runtime.live import LatestFrameRunner

    pipe = pipelines["moai"]
    frames = [sample_image(size=200, seed=s) for s in range(8)]
    expected_last = pipe.ask(frames[-1], QUESTION, decoding="greedy", max_new_tokens=4).tokens
    answered = []
    with LatestFrameRunner(pipe, question=QUESTION, max_new_tokens=4, on_result=answered.append) as live:
        ids = [live.submit(f) for f in frames[:-1]]
        ids += [live.submit(b"not an image"), live.submit(frames[-1])]
    stats = live.stats()
    assert ids == list(range(9)) and stats.submitted == 9
    assert stats.processed + stats.failed + stats.dropped == 9 and stats.dropped >= 5
    done = [r.frame_id for r in answered]
    assert done == sorted(done) and done[-1] == 8  # in order, and the newest frame always gets its answer
    assert answered[-1].result.tokens == expected_last
    assert all(r.total_ms >= r.inference_ms > 0 for r in answered)
    assert set(stats.percentiles("total")) == {"p50", "p90", "p99"}
    with pytest.raises(Exception, match="closed"):
        live.submit(frames[0])


def test_a_bad_frame_is_reported_and_the_next_one_answered(pipelines):
    from moai_edge.runtime.live import LatestFrameRunner

    answered = []
    with LatestFrameRunner(pipelines["collavo"], question=QUESTION, max_new_tokens=2, on_result=answered.append,
                           max_pending=4) as live:
        live.submit(b"\x89PNG truncated")
        live.submit(sample_image(size=120))
    assert [r.frame_id for r in answered] == [0, 1]
    assert answered[0].error and "frame 0" in answered[0].error and answered[0].result is None
    assert answered[1].error is None and live.stats().failed == 1
