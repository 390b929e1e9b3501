"""Does a model folder's encoder add SAM3's no-memory embedding to `image_embeddings.2`?

SAM3 adds a learned vector, `no_memory_embedding`, to the 72x72 embedding of every frame that has no
memory, single images included; transformers' `Sam3TrackerModel` loses it, so graphs exported from it
give masks that differ from SAM3's own (docs/model-contract.md). The encoder's outputs alone cannot
show whether a graph has it, so the answer comes from, in order: the folder's `manifest.json` (our
exports), a constant of that name in the graph that feeds `image_embeddings.2`, or else "unknown" —
stated, never guessed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADDED = "added"
ABSENT = "absent"
UNKNOWN = "unknown"
MANIFEST_KEY = "encoder_adds_no_memory_embedding"
# The name our exporter gives the constant; SAM2/SAM3 code and other exporters use these spellings.
GRAPH_CONSTANT = "no_memory_embedding"
_CONSTANT_SUFFIXES = ("no_memory_embedding", "no_mem_embed")
_OUTPUT = "image_embeddings.2"


@dataclass(frozen=True)
class NoMemoryEmbedding:
    """One of ADDED / ABSENT / UNKNOWN, and what that was concluded from (for logs and people)."""

    state: str
    evidence: str


def detect(manifest: dict[str, Any], encoder_path: Path) -> NoMemoryEmbedding:
    """Manifest first, then the graph's named constant, else UNKNOWN."""
    if MANIFEST_KEY in manifest:
        added = bool(manifest[MANIFEST_KEY])
        return NoMemoryEmbedding(ADDED if added else ABSENT, f"manifest.json: {MANIFEST_KEY} = {added}")
    if manifest.get("format") == "sam3-service/model-folder/1":
        return NoMemoryEmbedding(
            ABSENT,
            "manifest.json predates the key: sam3-service exported from transformers' "
            "Sam3TrackerModel.get_image_embeddings then, which drops the embedding; re-export the folder",
        )
    constant = constant_feeding_output(encoder_path)
    if constant is not None:
        return NoMemoryEmbedding(ADDED, f"{encoder_path.name}: constant {constant!r} feeds {_OUTPUT}")
    return NoMemoryEmbedding(
        UNKNOWN,
        f"no manifest.json and no constant named *{GRAPH_CONSTANT} feeding {_OUTPUT} in {encoder_path.name}; "
        "see docs/model-contract.md to tell with a probe",
    )


def constant_feeding_output(encoder_path: Path) -> str | None:
    """Name of an initializer or Constant called *no_memory_embedding / *no_mem_embed that reaches
    `image_embeddings.2` through the graph, or None. Reads the graph structure, not external weights."""
    import onnx

    graph = onnx.load(str(encoder_path), load_external_data=False).graph
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    candidates = [i.name for i in graph.initializer] + [
        output for node in graph.node if node.op_type == "Constant" for output in node.output
    ]
    for name in candidates:
        if name.endswith(_CONSTANT_SUFFIXES) and _reaches(name, _OUTPUT, consumers):
            return name
    return None


def _reaches(start: str, target: str, consumers: dict[str, list[Any]]) -> bool:
    seen, frontier = {start}, [start]
    while frontier:
        tensor = frontier.pop()
        if tensor == target:
            return True
        for node in consumers.get(tensor, ()):
            for output in node.output:
                if output not in seen:
                    seen.add(output)
                    frontier.append(output)
    return False
