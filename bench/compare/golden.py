"""Golden inputs and outputs of every graph, for a run on another device to be compared against.

    moai-edge verify --engine PKG --save-golden golden/            # here (CPU): each graph's feeds and outputs
    moai-edge verify --engine PKG --device cuda --golden golden/   # there: the same feeds, outputs compared

What is saved is what the runtime itself fed each graph while it answered (engines.recording), the first
`MAX_RUNS` runs of each graph: `golden.json` (the package, the device, the versions, the runs per graph) and one
`<graph>/<k>.npz` per run, holding `input.<name>` and `output.<name>` arrays. Torch is not needed to compare.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moai_edge.engines.errors import ManifestError
from moai_edge.engines.manifest import load_manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.recording import FeedRecorder
from moai_edge.engines.registry import open_engine
from moai_edge.runtime import Pipeline, Request

MAX_RUNS = 3  # per graph: the decode graph runs once per token


def save_golden(engine_dir: Path, out_dir: Path, images: list, *, question: str, max_new_tokens: int,
                options: RuntimeOptions) -> dict:
    """Answer `question` about each image with the package, recording each graph's feeds and outputs into
    `out_dir`; returns the index written to golden.json."""
    import onnxruntime

    recorder = FeedRecorder(outputs=True, max_runs=MAX_RUNS)
    with Pipeline.load(engine_dir, options.replace(record_feeds=recorder)) as pipe:
        decoding = pipe.decoding("greedy", max_new_tokens=max_new_tokens)
        pipe.run([Request(image, question, decoding) for image in images])
        package = pipe.manifest.source.get("checkpoint", str(engine_dir))
    out_dir = Path(out_dir)
    runs = {}
    for component, feeds in recorder.feeds.items():
        (out_dir / component).mkdir(parents=True, exist_ok=True)
        for k, (inputs, outputs) in enumerate(zip(feeds, recorder.outputs[component])):
            np.savez(out_dir / component / f"{k}.npz", **{f"input.{n}": v for n, v in inputs.items()},
                     **{f"output.{n}": v for n, v in outputs.items()})
        runs[component] = len(feeds)
    index = {"package": package, "device": options.device, "onnxruntime": onnxruntime.__version__,
             "machine": platform.machine(), "runs": runs}
    (out_dir / "golden.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


@dataclass
class GraphComparison:
    graph: str
    runs: int
    max_abs_diff: float  # over every output of every run
    max_rel_diff: float  # max abs diff / max |golden| of that output

    def render(self) -> str:
        return (f"{self.graph:<20}{self.runs:>4} runs  max abs diff {self.max_abs_diff:.2e}  "
                f"relative {self.max_rel_diff:.2e}")


def compare_golden(engine_dir: Path, golden_dir: Path, options: RuntimeOptions) -> list[GraphComparison]:
    """Each saved run's feeds through the package's graph opened with `options` (e.g. on a GPU), its outputs held
    to the saved ones."""
    golden_dir = Path(golden_dir)
    index_file = golden_dir / "golden.json"
    if not index_file.is_file():
        raise ManifestError(f"no golden.json in '{golden_dir}': expected a folder written by verify --save-golden")
    index = json.loads(index_file.read_text())
    manifest = load_manifest(engine_dir, verify_hashes=options.verify_hashes)
    return [compare_graph(manifest, golden_dir, graph, runs, options) for graph, runs in index["runs"].items()]


def compare_graph(manifest, golden_dir: Path, graph: str, runs: int, options: RuntimeOptions) -> GraphComparison:
    engine = open_engine(manifest, graph, options)
    worst_abs = worst_rel = 0.0
    try:
        for k in range(runs):
            with np.load(golden_dir / graph / f"{k}.npz") as saved:
                feeds = {n.removeprefix("input."): saved[n] for n in saved.files if n.startswith("input.")}
                expected = {n.removeprefix("output."): saved[n] for n in saved.files if n.startswith("output.")}
            got = engine.run(feeds)
            for name, want in expected.items():
                diff = float(np.max(np.abs(got[name].astype(np.float64) - want), initial=0.0))
                worst_abs = max(worst_abs, diff)
                worst_rel = max(worst_rel, diff / max(float(np.max(np.abs(want), initial=0.0)), 1e-12))
    finally:
        engine.close()
    return GraphComparison(graph, runs, worst_abs, worst_rel)
