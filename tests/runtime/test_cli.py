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
    code = main(["ask", "--engine", str(tiny_packages[family]), str(image_file), "What is this?", "--max-new-tokens", "5", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["answer"], str) and 1 <= len(out["tokens"]) <= 5
    assert {"preprocess", "vision", "prefill", "decode"} <= set(out["timings_ms"])


def test_ask_streams_text_and_beam(tiny_packages, image_file, capsys):
    assert main(["ask", "--engine", str(tiny_packages["moai"]), str(image_file), "Hi?", "--max-new-tokens", "4", "--decoding", "beam"]) == 0
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
    out = subprocess.run([sys.executable, "-m", "moai_edge.runtime.cli", "verify", "--engine", str(tiny_packages[family]),
                          "--images", str(image_file), "--max-new-tokens", "6"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical" in out.stdout and "prefill" in out.stdout


def test_verify_fails_on_a_tampered_package(tiny_packages, tmp_path):
    """Weights changed after export (hashes updated, so only verify can tell): non-zero exit naming the graph."""
    import shutil

    from moai_edge.engines.manifest import Manifest, sha256_of

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_packages["moai"], pkg, ignore=shutil.ignore_patterns("checkpoint"))
    weights = np.fromfile(pkg / "decoder.weights", dtype=np.float32)
    weights[: len(weights) // 2] *= 1.5
    weights.tofile(pkg / "decoder.weights")
    m = Manifest.load(pkg, verify=False)
    m.shared_weights["decoder"].sha256 = sha256_of(pkg / "decoder.weights")
    m.save(pkg)
    out = subprocess.run([sys.executable, "-m", "moai_edge.runtime.cli", "verify", "--engine", str(pkg), "--max-new-tokens", "4"],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED" in out.stdout and "MISMATCH" in out.stdout
