"""CUDA streams for concurrent engines: the provider wiring everywhere, the real thing where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines import MoaiEdgeError, RuntimeOptions, load_manifest, open_engine
from moai_edge.engines.cuda_streams import uses_gpu, with_stream

from .fake_package import write_package


def gpu_present() -> bool:
    try:
        import onnxruntime as ort
        from cuda.bindings import runtime as cudart
    except ImportError:
        return False
    err, count = cudart.cudaGetDeviceCount()
    return ("CUDAExecutionProvider" in ort.get_available_providers() and err == cudart.cudaError_t.cudaSuccess
            and count > 0)


needs_gpu = pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU, onnxruntime-gpu and cuda-python")


def test_every_gpu_provider_gets_the_stream_and_keeps_its_options():
    providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": "1"}), "CUDAExecutionProvider",
                 "CPUExecutionProvider"]
    assert with_stream(providers, 1234) == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "1", "user_compute_stream": "1234"}),
        ("CUDAExecutionProvider", {"user_compute_stream": "1234"}), "CPUExecutionProvider"]
    assert with_stream(["CPUExecutionProvider"], 1234) == ["CPUExecutionProvider"]
    assert uses_gpu(providers) and not uses_gpu(["CPUExecutionProvider"])


@pytest.mark.skipif(gpu_present(), reason="checks the error a machine without a GPU gives")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tiny_packages):
    from moai_edge.runtime import Pipeline

    with pytest.raises(MoaiEdgeError, match="CUDA|moai-edge\\[gpu\\]|not available"):
        Pipeline.load(tiny_packages["moai"], RuntimeOptions(device="cuda"))


@pytest.mark.gpu
@needs_gpu
def test_each_engine_owns_a_stream_until_it_closes(tmp_path):
    pytest.importorskip("onnx")
    write_package(tmp_path / "pkg")
    m = load_manifest(tmp_path / "pkg")
    x = np.ones((2, 3), np.float32)
    cpu = open_engine(m, "prefill", RuntimeOptions())
    engines = [open_engine(m, n, RuntimeOptions(device="cuda")) for n in ("prefill", "decode", "vision")]
    assert len({e.stream.handle for e in engines}) == 3
    for e in engines[:2]:
        np.testing.assert_allclose(e.run({"x": x})["y"], cpu.run({"x": x})["y"], rtol=1e-4, atol=1e-5)
    for e in engines:
        stream = e.stream
        e.close()
        assert e.stream is None and stream.stream is None


@pytest.mark.gpu
@needs_gpu
def test_the_gpu_pipeline_equals_cpu(tiny_packages):
    from moai_edge.runtime import Pipeline
    from moai_edge.runtime.samples import sample_image

    images = [sample_image(size=320, seed=s) for s in range(2)]
    with Pipeline.load(tiny_packages["moai"]) as cpu:
        expected = [r.tokens for r in cpu.ask_batch(images, ["What is in the image?"] * 2, max_new_tokens=8)]
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(device="cuda")) as gpu:
        got = [r.tokens for r in gpu.ask_batch(images, ["What is in the image?"] * 2, max_new_tokens=8)]
    assert got == expected
