"""Precision presets: a float32 package lowered to fp16 / int8 / int4, recorded, held to float32 on world questions."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("torch", reason="export needs moai-edge[export]")

from moai_edge.engines.errors import ExportValidationError, InputError  # noqa: E402
from moai_edge.engines.manifest import load_manifest  # noqa: E402
from moai_edge.export import reduce_package as reducing  # noqa: E402
from moai_edge.export.merge_decoder import branch_of  # noqa: E402
from moai_edge.export.onnx_weights import subgraphs  # noqa: E402
from moai_edge.export.precision import PRECISION_PRESETS, Float32, WeightOnly, precision_preset  # noqa: E402
from moai_edge.export.precision_check import BOUNDS  # noqa: E402
from moai_edge.export.quantize import BASE_MATMUL, output_head, weight_only  # noqa: E402
from moai_edge.runtime.pipeline import Pipeline  # noqa: E402
from moai_edge.runtime.samples import sample_image  # noqa: E402


def branch_graph(root, component):
    """The graph a component runs: its branch of the merged decoder graph, or its own graph. And every initializer
    it can read."""
    import onnx

    m = load_manifest(root)
    c = m.component(component)
    proto = onnx.load(str(m.path(c.file)))
    inits = {i.name: i for i in proto.graph.initializer}
    if not c.fixed_feeds:
        return proto.graph, inits
    branch = branch_of(proto, prefill=c.fixed_feeds["is_prefill"])
    return branch, {**inits, **{i.name: i for i in branch.initializer}}


def unsuffixed(name: str) -> str:
    return re.sub(r"_Q\d$", "", name)  # the quantizer's MatMulNBits name suffix


def heads_of(root) -> set[str]:
    """The output head's nodes (unsuffixed), found from the `logits` they compute, in a package's decoder graph(s)."""
    import onnx

    m = load_manifest(root)
    files = {m.component(name).file for name in ("prefill", "decode")}
    protos = [onnx.load(str(m.path(f)), load_external_data=False) for f in files]
    return {unsuffixed(head) for proto in protos for head in output_head(proto)}


@pytest.fixture(scope="module")
def int4_moai(tiny_packages, tmp_path_factory):
    out = tmp_path_factory.mktemp("int4") / "moai"
    return reducing.reduce_and_check(tiny_packages["moai"], out, PRECISION_PRESETS["int4"]).root


def test_unknown_preset_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(InputError, match="expected one of fp32, fp16, int8, int4, int4-fp16, fp16-int8, found 'int3'"):
        precision_preset("int3")
    out = subprocess.run([sys.executable, "-m", "moai_edge.runtime.cli", "export", "--tiny", "moai", "--precision",
                          "int3", "--out", str(tmp_path / "pkg")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "int3" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "pkg").exists()


def test_reducing_leaves_the_shared_source_manifest_as_it_was(tiny_packages, tmp_path):
    """reduce_package changes a copy of the source package's manifest, never the one load_manifest hands out."""
    src = load_manifest(tiny_packages["collavo"])
    before = copy.deepcopy(src)
    reducing.reduce_package(tiny_packages["collavo"], tmp_path / "fp16", PRECISION_PRESETS["fp16"])
    assert load_manifest(tiny_packages["collavo"]) is src and src == before
    assert load_manifest(tmp_path / "fp16").source["precision"] == "fp16" and "precision" not in src.source


def test_int4_package_records_each_components_precision(int4_moai):
    m = load_manifest(int4_moai)
    m.verify_all()  # the lowered graphs' and the copied files' sha256s are theirs
    got = {name: c.precision for name, c in m.components.items()}
    assert got == {"vision": "int8", "compressor": "fp32", "prefill": "int4", "decode": "int4", "panoptic": "int8",
                   "detector": "int8", "detector_queries": "fp32", "scene_graph": "int8", "scene_graph_masks": "int8",
                   "ocr_det": "fp32", "ocr_cls": "fp32", "ocr_rec": "fp32", "embedding": "fp16"}
    assert m.source["precision"] == "int4"
    check = m.source["precision_check"]
    assert check["decoder"]["token_agreement"] >= BOUNDS["int4"].token_agreement
    assert check["decoder"]["kl"] <= BOUNDS["int4"].kl and check["decoder"]["questions"] > 0
    assert m.load_array("embedding").dtype == np.float16


