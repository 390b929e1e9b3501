"""The encoder worker: image bytes -> multi-scale embeddings in the shared store."""
