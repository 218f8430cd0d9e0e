"""Prefill and decode as one ONNX graph, so that the decoder's weights are in memory once and onnxruntime can still
repack them for its kernels.

    decoder.onnx:  If(is_prefill) then: the prefill graph  else: the decode graph

Both branches read the same initializers from the outer graph (one copy in the file); the inputs are the
union of both graphs' inputs; the outputs (logits, key.i, value.i) have the same names in both. Why one
graph: two sessions sharing one weights buffer cannot repack it (onnxruntime's Python API has no
prepacked-weights container), and a MatMulNBits that is not repacked dequantizes its whole weight on every
call. The cost: onnxruntime copies the weights the branches use into its own memory. What both measure:
docs/precision.md.

A graph is merged only when every input and output the two share has the same element type (a decode
graph with float16 IO keeps the two-graph layout with shared weights).
"""

from __future__ import annotations

from moai_edge.engines.errors import ExportValidationError

SWITCH = "is_prefill"  # the bool scalar input that selects the branch


def io_types(graph) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)}


def can_merge(prefill, decode) -> bool:
    a, b = io_types(prefill.graph), io_types(decode.graph)
    return all(a[name] == b[name] for name in a.keys() & b.keys())


def as_branch(graph, tag: str, outer: set[str]):
    """`graph` as an If branch: no inputs of its own (it reads the outer graph's), its initializers over `outer`
    names (the shared weights) hoisted out by the caller, every other name prefixed with `tag/` so the two branches
    never collide."""
    from onnx import helper

    local = {i.name for i in graph.initializer if i.name not in outer} | {o for n in graph.node for o in n.output}
    renamed = lambda name: f"{tag}/{name}" if name in local else name  # noqa: E731
    nodes = []
    for n in graph.node:
        node = type(n)()
        node.CopyFrom(n)
        node.name = f"{tag}/{n.name}"
        node.input[:] = [renamed(x) if x else x for x in n.input]
        node.output[:] = [renamed(x) if x else x for x in n.output]  # "" marks an unused optional output
        nodes.append(node)
    inits = []
    for i in graph.initializer:
        if i.name not in outer:
            init = type(i)()
            init.CopyFrom(i)
            init.name = renamed(i.name)
            inits.append(init)
    outputs = []
    for o in graph.output:  # the If node names its outputs; the branch's carry no shapes (they differ)
        outputs.append(helper.make_tensor_value_info(renamed(o.name), o.type.tensor_type.elem_type, None))
    return helper.make_graph(nodes, f"{tag}_branch", [], outputs, initializer=inits)


def merged_inputs(prefill, decode) -> list:
    """The union of both graphs' inputs; an axis the two declare differently becomes symbolic."""
    from onnx import helper

    merged = {}
    for value in (*prefill.graph.input, *decode.graph.input):
        t = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        if value.name in merged:
            before = merged[value.name]
            dims = [a if a == b else f"{value.name}_{k}" for k, (a, b) in enumerate(zip(before, dims))]
        merged[value.name] = dims
    types = {v.name: v.type.tensor_type.elem_type for v in (*prefill.graph.input, *decode.graph.input)}
    return [helper.make_tensor_value_info(name, types[name], dims) for name, dims in merged.items()]


def branch_of(model, prefill: bool):
    """The graph a merged decoder runs when `is_prefill` is `prefill`."""
    node = next(n for n in model.graph.node if n.op_type == "If" and list(n.input) == [SWITCH])
    return next(a.g for a in node.attribute if a.name == ("then_branch" if prefill else "else_branch"))


def merge_decoder(prefill, decode):
    """One ModelProto computing `prefill` when the input `is_prefill` is true and `decode` otherwise. Initializers
    with the same name in both (the shared weights written by export.onnx_weights) are held once, outside."""
    from onnx import TensorProto, helper

    if not can_merge(prefill, decode):
        raise ExportValidationError("prefill and decode give a shared input or output different element types; "
                                    "they cannot be one graph")
    names = [o.name for o in prefill.graph.output]
    if names != [o.name for o in decode.graph.output]:
        raise ExportValidationError(f"prefill outputs {names} and decode outputs "
                                    f"{[o.name for o in decode.graph.output]} differ; they cannot be one graph")
    p_init = {i.name: i for i in prefill.graph.initializer}
    shared = {i.name for i in decode.graph.initializer} & set(p_init)
    then_branch = as_branch(prefill.graph, "prefill", shared)
    else_branch = as_branch(decode.graph, "decode", shared)
    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type,
                                             [f"{o.name}_{k}" for k in range(len(o.type.tensor_type.shape.dim))])
               for o in prefill.graph.output]
    switch = helper.make_tensor_value_info(SWITCH, TensorProto.BOOL, [])
    node = helper.make_node("If", [SWITCH], names, name="prefill_or_decode", then_branch=then_branch,
                            else_branch=else_branch)
    graph = helper.make_graph([node], "decoder", [switch, *merged_inputs(prefill, decode)], outputs,
                              initializer=[p_init[n] for n in sorted(shared)])
    opsets = {o.domain: o for o in list(decode.opset_import) + list(prefill.opset_import)}  # both branches' domains
    model = helper.make_model(graph, opset_imports=list(opsets.values()))
    model.ir_version = prefill.ir_version
    return model
