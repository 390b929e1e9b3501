"""float32 <-> bfloat16 bit patterns in numpy (which has no bfloat16): how memories are kept.

transformers stores every memory as `features.to(torch.bfloat16)`, rounding to nearest, ties to even, and
reads it back as float32. The same rounding here keeps our memories equal to the oracle's, bit for bit.
"""

from __future__ import annotations

import numpy as np


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, rounded to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    rounded = ((bits + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = np.uint16(0x7FC0)
    return rounded


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
