"""Fixtures of the runtime tests."""

from __future__ import annotations

import pytest

from moai_edge.engines.manifest import load_manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.runtime.experts import Experts


@pytest.fixture(scope="module", params=["collavo", "moai"])
def package(request, tiny_packages):
    m = load_manifest(tiny_packages[request.param])
    experts = Experts(m, RuntimeOptions(threads=1))
    yield m, experts
    experts.close()
