"""`moai-edge verify --save-golden` / `--golden`: each graph's saved feeds replayed, its outputs compared."""

from __future__ import annotations

import json

import numpy as np

from moai_edge.bench.compare.golden import compare_golden, save_golden
from moai_edge.engines.options import RuntimeOptions
from moai_edge.runtime import sample_image
from moai_edge.runtime.cli import main


def test_a_replay_on_the_same_device_gives_the_saved_outputs(tiny_packages, tmp_path):
    package, golden = tiny_packages["moai"], tmp_path / "golden"
    index = save_golden(package, golden, [sample_image(seed=3)], question="What is it?", max_new_tokens=4,
                        options=RuntimeOptions(threads=1))
    assert {"vision", "compressor", "prefill", "decode", "panoptic", "detector", "scene_graph"} <= set(index["runs"])
    assert index["runs"]["decode"] == 3 and json.loads((golden / "golden.json").read_text()) == index
    with np.load(golden / "decode" / "0.npz") as saved:
        assert {"input.inputs_embeds", "input.past_key.0", "output.logits", "output.key.0"} <= set(saved.files)
    rows = {r.graph: r for r in compare_golden(package, golden, RuntimeOptions(threads=1))}
    assert set(rows) == set(index["runs"])
    assert all(r.max_rel_diff <= 1e-5 for r in rows.values()), rows  # the same graphs, inputs and threads

    with np.load(golden / "vision" / "0.npz") as saved:  # a device that got it wrong is seen
        arrays = dict(saved)
    arrays["output.image_features"] = arrays["output.image_features"] + 1.0
    np.savez(golden / "vision" / "0.npz", **arrays)
    assert {r.graph: r for r in compare_golden(package, golden, RuntimeOptions())}["vision"].max_abs_diff >= 0.99


def test_the_cli_compares_without_torch_and_names_a_missing_golden_folder(tiny_packages, tmp_path, capsys):
    assert main(["verify", "--engine", str(tiny_packages["collavo"]), "--golden", str(tmp_path)]) == 2
    assert "no golden.json" in capsys.readouterr().err
