"""The GPU path on a machine without one: the provider check (a session that opens on the CPU is refused, naming the
library onnxruntime could not load), the TensorRT provider's options and cache key from a manifest, the refusal to
build engines, doctor's screen, and the KV cache bound as OrtValues; the GPU runs themselves are written and skip."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from moai_edge.engines import EngineError, RuntimeOptions, load_manifest, open_engine, open_file
from moai_edge.engines import ort_engine, providers
from moai_edge.engines.tensorrt import tensorrt_plan
from moai_edge.engines.tensorrt import device_folder, provider_options
from moai_edge.runtime.cli import main

from .fake_package import matmul_graph
from .test_cuda_streams import gpu_present

# What onnxruntime-gpu 1.31.1 logged on this machine (no GPU, no CUDA 13 libraries) when asked for CUDA, and what
# it printed for TensorRT before falling back: the session then got ['CPUExecutionProvider'] and raised nothing.
CUDA_LOG = ("\x1b[1;31m2026-12-07 21:56:43.054322328 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] "
            "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 onnxruntime::Provider& "
            "onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
            "/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so with error: "
            "libcublasLt.so.13: cannot open shared object file: No such file or directory\n\x1b[m\n"
            "\x1b[0;93m2026-12-07 21:56:43.054360332 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:1295 "
            "CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider. Require cuDNN 9.* and "
            "CUDA 13.*. Please install all dependencies as mentioned in the GPU requirements page.\x1b[m\n")
TENSORRT_PRINT = ("*************** EP Error ***************\nEP Error /onnxruntime_src/onnxruntime/python/"
                  "onnxruntime_pybind_state.cc:729 void onnxruntime::python::RegisterTensorRTPluginsAsCustomOps("
                  "PySessionOptions&, const onnxruntime::ProviderOptions&) Please install TensorRT libraries as "
                  "mentioned in the GPU requirements page\n when using ['TensorrtExecutionProvider', "
                  "'CUDAExecutionProvider', 'CPUExecutionProvider']\nFalling back to ['CUDAExecutionProvider', "
                  "'CPUExecutionProvider'] and retrying.\n")


@pytest.fixture
def failing_gpu(monkeypatch):
    """onnxruntime as onnxruntime-gpu behaves where its CUDA libraries cannot load: the providers are listed, the
    session logs why on fd 2 (TensorRT: prints on stdout) and opens on the CPU."""
    import onnxruntime as ort

    real = ort_engine.new_session
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(providers.EXECUTION_PROVIDERS["tensorrt"]))
    monkeypatch.setattr(ort_engine, "open_stream", lambda name, options: None)  # no cuda-python stream here

    def falling_back(model, so, provider_list):
        names = [p[0] if isinstance(p, tuple) else p for p in provider_list]
        if providers.TENSORRT in names:
            print(TENSORRT_PRINT)
        os.write(2, CUDA_LOG.encode())
        return real(model, so, ["CPUExecutionProvider"])

    monkeypatch.setattr(ort_engine, "new_session", falling_back)


def test_a_cuda_session_that_opened_on_the_cpu_is_refused_naming_the_library(tmp_path, failing_gpu, capfd):
    path = matmul_graph(tmp_path / "m.onnx", np.ones((4, 3), np.float32))
    with pytest.raises(EngineError) as info:
        open_file(path, RuntimeOptions(device="cuda"))
    said = str(info.value)
    assert "expected 'm' on onnxruntime's CUDAExecutionProvider, found it placed on ['CPUExecutionProvider']" in said
    assert "libonnxruntime_providers_cuda.so failed to load: libcublasLt.so.13: cannot open shared object" in said
    assert "Require cuDNN 9.* and CUDA 13.*" in said and "--allow-cpu-fallback" in said
    assert "libcublasLt" not in capfd.readouterr().err  # the log went into the message, not past the user


def test_tensorrt_falling_back_names_both_causes(tmp_path, failing_gpu):
    path = matmul_graph(tmp_path / "m.onnx", np.ones((4, 3), np.float32))
    with pytest.raises(EngineError) as info:
        open_file(path, RuntimeOptions(device="tensorrt"))
    assert "TensorrtExecutionProvider" in str(info.value) and "Please install TensorRT libraries" in str(info.value)


def test_allow_cpu_fallback_runs_on_the_cpu_with_a_warning(tmp_path, failing_gpu):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    with pytest.warns(providers.CpuFallbackWarning, match="libcublasLt.so.13"):
        engine = open_file(matmul_graph(tmp_path / "m.onnx", w), RuntimeOptions(device="cuda", allow_cpu_fallback=True))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(engine.run({"x": x})["y"], x @ w)
    assert engine.providers == ["CPUExecutionProvider"]
    engine.close()


@pytest.mark.skipif(gpu_present(), reason="checks the refusal where onnxruntime has no CUDA provider")
def test_the_cpu_onnxruntime_asked_for_cuda_refuses_or_falls_back_when_allowed(tmp_path):
    path = matmul_graph(tmp_path / "m.onnx", np.ones((4, 3), np.float32))
    with pytest.raises(EngineError, match="CUDAExecutionProvider.*--allow-cpu-fallback"):
        open_file(path, RuntimeOptions(device="cuda"))
    with pytest.warns(providers.CpuFallbackWarning):
        open_file(path, RuntimeOptions(device="cuda", allow_cpu_fallback=True)).close()


def test_the_cli_flag_reaches_the_options(tiny_packages, tmp_path, capsys):
    code = main(["experts", str(tiny_packages["moai"] / "nothere.png"), "--engine", str(tiny_packages["moai"]),
                 "--allow-cpu-fallback"])
    assert code == 2 and "nothere.png" in capsys.readouterr().err  # parsed; the missing image is what fails


def test_tensorrt_options_come_from_the_manifest(tiny_packages, tmp_path):
    m = load_manifest(tiny_packages["moai"])
    vision, decode = tensorrt_plan(m, "vision"), tensorrt_plan(m, "decode")
    assert vision.build and not vision.fp16 and not vision.int8
    assert not decode.build and "GroupQueryAttention" in decode.reason  # the decoder runs on CUDA
    folder = device_folder(tmp_path, vision.package_id, "Orin (nvgpu)", "10.3.0")
    opts = provider_options(vision, device_id=0, cache_dir=folder)
    assert opts["trt_engine_cache_enable"] == opts["trt_timing_cache_enable"] == "1"
    assert opts["trt_engine_cache_path"].startswith(str(folder)) and vision.graph_sha256[:16] in opts[
        "trt_engine_cache_path"]
    assert opts["trt_timing_cache_path"] == str(folder) and folder.name == "Orin-nvgpu-trt10.3.0"
    size = m.model.image_size
    assert opts["trt_profile_min_shapes"] == f"pixel_values:1x3x{size}x{size}"
    assert opts["trt_profile_max_shapes"] == f"pixel_values:8x3x{size}x{size}"
    assert int(opts["trt_max_workspace_size"]) > 0 and opts["trt_fp16_enable"] == "0"
    # the key changes with the GPU, the TensorRT version and the graph
    assert len({device_folder(tmp_path, vision.package_id, g, t) for g, t in
                [("Orin", "10.3.0"), ("RTX 4090", "10.3.0"), ("Orin", "10.15.1")]}) == 3
    assert provider_options(decode.__class__(**{**vision.__dict__, "graph_sha256": "f" * 64}), device_id=0,
                            cache_dir=folder)["trt_engine_cache_path"] != opts["trt_engine_cache_path"]


def test_build_engines_refuses_without_a_gpu_naming_what_is_missing(tiny_packages, capsys):
    if gpu_present():
        pytest.skip("a GPU is present")
    code = main(["build-engines", "--engine", str(tiny_packages["moai"]), "--device", "tensorrt"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot build TensorRT engines here" in err and "no GPU" in err and "Traceback" not in err
    assert main(["build-engines", "--engine", str(tiny_packages["moai"]), "--device", "cpu"]) == 2


def test_doctor_says_plainly_there_is_no_gpu_and_places_each_graph(tiny_packages, capsys):
    if gpu_present():
        pytest.skip("a GPU is present")
    assert main(["doctor", "--engine", str(tiny_packages["moai"]), "--device", "tensorrt"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("No GPU here") for line in out) and any("onnxruntime" in line for line in out)
    assert any(line.startswith("Jetson:") and "not a Jetson" in line for line in out)
    placed = {line.split()[0]: line.split()[1] for line in out if line.startswith("  ")}
    assert placed["decode"] == "cuda" and placed["vision"] == "tensorrt" and len(out) <= 30  # one screen


class NoDeviceArrays:
    """An engine without `device_array`: the decoder binds numpy arrays, as before."""

    def __init__(self, engine):
        self.engine, self.name = engine, engine.name

    def __getattr__(self, name):
        if name == "device_array":
            raise AttributeError(name)
        return getattr(self.engine, name)


def test_the_kv_cache_bound_as_ortvalues_gives_the_numpy_paths_tokens(tiny_packages):
    """The GPU's binding path (KV buffers as OrtValues, bound as past and present) run on the CPU: same tokens."""
    from moai_edge.engines.device_arrays import DeviceArray
    from moai_edge.runtime.decoding.decoder import DecoderRunner
    from moai_edge.runtime.decoding.generation import generate

    m = load_manifest(tiny_packages["moai"])
    options = RuntimeOptions(threads=1)
    with open_engine(m, "prefill", options) as prefill, open_engine(m, "decode", options) as decode:
        table = m.load_array("embedding")
        feeds = prefill_feeds(prefill, table)
        tokens, caches = {}, {}
        for name, engine in (("ortvalue", decode), ("numpy", NoDeviceArrays(decode))):
            runner = DecoderRunner(prefill=prefill, decode=engine, embed_table=table, dims=m.model)
            first = runner.prefill(feeds, max_new_tokens=6)
            cfg = m.generation.replace(strategy="greedy", max_new_tokens=6, eos_token_ids=(10**6 % m.model.vocab_size,))
            tokens[name] = generate(first, runner.step, runner.select_rows, cfg)
            caches[name] = runner.cache
    assert tokens["ortvalue"] == tokens["numpy"] and len(tokens["numpy"][0]) == 6
    assert all(isinstance(b, DeviceArray) for b in caches["ortvalue"].bound_keys)
    assert caches["numpy"].bound_keys == []
    for a, b in zip(caches["ortvalue"].keys, caches["numpy"].keys):
        np.testing.assert_array_equal(a, b)  # written in place in the same host memory


