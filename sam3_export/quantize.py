"""Smaller, faster encoder variants from an fp32 folder: needs onnxruntime and onnx, not torch.

`sam3 models export --quantize` calls this after writing the graphs; tests quantize the committed fixture with it.
"""

from __future__ import annotations

from pathlib import Path

from sam3_core.graphs import (
    ENCODER_STEM,
    PUBLISHED_DATA_SUFFIX,
    QUANTIZED_VARIANTS,
    QUANTIZER_DATA_SUFFIX,
    file_name,
)


def quantize(out_dir: Path, kind: str) -> Path:
    """Writes `vision_encoder_<kind>.onnx`: dynamic int8 MatMul weights, or 4-bit MatMulNBits blocks."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = out_dir / file_name(ENCODER_STEM)
    target = out_dir / file_name(ENCODER_STEM, kind)
    large = source.with_name(source.name + PUBLISHED_DATA_SUFFIX).exists()
    # The quantizers append to an existing external-data file: start from nothing.
    for stale in (target, target.with_name(target.name + QUANTIZER_DATA_SUFFIX)):
        stale.unlink(missing_ok=True)
    if kind == "int8":
        # Shape inference cannot type the fused-attention (com.microsoft) outputs: they are float32.
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: on CPUs without VNNI (AVX2 only) ONNX Runtime's uint8 x int8 kernels add pairs of
            # products into int16, which full-range weights overflow (saturation: the tiny encoder 7.8 % off fp32
            # there instead of 1.1 %). With |w| <= 64 the sums fit, every CPU computes the same exact integers,
            # and the AVX-512 VNNI kernels keep their speed (uint8 weights would not: 2.3x slower MatMuls).
            # docs/model-contract.md has the measurements.
            reduce_range=True,
            use_external_data_format=large,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    elif kind == "q4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=32, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=large)
    else:
        raise ValueError(f"unknown quantization {kind!r}: choose one of {', '.join(QUANTIZED_VARIANTS)}")
    _drop_untyped_value_info(target)
    return target


def _drop_untyped_value_info(path: Path) -> None:
    """The quantizer records the fused-attention outputs with element type 0, which ONNX Runtime
    refuses to load; the annotations are optional, so drop them (weights stay where they are)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    untyped = [v for v in model.graph.value_info if v.type.tensor_type.elem_type == 0]
    if untyped:
        for value in untyped:
            model.graph.value_info.remove(value)
        onnx.save(model, str(path))
