"""A corpus of tampered engine packages: every one is refused with a ManifestError naming the bad field or file.

One real tiny MoAI package (experts included) is exported once, and for the shared-weights fields one in the
two-graph layout (its decode graph has float16 IO); each variant is a copy of one of them (a
tampered file is written anew) with one thing wrong.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from moai_edge.engines.errors import MoaiEdgeError
from moai_edge.engines.manifest import Manifest, load_manifest, sha256_of


@dataclass
class Variant:
    name: str
    tamper: Callable[[Path, dict], None]  # (package folder, manifest dict) -> None; the dict is written afterwards
    names: str  # what the message must name: the field or the file
    array: str | None = None  # tampered after a successful load: refused by Manifest.load_array(array)
    package: str = "merged"  # "shared": the two-graph layout with a shared-weights file (a float16-IO decode graph)


def copy_package(src: Path, dst: Path) -> Path:
    """A copy, not hard links: onnxruntime refuses external weights with more than one link (a hard-link attack)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint", "experts"))
    return dst


def rewrite(path: Path, data: bytes) -> None:
    """New contents in a new file."""
    path.unlink()
    path.write_bytes(data)


def set_field(*keys, value=None, drop=False) -> Callable[[Path, dict], None]:
    def tamper(root, d):
        target = d
        for k in keys[:-1]:
            target = target[k]
        if drop:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return tamper


def raw_manifest(data: bytes) -> Callable[[Path, dict], None]:
    def tamper(root, d):
        d.clear()  # nothing of the dict is written back
        rewrite(root / "manifest.json", data)
    return tamper


def new_array_file(writer: Callable[[Path], None], component: str = "embedding") -> Callable[[Path, dict], None]:
    """Replace an npy component's file and record its new sha256, so only the content is wrong."""
    def tamper(root, d):
        path = root / d["components"][component]["file"]
        path.unlink()
        writer(path)
        d["components"][component]["sha256"] = sha256_of(path)
    return tamper


def symlink_out(file_key: tuple, outside: str) -> Callable[[Path, dict], None]:
    """Move the file (or folder) out of the package and leave a symlink to it: the hash still matches."""
    def tamper(root, d):
        target = d
        for k in file_key:
            target = target[k]
        inside = root / Path(target).parts[0] if outside == "folder" else root / target
        away = root.parent / f"away-{inside.name}"
        shutil.copytree(inside, away) if inside.is_dir() else shutil.copy2(inside, away)
        shutil.rmtree(inside) if inside.is_dir() else inside.unlink()
        inside.symlink_to(away, target_is_directory=away.is_dir())
    return tamper


def escape_to_copy(rel: Callable[[Path], str]) -> Callable[[Path, dict], None]:
    """Point vision's file outside the package at an identical copy (the hash matches)."""
    def tamper(root, d):
        shutil.copy2(root / "vision.onnx", root.parent / "vision.onnx")
        d["components"]["vision"]["file"] = rel(root)
    return tamper


def weight_field(key, value) -> Callable[[Path, dict], None]:
    def tamper(root, d):
        tensors = d["shared_weights"]["decoder"]["tensors"]
        first = next(iter(tensors))
        tensors[first][key] = value(root, tensors[first]) if callable(value) else value
    return tamper


def flip_byte(file: str) -> Callable[[Path, dict], None]:
    def tamper(root, d):
        data = bytearray((root / file).read_bytes())
        data[len(data) // 2] ^= 0xFF
        rewrite(root / file, bytes(data))
    return tamper


def truncate_weights(root: Path, d: dict) -> None:
    w = d["shared_weights"]["decoder"]
    rewrite(root / w["file"], (root / w["file"]).read_bytes()[:1000])
    w["sha256"] = sha256_of(root / w["file"])


def pickled_object_array(path: Path) -> None:
    np.save(path, np.array([{"rows": 401}] * 3, dtype=object), allow_pickle=True)


def npz_archive(path: Path) -> None:
    with path.open("wb") as f:
        np.savez(f, a=np.zeros(3))


def truncated(keep: int) -> Callable[[Path], None]:
    header = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (401, 64), }" + b" " * 60 + b"\n"
    return lambda path: path.write_bytes(header + bytes(keep))


def replaced_file(file: str, writer: Callable[[Path], None]) -> Callable[[Path, dict], None]:
    def tamper(root, d):
        (root / file).unlink()
        writer(root / file)
    return tamper


def swap_experts_component(root: Path, d: dict) -> None:
    d["experts"]["detector"]["queries"] = "detector"


