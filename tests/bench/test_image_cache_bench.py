"""python -m moai_edge.bench.speed.image_cache: the first and second question about each image, answers checked."""

from __future__ import annotations

from moai_edge.bench.speed.image_cache import first_and_second
from moai_edge.runtime import RuntimeOptions


def test_the_cache_bench_runs_both_questions_and_checks_the_answers(tiny_packages):
    report = first_and_second(str(tiny_packages["moai"]), RuntimeOptions(threads=1), rounds=1, max_new_tokens=4)
    assert report["answers_identical"] and (report["hits"], report["misses"]) == (2, 2)
    assert 0 < report["cache_bytes"] <= report["cache_max_bytes"] and report["first_ms"] > 0 and report["second_ms"] > 0
