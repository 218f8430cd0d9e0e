"""The manifest is parsed once per process and each package file hashed at most once, on the bytes then used."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from moai_edge.engines import IntegrityError, ManifestError, RuntimeOptions, load_manifest, open_engine
from moai_edge.engines import integrity

from .fake_package import WEIGHTS_FILE, write_package

pytest.importorskip("onnx")
FILES = ("vision.onnx", "prefill.onnx", "decode.onnx", "embed.npy", WEIGHTS_FILE, "tokenizer.model")
OPTIONS = RuntimeOptions(threads=1)


@pytest.fixture
def root(tmp_path):
    manifest, _ = write_package(tmp_path / "pkg")
    return manifest.root


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """The size of every buffer hashed from here on."""
    sizes, real = [], integrity.digest
    monkeypatch.setattr(integrity, "digest", lambda data: sizes.append(len(memoryview(data))) or real(data))
    return sizes


def use_everything(m) -> None:
    for name in ("vision", "prefill", "decode"):
        open_engine(m, name, OPTIONS).close()
    m.load_array("embedding")
    m.load_array("embedding", mmap=True)
    m.read_file("tokenizer.model")


def flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.unlink()  # a new file, as any rewrite of a package file
    path.write_bytes(bytes(data))


def test_parsed_once_until_the_manifest_changes(root):
    m = load_manifest(root)
    assert load_manifest(root) is m and load_manifest(str(root / ".." / "pkg")) is m
    assert (load_manifest(root, verify_hashes=False) is not m
            and not load_manifest(root, verify_hashes=False).verify_hashes)
    d = json.loads((root / "manifest.json").read_text())
    d["generation"]["max_new_tokens"] = 7
    (root / "manifest.json").write_text(json.dumps(d))
    os.utime(root / "manifest.json", ns=(1, 1))  # another mtime even on a coarse clock
    again = load_manifest(root)
    assert again is not m and again.generation.max_new_tokens == 7 and m.generation.max_new_tokens == 16


def test_loading_hashes_nothing_and_each_file_is_hashed_once(root, hashed):
    m = load_manifest(root)
    assert hashed == []
    use_everything(m)
    assert sorted(hashed) == sorted((root / f).stat().st_size for f in FILES)
    recorded = {s.path for s in integrity._digests}
    assert {str((root / f).resolve()) for f in FILES} <= recorded
    hashed.clear()
    use_everything(m)
    use_everything(load_manifest(root, verify_hashes=True))
    m.verify_all()
    assert hashed == []


@pytest.mark.parametrize("victim", FILES)
def test_a_tampered_file_is_refused_where_it_is_opened(root, victim):
    m = load_manifest(root)
    flip_byte(root / victim)
    with pytest.raises(IntegrityError, match=f"'{victim}'.*corrupted"):
        use_everything(m)


def test_a_file_changed_after_it_was_verified_is_checked_again(root, hashed):
    m = load_manifest(root)
    open_engine(m, "vision", OPTIONS).close()
    flip_byte(root / "vision.onnx")
    with pytest.raises(IntegrityError, match="'vision.onnx'"):
        open_engine(m, "vision", OPTIONS)
    assert len(hashed) == 2


def test_verify_all_hashes_every_file_once(root, hashed):
    m = load_manifest(root)
    m.verify_all()
    assert len(hashed) == len(FILES)
    use_everything(m)
    assert len(hashed) == len(FILES)
    flip_byte(root / "tokenizer.model")
    with pytest.raises(IntegrityError, match="'tokenizer.model' \\(tokenizer.file\\)"):
        m.verify_all()


def test_hashes_can_be_skipped_by_the_manifest_or_the_options(root, hashed):
    flip_byte(root / "tokenizer.model")
    flip_byte(root / WEIGHTS_FILE)
    unchecked = load_manifest(root, verify_hashes=False)
    assert unchecked.read_file("tokenizer.model") == (root / "tokenizer.model").read_bytes()
    open_engine(unchecked, "prefill", OPTIONS).close()
    open_engine(load_manifest(root), "decode", OPTIONS.replace(verify_hashes=False)).close()
    assert hashed == []  # decode.onnx itself is intact: nothing else was read for hashing
    with pytest.raises(IntegrityError, match=WEIGHTS_FILE):
        open_engine(load_manifest(root), "decode", OPTIONS)


def test_verify_all_after_loading_hashes_everything_at_once(root, hashed):
    load_manifest(root).verify_all()
    assert len(hashed) == len(FILES)
    flip_byte(root / "decode.onnx")
    with pytest.raises(IntegrityError, match="decode.onnx"):
        load_manifest(root).verify_all()
    load_manifest(root, verify_hashes=False)


def test_load_manifest_is_the_one_loader_and_verify_hashes_its_one_option(root):
    from moai_edge.engines import Manifest

    assert not hasattr(Manifest, "load") and not hasattr(Manifest, "parse")
    with pytest.raises(TypeError, match="verify"):
        load_manifest(root, verify=False)
    with pytest.raises(TypeError):
        load_manifest(root, False)  # keyword-only


def test_a_file_removed_after_a_load_is_refused_by_the_next_load(root):
    """manifest.json is not parsed again, but the files it names are looked at on every load."""
    m = load_manifest(root, verify_hashes=False)
    graph = (root / "decode.onnx").read_bytes()
    (root / "decode.onnx").unlink()
    with pytest.raises(ManifestError, match="'decode.onnx' .*missing"):
        load_manifest(root, verify_hashes=False)
    (root / "decode.onnx").write_bytes(graph)
    assert load_manifest(root, verify_hashes=False) is m


@pytest.mark.parametrize("old", [1, 2, 3])  # 2: no in-place KV buffers; 3: the scene graph's mask heads inside it
def test_an_older_schema_package_asks_for_a_re_export(root, old):
    d = json.loads((root / "manifest.json").read_text())
    d["schema_version"] = old
    (root / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=f"expected 5 .*reads 4, 5; re-export the package.*found {old}"):
        load_manifest(root)


def test_a_schema_4_package_loads_without_a_tensorrt_section_and_says_so_for_tensorrt(root):
    """Schema 5 only adds the optional `tensorrt` section: a schema-4 package runs as before, and its graphs would go
    to the CUDA provider under --device tensorrt, for a reason that names the re-export."""
    from moai_edge.engines.tensorrt import tensorrt_plan

    d = json.loads((root / "manifest.json").read_text())
    d["schema_version"] = 4
    d.pop("tensorrt", None)
    (root / "manifest.json").write_text(json.dumps(d))
    m = load_manifest(root)
    plan = tensorrt_plan(m, "decode")
    assert m.schema_version == 4 and m.tensorrt == {} and not plan.build and "re-export" in plan.reason


def test_the_generation_section_is_the_decoding_config(root):
    m = load_manifest(root)
    d = json.loads((root / "manifest.json").read_text())
    assert d["generation"] == {"strategy": "greedy", "max_new_tokens": 16, "temperature": 0.9, "top_p": 0.95,
                               "top_k": 50, "num_beams": 3, "length_penalty": 1.0, "eos_token_ids": [2, 3],
                               "pad_token_id": 2, "seed": None}
    assert m.generation.eos_token_ids == (2, 3) and "eos_id" not in d["model"] and "pad_id" not in d["model"]
    assert m.generation.replace(max_new_tokens=4).max_new_tokens == 4
    np.testing.assert_array_equal(m.load_array("embedding"), np.arange(20, dtype=np.float32).reshape(5, 4))
