"""Tiny ONNX graphs built with onnx.helper and a minimal engine package around them, so the engines tests
need neither torch nor export."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.manifest import (Component, Manifest, ModelDims, PreprocessConfig, PromptConfig, SharedWeights,
                                        sha256_of)
from moai_edge.engines.protocol import TensorSpec

WEIGHTS_FILE = "decoder.weights"
SHARED_NAME = "shared/w"


def matmul_graph(path: Path, w: np.ndarray, *, external: str | None = None, metadata: dict | None = None) -> Path:
    """y = x @ W with W inside the graph, or (`external`) as ONNX external data at offset 0 of that file."""
    from onnx import TensorProto, helper, numpy_helper

    name = SHARED_NAME if external else "W"
    init = numpy_helper.from_array(w, name)
    if external:
        init.ClearField("raw_data")
        for key, value in (("location", external), ("offset", "0"), ("length", str(w.nbytes))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        init.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", name], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    Path(path).write_bytes(model.SerializeToString())
    return Path(path)


def io_specs(w: np.ndarray) -> dict:
    return {"inputs": [TensorSpec("x", "float32", ("batch", w.shape[0]))],
            "outputs": [TensorSpec("y", "float32", ("batch", w.shape[1]))]}


def write_package(root: Path) -> tuple[Manifest, dict[str, np.ndarray]]:
    """vision (weights inside), prefill and decode (one shared weights file), an embedding array, a tokenizer file.
    Returns the saved manifest and each graph's weight matrix."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weights = {"vision": rng.standard_normal((4, 3)).astype(np.float32),
               "decoder": rng.standard_normal((3, 5)).astype(np.float32)}
    (root / WEIGHTS_FILE).write_bytes(weights["decoder"].tobytes())
    matmul_graph(root / "vision.onnx", weights["vision"])
    for name in ("prefill", "decode"):
        matmul_graph(root / f"{name}.onnx", weights["decoder"], external=WEIGHTS_FILE)
    np.save(root / "embed.npy", np.arange(20, dtype=np.float32).reshape(5, 4))
    (root / "tokenizer.model").write_bytes(b"a tokenizer the engines layer never parses")

    def graph(name: str, w: np.ndarray, **extra) -> Component:
        return Component(file=f"{name}.onnx", sha256=sha256_of(root / f"{name}.onnx"), **io_specs(w), **extra)

    components = {"vision": graph("vision", weights["vision"]),
                  "prefill": graph("prefill", weights["decoder"], shared_weights="decoder"),
                  "decode": graph("decode", weights["decoder"], shared_weights="decoder"),
                  "embedding": Component(file="embed.npy", sha256=sha256_of(root / "embed.npy"), kind="npy",
                                         outputs=[TensorSpec("embed_tokens", "float32", (5, 4))])}
    shared = SharedWeights(file=WEIGHTS_FILE, sha256=sha256_of(root / WEIGHTS_FILE), tensors={
        SHARED_NAME: {"offset": 0, "nbytes": weights["decoder"].nbytes, "dtype": "float32", "shape": [3, 5]}})
    manifest = Manifest(
        family="moai", components=components, shared_weights={"decoder": shared},
        model=ModelDims(family="moai", hidden_size=4, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=2,
                        vocab_size=4, image_token_id=4, max_context=32, image_size=28, patch_size=14, grid=2,
                        num_image_tokens=4),
        tokenizer={"file": "tokenizer.model", "sha256": sha256_of(root / "tokenizer.model"), "add_bos": True},
        prompts=PromptConfig(system="sys <image>", image_token="<image>", templates={"eval": "Q: {question} A:"}),
        preprocess=PreprocessConfig(image_size=28, mean=[0.5] * 3, std=[0.25] * 3),
        generation=DecodingConfig(max_new_tokens=16, eos_token_ids=(2, 3), pad_token_id=2),
    )
    manifest.save(root)
    return manifest, weights
