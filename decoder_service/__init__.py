"""The decoder worker: prompts against stored embeddings, answered from a local cache in ~50 ms."""
