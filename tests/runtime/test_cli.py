"""The `moai-edge` command's stable contracts: ask --json, verify, export errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from moai_edge.runtime.cli import main


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("family", ["collavo", "moai"])
def test_ask_json(tiny_packages, image_file, capsys, family):
    code = main(["ask", "--engine", str(tiny_packages[family]), str(image_file), "What is this?",
                 "--max-new-tokens", "5", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["answer"], str) and 1 <= len(out["tokens"]) <= 5
    assert {"load", "vision", "prefill", "decode"} <= set(out["timings_ms"])


def test_ask_with_beam_prints_the_answer_and_timings(tiny_packages, image_file, capsys):
    assert main(["ask", "--engine", str(tiny_packages["moai"]), str(image_file), "Hi?", "--max-new-tokens", "4",
                 "--decoding", "beam"]) == 0
    assert "prefill" in capsys.readouterr().out


def test_bad_image_is_a_clear_error(tiny_packages, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_text("no")
    assert main(["ask", "--engine", str(tiny_packages["moai"]), str(bad), "Hi?"]) == 2
    assert "broken.jpg" in capsys.readouterr().err


def test_missing_package_is_a_clear_error(tmp_path, capsys):
    assert main(["ask", "--engine", str(tmp_path), "x.png", "Hi?"]) == 2
    assert "manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["collavo", "moai"])
def test_verify_passes_on_a_good_package(tiny_packages, image_file, family):
    out = subprocess.run([sys.executable, "-m", "moai_edge.runtime.cli", "verify",
                          "--engine", str(tiny_packages[family]), "--images", str(image_file), "--max-new-tokens", "6"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical" in out.stdout and "prefill" in out.stdout


def test_verify_fails_on_a_tampered_package(tiny_packages, tmp_path):
    """Weights changed after export (hashes updated, so only verify can tell): non-zero exit naming the graph."""
    import copy
    import shutil

    from moai_edge.engines.manifest import load_manifest, sha256_of

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_packages["moai"], pkg, ignore=shutil.ignore_patterns("checkpoint"))
    weights = np.fromfile(pkg / "decoder.weights", dtype=np.float32)
    weights[: len(weights) // 2] *= 1.5
    weights.tofile(pkg / "decoder.weights")
    m = copy.deepcopy(load_manifest(pkg, verify_hashes=False))  # changed below: never the shared, cached one
    for name in ("prefill", "decode"):
        m.components[name].extra_files["decoder.weights"] = sha256_of(pkg / "decoder.weights")
    m.save(pkg)
    out = subprocess.run([sys.executable, "-m", "moai_edge.runtime.cli", "verify", "--engine", str(pkg),
                          "--max-new-tokens", "4"], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED" in out.stdout and "MISMATCH" in out.stdout


def test_version(capsys):
    from moai_edge.runtime.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("moai-edge ")


def test_every_option_has_help_and_engine_verbs_share_device_and_threads():
    import argparse

    from moai_edge.runtime.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb, parser in sub.choices.items():
        options = {o: a for a in parser._actions for o in a.option_strings}
        missing = [o for o, a in options.items() if not a.help and o not in ("-h", "--help")]
        assert not missing, f"{verb}: options without a help line: {missing}"
        if verb not in ("export", "doctor", "build-engines"):  # these two run no engine for an answer
            assert {"--engine", "--device", "--threads"} <= set(options), verb
        if verb != "export":  # doctor asks where graphs would run on a GPU device
            gpu_only = verb == "doctor"
            assert options["--device"].choices == (("cuda", "tensorrt") if gpu_only else ("cpu", "cuda", "tensorrt"))


def test_ask_reads_and_hashes_each_package_file_once(tiny_packages, image_file, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import Counter

    from moai_edge.engines import integrity

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_packages["moai"], pkg, ignore=shutil.ignore_patterns("checkpoint", "experts"))
    opened, hashed = Counter(), []
    for name in ("read_verified", "map_verified"):
        real = getattr(integrity, name)

        def counting(path, *args, real=real, **kw):
            opened[str(path)] += 1
            return real(path, *args, **kw)

        monkeypatch.setattr(integrity, name, counting)
    real_digest = integrity.digest
    monkeypatch.setattr(integrity, "digest", lambda data: hashed.append(1) or real_digest(data))
    integrity.forget()
    assert main(["ask", "--engine", str(pkg), str(image_file), "What?", "--max-new-tokens", "3", "--json"]) == 0
    capsys.readouterr()
    assert opened and max(opened.values()) == 1, opened  # every file read once ...
    assert len(hashed) == len(opened)  # ... and hashed once, on those bytes
    assert {p.split("/")[-1] for p in opened} >= {"decoder.onnx", "decoder.weights", "tokenizer.model"}