CORPUS = [
    # manifest text
    Variant("non_utf8", raw_manifest(b'{"schema_version": 1, "family": "mo\xffai"}'), "UTF-8"),
    Variant("truncated_json", lambda r, d: raw_manifest((r / "manifest.json").read_bytes()[:5000])(r, d),
            "not valid JSON"),
    Variant("json_list", raw_manifest(b"[1, 2, 3]"), "JSON object"),
    Variant("json_number", raw_manifest(b"42"), "JSON object"),
    Variant("empty_manifest", raw_manifest(b""), "not valid JSON"),
    Variant("deep_nesting", raw_manifest(b"[" * 200_000), "not valid JSON"),
    Variant("huge_integer", raw_manifest(b'{"schema_version": ' + b"1" * 6000 + b"}"), "not valid JSON"),
    Variant("manifest_missing", lambda r, d: (d.clear(), (r / "manifest.json").unlink()), "manifest.json"),
    # top level
    Variant("schema_version_old", set_field("schema_version", value=1), "schema_version"),
    Variant("schema_version_missing", set_field("schema_version", drop=True), "schema_version"),
    Variant("unknown_top_level_key", set_field("weights_url", value="http://x"), "weights_url"),
    Variant("model_missing", set_field("model", drop=True), "model"),
    Variant("family_unknown", set_field("family", value="gpt"), "family"),
    # model dims
    Variant("image_size_0", set_field("model", "image_size", value=0), "model.image_size"),
    Variant("hidden_size_negative", set_field("model", "hidden_size", value=-64), "model.hidden_size"),
    Variant("num_layers_string", set_field("model", "num_layers", value="4"), "model.num_layers"),
    Variant("vocab_size_float", set_field("model", "vocab_size", value=400.5), "model.vocab_size"),
    Variant("grid_disagrees", set_field("model", "grid", value=9), "model.grid"),
    Variant("model_unknown_key", set_field("model", "rope", value=1), "model"),
    Variant("eos_beyond_vocab", set_field("generation", "eos_token_ids", value=[400]), "generation.eos_token_ids"),
    # preprocessing
    Variant("std_zero", set_field("preprocess", "std", value=[0.0, 0.26, 0.27]), "preprocess.std"),
    Variant("std_negative", set_field("preprocess", "std", value=[-0.2, 0.26, 0.27]), "preprocess.std"),
    Variant("mean_two_numbers", set_field("preprocess", "mean", value=[0.5, 0.5]), "preprocess.mean"),
    Variant("std_strings", set_field("preprocess", "std", value=["a", "b", "c"]), "preprocess.std"),
    Variant("preprocess_image_size_0", set_field("preprocess", "image_size", value=0), "preprocess.image_size"),
    # prompts and generation
    Variant("template_without_question", set_field("prompts", "templates", "eval", value="hello"),
            "prompts.templates.eval"),
    Variant("template_other_placeholder", set_field("prompts", "templates", "eval", value="{question}{x}"),
            "prompts.templates.eval"),
    Variant("answer_stop_empty", set_field("prompts", "answer_stop", value=""), "prompts.answer_stop"),
    Variant("default_template_unknown", set_field("prompts", "default_template", value="chat"),
            "prompts.default_template"),
    Variant("top_p_zero", set_field("generation", "top_p", value=0), "generation.top_p"),
    Variant("decoding_unknown", set_field("generation", "strategy", value="nucleus"), "generation.strategy"),
    # components and tensor specs
    Variant("component_unknown_key", set_field("components", "vision", "url", value="x"), "components.vision"),
    Variant("component_without_file", set_field("components", "vision", "file", drop=True), "components.vision"),
    Variant("component_kind_unknown", set_field("components", "vision", "kind", value="tflite"),
            "components.vision.kind"),
    Variant("dtype_float99", set_field("components", "vision", "inputs", 0, "dtype", value="float99"),
            "components.vision.inputs[0].dtype"),
    Variant("shape_not_list", set_field("components", "vision", "inputs", 0, "shape", value="batch,3"),
            "components.vision.inputs[0].shape"),
    Variant("shape_float_axis", set_field("components", "prefill", "outputs", 0, "shape", value=[1.5, 400]),
            "components.prefill.outputs[0].shape[0]"),
    Variant("sha256_malformed", set_field("components", "decode", "sha256", value="deadbeef"),
            "components.decode.sha256"),
    Variant("shared_weights_unknown", set_field("components", "prefill", "shared_weights", value="encoder"),
            "components.prefill.shared_weights"),
    Variant("components_list", set_field("components", value=[]), "components"),
    # tokenizer
    Variant("tokenizer_without_file", set_field("tokenizer", "file", drop=True), "tokenizer"),
    Variant("tokenizer_unknown_key", set_field("tokenizer", "vocab", value="x"), "tokenizer"),
    Variant("tokenizer_not_object", set_field("tokenizer", value="tokenizer.model"), "tokenizer"),
    # experts
    Variant("experts_without_panoptic", set_field("experts", "panoptic", drop=True), "panoptic"),
    Variant("expert_component_missing", set_field("experts", "panoptic", "component", value="mask2former"),
            "experts.panoptic.component"),
    Variant("detector_without_queries", set_field("experts", "detector", "queries", drop=True),
            "experts.detector.queries"),
    Variant("detector_queries_graph", swap_experts_component, "experts.detector.queries"),
    Variant("ocr_without_rec", set_field("experts", "ocr", "rec", drop=True), "experts.ocr.rec"),
    Variant("ocr_det_unknown", set_field("experts", "ocr", "det", value="ocr_v5"), "experts.ocr.det"),
    Variant("expert_std_zero", set_field("experts", "panoptic", "std", value=[0, 0, 0]), "experts.panoptic.std"),
    Variant("expert_image_size_0", set_field("experts", "detector", "image_size", value=0),
            "experts.detector.image_size"),
    Variant("expert_labels_string", set_field("experts", "panoptic", "labels", value="person"),
            "experts.panoptic.labels"),
    Variant("scene_graph_scale_short", set_field("experts", "scene_graph", "scale", value=[666]),
            "experts.scene_graph.scale"),
    Variant("expert_unknown_section", set_field("experts", "sonar", value={}), "sonar"),
    # paths out of the package
    Variant("dotdot_path", escape_to_copy(lambda r: "../vision.onnx"), "components.vision.file"),
    Variant("nested_dotdot_path", escape_to_copy(lambda r: "ocr/../../vision.onnx"), "components.vision.file"),
    Variant("absolute_path", escape_to_copy(lambda r: str(r.parent / "vision.onnx")), "components.vision.file"),
    Variant("backslash_dotdot_path", escape_to_copy(lambda r: "..\\vision.onnx"), "components.vision.file"),
    Variant("nul_in_path", set_field("components", "vision", "file", value="vision\0.onnx"), "components.vision.file"),
    Variant("symlink_file_out", symlink_out(("components", "vision", "file"), "file"), "components.vision.file"),
    Variant("symlink_folder_out", symlink_out(("components", "ocr_det", "file"), "folder"), "components.ocr_det.file"),
    Variant("symlink_weights_out", symlink_out(("shared_weights", "decoder", "file"), "file"),
            "shared_weights.decoder.file", package="shared"),
    Variant("symlink_loop",
            lambda r, d: ((r / "vision.onnx").unlink(), (r / "vision.onnx").symlink_to(r / "vision.onnx")),
            "components.vision.file"),
    Variant("tokenizer_dotdot", set_field("tokenizer", "file", value="../tokenizer.model"), "tokenizer.file"),
    Variant("extra_file_escape", set_field("components", "vision", "extra_files", value={"../x.bin": "0" * 64}),
            "components.vision.extra_files"),
    # shared weights
    Variant("weights_negative_offset", weight_field("offset", -2048), "offset", package="shared"),
    Variant("weights_negative_nbytes", weight_field("nbytes", -2048), "nbytes", package="shared"),
    Variant("weights_offset_beyond_file", weight_field("offset", lambda r, t: (r / "decoder.weights").stat().st_size),
            "decoder.weights", package="shared"),
    Variant("weights_nbytes_mismatch", weight_field("nbytes", 1024), "nbytes", package="shared"),
    Variant("weights_dtype_unknown", weight_field("dtype", "float99"), "dtype", package="shared"),
    Variant("weights_shape_negative", weight_field("shape", [-64, 8]), "shape", package="shared"),
    Variant("weights_offset_null", weight_field("offset", None), "offset", package="shared"),
    Variant("weights_file_truncated", truncate_weights, "decoder.weights", package="shared"),
    # files
    Variant("file_missing", lambda r, d: (r / "vision.onnx").unlink(), "vision.onnx"),
    Variant("file_is_folder", replaced_file("tokenizer.model", Path.mkdir), "tokenizer.model"),
    Variant("hash_mismatch_graph", flip_byte("decoder.onnx"), "decoder.onnx"),
    Variant("fixed_feed_not_bool", set_field("components", "decode", "fixed_feeds", value={"is_prefill": "no"}),
            "components.decode.fixed_feeds.is_prefill"),
    Variant("fixed_feeds_list", set_field("components", "prefill", "fixed_feeds", value=["is_prefill"]),
            "components.prefill.fixed_feeds"),
    Variant("extra_weights_missing", lambda r, d: (r / "decoder.weights").unlink(), "decoder.weights"),
    Variant("hash_mismatch_weights", flip_byte("decoder.weights"), "decoder.weights"),
    Variant("hash_mismatch_tokenizer", flip_byte("tokenizer.model"), "tokenizer.model"),
    # npy content (hash updated: only the content is wrong)
    Variant("pickled_npy", new_array_file(pickled_object_array), "embed_tokens.npy"),
    Variant("raw_pickle_as_npy", new_array_file(lambda p: p.write_bytes(pickle.dumps(np.zeros((401, 64), np.float32)))),
            "embed_tokens.npy"),
    Variant("truncated_npy", new_array_file(truncated(1000)), "embed_tokens.npy"),
    Variant("npy_wrong_dtype", new_array_file(lambda p: np.save(p, np.zeros((401, 64), np.float64))),
            "embed_tokens.npy"),
    Variant("npy_wrong_shape",
            new_array_file(lambda p: np.save(p, np.zeros((133, 31), np.float32)), "detector_queries"),
            "detector_queries.npy"),
    Variant("npz_as_npy", new_array_file(npz_archive), "embed_tokens.npy"),
    # content swapped after loading: refused where it is read
    Variant("pickled_npy_after_load", replaced_file("embed_tokens.npy", pickled_object_array), "embed_tokens.npy",
            "embedding"),
    Variant("truncated_npy_after_load", replaced_file("embed_tokens.npy", truncated(1000)), "embed_tokens.npy",
            "embedding"),
    Variant("npz_after_load", replaced_file("detector_queries.npy", npz_archive), "detector_queries.npy",
            "detector_queries"),
]


