"""torch module -> ONNX file: the exporter settings every graph shares, and the edits the files need after.

All graphs use the legacy TorchScript exporter (`dynamo=False`) at opset 17: the exporter the measured
reference export used. The vision encoder's attention is fused for ONNX Runtime unless asked not to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sam3_core import no_memory
from sam3_core.graphs import EMBEDDING_NAMES, ENCODER_INPUT, PUBLISHED_DATA_SUFFIX

OPSET = 17
# Graphs above this size keep their weights in a `<name>.onnx_data` file beside them, as published.
EXTERNAL_DATA_BYTES = 256 * 1024 * 1024


def trace(
    graph: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    edit: Callable[[Any], None] | None = None,
) -> None:
    """Writes one graph (weights beside it when large, `save_graph`), applying `edit` to it first."""
    graph.eval()  # torch.onnx.export restores the mode it found: a fresh wrapper's training mode would stick
    with torch.no_grad():
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    save_graph(path, edit=edit)


def trace_encoder(
    graph: nn.Module, pixel_values: torch.Tensor, path: Path, outputs: Sequence[str], backbone_config: Any, fused: bool
) -> None:
    """Writes a vision encoder graph: its ViT attention fused for ONNX Runtime unless `fused` is False, and
    the vector it adds to `image_embeddings.2` named `no_memory_embedding`."""
    graph.eval()
    heads = backbone_config.num_attention_heads
    attention = fused_attention(heads, backbone_config.hidden_size // heads) if fused else contextlib.nullcontext()
    with attention, torch.no_grad():
        torch.onnx.export(
            graph,
            (pixel_values,),
            str(path),
            input_names=[ENCODER_INPUT],
            output_names=list(outputs),
            opset_version=OPSET,
            dynamo=False,
        )
    save_graph(path, edit=name_no_memory_constant)


@contextlib.contextmanager
def fused_attention(heads: int, head_size: int) -> Iterator[None]:
    """While tracing, `F.scaled_dot_product_attention` becomes ONNX Runtime's fused MultiHeadAttention
    (`fused_attention_symbolic`). Only for graphs whose every attention has this head layout."""
    symbolic = fused_attention_symbolic(heads, head_size)
    torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention", symbolic, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::scaled_dot_product_attention", OPSET)


def save_graph(onnx_path: Path, edit: Callable[[Any], None] | None = None) -> None:
    """Applies `edit` to the graph, and moves the weights of a large graph into `<name>.onnx_data`,
    the layout onnx-community publishes."""
    import onnx

    external = onnx_path.stat().st_size >= EXTERNAL_DATA_BYTES or bool(
        list(onnx_path.parent.glob(f"{onnx_path.name}*data"))
    )
    if edit is None and not external:
        return
    model = onnx.load(str(onnx_path))
    if edit is not None:
        edit(model)
    if not external:
        onnx.save_model(model, str(onnx_path))
        return
    for stale in onnx_path.parent.glob(f"{onnx_path.stem}*"):
        if stale != onnx_path and stale.suffix != ".json":
            stale.unlink()
    onnx.save_model(
        model,
        str(onnx_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=onnx_path.name + PUBLISHED_DATA_SUFFIX,
        size_threshold=1024,
    )


def share_constants(model: Any) -> None:
    """Keeps one copy of each constant tensor: the exporter writes a table that several operations read
    (RoPE's cos and sin in memory attention, 5 MB each) once per reader (176 of the full graph's 200 MB)."""
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            key = (tensor.data_type, tuple(tensor.dims), tensor.raw_data or tensor.SerializeToString())
            if key in first:
                renamed[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        kept.append(node)
    for node in kept:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def name_no_memory_constant(model: Any) -> None:
    """Renames the vector added to `image_embeddings.2` to `no_memory_embedding`.

    Constant folding calls it `onnx::Add_<n>`; under its own name, people reading the graph and
    `sam3_core.no_memory` can tell that the encoder adds it.
    """
    (add,) = [node for node in model.graph.node if EMBEDDING_NAMES[2] in node.output]
    initializers = {initializer.name: initializer for initializer in model.graph.initializer}
    constants = [name for name in add.input if name in initializers]
    if add.op_type != "Add" or len(constants) != 1:
        raise RuntimeError(
            f"{EMBEDDING_NAMES[2]} is not produced by adding one constant: {add.op_type}{list(add.input)}"
        )
    initializers[constants[0]].name = no_memory.GRAPH_CONSTANT
    for node in model.graph.node:
        node.input[:] = [no_memory.GRAPH_CONSTANT if name == constants[0] else name for name in node.input]


def fused_attention_symbolic(heads: int, head_size: int) -> Callable[..., Any]:
    """aten::scaled_dot_product_attention -> ONNX Runtime's com.microsoft::MultiHeadAttention.

    The plain ONNX export materialises every attention matrix: 16 heads x 5184 x 5184 floats (1.7 GB)
    for each of the ViT's global-attention blocks. ONNX Runtime's fused operator computes the same
    values blockwise (measured on one such block: 1.9 GB -> 0.24 GB peak, a little faster, outputs
    equal to 2e-7). Shapes are dynamic while tracing, so the head layout comes from the ViT's config
    (the encoder graph has no other attention). Anything unusual (a mask, causal) keeps the standard export.
    """
    from torch.onnx import symbolic_helper, symbolic_opset14

    def symbolic(g, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        if not symbolic_helper._is_none(attn_mask) or symbolic_helper._maybe_get_const(is_causal, "b"):
            return symbolic_opset14.scaled_dot_product_attention(
                g, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
            )
        scale_value = (
            head_size**-0.5 if symbolic_helper._is_none(scale) else symbolic_helper._get_const(scale, "f", "scale")
        )
        flat = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))
        split = g.op("Constant", value_t=torch.tensor([0, 0, heads, head_size], dtype=torch.int64))

        def to_bsd(tensor):
            return g.op("Reshape", g.op("Transpose", tensor, perm_i=[0, 2, 1, 3]), flat)

        fused = g.op(
            "com.microsoft::MultiHeadAttention",
            to_bsd(query),
            to_bsd(key),
            to_bsd(value),
            num_heads_i=heads,
            scale_f=float(scale_value),
        )
        return g.op("Transpose", g.op("Reshape", fused, split), perm_i=[0, 2, 1, 3])

    return symbolic
