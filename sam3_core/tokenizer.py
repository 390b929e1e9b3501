"""Phrases -> the token ids SAM3's text encoder reads, without torch or transformers.

Reads the `tokenizer.json` that transformers' `CLIPTokenizer.save_pretrained` writes into every exported
folder, runs it with the `tokenizers` library, and pads to the text encoder's 32 positions exactly as
`Sam3Processor` does (`padding="max_length", max_length=32`). transformers does not truncate, so a
phrase of more than 30 tokens fails inside its text encoder; SAM3's own tokenizer truncates to its
context length keeping the end token, and so do we (the same ids as `CLIPTokenizer(...,
truncation=True)`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam3_core.graphs import TOKENIZER_FILE

TEXT_LENGTH = 32


class ClipTokenizer:
    """CLIP's byte-level BPE as configured by the model folder, padded and truncated to `length` tokens."""

    def __init__(self, folder: str | Path, *, length: int = TEXT_LENGTH) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        pad_token = config.get("pad_token") or "<|endoftext|>"
        pad_token = pad_token["content"] if isinstance(pad_token, dict) else pad_token
        pad_id = self._tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"{folder / TOKENIZER_FILE}: the pad token {pad_token!r} is not in the vocabulary")
        self.length = length
        self._tokenizer.enable_truncation(max_length=length)
        self._tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask, both int64 [len(phrases), length]."""
        encodings = self._tokenizer.encode_batch(list(phrases))
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(phrases), self.length)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(phrases), self.length)
        return ids, mask
