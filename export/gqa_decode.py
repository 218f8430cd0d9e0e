"""The decode graph, written node by node on onnxruntime's fused decoder ops instead of traced from PyTorch.

One token per row through the base weights (decode never takes the PLoRA, seg or mixer branches):

    inputs_embeds -> [SimplifiedLayerNormalization -> MatMul(wqkv) -> GroupQueryAttention (rotary inside, the KV
    buffer written in place) -> MatMul(wo) -> SkipSimplifiedLayerNormalization -> w1/w3 MatMuls, SiLU gate ->
    MatMul(w2) -> SkipSimplifiedLayerNormalization] x layers -> MatMul(output) -> logits

The KV cache is one buffer per layer and kind, (batch, kv_heads, max_len, head_dim), that the past input and the
present output share: the runtime binds the same memory to both, and GroupQueryAttention writes only the new
token's key and value at slot `seqlens_k[row]` (the row's real tokens so far, which is also its RoPE position).
No transpose, concatenation or head expansion per step. The weights are the PyTorch module's, transposed as the
exporter stores them, so the prefill graph's copies deduplicate with these (export.onnx_weights).

Inputs: inputs_embeds (B,1,H); seqlens_k (B,) int32; total_sequence_length () int32, max(seqlens_k) + 1;
past_key.i / past_value.i (B,kv,M,hd). Outputs: logits (B,V); key.i / value.i, the same buffers.
`export.graphs.DecodeGraph` is its PyTorch twin, which export validates it against.
"""

from __future__ import annotations

import numpy as np
import torch

from moai_edge.engines.errors import ExportValidationError

from .modeling.vlm import VLM

OPSETS = (("", 17), ("com.microsoft", 1))
GQA_HEAD_MULTIPLE = 16  # onnxruntime's CPU GroupQueryAttention with rotary needs head_dim % 16 == 0


