"""Masks in Label Studio's brush RLE: what a `brushlabels` result carries in `value.rle`.

The format is thi.ng's rle-pack over the RGBA bytes of the mask image (row-major, 4 bytes a pixel):
a 32-bit value count, the word size less one (5 bits), four run-length field widths less one (4 bits
each), then per run a flag bit (1 = one word repeated), a 2-bit index into those widths, the run
length less one in that many bits, and the word; zero bits pad the end. Label Studio's own encoder
(`label_studio_sdk.converter.brush.mask2rle`) builds a bit string one character at a time; this one
makes the same bytes with numpy, a bounded number of runs at a time, so a 12-megapixel speckled mask
costs megabytes of memory and nothing of label-studio-sdk (~480 MB installed) is needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["mask_to_rle"]

_WORD_BITS = 8
_FOREGROUND = 255  # every RGBA byte of a mask pixel
_FIELDS = np.array([3, 4, 8, 16])  # run-length field widths, picked by a 2-bit index (mask2rle's choice)
_LONGEST = 1 << 16  # the longest run one token holds; longer runs are split
_TOKENS_AT_ONCE = 1 << 16  # tokens expanded to bits at once: at most 27 bits each


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A boolean H x W mask -> the bytes of Label Studio's brush RLE, as the list of ints its JSON holds.

    Foreground pixels are 255 in all four RGBA channels, background 0: byte for byte what
    `mask2rle(mask.astype(np.uint8) * 255)` returns, which Label Studio's editor and converters read.
    """
    if mask.ndim != 2:
        raise ValueError(f"a mask is H x W, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    values = 4 * flat.size
    if values >= 1 << 32:
        raise ValueError(f"a {mask.shape[1]} x {mask.shape[0]} mask is too large for Label Studio's RLE")
    header = (
        np.array([values, _WORD_BITS - 1, *(_FIELDS - 1)], dtype=np.int64),
        np.array([32, 5, 4, 4, 4, 4], dtype=np.int64),
    )
    packed, carry = [], np.zeros(0, dtype=np.uint8)
    for tokens, widths in _chunks(header, *_run_tokens(flat)):
        bits = np.concatenate((carry, _bits(tokens, widths)))
        whole = bits.size - bits.size % 8
        packed.append(np.packbits(bits[:whole]))
        carry = bits[whole:]
    # mask2rle pads to the next byte boundary, a whole zero byte when already on one.
    packed.append(np.packbits(np.concatenate((carry, np.zeros(8 - carry.size, dtype=np.uint8)))))
    data: list[int] = np.concatenate(packed).tolist()
    return data


def _run_tokens(flat: np.ndarray) -> Tokens:
    """Every token of the RLE body as (integer, bit width), in order."""
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = 4 * np.diff(np.concatenate((starts, [flat.size]))).astype(np.int64)
    words = np.where(flat[starts], _FOREGROUND, 0).astype(np.int64)
    # A run over 256 values takes 16-bit tokens: as many full 65536-value ones as it needs, then the rest.
    full = np.where(lengths > 256, (lengths - 1) // _LONGEST, 0)
    per_run = full + 1
    run = np.repeat(np.arange(lengths.size), per_run)
    place = np.arange(run.size) - np.repeat(np.cumsum(per_run) - per_run, per_run)
    length = np.where(place < full[run], _LONGEST, lengths[run] - full[run] * _LONGEST)
    field = np.select([lengths[run] > 256, lengths[run] > 16, lengths[run] > 8], [3, 2, 1], 0)
    width = _FIELDS[field]
    repeated = (length > 1).astype(np.int64)  # a single value is a literal run of one word: same layout
    tokens = (repeated << (2 + width + _WORD_BITS)) | (field << (width + _WORD_BITS))
    tokens |= ((length - 1) << _WORD_BITS) | words[run]
    return tokens, 1 + 2 + width + _WORD_BITS


Tokens = tuple[np.ndarray, np.ndarray]  # integers and their bit widths


def _chunks(header: Tokens, tokens: np.ndarray, widths: np.ndarray) -> Iterator[Tokens]:
    yield header
    for start in range(0, tokens.size, _TOKENS_AT_ONCE):
        yield tokens[start : start + _TOKENS_AT_ONCE], widths[start : start + _TOKENS_AT_ONCE]


def _bits(tokens: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Variable-width integers -> their bits, most significant first, one uint8 per bit."""
    total = int(widths.sum())
    offset = np.arange(total) - np.repeat(np.cumsum(widths) - widths, widths)
    shift = np.repeat(widths, widths) - 1 - offset
    bits: np.ndarray = ((np.repeat(tokens, widths) >> shift) & 1).astype(np.uint8)
    return bits
