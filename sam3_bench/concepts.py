"""The concept column of `sam3 bench`: what a phrase costs through the services, and what serving
concepts costs per image (encode time, bytes in Redis), on a folder that serves both.

Two workers on one Redis: `serve` (encodes, answers from its local cache) and a decoder-only worker
whose first query on an image must fetch its detector features from Redis. Stages come from the
server's own timings, so client-side decoding of masks is not counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sam3_bench.measure import Stats

PHRASE = "a dog"
STAGES = ("load", "fetch", "text", "concept_decoder", "postprocess", "encode_mask", "total")


def _stages(results: list[Any]) -> dict[str, Any]:
    return {
        stage: Stats.of([r.timings.get(stage, 0.0) for r in results]).as_dict()
        for stage in STAGES
        if any(stage in r.timings for r in results)
    }


def _query(client: Any, image_id: str, phrase: str, mask_format: str = "rle") -> Any:
    """One concept query. Random weights score every query alike: threshold 0 with a cap keeps a fixed
    number of instances, so the mask stages are measured too (real weights find what a phrase has)."""
    return client.segment_concept(image_id, phrase, threshold=0.0, max_instances=4, mask_format=mask_format)


def measure(serve_target: str, fetcher_target: str, redis_url: str, image: Path, repeats: int) -> dict[str, Any]:
    """Per query: cached image and phrase, a new phrase, a replica that fetches from Redis; and per image:
    the encode with concept features and the bytes stored for clicks and for concepts."""
    import redis

    from sam3_client import Client

    rows: dict[str, Any] = {}
    with Client(serve_target) as serving, Client(fetcher_target) as fetching:
        encoded = serving.encode(image, force=True)
        rows["encode_ms"] = {k: round(v, 1) for k, v in encoded.timings.items()}
        store = redis.Redis.from_url(redis_url)
        sizes: dict[str, int] = {}
        for key in store.scan_iter(match=f"*{{*:{encoded.image_id}}}"):
            kind = key.decode().split(":v", 1)[0].rsplit(":", 1)[-1]
            sizes[kind] = int(store.strlen(key))  # type: ignore[arg-type]
        rows["bytes_per_image"] = sizes
        first = _query(fetching, encoded.image_id, PHRASE)  # features from Redis, phrase encoded
        rows["first_query_on_a_replica_ms"] = _stages([first])
        rows["instances"] = len(first.instances)
        cached = [_query(fetching, encoded.image_id, PHRASE) for _ in range(repeats)]
        rows["cached_image_and_phrase_ms"] = _stages(cached)
        new_phrases = [_query(fetching, encoded.image_id, f"{PHRASE} number {k}") for k in range(repeats)]
        rows["cached_image_new_phrase_ms"] = _stages(new_phrases)
        no_masks = [_query(fetching, encoded.image_id, PHRASE, mask_format="none") for _ in range(repeats)]
        rows["cached_image_and_phrase_no_masks_ms"] = _stages(no_masks)
    return rows


def markdown(concepts: dict[str, Any]) -> list[str]:
    """The report's concept section."""
    sizes = concepts.get("bytes_per_image", {})
    lines = [
        "",
        "## Concept prompts through the services (one phrase, 4 instances kept, 1920x1080, RLE masks)",
        "",
        f"Per image: encode with concept features {concepts['encode_ms'].get('total', 0):.0f} ms "
        f"(model {concepts['encode_ms'].get('model', 0):.0f} ms, store write "
        f"{concepts['encode_ms'].get('store_write', 0):.0f} ms); stored "
        + ", ".join(f"{kind} {size / 1e6:.1f} MB" for kind, size in sorted(sizes.items()))
        + f". The query found {concepts.get('instances')} instance(s).",
        "",
        "| query | " + " | ".join(f"{stage} p50 ms" for stage in STAGES) + " |",
        "|---|" + "---|" * len(STAGES),
    ]
    for name, key in (
        ("first on a replica (sessions loaded, features from Redis, new phrase)", "first_query_on_a_replica_ms"),
        ("cached image, cached phrase", "cached_image_and_phrase_ms"),
        ("cached image, new phrase", "cached_image_new_phrase_ms"),
        ("cached image and phrase, no masks", "cached_image_and_phrase_no_masks_ms"),
    ):
        row = concepts.get(key, {})
        cells = [f"{row[stage]['p50']:.1f}" if stage in row else "" for stage in STAGES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    eager = concepts.get("transformers") or {}
    if "query_ms" in eager:
        ours = concepts["cached_image_new_phrase_ms"]["total"]["p50"]
        theirs = eager["query_ms"]["p50"]
        lines += [
            "",
            f"transformers eager on the same weights (Sam3Processor + Sam3Model + post_process_instance_segmentation, "
            f"vision features computed once: {eager['vision_features_ms']:.0f} ms): {theirs:.0f} ms per query with "
            f"a new phrase, against {ours:.0f} ms through the service (x{theirs / ours:.2f}).",
        ]
    elif eager:
        lines += ["", f"transformers eager: {eager.get('skipped')}"]
    return lines
