"""`pip install moai-edge` (no extras) runs a MoAI package fully; extras are pinned for the targets; the licence is
declared.

Every third-party module runtime/ and engines/ import, at module level or inside a function, maps to a base
dependency, except those imported through `require(module, extra)`, which must be in that extra — and those
the experts need (OCR's cv2 and pyclipper) must be base dependencies all the same.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_PARTS = ("runtime", "engines")  # what `pip install moai-edge` gives a robot
EXPERTS = ROOT / "runtime" / "experts"  # needed to run a MoAI package: no optional import here
EXTRA_FOLDERS = {ROOT / "runtime" / "serve": "serve"}  # imported only by its extra's users, after require() names it
DISTRIBUTION = {  # top-level module -> the distribution that provides it
    "numpy": "numpy", "onnxruntime": "onnxruntime", "sentencepiece": "sentencepiece", "PIL": "pillow",
    "cv2": "opencv-python-headless", "pyclipper": "pyclipper", "tqdm": "tqdm", "torch": "torch",
    "cuda": "cuda-python", "tensorrt": "tensorrt", "matplotlib": "matplotlib", "onnxruntime_genai": "onnxruntime-genai",
    "fastapi": "fastapi", "starlette": "starlette", "sse_starlette": "sse-starlette", "uvicorn": "uvicorn",
    "prometheus_client": "prometheus-client", "ray": "ray", "anyio": "anyio", "onnx": "onnx",
}
NEVER_IN_BASE = {"torch", "torchvision", "transformers", "optimum"}


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def third_party(module: str) -> str | None:
    top = module.split(".")[0]
    return None if top in sys.stdlib_module_names or top in ("moai_edge", "__future__") else top


def imports_of(path: Path) -> list[tuple[str, int, str]]:
    """(top-level module, line, 'import' | 'require:<extra>') for every third-party import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(third_party(a.name), node.lineno, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((third_party(node.module), node.lineno, "import"))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("require", "require_installed")
              and len(node.args) == 2 and all(isinstance(a, ast.Constant) for a in node.args)):
            found.append((third_party(node.args[0].value), node.lineno, f"require:{node.args[1].value}"))
    return [f for f in found if f[0] is not None]


def runtime_imports() -> list[tuple[Path, str, int, str]]:
    return [(path, *found) for part in RUNTIME_PARTS for path in sorted((ROOT / part).rglob("*.py"))
            for found in imports_of(path)]


def test_the_import_walk_sees_the_known_imports():
    seen = {(p.name, module, how) for p, module, _, how in runtime_imports()}
    assert {("ocr.py", "cv2", "require:ocr"), ("ocr.py", "pyclipper", "require:ocr"),
            ("ort_engine.py", "onnxruntime", "import"), ("format.py", "numpy", "import")} <= seen


def test_every_import_of_the_runtime_is_a_base_dependency(project):
    base = names(project["dependencies"])
    wrong = []
    for path, module, line, how in runtime_imports():
        where = f"{path.relative_to(ROOT)}:{line} {module}"
        if module not in DISTRIBUTION:
            wrong.append(f"{where}: not in this test's module -> distribution map; add it there and to pyproject.toml")
            continue
        dist = canonicalize_name(DISTRIBUTION[module])
        needed_by_experts = path.is_relative_to(EXPERTS)
        folder_extra = next((extra for folder, extra in EXTRA_FOLDERS.items() if path.is_relative_to(folder)), None)
        if how == "import" and folder_extra:
            how = f"require:{folder_extra}"
        if (how == "import" or needed_by_experts) and dist not in base:
            wrong.append(f"{where}: needs '{dist}', which is not a base dependency")
        elif how.startswith("require:") and not needed_by_experts:
            extra = how.split(":", 1)[1]
            if dist not in names(project["optional-dependencies"].get(extra, [])) and dist not in base:
                wrong.append(f"{where}: require(..., '{extra}') but extra '{extra}' does not list '{dist}'")
    assert not wrong, "\n".join(wrong)


def test_the_base_install_is_torch_free_and_the_ocr_extra_is_an_alias(project):
    base = names(project["dependencies"])
    assert not base & NEVER_IN_BASE
    assert {"pyclipper", "opencv-python-headless"} <= base
    assert names(project["optional-dependencies"]["ocr"]) <= base  # old install lines keep working, add nothing


@pytest.mark.parametrize("extra", ["gpu"])
def test_cuda_python_is_pinned_below_13_for_jetpack_6(project, extra):
    requirements = [Requirement(r) for r in project["optional-dependencies"][extra]]
    (spec,) = [r for r in requirements if canonicalize_name(r.name) == "cuda-python"]
    assert spec.specifier.contains(Version("12.6.0")) and spec.specifier.contains(Version("12.9.1"))
    assert not spec.specifier.contains(Version("13.0.0")), f"{extra}: {spec}"


def test_licence_is_declared_in_spdx_form_with_its_file(project):
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (setuptools,) = [Requirement(r) for r in build if Requirement(r).name == "setuptools"]
    assert not setuptools.specifier.contains(Version("76.9")) and setuptools.specifier.contains(Version("77.0"))


def test_the_trt_extra_is_the_tensorrt_onnxruntimes_provider_links(project):
    """onnxruntime's TensorRT provider links libnvinfer.so.10: TensorRT 10.3 (JetPack 6.1) up to any 10.x, never 11."""
    (spec,) = [Requirement(r) for r in project["optional-dependencies"]["trt"] if Requirement(r).name == "tensorrt"]
    assert spec.specifier.contains(Version("10.3.0")) and spec.specifier.contains(Version("10.15.1"))
    assert not spec.specifier.contains(Version("11.0.0")) and not spec.specifier.contains(Version("8.6.1"))


def test_the_jetson_install_pins_numpy_1_cuda_12_6_and_one_onnxruntime():
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints" / "jetson-jp6.txt").read_text().splitlines()]
    pins = {canonicalize_name(Requirement(line).name): Requirement(line).specifier for line in lines if line}
    assert not pins["numpy"].contains(Version("2.0.0")) and pins["numpy"].contains(Version("1.26.4"))
    assert pins["cuda-python"].contains(Version("12.6.2")) and not pins["cuda-python"].contains(Version("12.8.0"))
    assert "onnxruntime-gpu" in pins and "onnxruntime" not in pins  # the GPU build only
    docker = (ROOT / "Dockerfile.jetson").read_text()
    assert "l4t-jetpack:r36.4.0" in docker and "VOLUME" in docker and "pip3 uninstall -y onnxruntime" in docker
    assert "constraints/jetson-jp6.txt" in docker
    readme = (ROOT / "README.md").read_text()
    assert "## On a Jetson" in readme and "JetPack 6.1" in readme
