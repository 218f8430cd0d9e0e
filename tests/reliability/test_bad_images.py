"""Bad and odd image files: each is one caption or one error record, never a traceback or a silent skip."""

from __future__ import annotations

import json
import os

import pytest

from moai_edge.engines.errors import ImageError
from moai_edge.runtime.caption.inputs import collect_inputs
from moai_edge.runtime.caption.job import run_caption_job
from moai_edge.runtime.caption.output import read_records
from moai_edge.runtime.images import load_image
from moai_edge.runtime.pipeline import Pipeline

from .corpus import bad_files, write_corpus


@pytest.fixture(scope="module")
def moai(tiny_packages):
    with Pipeline.load(tiny_packages["moai"], threads=1) as pipe:
        yield pipe


def test_every_bad_file_is_an_image_error_naming_itself(tmp_path):
    expected = write_corpus(tmp_path)
    for name in sorted(expected["errors"]) + ["dir.png"]:
        with pytest.raises(ImageError) as err:
            load_image(tmp_path / name)
        assert name in str(err.value), err.value
    assert "decompression bomb" in str(pytest.raises(ImageError, load_image, bad_files()["bomb.png"]).value)


@pytest.mark.parametrize("name, says", [("dir.png", "is a directory"), ("loop.png", "symlink loop"),
                                        ("dangling.png", "dangling symlink"), ("empty.png", "empty file")])
def test_paths_that_are_not_images_say_what_they_are(tmp_path, name, says):
    write_corpus(tmp_path)
    with pytest.raises(ImageError, match=says):
        load_image(tmp_path / name)


def test_the_folder_scan_counts_what_it_skips(tmp_path):
    expected = write_corpus(tmp_path / "in")
    scan = collect_inputs(tmp_path / "in")
    assert {i for i, _ in scan.items} == expected["captions"] | expected["errors"]
    assert set(scan.skipped) == expected["skipped"]
    assert "3 skipped" in scan.skipped_text()


def test_a_caption_job_over_the_corpus_has_one_record_per_input(moai, tmp_path):
    expected = write_corpus(tmp_path / "in")
    out = tmp_path / "captions.jsonl"
    summary = run_caption_job(moai, tmp_path / "in", out, question="What is it?", batch_size=4, max_new_tokens=2)
    records = read_records(out).records
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(expected["captions"] | expected["errors"]), "every input once, none twice"
    assert {r["id"] for r in records if "error" in r} == expected["errors"]
    assert (summary.captioned, summary.errors) == (len(expected["captions"]), len(expected["errors"]))
    assert "not an image extension (.txt): 1" in summary.line(out)
    non_utf8 = os.fsdecode(b"caf\xe9.png")
    assert non_utf8 in ids  # the name read back is the name on disk
    assert b"caf\\udce9.png" in out.read_bytes() and out.read_bytes().decode("utf-8")  # valid UTF-8, escaped losslessly


def test_resume_over_the_corpus_retries_the_errors_once(moai, tmp_path):
    expected = write_corpus(tmp_path / "in")
    out = tmp_path / "captions.jsonl"
    run_caption_job(moai, tmp_path / "in", out, question="What is it?", batch_size=4, max_new_tokens=2)
    (tmp_path / "in" / "text.png").write_bytes((tmp_path / "in" / "one_pixel.png").read_bytes())  # fixed meanwhile
    summary = run_caption_job(moai, tmp_path / "in", out, question="What is it?", batch_size=4, max_new_tokens=2,
                              resume=True)
    assert summary.retried == len(expected["errors"]) and summary.skipped == len(expected["captions"])
    lines = [json.loads(line) for line in out.read_bytes().decode().splitlines()]
    assert len(lines) == len({r["id"] for r in lines}) == len(expected["captions"] | expected["errors"])
    latest = {r["id"]: r for r in lines}
    assert "caption" in latest["text.png"] and "error" in latest["bomb.png"]


def test_a_list_file_with_repeats_and_a_non_utf8_line(moai, tmp_path):
    expected = write_corpus(tmp_path / "in")
    name = os.fsdecode(b"caf\xe9.png")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"in/one_pixel.png\nin/caf\xe9.png\nin/one_pixel.png\n\nin/missing.png\n")
    scan = collect_inputs(listing)
    assert [i for i, _ in scan.items] == ["in/one_pixel.png", f"in/{name}", "in/missing.png"]
    assert scan.skipped == {"listed again": 1}
    out = tmp_path / "o.jsonl"
    summary = run_caption_job(moai, listing, out, question="What is it?", max_new_tokens=2)
    assert (summary.captioned, summary.errors) == (2, 1) and expected
    assert {r["id"] for r in read_records(out).records} == {i for i, _ in scan.items}