def test_int4_quantizes_the_base_weights_only(int4_moai, tiny_packages):
    """Every base matmul (and the output head, at 8 bits) is MatMulNBits; the PLoRA and mixer branches keep float32
    MatMuls."""
    layers = load_manifest(int4_moai).model.num_layers
    decode, _ = branch_graph(int4_moai, "decode")
    assert Counter(n.op_type for n in decode.node)["MatMulNBits"] == 5 * layers + 1
    prefill, inits = branch_graph(int4_moai, "prefill")
    fp32_prefill, _ = branch_graph(tiny_packages["moai"], "prefill")
    quantized = [n for n in prefill.node if n.op_type == "MatMulNBits"]
    assert len(quantized) == 5 * layers + 1 and all(BASE_MATMUL.search(unsuffixed(n.name)) for n in quantized)
    heads = heads_of(int4_moai)
    for graph in (prefill, decode):  # the base weights at 4 bits, the output head at 8
        bits = {unsuffixed(n.name): next(a.i for a in n.attribute if a.name == "bits")
                for n in graph.node if n.op_type == "MatMulNBits"}
        assert sorted(b for name, b in bits.items() if name in heads) == [8]
        assert sorted(set(b for name, b in bits.items() if name not in heads)) == [4]
    branches = [n for n in prefill.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert any("Plora_A" in n.name for n in branches) and any("moai_" in n.name for n in branches)
    assert all(inits[n.input[1]].data_type == 1 for n in branches)  # float32
    expected = [n.name for n in fp32_prefill.node if n.op_type == "MatMul" and not BASE_MATMUL.search(n.name)]
    assert sorted(n.name for n in prefill.node if n.op_type == "MatMul") == sorted(expected)


def bits_by_node(model) -> dict[str, int]:
    """{unsuffixed name: bits} of every MatMulNBits in `model` and its branches."""
    return {unsuffixed(n.name): next(a.i for a in n.attribute if a.name == "bits")
            for g in subgraphs(model.graph) for n in g.node if n.op_type == "MatMulNBits"}


@pytest.mark.parametrize(("base", "head"), [(WeightOnly(4), WeightOnly(8)), (WeightOnly(8), Float32())])
def test_the_head_is_the_matmul_computing_logits_whatever_its_name(base, head, tiny_packages):
    """The output head renamed in both branches of the merged decoder (a name no pattern knows) still gets the head's
    rule: 8 bits beside 4-bit base weights, or float32 beside 8-bit ones."""
    import onnx

    m = load_manifest(tiny_packages["moai"])
    model = onnx.load(str(m.path(m.component("decode").file)))
    renamed = set()
    for graph in subgraphs(model.graph):
        for node in graph.node:
            if re.search(r"(^|/)output(/base)?/MatMul$", node.name):  # the exporter's names for the head
                node.name = f"{graph.name}/lm_head/MatMul"
                renamed.add(node.name)
    assert len(renamed) == 2 and set(output_head(model)) == renamed and not any(BASE_MATMUL.search(n) for n in renamed)
    bits = bits_by_node(weight_only(model, base, head))
    base_count = 2 * 5 * m.model.num_layers  # wqkv, wo, w1, w3, w2 per layer, in each branch
    assert sorted(bits[n] for n in renamed if n in bits) == ([8, 8] if isinstance(head, WeightOnly) else [])
    assert sorted(b for n, b in bits.items() if n not in renamed) == [base.bits] * base_count


def test_a_decoder_whose_logits_no_matmul_computes_is_refused():
    """The head is walked back to through shape ops and casts only; anything else is named in the error."""
    from onnx import TensorProto, helper, numpy_helper

    def graph(last: str):
        w = numpy_helper.from_array(np.ones((4, 8), np.float32), "w")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
                 helper.make_node("Cast", ["h"], ["c"], name="cast", to=TensorProto.FLOAT),
                 helper.make_node(last, ["c", "c"] if last == "Add" else ["c"], ["logits"], name="last")]
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "logits")]
        return helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], initializer=[w]))

    assert output_head(graph("Identity")) == ["proj"]
    with pytest.raises(ExportValidationError, match=re.escape(
            "expected a MatMul computing 'logits' in graph 'g' (through Squeeze, Unsqueeze, Reshape, Flatten, Cast, "
            "Identity at most), found Add node 'last'")):
        output_head(graph("Add"))


