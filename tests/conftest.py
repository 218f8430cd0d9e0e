"""Session fixtures: tiny engine packages of both families, built once from seeded checkpoints."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_packages(tmp_path_factory):
    """{family: engine package folder} built through the real checkpoint-loading and export code."""
    pytest.importorskip("torch", reason="building packages needs moai-edge[export]")
    from moai_edge.export.build import export_tiny

    root = tmp_path_factory.mktemp("packages")
    return {fam: export_tiny(fam, root / fam).root for fam in ("collavo", "moai")}


@pytest.fixture(scope="session")
def tiny_references(tiny_packages):
    """{family: PyTorch reference model} loaded from the same tiny checkpoints."""
    from moai_edge.export.checkpoint import load_checkpoint

    return {fam: load_checkpoint(path / "checkpoint")[0] for fam, path in tiny_packages.items()}