def apply(variant: Variant, src: Path, where: Path) -> Path:
    root = copy_package(src, where / variant.name / "pkg")
    d = json.loads((root / "manifest.json").read_text())
    if variant.array:
        return root
    variant.tamper(root, d)
    if d:
        rewrite(root / "manifest.json", json.dumps(d).encode())
    return root


def refusal(call: Callable[[], object], names: str) -> tuple[str, str]:
    """('clean' | 'unnamed' | 'accepted' | 'traceback', message) of one call that should be refused."""
    try:
        call()
    except MoaiEdgeError as exc:
        return ("clean" if names in str(exc) else "unnamed"), str(exc)
    except Exception as exc:  # noqa: BLE001 - counting what escapes is the point of this test
        return "traceback", f"{type(exc).__name__}: {exc}"
    return "accepted", ""


def loaded(root: Path) -> Manifest:
    """The package loaded and every file hashed now."""
    m = load_manifest(root)
    m.verify_all()
    return m


def outcome(variant: Variant, root: Path) -> tuple[str, str]:
    if not variant.array:
        return refusal(lambda: loaded(root), variant.names)
    m = loaded(root)
    variant.tamper(root, {})
    results = [refusal(lambda: m.load_array(variant.array, mmap=mmap), variant.names) for mmap in (False, True)]
    return next((r for r in results if r[0] != "clean"), results[0])


