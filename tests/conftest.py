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


@pytest.fixture(scope="session")
def tiny_fp16_io_package(tmp_path_factory):
    """A tiny MoAI package (same seed and weights as `tiny_packages["moai"]`, experts included) whose decode graph
    takes and returns float16 tensors: inputs_embeds, past keys/values in, logits and present keys/values out."""
    pytest.importorskip("torch", reason="building packages needs moai-edge[export]")
    from moai_edge.export.build import export_tiny

    return export_tiny("moai", tmp_path_factory.mktemp("packages") / "moai-fp16-io", decode_io_dtype="float16").root


@pytest.fixture(scope="session")
def packaged_scene_graph(tiny_packages):
    """The tiny MoAI package's scene-graph expert: (manifest, config, engine, the PyTorch PSGTR it was exported
    from)."""
    pytest.importorskip("torch", reason="the PyTorch scene graph needs moai-edge[export]")
    from moai_edge.engines.manifest import load_manifest
    from moai_edge.engines.options import RuntimeOptions
    from moai_edge.engines.registry import open_engine
    from moai_edge.export.experts.scene_graph import load_scene_graph
    from moai_edge.runtime.experts import config_from
    from moai_edge.runtime.experts.scene_graph import SceneGraphConfig

    m = load_manifest(tiny_packages["moai"])
    section = m.experts["scene_graph"]
    engine = open_engine(m, "scene_graph", RuntimeOptions())
    yield m, config_from(SceneGraphConfig, section), engine, load_scene_graph(section["source"])
    engine.close()