def prefill_feeds(engine, table: np.ndarray) -> dict[str, np.ndarray]:
    from moai_edge.bench.speed.backbone_memory import zero_prefill_feeds

    feeds = zero_prefill_feeds(engine, 5, rows=2)
    feeds["inputs_embeds"][:] = table[7]
    feeds["attention_mask"][:] = np.arange(5)[None] < np.array([5, 3])[:, None]
    return feeds


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU, onnxruntime-gpu and cuda-python")
def test_on_a_gpu_the_kv_cache_stays_in_device_memory_and_tokens_match_the_cpu(tiny_packages):
    from moai_edge.engines.device_arrays import DeviceArray
    from moai_edge.runtime import Pipeline
    from moai_edge.runtime.samples import sample_image

    images = [sample_image(size=160, seed=s) for s in range(2)]
    with Pipeline.load(tiny_packages["moai"]) as cpu:
        expected = [r.tokens for r in cpu.ask_batch(images, ["What is it?"] * 2, max_new_tokens=8)]
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(device="cuda")) as gpu:
        assert gpu.backbone.engines["decode"].device_array(np.zeros(2, np.float32)).device == "cuda"
        assert isinstance(gpu.backbone.engines["decode"].device_array(np.zeros(2, np.float32)), DeviceArray)
        got = [r.tokens for r in gpu.ask_batch(images, ["What is it?"] * 2, max_new_tokens=8)]
    assert got == expected


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present() or sys.platform != "linux", reason="needs an NVIDIA GPU with TensorRT 10")
def test_build_engines_caches_each_tensorrt_engine_once(tiny_packages, tmp_path, monkeypatch):
    monkeypatch.setenv("MOAI_EDGE_CACHE", str(tmp_path))
    assert main(["build-engines", "--engine", str(tiny_packages["moai"]), "--device", "tensorrt"]) == 0
    engines = list(tmp_path.rglob("*.engine"))
    assert engines and list(tmp_path.rglob("timing.cache")) or list(tmp_path.rglob("*timing*"))
    assert main(["build-engines", "--engine", str(tiny_packages["moai"]), "--device", "tensorrt"]) == 0
    assert sorted(tmp_path.rglob("*.engine")) == sorted(engines)  # the second run reused them
