"""The ONNX Runtime engine: named I/O, input checking, metadata, errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines import EngineError, InputError, RuntimeOptions, open_file
from moai_edge.engines.ort_engine import OrtEngine, providers
from moai_edge.engines.protocol import Engine

from .fake_package import matmul_graph

onnx = pytest.importorskip("onnx")

OPTIONS = RuntimeOptions(threads=1)


@pytest.fixture
def engine(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    with open_file(matmul_graph(tmp_path / "m.onnx", w, metadata={"character": "a\nb"}), OPTIONS) as e:
        yield e, w


def test_named_io_and_run(engine):
    e, w = engine
    assert isinstance(e, Engine) and isinstance(e, OrtEngine) and e.name == "m"
    assert e.metadata() == {"character": "a\nb"}
    assert [(s.name, s.dtype, s.shape) for s in e.inputs()] == [("x", "float32", ("batch", 4))]
    assert [(s.name, s.dtype, s.shape) for s in e.outputs()] == [("y", "float32", ("batch", 3))]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(e.run({"x": x})["y"], x @ w, rtol=1e-6)


@pytest.mark.parametrize("feeds, words", [
    ({"x": np.zeros((1, 4), np.float64)}, ["'x'", "float32", "float64"]),
    ({"x": np.zeros((1, 5), np.float32)}, ["'x'", "axis 1", "expected 4", "found 5"]),
    ({"x": np.zeros(4, np.float32)}, ["'x'", "rank 2"]),
    ({"z": np.zeros((1, 4), np.float32)}, ["missing ['x']", "unexpected ['z']"]),
])
def test_bad_feeds_are_named(engine, feeds, words):
    e, _ = engine
    with pytest.raises(InputError) as info:
        e.run(feeds)
    for w in words:
        assert w in str(info.value)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(EngineError, match="nothere.onnx"):
        open_file(tmp_path / "nothere.onnx", OPTIONS)
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(EngineError, match="garbage.onnx"):
        open_file(bad, OPTIONS)


def test_devices_become_providers_with_the_device_id():
    assert providers(RuntimeOptions(), None) == ["CPUExecutionProvider"]
    assert providers(RuntimeOptions(device="tensorrt", device_id=1), None) == [
        ("TensorrtExecutionProvider", {"device_id": "1"}), ("CUDAExecutionProvider", {"device_id": "1"}),
        "CPUExecutionProvider"]


def test_options_reach_the_session(tmp_path):
    path = matmul_graph(tmp_path / "m.onnx", np.ones((2, 2), np.float32))
    with open_file(path, OPTIONS, name="custom", threads=2, memory_arena=False) as e:
        so = e.session.get_session_options()
        assert e.name == "custom" and so.intra_op_num_threads == 2 and not so.enable_cpu_mem_arena
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with open_file(path, RuntimeOptions(check_inputs=False)) as e:
        assert e.session.get_session_options().enable_cpu_mem_arena and not e.check_inputs


def test_closed_engine_refuses_to_run(engine):
    e, _ = engine
    e.close()
    with pytest.raises(EngineError, match="closed"):
        e.run({"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(EngineError, match="closed"):
        e.metadata()
