"""manifest.json read, built into a Manifest under the rules and checks, once per process: `load_manifest` is the
one way to load a package."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ..decoding import DecodingConfig
from ..errors import ManifestError
from ..protocol import TensorSpec
from .checks import check_agreement, check_experts, check_files, check_schema_version
from .fields import check_section, fail
from .format import MANIFEST_NAME, Component, Manifest, ModelDims, PreprocessConfig, PromptConfig, SharedWeights
from .rules import COMPONENT_RULES, SECTION_RULES, TOKENIZER_RULES, TOP_LEVEL_REQUIRED, TOP_LEVEL_RULES, required_fields


def read_manifest_json(path: Path) -> dict:
    """The manifest as a JSON object, or a ManifestError saying why not."""
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in '{path.parent}': expected an engine package folder made by "
                            f"'moai-edge export'")
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: expected UTF-8 JSON text, found a byte that is not UTF-8 ({exc})") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer of too many digits, nesting too deep
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        kinds = {"list": "an array", "str": "a string", "bool": "a boolean", "NoneType": "null"}
        kind = kinds.get(type(d).__name__, "a number")
        raise ManifestError(f"{path}: expected a JSON object at the top, found {kind}")
    return d


def component_from_json(d: dict, where: str = "component") -> Component:
    check_section(d, where, COMPONENT_RULES, required=required_fields(Component))
    d = dict(d)
    d["inputs"] = [TensorSpec.from_json(s) for s in d.get("inputs", [])]
    d["outputs"] = [TensorSpec.from_json(s) for s in d.get("outputs", [])]
    return Component(**d)


def build_section(cls, d, where: str):
    check_section(d, where, SECTION_RULES[cls], required=required_fields(cls))
    return cls.from_json(d) if cls is DecodingConfig else cls(**d)


def manifest_from_json(d: dict, root: Path | None = None) -> Manifest:
    """Every field checked, then the fields that must agree; reads no file."""
    check_schema_version(d)
    check_section(d, "", TOP_LEVEL_RULES, required=TOP_LEVEL_REQUIRED)
    check_section(d["tokenizer"], "tokenizer", TOKENIZER_RULES, required=("file", "sha256"))
    components = {k: component_from_json(c, f"components.{k}") for k, c in d["components"].items()}
    check_experts(d.get("experts", {}), components)
    m = Manifest(
        schema_version=d["schema_version"], family=d["family"], source=d.get("source", {}),
        model=build_section(ModelDims, d["model"], "model"), components=components,
        shared_weights={k: build_section(SharedWeights, w, f"shared_weights.{k}")
                        for k, w in d.get("shared_weights", {}).items()},
        tokenizer=d["tokenizer"], prompts=build_section(PromptConfig, d["prompts"], "prompts"),
        preprocess=build_section(PreprocessConfig, d["preprocess"], "preprocess"),
        generation=build_section(DecodingConfig, d["generation"], "generation"),
        experts=d.get("experts", {}), tensorrt=d.get("tensorrt", {}), root=root,
    )
    check_agreement(m)
    for name in m.tensorrt.get("graphs", {}):
        if name not in components:
            fail(f"tensorrt.graphs.{name}", f"a graph component, one of {sorted(components)}", name)
    return m


def _parse(root: str | Path, *, verify_hashes: bool) -> Manifest:
    """A new Manifest: manifest.json parsed and checked, and the package's files (paths, presence, sizes, npy
    headers); no hashes."""
    root = Path(root)
    path = root / MANIFEST_NAME
    d = read_manifest_json(path)
    try:
        m = manifest_from_json(d, root)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    m.verify_hashes = verify_hashes
    check_files(m)
    return m


_cache_lock = threading.Lock()
_cache: dict[tuple[Path, bool], tuple[tuple[int, int], Manifest]] = {}


def load_manifest(root: str | Path, *, verify_hashes: bool = True) -> Manifest:
    """The package's manifest, parsed once per process (again only when manifest.json's size or mtime changes), its
    files looked at on every call (paths, presence, sizes, npy headers; nothing hashed), so a file removed or cut
    short since is refused here. With `verify_hashes` each file is hashed where it is first opened through the engines
    layer; `verify_all()` hashes them all now. The object is shared: treat it as read-only (copy.deepcopy it to
    change it)."""
    resolved = Path(root).resolve()
    try:
        st = (resolved / MANIFEST_NAME).stat()
    except OSError:
        return _parse(root, verify_hashes=verify_hashes)  # the message of a missing manifest.json
    key, signature = (resolved, verify_hashes), (st.st_size, st.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None or cached[0] != signature:
            m = _parse(root, verify_hashes=verify_hashes)
            _cache[key] = (signature, m)
            return m
    check_files(cached[1])
    return cached[1]
