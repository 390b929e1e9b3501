"""The CLIP tokenizer files a concept folder carries (`tokenizer.json`, read at run time without torch)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes, strict=True))
    return [chr(table[byte]) for byte in printable]


def clip_tokenizer_from_bpe(bpe_gz: Path) -> Any:
    """CLIPTokenizer built from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (as open_clip ships it): 49,408 tokens."""
    from transformers import CLIPTokenizer

    with gzip.open(bpe_gz, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    characters = _bytes_to_unicode()
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def open_clip_bpe() -> Path:
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz" if spec and spec.origin else None
    if path is None or not path.exists():
        raise SystemExit(
            "a random-init export needs CLIP's BPE vocabulary, which open-clip-torch ships (the export extra "
            "installs it): pip install 'sam3-service[export]'"
        )
    return path


def write_tokenizer(out_dir: Path, checkpoint: Path | None) -> None:
    """The checkpoint's own CLIP tokenizer files, or CLIP's public vocabulary for random weights.

    Saved through transformers, so the folder always has `tokenizer.json`, which the runtime reads
    with the `tokenizers` library (no torch, no transformers).
    """
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(checkpoint) if checkpoint else clip_tokenizer_from_bpe(open_clip_bpe())
    tokenizer.save_pretrained(out_dir)
