"""Backends by name: a new backend is one class and one registry entry; the package's files reach it verified."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from moai_edge.engines import (BACKENDS, EngineError, RuntimeOptions, TensorSpec, backend, load_manifest, open_engine,
                               open_file)
from moai_edge.engines import registry
from moai_edge.engines.shared_weights import SharedWeights

from .fake_package import matmul_graph, write_package

pytest.importorskip("onnx")


class FakeEngine:
    """Records what the registry hands a backend."""

    devices = ("cpu", "cuda")

    def __init__(self, graph, options, shared):
        self.name, self.graph, self.options, self.shared = graph.name, graph, options, shared

    @classmethod
    def check(cls, options) -> None:
        pass

    @classmethod
    def open(cls, graph, options, *, shared):
        return cls(graph, options, shared)

    def inputs(self) -> list[TensorSpec]:
        return []

    def outputs(self) -> list[TensorSpec]:
        return []

    def run(self, feeds, out=None):
        return {}

    def metadata(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(registry, "BACKENDS", dict(BACKENDS))
    return backend("fake")(FakeEngine)


@pytest.fixture
def package(tmp_path):
    manifest, weights = write_package(tmp_path / "pkg")
    return load_manifest(manifest.root), weights


def test_the_options_pick_a_registered_backend(fake, package):
    m, _ = package
    e = open_engine(m, "prefill", RuntimeOptions(backend="fake"), threads=1, memory_arena=False)
    assert type(e) is FakeEngine and e.name == "prefill"
    assert e.graph.data == (m.root / "prefill.onnx").read_bytes() and e.graph.external_data
    assert (e.options.threads, e.options.memory_arena) == (1, False)
    assert isinstance(e.shared, SharedWeights) and set(e.shared.arrays) == {"shared/w"}
    vision = open_engine(m, "vision", RuntimeOptions(backend="fake", device="cuda"))
    assert vision.shared is None and not vision.graph.external_data and vision.options.threads == 0
    assert vision.graph.data is None and vision.graph.stamp.size == (m.root / "vision.onnx").stat().st_size  # by path
    assert type(open_file(m.root / "vision.onnx", RuntimeOptions(backend="fake"))) is FakeEngine
    with pytest.raises(EngineError, match="backend 'fake'.*found FakeEngine and Other"):
        backend("fake")(type("Other", (FakeEngine,), {}))


def test_a_graph_changed_while_the_backend_read_it_is_refused(fake, package, monkeypatch):
    """A self-contained graph is hashed, then opened by path: the file must still be the version that was hashed."""
    from moai_edge.engines.errors import IntegrityError

    m, _ = package
    opened = []

    def open_and_rewrite(graph, options, *, shared):
        engine = FakeEngine(graph, options, shared)
        opened.append(engine)
        graph.path.write_bytes(graph.path.read_bytes() + b" ")  # someone rewrites it meanwhile
        return engine

    monkeypatch.setattr(FakeEngine, "open", staticmethod(open_and_rewrite))
    with pytest.raises(IntegrityError, match="'vision.onnx' \\(vision\\) changed while it was loaded"):
        open_engine(m, "vision", RuntimeOptions(backend="fake"))
    assert opened[0].closed  # the engine that read the other version is not left open


def test_unknown_backends_and_unserved_devices_list_what_there_is(fake, package):
    m, _ = package
    with pytest.raises(EngineError, match=r"backend: expected one of \['fake', 'onnxruntime'\], "
                                          r"found 'tensorrt-native'"):
        open_engine(m, "vision", RuntimeOptions(backend="tensorrt-native"))
    with pytest.raises(EngineError, match=r"'fake' cannot run on device 'tensorrt'; it serves \['cpu', 'cuda'\]"):
        open_engine(m, "vision", RuntimeOptions(backend="fake", device="tensorrt"))
    with pytest.raises(EngineError, match="kind 'npy'"):
        open_engine(m, "embedding", RuntimeOptions())


def test_open_file_runs_a_bare_graph(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    with open_file(matmul_graph(tmp_path / "g.onnx", w), RuntimeOptions(threads=1), name="g") as e:
        assert e.name == "g" and [s.name for s in e.inputs()] == ["x"]
        x = np.ones((2, 3), np.float32)
        np.testing.assert_allclose(e.run({"x": x})["y"], x @ w)


def test_shared_weights_are_opened_once_for_every_graph_naming_them(package, monkeypatch):
    m, weights = package
    opened = []
    real = SharedWeights.open.__func__
    monkeypatch.setattr(SharedWeights, "open", classmethod(lambda cls, *a, **k: opened.append(a) or real(cls, *a, **k)))
    options = RuntimeOptions(threads=1)
    prefill, decode = (open_engine(m, n, options) for n in ("prefill", "decode"))
    assert len(opened) == 1 and prefill.shared is decode.shared
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    for e in (prefill, decode):
        np.testing.assert_allclose(e.run({"x": x})["y"], x @ weights["decoder"], rtol=1e-5, atol=1e-6)
        assert e.session.get_session_options().get_session_config_entry("session.disable_prepacking") == "1"
    alone = open_file(m.root / "prefill.onnx", options)  # the same graph, its external data read by onnxruntime
    np.testing.assert_allclose(alone.run({"x": x})["y"], x @ weights["decoder"], rtol=1e-5, atol=1e-6)
    for e in (prefill, decode, alone):
        e.close()


def gpu_build() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(gpu_build(), reason="checks the error a CPU-only onnxruntime gives")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_a_gpu_device_without_a_gpu_is_a_clear_error(package, device):
    m, _ = package
    with pytest.raises(EngineError,
                       match=f"device '{device}' needs onnxruntime's .*ExecutionProvider.*moai-edge\\[gpu\\]"):
        open_engine(m, "vision", RuntimeOptions(device=device))


def test_nothing_cuda_is_imported_on_the_cpu(package):
    m, _ = package
    code = textwrap.dedent(f"""
        import sys
        from moai_edge.engines import RuntimeOptions, load_manifest, open_engine
        e = open_engine(load_manifest({str(m.root)!r}), "prefill", RuntimeOptions(threads=1))
        e.close()
        print(sorted(n for n in sys.modules if n.startswith("cuda")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