def test_int4_decoder_weights_are_one_file_a_third_of_float32(int4_moai, tiny_packages):
    """Prefill and decode stay the two branches of one graph, with one weights file for both."""
    m, fp32 = load_manifest(int4_moai), load_manifest(tiny_packages["moai"])
    assert m.shared_weights == {}
    for name in ("prefill", "decode"):
        c = m.component(name)
        assert (c.file, list(c.extra_files), c.shared_weights) == ("decoder.onnx", ["decoder.weights"], None)
    assert fp32.component("decode").file == "decoder.onnx"


def test_int4_base_weights_take_under_a_fifth_of_their_float32_bytes(int4_moai, tiny_packages):
    """4 bits a weight plus a float32 scale per block of 32: 5 bits against 32."""
    from onnx import numpy_helper

    def base_bytes(root, op):
        graph, inits = branch_graph(root, "prefill")
        nodes = [n for n in graph.node if n.op_type == op and BASE_MATMUL.search(n.name.removesuffix("_Q4"))]
        return sum(numpy_helper.to_array(inits[i], base_dir=str(root)).nbytes
                   for n in nodes for i in n.input[1:] if i in inits)

    assert 0 < base_bytes(int4_moai, "MatMulNBits") < base_bytes(tiny_packages["moai"], "MatMul") / 5


def test_int4_package_runs_the_whole_pipeline(int4_moai):
    vocab = load_manifest(int4_moai).model.vocab_size
    with Pipeline.load(int4_moai) as pipe:
        result = pipe.ask(sample_image(seed=0), "Describe the image.", max_new_tokens=6)
    assert result.tokens and all(0 <= t < vocab for t in result.tokens) and result.experts["segments"] is not None


@pytest.mark.parametrize("name", ["fp16", "int8"])
def test_other_presets_pass_their_bounds(name, tiny_packages, tmp_path):
    m = reducing.reduce_and_check(tiny_packages["collavo"], tmp_path / name, PRECISION_PRESETS[name])
    decoder, tower = (PRECISION_PRESETS[name].rules[role].kind for role in ("decoder", "tower"))
    assert {n: c.precision for n, c in m.components.items() if n in ("prefill", "decode", "vision", "panoptic")} == \
        {"prefill": decoder, "decode": decoder, "vision": tower, "panoptic": tower}
    check = m.source["precision_check"]["decoder"]
    assert check["token_agreement"] >= BOUNDS[name].token_agreement and check["kl"] <= BOUNDS[name].kl
    with Pipeline.load(tmp_path / name) as pipe:
        assert pipe.ask(sample_image(seed=1), "What is this?", max_new_tokens=3).tokens
    if name == "int8":  # the base matmuls at 8 bits, the output head kept float32 in both branches
        heads = heads_of(tmp_path / name)
        for component in ("prefill", "decode"):
            graph, inits = branch_graph(tmp_path / name, component)
            assert Counter(n.op_type for n in graph.node)["MatMulNBits"] == 5 * m.model.num_layers
            head = [n for n in graph.node if n.name in heads]
            assert [n.op_type for n in head] == ["MatMul"] and inits[head[0].input[1]].data_type == 1