def rope_tables(model: VLM) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (max_context, head_dim/2), computed as the PyTorch model computes them (bit-identical)."""
    positions = torch.arange(model.cfg.max_context)[None]
    freqs = positions.float()[..., None] * model.model.inv_freq  # (1, P, hd/2)
    return freqs.cos()[0].numpy(), freqs.sin()[0].numpy()


class GraphWriter:
    """The nodes and initializers of one graph, each named from the step it is."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def weight(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def linear(self, x: str, module: torch.nn.Linear, name: str) -> str:
        """A bias-free Linear as MatMul over its transposed weight; the node name ends in `/base/MatMul`, which marks
        it as a base weight for weight-only quantization (export.quantize)."""
        w = self.weight(f"{name}.weight_t", module.weight.detach().float().t().contiguous().numpy())
        return self.node("MatMul", [x, w], f"{name}/base/MatMul")

    def node(self, op: str, inputs: list[str], name: str, *, outputs: int | list[str] = 1, domain: str = "", **attrs):
        """Add a node; `outputs` is a count (names made up from `name`) or the names ("" for an unused one)."""
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [f"{name}/out{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def const(self, name: str, values) -> str:
        return self.weight(name, np.asarray(values, np.int64))


def check_decodable(model: VLM) -> None:
    if model.cfg.decoder.head_dim % GQA_HEAD_MULTIPLE:
        raise ExportValidationError(f"decode graph: GroupQueryAttention needs head_dim to be a multiple of "
                                    f"{GQA_HEAD_MULTIPLE}, found {model.cfg.decoder.head_dim}")


def build_gqa_decode(model: VLM, io_dtype: str = "float32"):
    """The decode graph as an onnx.ModelProto. With io_dtype "float16" the embeddings, the KV buffers and the
    logits are float16: attention runs in float16 on the float16 cache, everything else in float32."""
    from onnx import TensorProto, helper

    check_decodable(model)
    d = model.cfg.decoder
    hd, groups = d.head_dim, d.num_heads // d.num_kv_heads
    half = io_dtype == "float16"
    kv_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    g = GraphWriter()
    eps = d.rms_norm_eps
    cos, sin = rope_tables(model)
    cos_t = g.weight("rope.cos", cos.astype(np.float16) if half else cos)
    sin_t = g.weight("rope.sin", sin.astype(np.float16) if half else sin)
    split = g.const("qkv.split", [groups, 1, 1])
    grouped = g.const("qkv.grouped", [0, 0, d.num_kv_heads, groups + 2, hd])
    flat = g.const("qkv.flat", [0, 0, -1])
    to_float = lambda x, name: g.node("Cast", [x], name, to=TensorProto.FLOAT) if half else x  # noqa: E731
    to_kv = lambda x, name: g.node("Cast", [x], name, to=kv_type) if half else x  # noqa: E731

    layers = model.model.layers
    norm_w = lambda norm, name: g.weight(name, norm.weight.detach().float().numpy())  # noqa: E731
    x = to_float("inputs_embeds", "embeds/Cast")

    def skip_norm(x, skip, norm, name):
        """RMSNorm(x + skip) and x + skip (the residual stream)."""
        out, summed = f"{name}/out", f"{name}/residual"
        g.node("SkipSimplifiedLayerNormalization", [x, skip, norm_w(norm, name)], f"{name}/SkipNorm",
               outputs=[out, "", "", summed], domain="com.microsoft", epsilon=eps)
        return out, summed

    h, residual = g.node("SimplifiedLayerNormalization", [x, norm_w(layers[0].attention_norm, "layers.0.attention_norm")],
                         "layers.0/attention_norm", epsilon=eps, axis=-1, stash_type=1), x
    outputs = []
    for i, layer in enumerate(layers):
        p, att, ff = f"layers.{i}", layer.attention, layer.feed_forward
        qkv = g.linear(h, att.wqkv.Plora_main, f"{p}/wqkv")
        q, k, v = g.node("Split", [g.node("Reshape", [qkv, grouped], f"{p}/qkv/Reshape"), split], f"{p}/qkv/Split",
                         outputs=3, axis=3)
        q, k, v = (to_kv(g.node("Reshape", [t, flat], f"{p}/{n}/Reshape"), f"{p}/{n}/Cast") for t, n in
                   ((q, "q"), (k, "k"), (v, "v")))
        present = [f"key.{i}", f"value.{i}"]
        attn = g.node("GroupQueryAttention", [q, k, v, f"past_key.{i}", f"past_value.{i}", "seqlens_k",
                                              "total_sequence_length", cos_t, sin_t], f"{p}/GroupQueryAttention",
                      outputs=[f"{p}/attn", *present], domain="com.microsoft", num_heads=d.num_heads,
                      kv_num_heads=d.num_kv_heads, do_rotary=1, rotary_interleaved=0)[0]
        outputs += present
        a = g.linear(to_float(attn, f"{p}/attn/Cast"), att.wo.Plora_main, f"{p}/wo")
        h, residual = skip_norm(a, residual, layer.ffn_norm, f"{p}.ffn_norm")
        gate, up = g.linear(h, ff.w1.Plora_main, f"{p}/w1"), g.linear(h, ff.w3.Plora_main, f"{p}/w3")
        silu = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"{p}/Sigmoid")], f"{p}/silu")
        m = g.linear(g.node("Mul", [silu, up], f"{p}/gated"), ff.w2.Plora_main, f"{p}/w2")
        nxt = layers[i + 1].attention_norm if i + 1 < len(layers) else model.model.norm
        nxt_name = f"layers.{i + 1}.attention_norm" if i + 1 < len(layers) else "norm"
        h, residual = skip_norm(m, residual, nxt, nxt_name)
    logits = g.node("Squeeze", [g.linear(h, model.output, "output"), g.const("axis1", [1])], "logits/Squeeze",
                    outputs=["logits" if not half else "logits/float"])
    if half:
        g.node("Cast", [logits], "logits/Cast", outputs=["logits"], to=kv_type)

    kv_shape = ["batch", d.num_kv_heads, "max_len", hd]
    inputs = [helper.make_tensor_value_info("inputs_embeds", kv_type, ["batch", 1, d.hidden_size]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    inputs += [helper.make_tensor_value_info(f"past_{n}", kv_type, kv_shape) for n in outputs]
    graph_outputs = [helper.make_tensor_value_info("logits", kv_type, ["batch", d.vocab_size])]
    graph_outputs += [helper.make_tensor_value_info(n, kv_type, kv_shape) for n in outputs]
    graph = helper.make_graph(g.nodes, "decode", inputs, graph_outputs, initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(dom, v) for dom, v in OPSETS])
    proto.ir_version = 8
    return proto
