"""`moai-edge bench` on a tiny package: every stage, the percentiles, memory, the roofline, the reference ratios."""

from __future__ import annotations

import json
import math

import pytest

from moai_edge.bench.speed.roofline import (batch_ceiling_tokens_per_s, batching, decode_weight_bytes,
                                            kv_bytes_per_token, memory_bound_gain, roofline)
from moai_edge.engines.manifest import load_manifest
from moai_edge.runtime.cli import main

STAGES = {"preprocessing", "expert_panoptic", "expert_detector", "expert_scene_graph", "expert_ocr", "experts",
          "verbalize", "vision", "aux", "prefill", "decode_per_token", "total", "time_to_first_token"}


def test_bench_with_reference_writes_every_figure(tiny_packages, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "report"
    assert main(["bench", "--engine", str(tiny_packages["moai"]), "--batch-sizes", "1,2", "--runs", "2",
                 "--warmup", "1", "--max-new-tokens", "5", "--reference", "--out", str(out), "--threads", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["batches"]) == {"1", "2"}
    for entry in report["batches"].values():
        assert set(entry["stages_ms"]) == STAGES
        for s in entry["stages_ms"].values():
            assert s["n"] == 2 and 0 <= s["p50"] <= s["p90"] <= s["p99"]
        assert entry["images_per_s"] > 0 and entry["decode_tokens_per_s"] > 0
        assert entry["kv_cache_mb"] > 0 and entry["peak_rss_mb"] > report["memory"]["rss_before_load_mb"]
        assert {"experts", "prefill", "decode"} <= set(entry["stage_peak_rss_mb"])
        # (not against the RSS before loading: in a test process, trimming after an answer also returns earlier
        # tests' memory)
        assert 0 < entry["rss_after_answer_mb"] <= entry["peak_rss_mb"] and "rss_after_answer_vs_weights" in entry
    assert report["batches"]["2"]["kv_cache_mb"] > report["batches"]["1"]["kv_cache_mb"]
    mem = report["memory"]
    assert mem["weights_mb"] > 1 and mem["peak_rss_mb"] >= mem["rss_after_load_mb"] and "skipped" in mem["gpu"]
    assert 0 < report["roofline"]["percent_of_bandwidth"] and report["roofline"]["machine_read_gbs"] > 0
    assert report["machine"]["versions"]["onnxruntime"] and len(report["machine"]["engine_manifest_sha256"]) == 64
    ref = report["reference"]
    assert {"expert_panoptic", "experts", "vision", "prefill", "decode_per_token", "total"} <= set(ref)
    for r in ref.values():
        assert r["reference_ms"]["n"] == 2 and r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
    assert "batching_speedup" in report
    gain = report["roofline"]["batching"]["2"]
    tokens = {b: e["decode_tokens_per_s"] for b, e in report["batches"].items()}
    assert gain["gain"] == pytest.approx(tokens["2"] / tokens["1"])
    assert gain["gain_ceiling"] > gain["gain"]  # a tiny decoder's step is far from reading memory at full speed
    md = (out / "report.md").read_text()
    assert "## Against the PyTorch reference" in md and "| decode_per_token |" in md and "could reach at most" in md
    for png in report["plots"]["files"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "vs reference total" in capsys.readouterr().out


def test_a_memory_budget_reports_each_stage_alone_and_the_peak_against_it(tiny_packages, tmp_path):
    out = tmp_path / "report"
    assert main(["bench", "--engine", str(tiny_packages["moai"]), "--batch-sizes", "1", "--runs", "1", "--warmup", "1",
                 "--max-new-tokens", "3", "--memory-budget", "100000", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    alone = report["memory"]["stage_alone_peak_mb"]
    assert (set(alone) == {"vision", "panoptic", "detector", "scene_graph", "ocr"}
            and all(v >= 0 for v in alone.values()))
    # (its sign is not asserted: in a test process, loading and trimming may return earlier tests' memory, so the
    # peak can sit below the RSS before loading)
    assert math.isfinite(report["batches"]["1"]["peak_rss_vs_weights_kv_largest_stage"])
    assert "run alone (--memory-budget)" in (out / "report.md").read_text()


def test_roofline_flags_more_than_the_machine_can_move(tiny_packages):
    m = load_manifest(tiny_packages["collavo"])
    fine = roofline(m, tokens_per_s=10, context=100, bandwidth_gbs=10.0)
    assert (not fine["measurement_error"]
            and fine["bytes_per_token"] == decode_weight_bytes(m) + kv_bytes_per_token(m, 100))
    assert roofline(m, tokens_per_s=1e6, context=100, bandwidth_gbs=10.0)["measurement_error"]


def test_the_batch_ceiling_is_the_bandwidth_over_the_weights_and_each_rows_kv(tiny_packages):
    """A step reads the weights once and every row's KV: with KV as large as the weights, batch 8 reads 4.5x the
    bytes of batch 1 for 8x the tokens, so it can gain at most 8 / 4.5 over a memory-bound batch 1."""
    m = load_manifest(tiny_packages["collavo"])
    w, kv = decode_weight_bytes(m), kv_bytes_per_token(m, 100)
    assert batch_ceiling_tokens_per_s(w, kv, batch=1, bandwidth_gbs=10.0) == pytest.approx(10e9 / (w + kv))
    one = batch_ceiling_tokens_per_s(100, 100, batch=1, bandwidth_gbs=1.0)
    assert batch_ceiling_tokens_per_s(100, 100, batch=8, bandwidth_gbs=1.0) / one == pytest.approx(16 / 9)
    assert memory_bound_gain(100, 100, batch=8) == pytest.approx(16 / 9)
    g = batching(m, tokens_per_s={1: 10.0, 4: 30.0}, context=100, bandwidth_gbs=2.0)
    assert set(g) == {"4"} and g["4"]["gain"] == pytest.approx(3.0)
    assert g["4"]["gain_ceiling"] == pytest.approx(batch_ceiling_tokens_per_s(w, kv, batch=4, bandwidth_gbs=2.0) / 10)


def test_decode_reads_its_base_weights_not_the_whole_decoder_file(tiny_packages):
    """The roofline's bytes: the decode graph's own weights (base matmuls, output head, norms, rope tables), less than
    the decoder file, which also holds the PLoRA and seg branches only prefill reads."""
    m = load_manifest(tiny_packages["collavo"])
    d, cfg = m.model, m.source["model_config"]["decoder"]
    h, inter = d.hidden_size, cfg["intermediate_size"]
    matmuls = d.num_layers * (h * (d.num_heads + 2 * d.num_kv_heads) * d.head_dim + d.num_heads * d.head_dim * h
                              + 3 * h * inter) + h * d.vocab_size
    norms_and_rope = (2 * d.num_layers + 1) * h + d.max_context * d.head_dim
    assert 0 <= decode_weight_bytes(m) - 4 * (matmuls + norms_and_rope) < 256  # and a few int64 shape constants
    assert decode_weight_bytes(m) < sum(m.path(f).stat().st_size for f in m.component_files("decode"))


def test_bad_batch_sizes_are_named(tiny_packages, capsys):
    assert main(["bench", "--engine", str(tiny_packages["moai"]), "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
