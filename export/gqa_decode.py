"""The decode graph, written node by node on onnxruntime's fused decoder ops instead of traced from PyTorch.

One token per row through the base weights (decode never takes the PLoRA, seg or mixer branches):

    inputs_embeds -> RMSNorm -> [MatMul(wqkv) -> GroupQueryAttention (rotary inside, the KV
    buffer written in place) -> MatMul(wo) -> SkipSimplifiedLayerNormalization -> w1/w3 MatMuls, SiLU gate ->
    MatMul(w2) -> SkipSimplifiedLayerNormalization] x layers -> MatMul(output) -> logits

The first RMSNorm is in standard ops (onnxruntime fuses them), the others fused with the residual add; every op
is a standard one or a com.microsoft one, so onnx.checker accepts the graph.

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


class DecodeWriter(GraphWriter):
    """The decode graph's nodes: a GraphWriter that knows the decoder's dimensions and the IO dtype."""

    def __init__(self, model: VLM, half: bool):
        from onnx import TensorProto

        super().__init__()
        self.model, self.d, self.half = model, model.cfg.decoder, half
        self.kv_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
        cos, sin = rope_tables(model)
        self.cos = self.weight("rope.cos", cos.astype(np.float16) if half else cos)
        self.sin = self.weight("rope.sin", sin.astype(np.float16) if half else sin)
        d, groups = self.d, self.d.num_heads // self.d.num_kv_heads
        self.split = self.const("qkv.split", [groups, 1, 1])
        self.grouped = self.const("qkv.grouped", [0, 0, d.num_kv_heads, groups + 2, d.head_dim])
        self.flat = self.const("qkv.flat", [0, 0, -1])

    def cast(self, x: str, name: str, to: int) -> str:
        """x cast to `to` when the IO is float16 (attention in float16 on the float16 cache), else x itself."""
        return self.node("Cast", [x], name, to=to) if self.half else x

    def norm_weight(self, norm, name: str) -> str:
        return self.weight(name, norm.weight.detach().float().numpy())

    def rms_norm(self, x: str, weight: str, eps: float, name: str) -> str:
        """RMSNorm in standard ops: x / sqrt(mean(x^2) + eps) * weight. onnxruntime fuses the pattern into its
        SimplifiedLayerNormalization kernel (outputs bit-identical to that node's), and onnx.checker and TensorRT
        accept it, as they do not the bare SimplifiedLayerNormalization (a contrib op without a domain of its own)."""
        two = self.weight(f"{name}/two", np.array(2.0, np.float32))
        epsilon = self.weight(f"{name}/epsilon", np.array(eps, np.float32))
        mean = self.node("ReduceMean", [self.node("Pow", [x, two], f"{name}/Pow")], f"{name}/ReduceMean", axes=[-1],
                         keepdims=1)
        rms = self.node("Sqrt", [self.node("Add", [mean, epsilon], f"{name}/Add")], f"{name}/Sqrt")
        return self.node("Mul", [self.node("Div", [x, rms], f"{name}/Div"), weight], f"{name}/Mul")

    def skip_norm(self, x: str, skip: str, norm, name: str) -> tuple[str, str]:
        """RMSNorm(x + skip) and x + skip (the residual stream)."""
        out, summed = f"{name}/out", f"{name}/residual"
        self.node("SkipSimplifiedLayerNormalization", [x, skip, self.norm_weight(norm, name)], f"{name}/SkipNorm",
                  outputs=[out, "", "", summed], domain="com.microsoft", epsilon=self.d.rms_norm_eps)
        return out, summed

    def attention(self, h: str, i: int, att) -> str:
        """wqkv -> GroupQueryAttention (rotary inside, KV written in place at seqlens_k) -> wo."""
        from onnx import TensorProto

        p, d = f"layers.{i}", self.d
        qkv = self.linear(h, att.wqkv.Plora_main, f"{p}/wqkv")
        q, k, v = self.node("Split", [self.node("Reshape", [qkv, self.grouped], f"{p}/qkv/Reshape"), self.split],
                            f"{p}/qkv/Split", outputs=3, axis=3)
        q, k, v = (self.cast(self.node("Reshape", [t, self.flat], f"{p}/{n}/Reshape"), f"{p}/{n}/Cast", self.kv_type)
                   for t, n in ((q, "q"), (k, "k"), (v, "v")))
        attn = self.node("GroupQueryAttention", [q, k, v, f"past_key.{i}", f"past_value.{i}", "seqlens_k",
                                                 "total_sequence_length", self.cos, self.sin],
                         f"{p}/GroupQueryAttention",
                         outputs=[f"{p}/attn", f"key.{i}", f"value.{i}"], domain="com.microsoft",
                         num_heads=d.num_heads, kv_num_heads=d.num_kv_heads, do_rotary=1, rotary_interleaved=0)[0]
        return self.linear(self.cast(attn, f"{p}/attn/Cast", TensorProto.FLOAT), att.wo.Plora_main, f"{p}/wo")

    def feed_forward(self, h: str, i: int, ff) -> str:
        """w1 and w3, the SiLU gate, w2."""
        p = f"layers.{i}"
        gate, up = self.linear(h, ff.w1.Plora_main, f"{p}/w1"), self.linear(h, ff.w3.Plora_main, f"{p}/w3")
        silu = self.node("Mul", [gate, self.node("Sigmoid", [gate], f"{p}/Sigmoid")], f"{p}/silu")
        return self.linear(self.node("Mul", [silu, up], f"{p}/gated"), ff.w2.Plora_main, f"{p}/w2")

    def layers(self, x: str) -> str:
        """Every decoder layer; returns the final norm's output."""
        layers, eps = self.model.model.layers, self.d.rms_norm_eps
        h = self.rms_norm(x, self.norm_weight(layers[0].attention_norm, "layers.0.attention_norm"), eps,
                          "layers.0/attention_norm")
        residual = x
        for i, layer in enumerate(layers):
            h, residual = self.skip_norm(self.attention(h, i, layer.attention), residual, layer.ffn_norm,
                                         f"layers.{i}.ffn_norm")
            last = i + 1 == len(layers)
            nxt, name = (self.model.model.norm, "norm") if last else (layers[i + 1].attention_norm,
                                                                      f"layers.{i + 1}.attention_norm")
            h, residual = self.skip_norm(self.feed_forward(h, i, layer.feed_forward), residual, nxt, name)
        return h

    def logits(self, h: str) -> None:
        logits = self.node("Squeeze", [self.linear(h, self.model.output, "output"), self.const("axis1", [1])],
                           "logits/Squeeze", outputs=["logits" if not self.half else "logits/float"])
        if self.half:
            self.node("Cast", [logits], "logits/Cast", outputs=["logits"], to=self.kv_type)

    def graph_io(self) -> tuple[list, list]:
        from onnx import TensorProto, helper

        d, t = self.d, self.kv_type
        kv = [f"{kind}.{i}" for i in range(d.num_layers) for kind in ("key", "value")]
        kv_shape = ["batch", d.num_kv_heads, "max_len", d.head_dim]
        inputs = [helper.make_tensor_value_info("inputs_embeds", t, ["batch", 1, d.hidden_size]),
                  helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
                  helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
        inputs += [helper.make_tensor_value_info(f"past_{n}", t, kv_shape) for n in kv]
        outputs = [helper.make_tensor_value_info("logits", t, ["batch", d.vocab_size])]
        outputs += [helper.make_tensor_value_info(n, t, kv_shape) for n in kv]
        return inputs, outputs


def build_gqa_decode(model: VLM, io_dtype: str = "float32"):
    """The decode graph as an onnx.ModelProto. With io_dtype "float16" the embeddings, the KV buffers and the
    logits are float16: attention runs in float16 on the float16 cache, everything else in float32."""
    from onnx import TensorProto, helper

    check_decodable(model)
    g = DecodeWriter(model, half=io_dtype == "float16")
    g.logits(g.layers(g.cast("inputs_embeds", "embeds/Cast", TensorProto.FLOAT)))
    inputs, outputs = g.graph_io()
    graph = helper.make_graph(g.nodes, "decode", inputs, outputs, initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(dom, v) for dom, v in OPSETS])
    proto.ir_version = 8
    return proto