def test_the_tensorrt_preset_calibrates_symmetric_qdq_on_world_images(tiny_packages, tmp_path, monkeypatch):
    """fp16-int8: the tower's and experts' convolutions and matmuls behind QuantizeLinear/DequantizeLinear with zero
    points of 0 (TensorRT's explicit int8), activation ranges calibrated on each graph's own runtime inputs."""
    import onnx
    from onnx import numpy_helper

    from moai_edge.export import calibration

    seen = {}
    real = calibration.calibration_feeds

    def spy(package, components, **kw):
        got = real(package, components, **kw)
        seen.update({k: len(v) for k, v in got.items()})
        return got

    monkeypatch.setattr(reducing, "calibration_feeds", spy)
    m = reducing.reduce_and_check(tiny_packages["moai"], tmp_path / "trt", PRECISION_PRESETS["fp16-int8"])
    # one feed per image (the mask heads run on every one of these images: each has queries post-processing reads)
    assert seen == {"vision": 16, "panoptic": 16, "detector": 16, "scene_graph": 16, "scene_graph_masks": 16}
    for name in seen:
        assert m.component(name).precision == "int8-qdq"
        graph = onnx.load(str(m.path(m.component(name).file))).graph
        inits = {i.name: i for i in graph.initializer}
        quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
        assert quantize and len([n for n in graph.node if n.op_type == "DequantizeLinear"]) >= len(quantize)
        for node in quantize:  # activations: int8, zero point 0
            zero = numpy_helper.to_array(inits[node.input[2]])
            assert zero.dtype == np.int8 and not zero.any(), (name, node.name)
    assert (m.component("decode").precision == "fp16"
            and m.source["precision_check"]["decoder"]["token_agreement"] >= 0.95)
    with Pipeline.load(tmp_path / "trt") as pipe:
        assert pipe.ask(sample_image(seed=2), "What is this?", max_new_tokens=3).tokens


def test_a_broken_conversion_fails_the_check(tiny_packages, tmp_path, monkeypatch):
    """A decoder whose base weights are lost (zeroed) keeps its graph valid but no longer agrees with float32."""
    from onnx import numpy_helper

    def zeroed(proto, kind, *, decoder, preset, calibration=None):
        if decoder:
            for init in proto.graph.initializer:
                if init.dims and len(init.dims) == 2 and init.dims[0] * init.dims[1] > 1024:
                    init.CopyFrom(numpy_helper.from_array(np.zeros(tuple(init.dims), np.float32), init.name))
        return proto

    monkeypatch.setattr(reducing, "lowered", zeroed)
    with pytest.raises(ExportValidationError, match=re.escape("int8 decoder against float32")):
        reducing.reduce_and_check(tiny_packages["collavo"], tmp_path / "broken", PRECISION_PRESETS["int8"])
    recorded = json.loads((tmp_path / "broken" / "manifest.json").read_text())["source"]["precision_check"]
    assert recorded["decoder"]["token_agreement"] < BOUNDS["int8"].token_agreement


def test_questions_longer_than_the_context_are_skipped_and_counted(tiny_packages, monkeypatch):
    """A random-weight model's experts may find so many segments that a prompt outgrows the context: that question
    is skipped and counted, not the whole check stopped; with none left the check says so."""
    from moai_edge.engines.errors import ContextError
    from moai_edge.export import precision_check

    real, calls = precision_check.answer_logits, []

    def every_third_too_long(pipe, observation, question, tokens):
        calls.append(question)
        if tokens is None and len(calls) % 3 == 1:
            raise ContextError("a prompt of 9999 tokens exceeds the package's context")
        return real(pipe, observation, question, tokens)

    monkeypatch.setattr(precision_check, "answer_logits", every_third_too_long)
    with Pipeline.load(tiny_packages["moai"]) as pipe:
        found = precision_check.measure_agreement(pipe, pipe, images=1)
        assert found["decoder"].skipped == found["end_to_end"].skipped >= 1
        assert found["decoder"].token_agreement == 1.0 and found["decoder"].questions >= 1
        monkeypatch.setattr(precision_check, "answer_logits",
                            lambda *a: (_ for _ in ()).throw(ContextError("too long")))
        with pytest.raises(ExportValidationError, match="none of the .* world questions fits"):
            precision_check.measure_agreement(pipe, pipe, images=1)
