"""The three static checks over the tiny MoAI package of every precision preset, on the CPU (engines.compat):
every graph passes onnx.checker; TensorRT 10.3 and 10.15 take every graph but the decoder's (contrib ops: it runs
on the CUDA provider, and the manifest says why); the GPU presets' graphs have a CUDA kernel for every node."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from moai_edge.engines.compat import TENSORRT_MINIMUM, check_package, placement  # noqa: E402
from moai_edge.engines.manifest import load_manifest  # noqa: E402
from moai_edge.export.precision import PRECISION_PRESETS  # noqa: E402

GPU_PRESETS = ("fp16", "int4-fp16", "fp16-int8")
DECODER = {"prefill", "decode"}


@pytest.fixture(scope="module")
def preset_packages(tmp_path_factory, tiny_packages):
    """{preset: the tiny MoAI package at that preset} (lowered without the accuracy check: the graphs are what is
    checked here)."""
    from moai_edge.export.build import export_tiny

    root = tmp_path_factory.mktemp("presets")
    packages = {"fp32": tiny_packages["moai"]}
    for name in PRECISION_PRESETS:
        if name != "fp32":
            packages[name] = export_tiny("moai", root / name, precision=name, validate=False).root
    return packages


@pytest.fixture(scope="module")
def reports(preset_packages):
    return {name: check_package(load_manifest(pkg)) for name, pkg in preset_packages.items()}


@pytest.mark.parametrize("preset", list(PRECISION_PRESETS))
def test_every_graph_passes_the_onnx_checker(reports, preset):
    failed = {name: r.checker for name, r in reports[preset].items() if r.checker}
    assert not failed, failed


@pytest.mark.parametrize("preset", ["fp32", *GPU_PRESETS])
def test_tensorrt_takes_every_graph_but_the_decoders_and_the_manifest_says_why(preset_packages, reports, preset):
    m = load_manifest(preset_packages[preset])
    for version in ("10.3", "10.15"):
        refused = {name for name, r in reports[preset].items() if r.tensorrt[version]}
        assert refused <= DECODER and "decode" in refused, (version, refused)
    said = m.tensorrt["graphs"]
    assert set(said) == set(reports[preset]) and not said["decode"]["build"]
    assert "GroupQueryAttention" in said["decode"]["reason"] or "MatMulNBits" in said["decode"]["reason"]
    assert all(said[name]["build"] for name in said if name not in DECODER)
    assert m.tensorrt["axis_ranges"]["batch"] == [1, 1, 8]


@pytest.mark.parametrize("preset", ["int8", "int4"])
def test_cpu_presets_tower_is_listed_with_the_reason(reports, preset):
    """The CPU presets' dynamic int8 (DynamicQuantizeLinear, MatMulInteger) is no TensorRT op: listed, with why."""
    vision = reports[preset]["vision"].tensorrt[TENSORRT_MINIMUM]
    assert vision and any("DynamicQuantizeLinear" in p or "MatMulInteger" in p for p in vision)


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_presets_have_a_cuda_kernel_for_every_node(reports, preset):
    """Nothing of a GPU preset falls back to the CPU under the CUDA provider: the decoder's attention in float16
    (its IO float16), GridSample kept float32, QDQ biases float."""
    missing = {name: r.cuda[:3] for name, r in reports[preset].items() if r.cuda}
    assert not missing, missing
    for name, report in reports[preset].items():
        assert placement(report, "cuda") == ("cuda", [])


def test_an_fp32_decoder_would_leave_the_gpu(reports):
    """Why the GPU presets changed: float32 GroupQueryAttention has no CUDA kernel."""
    assert any("GroupQueryAttention" in p and "float32" in p for p in reports["fp32"]["decode"].cuda)
