"""The torch-free runtime against the PyTorch reference pipeline on tiny packages of both families."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from moai_edge.engines.errors import IntegrityError
from moai_edge.runtime import AuxInputs, DecodingConfig, Pipeline

pytest.importorskip("torch", reason="the PyTorch reference needs moai-edge[export]")
from moai_edge.bench.reference.backbone import ReferenceBackbone  # noqa: E402

FAMILIES = ("collavo", "moai")
QUESTIONS = ["What is in the image?", "How many people are standing near the red car on the left?", "Describe it."]


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((150, 200, 3), (112, 112, 3), (300, 90, 3))]


def crayon_aux(dims, rng) -> AuxInputs:
    g = dims.grid
    return AuxInputs(class_map=rng.integers(0, dims.num_seg_classes, (g, g)),
                     number_map=rng.integers(0, dims.num_seg_numbers, (g, g)),
                     segment_text="(#1 person) [0.11, 0.20, 0.46, 0.97], (#1 dog) [0.50, 0.61, 0.88, 0.99]")


def moai_aux(dims, rng) -> AuxInputs:
    s = dims.image_size
    return AuxInputs(verbalized="The image includes bounding boxes and their objects: person [0.1, 0.2, 0.4, 0.9]. ",
                     colour_map=rng.integers(0, 256, (s, s, 3)).astype(np.float32) / 255)


def aux_inputs(family: str, dims, i: int) -> AuxInputs:
    """Expert-derived inputs as the experts would hand them over; row 2 is the empty case."""
    if i == 2:
        return AuxInputs()
    return {"collavo": crayon_aux, "moai": moai_aux}[family](dims, np.random.default_rng(10 + i))


@pytest.fixture(scope="module")
def runtimes(tiny_packages):
    models = {fam: Pipeline.load(path) for fam, path in tiny_packages.items()}
    yield models
    for m in models.values():
        m.close()


@pytest.fixture(scope="module")
def references(tiny_packages, tiny_references):
    return {fam: ReferenceBackbone(tiny_references[fam], tiny_packages[fam] / "checkpoint" / "tokenizer.model")
            for fam in FAMILIES}


def reference_tokens(ref, model, i, *, strategy="greedy", max_new=12, template="eval"):
    cfg = DecodingConfig(strategy=strategy, max_new_tokens=max_new,
                         eos_token_ids=model.manifest.generation.eos_token_ids)
    return ref.ask(images()[i], QUESTIONS[i], aux=aux_inputs(model.family.name, model.manifest.model, i), decoding=cfg,
                   template=template).tokens


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("template", ["eval", "demo"])
def test_greedy_tokens_identical_batch_one(runtimes, references, family, template):
    model = runtimes[family]
    outputs = []
    for i in range(3):
        ours = model.ask(images()[i], QUESTIONS[i], aux=aux_inputs(family, model.manifest.model, i), max_new_tokens=12,
                         template=template).tokens
        assert ours == reference_tokens(references[family], model, i, template=template), f"image {i}"
        outputs.append(ours)
    assert len({tuple(o) for o in outputs}) > 1  # the tokens depend on the input: the comparison can fail


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_right_padded_batch_equals_batch_one(runtimes, references, family, strategy):
    model = runtimes[family]
    aux = [aux_inputs(family, model.manifest.model, i) for i in range(3)]
    batch = model.ask_batch(images(), QUESTIONS, aux=aux, decoding=strategy, max_new_tokens=10)
    for i, answer in enumerate(batch):
        alone = model.ask(images()[i], QUESTIONS[i], aux=aux[i], decoding=strategy, max_new_tokens=10)
        assert answer.tokens == alone.tokens, f"row {i}"
        assert answer.tokens == reference_tokens(references[family], model, i, strategy=strategy, max_new=10)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_reproducible_with_a_seed(runtimes, family):
    model = runtimes[family]
    img = images()[0]
    runs = [model.ask(img, QUESTIONS[0], decoding="sample", seed=s, max_new_tokens=16).tokens for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_streaming_callback_sees_every_token(runtimes):
    model = runtimes["moai"]
    seen = []
    answer = model.ask(images()[0], QUESTIONS[0], max_new_tokens=8, on_token=lambda row, tok: seen.append(tok))
    assert seen == answer.tokens
    assert {"load", "vision", "prefill", "decode", "decode_per_token"} <= set(answer.timings_ms)


def test_runtime_import_leaves_torch_out():
    code = ("import sys, moai_edge.runtime, moai_edge.runtime.cli, moai_edge.engines.ort_engine; "
            "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; print(bad); "
            "sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("victim", ["decoder.onnx", "decoder.weights", "tokenizer.model"])
def test_corrupted_package_file_is_refused_by_name(tiny_packages, tmp_path, victim):
    copy = tmp_path / "pkg"
    shutil.copytree(tiny_packages["moai"], copy, ignore=shutil.ignore_patterns("checkpoint"))
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=victim):
        Pipeline.load(copy)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "exif"])
def test_odd_image_modes_are_answered(runtimes, tmp_path, mode):
    from PIL import Image

    rgb = Image.fromarray(images()[0])
    if mode == "exif":
        img, path = rgb, tmp_path / "rotated.jpg"
        exif = img.getexif()
        exif[0x0112] = 6
        img.save(path, exif=exif)
    else:
        img = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
        path = tmp_path / f"odd-{mode.replace(';', '')}.png"
        img.save(path)
    answer = runtimes["collavo"].ask(str(path), QUESTIONS[0], max_new_tokens=3)
    assert len(answer.tokens) >= 1