@pytest.fixture(scope="module")
def corpus(tiny_packages, tiny_fp16_io_package, tmp_path_factory):
    where = tmp_path_factory.mktemp("malformed")
    packages = {"merged": Path(tiny_packages["moai"]), "shared": Path(tiny_fp16_io_package)}
    return {v.name: (v, apply(v, packages[v.package], where)) for v in CORPUS}


def test_every_malformed_package_is_refused_naming_the_field(corpus):
    results = {name: outcome(v, root) for name, (v, root) in corpus.items()}
    clean = [n for n, (kind, _) in results.items() if kind == "clean"]
    bad = {n: r for n, r in results.items() if r[0] != "clean"}
    counts = f"{len(results)} tampered packages, {len(clean)} refused cleanly naming the field/file, {len(bad)} not"
    print(counts)
    assert len(results) >= 40 and not bad, counts + "".join(f"\n  {n}: {k} {m[:200]}" for n, (k, m) in bad.items())


def test_the_untampered_copy_loads(tiny_packages, tmp_path):
    root = copy_package(Path(tiny_packages["moai"]), tmp_path / "pkg")
    m = loaded(root)
    assert m.load_array("embedding").shape == (m.model.vocab_size + 1, m.model.hidden_size)


@pytest.mark.parametrize("name", ["non_utf8", "dtype_float99", "experts_without_panoptic", "std_zero",
                                  "symlink_file_out", "weights_negative_offset", "pickled_npy", "hash_mismatch_graph"])
def test_cli_refuses_with_exit_code_2_and_no_traceback(corpus, tmp_path, capsys, name):
    from moai_edge.runtime.cli import main

    variant, root = corpus[name]
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    code = main(["ask", "--engine", str(root), str(image), "What is this?"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "moai-edge: error:" in err and variant.names in err, err
