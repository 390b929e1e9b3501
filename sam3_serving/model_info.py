"""GetModelInfo, shared by both services: lets clients check they talk to compatible workers."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from sam3_client.proto import common_pb2
from sam3_core import no_memory
from sam3_core.graphs import EMBEDDING_NAMES
from sam3_core.model import Sam3Model
from sam3_serving.store import ValueStore


def server_version() -> str:
    try:
        return version("sam3-service")
    except PackageNotFoundError:
        return "unknown"


_NO_MEMORY_STATES = {
    no_memory.ADDED: common_pb2.NO_MEMORY_EMBEDDING_ADDED,
    no_memory.ABSENT: common_pb2.NO_MEMORY_EMBEDDING_ABSENT,
    no_memory.UNKNOWN: common_pb2.NO_MEMORY_EMBEDDING_UNKNOWN,
}


def model_info(model: Sam3Model, store: ValueStore) -> common_pb2.ModelInfo:
    """The model id (the store namespace), sizes, and the embeddings as the store keeps them."""
    return common_pb2.ModelInfo(
        model_id=model.model_id,
        variant=model.variant,
        image_size=model.preprocessing.size[0],
        mask_size=model.mask_size[0],
        embeddings=[
            common_pb2.TensorSpec(
                name=name, shape=[d if isinstance(d, int) else -1 for d in shape], dtype=store.config.dtype
            )
            for name, shape in zip(EMBEDDING_NAMES, model.embedding_shapes(), strict=True)
        ],
        server_version=server_version(),
        no_memory_embedding=_NO_MEMORY_STATES[model.no_memory_embedding.state],
    )
