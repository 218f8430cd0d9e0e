"""Every malformed manifest field or package file is a ManifestError naming the field or file.

The packages here are synthetic (the manifest never parses its graphs), so these tests need no torch.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from moai_edge.engines.errors import IntegrityError, ManifestError
from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.manifest import (SECTION_RULES, Manifest, ModelDims, PreprocessConfig, PromptConfig,
                                        SharedWeights, load_manifest, sha256_of)

GRAPHS = ("vision", "compressor", "prefill", "decode", "panoptic", "detector", "scene_graph", "scene_graph_masks",
          "ocr_det", "ocr_cls", "ocr_rec")


def component(root: Path, name: str, file: str, **extra) -> dict:
    return {"file": file, "sha256": sha256_of(root / file), **extra}


def write_files(root: Path) -> None:
    (root / "ocr").mkdir(parents=True)
    (root / "tokenizer.model").write_bytes(b"not parsed by the manifest")
    for name in GRAPHS:
        (root / (f"ocr/{name}.onnx" if name.startswith("ocr") else f"{name}.onnx")).write_bytes(name.encode() * 7)
    np.save(root / "embed.npy", np.arange(20, dtype=np.float32).reshape(5, 4))
    np.save(root / "queries.npy", np.ones((3, 2), np.float32))
    (root / "weights.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())


def manifest_dict(root: Path) -> dict:
    graphs = {n: component(root, n, f"ocr/{n}.onnx" if n.startswith("ocr") else f"{n}.onnx",
                           inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 3, 14, 14]}]) for n in GRAPHS}
    graphs["prefill"]["shared_weights"] = "decoder"
    arrays = {"embedding": component(root, "embedding", "embed.npy", kind="npy",
                                     outputs=[{"name": "embed_tokens", "dtype": "float32", "shape": [5, 4]}]),
              "detector_queries": component(root, "q", "queries.npy", kind="npy",
                                            outputs=[{"name": "query_embeds", "dtype": "float32", "shape": [3, 2]}])}
    return {
        "schema_version": 4, "family": "moai", "source": {"preset": "synthetic"},
        "model": {"family": "moai", "hidden_size": 4, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 2,
                  "vocab_size": 4, "image_token_id": 4, "max_context": 32, "image_size": 28, "patch_size": 14,
                  "grid": 2, "num_image_tokens": 4, "bos_id": 1},
        "components": {**graphs, **arrays},
        "shared_weights": {"decoder": {"file": "weights.bin", "sha256": sha256_of(root / "weights.bin"), "tensors": {
            "w0": {"offset": 0, "nbytes": 32, "dtype": "float32", "shape": [2, 4]},
            "w1": {"offset": 32, "nbytes": 32, "dtype": "float32", "shape": [8]}}}},
        "tokenizer": {"file": "tokenizer.model", "sha256": sha256_of(root / "tokenizer.model"), "add_bos": True},
        "prompts": {"system": "sys <image>", "image_token": "<image>", "templates": {"eval": "Q: {question} A:"}},
        "preprocess": {"image_size": 28, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "generation": {"eos_token_ids": [2], "pad_token_id": 2},
        "experts": {"panoptic": {"component": "panoptic", "image_size": 32, "std": [0.2, 0.2, 0.2],
                                 "labels": ["a", "b"]},
                    "detector": {"component": "detector", "queries": "detector_queries", "threshold": 0.1},
                    "scene_graph": {"component": "scene_graph", "masks": "scene_graph_masks", "scale": [64, 32],
                                    "predicates": ["on"]},
                    "ocr": {"det": "ocr_det", "cls": "ocr_cls", "rec": "ocr_rec", "min_confidence": 0.85}},
    }


@pytest.fixture
def package(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "pkg"
    write_files(root)
    return root, manifest_dict(root)


def write(root: Path, d) -> Path:
    (root / "manifest.json").write_text(json.dumps(d))
    return root


def load(root: Path, *, verify_hashes: bool = True) -> Manifest:
    """The package loaded and, with `verify_hashes`, every file hashed now."""
    m = load_manifest(root, verify_hashes=verify_hashes)
    if verify_hashes:
        m.verify_all()
    return m


def refused(root: Path, d: dict, field: str, error=ManifestError, *, verify_hashes: bool = True) -> str:
    write(root, d)
    with pytest.raises(error) as info:
        load(root, verify_hashes=verify_hashes)
    assert field in str(info.value), f"message should name {field!r}: {info.value}"
    return str(info.value)


def test_a_good_package_loads_and_round_trips(package):
    root, d = package
    m = load(write(root, d))
    assert set(m.files()) >= {"tokenizer.model", "embed.npy", "weights.bin", "ocr/ocr_rec.onnx"}
    assert m.load_array("embedding").shape == (5, 4)
    assert isinstance(m.load_array("detector_queries", mmap=True), np.memmap)
    assert m.path("vision.onnx") == root / "vision.onnx"
    m.save(root)
    assert load(root).to_json() == m.to_json()


def test_rules_cover_every_field_of_every_section():
    for cls in (ModelDims, PromptConfig, PreprocessConfig, DecodingConfig, SharedWeights):
        assert set(SECTION_RULES[cls]) == {f.name for f in fields(cls)}, cls.__name__


@pytest.mark.parametrize("raw, words", [
    (b"\xff\xfe{}", "UTF-8"), (b'{"schema_version": 1, "family"', "not valid JSON"), (b"[1, 2]", "JSON object"),
    (b"", "not valid JSON"), (b"[" * 100_000, "not valid JSON"), (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
])
def test_unreadable_manifest_text(package, raw, words):
    root, _ = package
    (root / "manifest.json").write_bytes(raw)
    with pytest.raises(ManifestError, match=words):
        load(root)


SET, DROP = object(), object()
BAD_FIELDS = [  # (path into the manifest, new value or DROP, words the message must hold)
    (("schema_version",), 1, "schema_version"), (("schema_version",), 2, "schema_version"),
    (("schema_version",), True, "schema_version"),
    (("family",), "gpt", "family"), (("model",), DROP, "model"), (("surprise",), 1, "surprise"),
    (("model", "image_size"), 0, "model.image_size"), (("model", "hidden_size"), -4, "model.hidden_size"),
    (("model", "num_layers"), "1", "model.num_layers"), (("model", "grid"), 2.0, "model.grid"),
    (("model", "vocab_size"), True, "model.vocab_size"), (("model", "grid"), 3, "model.grid"),
    (("model", "family"), "collavo", "model.family"), (("model", "num_kv_heads"), 3, "model.num_kv_heads"),
    (("model", "bos_id"), 4, "model.bos_id"), (("model", "eos_id"), 2, "model"), (("model", "extra"), 1, "model"),
    (("preprocess", "image_size"), 0, "preprocess.image_size"),
    (("preprocess", "image_size"), 14, "preprocess.image_size"),
    (("preprocess", "std"), [0, 0.25, 0.25], "preprocess.std[0]"),
    (("preprocess", "std"), [-1, 1, 1], "preprocess.std[0]"),
    (("preprocess", "mean"), [0.5, 0.5], "preprocess.mean"), (("preprocess", "mean"), "0.5", "preprocess.mean"),
    (("preprocess", "std"), [float("nan"), 1, 1], "preprocess.std[0]"),
    (("preprocess", "scale"), 0, "preprocess.scale"),
    (("preprocess", "antialias"), "no", "preprocess.antialias"),
    (("prompts", "templates", "eval"), "no placeholder", "prompts.templates.eval"),
    (("prompts", "templates", "eval"), "{question} {other}", "prompts.templates.eval"),
    (("prompts", "templates", "eval"), "{question", "prompts.templates.eval"),
    (("prompts", "templates"), {}, "prompts.templates"),
    (("prompts", "answer_stop"), "", "prompts.answer_stop"),
    (("prompts", "default_template"), "demo", "prompts.default_template"),
    (("prompts", "image_token"), "", "prompts.image_token"),
    (("generation", "top_p"), 0, "generation.top_p"), (("generation", "strategy"), "nucleus", "generation.strategy"),
    (("generation", "decoding"), "greedy", "generation"),
    (("generation", "pad_token_id"), 4, "generation.pad_token_id"),
    (("generation", "pad_token_id"), -1, "generation.pad_token_id"), (("generation", "seed"), "7", "generation.seed"),
    (("generation", "num_beams"), 0, "generation.num_beams"), (("generation", "top_k"), 1.5, "generation.top_k"),
    (("generation", "eos_token_ids"), [], "generation.eos_token_ids"),
    (("generation", "eos_token_ids"), [9], "generation.eos_token_ids[0]"),
    (("generation", "max_new_tokens"), 0, "generation.max_new_tokens"),
    (("generation", "temperature"), 0, "generation.temperature"),
    (("components",), [], "components"), (("components", "vision", "weights_url"), "x", "components.vision"),
    (("components", "vision", "file"), DROP, "components.vision"),
    (("components", "vision", "kind"), "tflite", "components.vision.kind"),
    (("components", "vision", "sha256"), "abc", "components.vision.sha256"),
    (("components", "vision", "inputs", 0, "dtype"), "float99", "components.vision.inputs[0].dtype"),
    (("components", "vision", "inputs", 0, "shape"), "batch,3", "components.vision.inputs[0].shape"),
    (("components", "vision", "inputs", 0, "shape"), [1.5], "components.vision.inputs[0].shape[0]"),
    (("components", "vision", "inputs", 0, "shape"), [-1], "components.vision.inputs[0].shape[0]"),
    (("components", "vision", "inputs", 0, "name"), DROP, "components.vision.inputs[0]"),
    (("components", "vision", "shared_weights"), "nope", "components.vision.shared_weights"),
    (("components", "vision", "extra_files"), {"x.bin": "zz"}, "components.vision.extra_files.x.bin"),
    (("tokenizer", "file"), DROP, "tokenizer"), (("tokenizer", "vocab"), "x", "tokenizer"),
    (("tokenizer", "add_bos"), "yes", "tokenizer.add_bos"), (("tokenizer",), "tokenizer.model", "tokenizer"),
    (("experts", "panoptic"), DROP, "panoptic"), (("experts", "sonar"), {}, "sonar"), (("experts",), [], "experts"),
    (("experts", "panoptic"), [], "experts.panoptic"),
    (("experts", "panoptic", "component"), "ghost", "experts.panoptic.component"),
    (("experts", "panoptic", "component"), DROP, "experts.panoptic.component"),
    (("experts", "detector", "queries"), DROP, "experts.detector.queries"),
    (("experts", "detector", "queries"), "detector", "experts.detector.queries"),
    (("experts", "ocr", "rec"), DROP, "experts.ocr.rec"), (("experts", "ocr", "det"), "embedding", "experts.ocr.det"),
    (("experts", "panoptic", "std"), [0, 0, 0], "experts.panoptic.std[0]"),
    (("experts", "panoptic", "image_size"), 0, "experts.panoptic.image_size"),
    (("experts", "panoptic", "labels"), "person", "experts.panoptic.labels"),
    (("experts", "scene_graph", "scale"), [666], "experts.scene_graph.scale"),
    (("experts", "detector", "threshold"), "0.1", "experts.detector.threshold"),
    (("shared_weights", "decoder", "tensors", "w0", "offset"), -8, "w0.offset"),
    (("shared_weights", "decoder", "tensors", "w0", "nbytes"), -32, "w0.nbytes"),
    (("shared_weights", "decoder", "tensors", "w0", "nbytes"), 16, "w0.nbytes"),
    (("shared_weights", "decoder", "tensors", "w0", "dtype"), "float99", "w0.dtype"),
    (("shared_weights", "decoder", "tensors", "w0", "shape"), [2, -4], "w0.shape[1]"),
    (("shared_weights", "decoder", "tensors", "w0", "offset"), DROP, "w0"),
    (("shared_weights", "decoder", "tensors", "w1", "offset"), 48, "weights.bin"),
    (("shared_weights", "decoder", "tensors", "w1", "offset"), 1 << 40, "weights.bin"),
]


def edited(d: dict, keys: tuple, value) -> dict:
    d = copy.deepcopy(d)
    *parents, last = keys
    target = d
    for k in parents:
        target = target[k]
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return d


@pytest.mark.parametrize("keys, value, words", BAD_FIELDS, ids=lambda v: str(v)[:40] if isinstance(v, tuple) else None)
def test_bad_field_is_named(package, keys, value, words):
    root, d = package
    refused(root, edited(d, keys, value), words, verify_hashes=False)


@pytest.mark.parametrize("relative", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx", "..\\outside.onnx",
                                      "C:\\outside.onnx", "a\0b", ""])
def test_paths_stay_inside_the_package(package, relative):
    root, d = package
    (root.parent / "outside.onnx").write_bytes(b"vision" * 7)  # exists and would even match a hash
    d["components"]["vision"]["file"] = relative
    refused(root, d, "components.vision.file")


def test_symlinks_out_of_the_package_are_refused_before_reading(package, monkeypatch):
    root, d = package
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "vision.onnx").write_bytes((root / "vision.onnx").read_bytes())
    (root / "vision.onnx").unlink()
    (root / "vision.onnx").symlink_to(outside / "vision.onnx")
    read = []
    monkeypatch.setattr("moai_edge.engines.integrity.digest", lambda data: read.append(data))
    message = refused(root, d, "components.vision.file")
    assert "symlink" in message and not read
    os.symlink(root / "loop", root / "loop")
    d["components"]["vision"]["file"] = "loop"
    refused(root, d, "components.vision.file")


def test_symlinks_inside_the_package_are_fine(package):
    root, d = package
    (root / "inner").mkdir()
    (root / "vision.onnx").rename(root / "inner" / "vision.onnx")
    (root / "vision.onnx").symlink_to(Path("inner") / "vision.onnx")
    load(write(root, d))


def test_missing_corrupted_and_unverified_files(package):
    root, d = package
    (root / "decode.onnx").write_bytes(b"tampered")
    refused(root, d, "decode.onnx", error=IntegrityError)
    load(root, verify_hashes=False)  # hashes are skipped by option, nothing else is
    (root / "decode.onnx").unlink()
    refused(root, d, "decode.onnx", verify_hashes=False)
    (root / "decode.onnx").mkdir()
    refused(root, d, "decode.onnx", verify_hashes=False)


def replace_array(root: Path, d: dict, writer) -> dict:
    path = root / "embed.npy"
    writer(path)
    d["components"]["embedding"]["sha256"] = sha256_of(path)
    return d


@pytest.mark.parametrize("writer, words", [
    (lambda p: np.save(p, np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True), "pickled"),
    (lambda p: p.write_bytes(pickle.dumps(np.zeros((5, 4), np.float32))), "embed.npy"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "embed.npy"),
    (lambda p: np.save(p, np.zeros((5, 4), np.float64)), "embed.npy"),
    (lambda p: np.save(p, np.zeros((4, 5), np.float32)), "embed.npy"),
    (lambda p: np.savez(p.open("wb"), a=np.zeros(3)), "embed.npy"),
])
def test_npy_components_are_plain_arrays_of_the_declared_shape(package, writer, words):
    root, d = package
    d = replace_array(root, d, writer)
    refused(root, d, words)


@pytest.mark.parametrize("verify", [True, False])
def test_load_array_refuses_what_changed_after_loading(package, verify):
    """Checked: the hash names the file. Unchecked: the content itself is refused, never unpickled."""
    root, d = package
    m = load(write(root, d), verify_hashes=verify)
    with pytest.raises(ManifestError, match="components.vision.kind"):
        m.load_array("vision")
    with pytest.raises(ManifestError, match="no component 'ghost'"):
        m.load_array("ghost")
    np.save(root / "embed.npy", np.array([object()] * 3, dtype=object), allow_pickle=True)
    for mmap in (False, True):
        with pytest.raises(IntegrityError if verify else ManifestError, match=re.escape("embed.npy")) as info:
            m.load_array("embedding", mmap=mmap)
        assert verify or "pickled" in str(info.value)
    np.savez(root / "queries.npy.npz", a=np.zeros(3))
    os.replace(root / "queries.npy.npz", root / "queries.npy")
    with pytest.raises(IntegrityError if verify else ManifestError, match="corrupted" if verify else "npz"):
        m.load_array("detector_queries")


def test_load_array_returns_the_declared_array(package):
    root, d = package
    np.save(root / "embed.npy", np.asfortranarray(np.arange(20, dtype=np.float32).reshape(5, 4)))
    d["components"]["embedding"]["sha256"] = sha256_of(root / "embed.npy")
    m = load(write(root, d))
    for mmap in (False, True):
        array = m.load_array("embedding", mmap=mmap)
        np.testing.assert_array_equal(array, np.arange(20, dtype=np.float32).reshape(5, 4))
        assert isinstance(array, np.memmap) == mmap
        assert array.flags.writeable != mmap  # a view of the read-only mapping, or a copy of it


def test_shared_weights_open_checks_its_spec(package):
    from moai_edge.engines.shared_weights import SharedWeights as Loaded

    root, d = package
    spec = d["shared_weights"]["decoder"]
    ok = Loaded.open(root, SharedWeights(**spec))
    np.testing.assert_array_equal(ok.arrays["w1"], np.arange(8, 16, dtype=np.float32))
    for t, words in [({"offset": -32}, "offset"), ({"nbytes": 4, "shape": [2]}, "nbytes"),
                     ({"offset": 40}, "weights.bin"), ({"dtype": "object"}, "dtype")]:
        bad = copy.deepcopy(spec)
        bad["tensors"]["w1"].update(t)
        with pytest.raises(ManifestError, match=words):
            Loaded.open(root, SharedWeights(**bad))
    with pytest.raises(ManifestError, match="shared_weights.file"):
        Loaded.open(root, SharedWeights(**{**spec, "file": "../weights.bin"}))
