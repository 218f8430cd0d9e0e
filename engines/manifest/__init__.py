"""The engine-package format: one folder, one manifest.json naming every file with its sha256.

Export writes it, the runtime reads it; the runtime never guesses anything from file names. `load_manifest` is the
one way to read it (once per process): it checks every field (type, range, the components the experts name), keeps
every path inside the package folder before any file is read, then checks the files: present, shared-weight ranges
inside their file, npy headers. Hashes are checked where a file is used (engines.integrity: at most once per
process, on the bytes then used) or all at once by `Manifest.verify_all`. Every refusal is a ManifestError naming
the field or file.

    format    the dataclasses, to_json / save, a Manifest's files
    fields    field checkers: (value, field path) -> None or a ManifestError saying what was expected and found
    rules     what each section may hold; the expert sections' components and settings
    paths     every path stays inside the package folder
    npy       .npy components: plain arrays of the declared dtype and shape, never unpickled
    checks    the schema version, cross-field agreement, the experts' components, the files on disk
    loading   manifest.json -> a checked Manifest, cached per process: load_manifest
"""

from ..protocol import TensorSpec
from .format import (
    COMPONENT_KINDS,
    FAMILIES,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Component,
    Manifest,
    ModelDims,
    PreprocessConfig,
    PromptConfig,
    SharedWeights,
    sha256_of,
)
from .loading import load_manifest, read_manifest_json
from .paths import package_file
from .rules import COMPONENT_RULES, EXPERT_COMPONENTS, EXPERT_SETTINGS, SECTION_RULES, TOKENIZER_RULES

__all__ = ["COMPONENT_KINDS", "COMPONENT_RULES", "EXPERT_COMPONENTS", "EXPERT_SETTINGS", "FAMILIES", "MANIFEST_NAME",
           "SCHEMA_VERSION", "SECTION_RULES", "TOKENIZER_RULES", "Component", "Manifest", "ModelDims",
           "PreprocessConfig", "PromptConfig", "SharedWeights", "TensorSpec", "load_manifest", "package_file",
           "read_manifest_json", "sha256_of"]
