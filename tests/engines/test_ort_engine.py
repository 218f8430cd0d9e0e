"""The ONNX Runtime engine: named I/O, input checking, errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines.errors import EngineError, InputError
from moai_edge.engines.ort_engine import OrtEngine, OrtOptions
from moai_edge.engines.protocol import Engine

onnx = pytest.importorskip("onnx")


def write_matmul(path, w: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def engine(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    with OrtEngine.load(write_matmul(tmp_path / "m.onnx", w), options=OrtOptions(intra_op_threads=1)) as e:
        yield e, w


def test_named_io_and_run(engine):
    e, w = engine
    assert isinstance(e, Engine)
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
        OrtEngine.load(tmp_path / "nothere.onnx")
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(EngineError, match="garbage.onnx"):
        OrtEngine.load(bad)


def test_unavailable_provider_is_refused(tmp_path):
    path = write_matmul(tmp_path / "m.onnx", np.ones((2, 2), np.float32))
    with pytest.raises(EngineError, match="NoSuchExecutionProvider"):
        OrtEngine.load(path, options=OrtOptions(providers=["NoSuchExecutionProvider"]))


def test_closed_engine_refuses_to_run(engine):
    e, _ = engine
    e.close()
    with pytest.raises(EngineError, match="closed"):
        e.run({"x": np.zeros((1, 4), np.float32)})
