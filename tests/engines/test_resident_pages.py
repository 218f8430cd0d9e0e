"""The decoder's external data: after loading, its file pages that prepacking read are no longer resident, and the
engine still computes the same outputs (a page read again comes back from the file)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from moai_edge.bench.speed.backbone_memory import zero_prefill_feeds
from moai_edge.engines import RuntimeOptions, load_manifest, open_engine
from moai_edge.engines.resident_pages import drop_resident_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise: Linux")


def resident_kb(path) -> int:
    """This process's resident KB of mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                inside = len(parts) == 6 and parts[5] == str(path.resolve())
            elif inside and parts[0] == "Rss:":
                total += int(parts[1])
    return total


def test_the_decoder_file_is_not_resident_after_loading_and_still_computes_the_same(tiny_packages):
    m = load_manifest(tiny_packages["moai"])
    weights = [m.root / rel for rel in m.component("prefill").extra_files]
    assert weights, "the tiny decoder keeps its weights in an external data file"
    engine = open_engine(m, "prefill", RuntimeOptions(threads=1))
    try:
        mapped = resident_kb(weights[0]) if any(str(weights[0].resolve()) in line for line in
                                                 open("/proc/self/maps")) else None
        assert mapped is None or mapped <= 64, f"{mapped} KB of {weights[0].name} resident after loading"
        feeds = zero_prefill_feeds(engine, 16)
        first = engine.run(feeds)
        assert drop_resident_pages(weights) >= 0
        again = engine.run(feeds)  # whatever it reads of the file again is read back from it
        for name, value in first.items():
            np.testing.assert_array_equal(again[name], value)
    finally:
        engine.close()


def test_files_not_mapped_are_left_alone(tmp_path):
    assert drop_resident_pages([]) == 0
    assert drop_resident_pages([tmp_path / "nothing.weights"]) == 0
