"""The benchmark's outputs: ratios for comparing runs over time, a markdown table, a JSON file, a chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """The run's headline numbers, each a ratio (or difference) of two columns of the same run.

    None where a column was skipped (e.g. no torch for the transformers column).
    """
    raw_click = _get(results, "raw_decoder", "1 click", "p50")
    standard_click = _get(results, "raw_decoder_standard", "1 click", "p50")
    rpc_local = _get(results, "services", "rpc_local_hit/1 click@1920x1080", "p50")
    rpc_redis = _get(results, "services", "rpc_redis_fetch/1 click@1920x1080", "p50")
    rpc_large = _get(results, "services", "rpc_local_hit/1 click@4000x3000", "p50")
    sdk_click = _get(results, "services", "local_hit/1 click@1920x1080", "p50")
    transformers_click = _get(results, "transformers", "prompts", "1 click@1920x1080", "p50")
    transformers_encoder = _get(results, "transformers", "encoder_1920x1080", "p50")
    encoders = {v: r for v, r in (results.get("encoders") or {}).items() if "model" in r}
    fastest = min(encoders, key=lambda v: encoders[v]["model"]["p50"]) if encoders else None
    fastest_ms = (encoders[fastest]["model"]["p50"] + encoders[fastest]["preprocess"]["p50"]) if fastest else None
    single = _get(results, "concurrency", "1", "throughput_per_s")
    eight = _get(results, "concurrency", "8") or {}
    encode_model = _get(results, "services", "encode_model_ms", "p50")
    encode_total = _get(results, "services", "encode_server_total_ms", "p50")
    return {
        "raw_click_ms": raw_click,
        "raw_click_vs_standard_graph": _ratio(raw_click, standard_click),
        "split_decoder_worst_mask_agreement": _get(results, "split_decoder", "fidelity", "worst_agreement"),
        "segment_local_hit_vs_raw": _ratio(rpc_local, raw_click),
        "segment_redis_minus_raw_ms": round(rpc_redis - raw_click, 2) if rpc_redis and raw_click else None,
        "segment_4000x3000_vs_raw": _ratio(rpc_large, raw_click),
        "sdk_click_vs_transformers": _ratio(sdk_click, transformers_click),
        "encoder_fastest_speedup_vs_transformers": _ratio(transformers_encoder, fastest_ms, 2),
        "encoder_fastest_mask_iou_vs_fp32": _get(results, "encoders", fastest or "", "mask_iou_vs_fp32"),
        "encoder_fastest_embedding_rel_rms_vs_fp32": _get(
            results, "encoders", fastest or "", "embedding_rel_rms_vs_fp32"
        ),
        "encoder_fp32_peak_rss_gb": _get(results, "encoders", "fp32", "peak_rss_gb"),
        "encoder_service_overhead": _ratio((encode_total - encode_model) if encode_total else None, encode_model, 4),
        "throughput_8_clients_vs_single": _ratio(eight.get("throughput_per_s"), single),
        "p99_over_p50_8_clients": _ratio(eight.get("p99"), eight.get("p50")),
        "float16_store_worst_mask_agreement": _get(results, "float16_fidelity", "worst_agreement"),
        "fleet_click_hit_rate_affinity": _get(results, "fleet", "affinity", "click_hit_rate"),
        "fleet_click_hit_rate_affinity_prefetch": _get(results, "fleet", "affinity+prefetch", "click_hit_rate"),
    }


TARGETS = {
    "raw_click_ms": ("<=", 30.0),
    "raw_click_vs_standard_graph": ("<=", 0.75),
    "split_decoder_worst_mask_agreement": (">=", 0.999),
    "segment_local_hit_vs_raw": ("<=", 1.15),
    "segment_redis_minus_raw_ms": ("<=", 15.0),
    "segment_4000x3000_vs_raw": ("<=", 1.3),
    "sdk_click_vs_transformers": ("<=", 0.5),
    "encoder_fastest_speedup_vs_transformers": (">=", 3.0),
    "encoder_fastest_mask_iou_vs_fp32": (">=", 0.97),
    "encoder_fastest_embedding_rel_rms_vs_fp32": ("<=", 0.05),
    "encoder_fp32_peak_rss_gb": ("<=", 3.0),
    "encoder_service_overhead": ("<=", 0.03),
    "throughput_8_clients_vs_single": (">=", 0.9),
    "p99_over_p50_8_clients": ("<=", 3.0),
    "float16_store_worst_mask_agreement": (">=", 0.999),
    # With c clicks per image: round robin over R replicas hits 1 - R/c, affinity 1 - 1/c (0.9 at c=10).
    "fleet_click_hit_rate_affinity": (">=", 0.85),
    "fleet_click_hit_rate_affinity_prefetch": (">=", 0.99),
}


def _verdict(name: str, value: float | None) -> str:
    if value is None or name not in TARGETS:
        return "n/a"
    op, bound = TARGETS[name]
    met = value <= bound if op == "<=" else value >= bound
    return f"{'met' if met else 'MISSED'} ({op} {bound:g})"


def _fmt(stats: dict[str, Any] | None) -> str:
    if not stats or "p50" not in stats:
        return "—"
    return f"{stats['p50']:.1f} (p95 {stats['p95']:.1f})"


def markdown(results: dict[str, Any]) -> str:
    """The report as tables a person reads: every column of the same run side by side."""
    lines = ["# sam3 bench", ""]
    m = results["machine"]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; python {m['python']}, onnxruntime "
        f"{m['onnxruntime']}, grpcio {m['grpcio']}. Model: `{results['model_dir']}`"
        + (" (quick smoke run: numbers not meaningful)" if results.get("quick") else "")
        + ".",
        "",
    ]
    lines += ["## Headline ratios (same run)", "", "| ratio | value | target |", "|---|---|---|"]
    for name, value in results["ratios"].items():
        lines.append(f"| {name} | {value if value is not None else '—'} | {_verdict(name, value)} |")

    lines += [
        "",
        "## Encoder (1920x1080, fresh process per variant)",
        "",
        "| variant | model ms p50 | preprocess ms | load s | peak RSS GB | best-mask IoU vs fp32 "
        "| embedding RMS error vs fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, row in (results.get("encoders") or {}).items():
        if "model" not in row:
            lines.append(f"| {variant} | skipped: {row.get('skipped')} | | | | | |")
            continue
        lines.append(
            f"| {variant} | {row['model']['p50']:.0f} | {row['preprocess']['p50']:.0f} | "
            f"{row['load_seconds']} | {row['peak_rss_gb']} | {row.get('mask_iou_vs_fp32', '—')} "
            f"| {row.get('embedding_rel_rms_vs_fp32', '—')} |"
        )
    transformers = results.get("transformers") or {}
    if "skipped" in transformers:
        lines.append(f"| transformers eager | skipped: {transformers['skipped']} | | | | | |")
    else:
        lines.append(
            f"| transformers eager | {_fmt(transformers.get('encoder_1920x1080'))} (incl. processor) | | | "
            f"{transformers.get('peak_rss_gb', '—')} | | |"
        )

    lines += [
        "",
        "## Prompt latency, ms (p50, with p95)",
        "",
        "| prompt | transformers eager | raw decoder session | raw, standard graph | in-process predictor "
        "| SDK → gRPC, local cache | SDK → gRPC, Redis fetch |",
        "|---|---|---|---|---|---|---|",
    ]
    services = results.get("services") or {}
    for key in sorted((results.get("predictor") or {}).keys(), key=lambda k: (k.split("@")[1], k)):
        prompt = key.split("@")[0]
        lines.append(
            f"| {key} | {_fmt(_get(transformers, 'prompts', key))} | {_fmt(_get(results, 'raw_decoder', prompt))} | "
            f"{_fmt(_get(results, 'raw_decoder_standard', prompt))} | {_fmt(results['predictor'][key])} | "
            f"{_fmt(services.get('local_hit/' + key))} | "
            f"{_fmt(services.get('redis_fetch/' + key))} |"
        )
    mask_rle = results.get("mask_rle") or {}
    if mask_rle:
        lines += [
            "",
            "## Best mask -> COCO RLE at full size (in-process)",
            "",
            "| mask | runs | ms p50 |",
            "|---|---|---|",
        ]
        lines += [f"| {key} | {row['runs']} | {row['p50']:.1f} |" for key, row in mask_rle.items()]
    rpc_rows = {k: v for k, v in services.items() if k.startswith("rpc_")}
    if rpc_rows:
        lines += [
            "",
            "## Segment RPC (best mask as RLE, raw stub: no client-side mask decoding)",
            "",
            "| path | client p50 ms | p95 | server stages, p50 ms |",
            "|---|---|---|---|",
        ]
        for key, row in rpc_rows.items():
            stages = ", ".join(f"{k} {v}" for k, v in row.get("server_stages_p50_ms", {}).items())
            lines.append(f"| {key.removeprefix('rpc_')} | {row['p50']:.1f} | {row['p95']:.1f} | {stages} |")
    if services:
        lines += [
            "",
            f"Encode through the service ({services.get('encoder_variant')}): client "
            f"{_fmt(services.get('encode_client_ms'))} ms, server total {_fmt(services.get('encode_server_total_ms'))}"
            f" ms, of which model {_fmt(services.get('encode_model_ms'))} ms.",
        ]
    concurrency = results.get("concurrency") or {}
    if concurrency:
        lines += [
            "",
            "## Concurrency (1 click, 1920x1080, local cache, each client its own channel)",
            "",
            "| clients | throughput /s | p50 ms | p95 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|",
        ]
        for clients, row in concurrency.items():
            lines.append(
                f"| {clients} | {row['throughput_per_s']} | {row.get('p50', 0):.1f} | {row.get('p95', 0):.1f} "
                f"| {row.get('p99', 0):.1f} | {row['errors'] or 0} |"
            )
    lines += _agreement_table("Float16 store vs float32", results.get("float16_fidelity"))
    split = results.get("split_decoder") or {}
    if split:
        lines += [
            "",
            f"Split click decoder: its image side runs once per image in {_fmt(split['image_side'])} ms and "
            f"keeps {split['prepared_mb']} MB per cached image.",
        ]
        lines += _agreement_table("Split click decoder vs the standard graph", split["fidelity"])
    fleet = results.get("fleet") or {}
    if fleet:
        lines += [
            "",
            f"## Fleet: {fleet['decoders']} decoders, {fleet['images']} new images per routing, "
            f"{fleet['clicks_per_image']} clicks each",
            "",
            "| routing | click hit rate (local cache) | first click p50 ms | later clicks p50 ms |",
            "|---|---|---|---|",
        ]
        for routing, row in fleet.items():
            if isinstance(row, dict):
                lines.append(
                    f"| {routing} | {row['click_hit_rate']:.1%} | {_fmt(row['first_click_ms'])} "
                    f"| {_fmt(row['later_clicks_ms'])} |"
                )
    concepts = results.get("concepts") or {}
    if concepts and "skipped" not in concepts:
        from sam3_bench.concepts import markdown as concept_markdown

        lines += concept_markdown(concepts)
    lines += ["", f"Total benchmark time: {results.get('seconds')} s.", ""]
    return "\n".join(lines)


def _agreement_table(title: str, fidelity: dict[str, Any] | None) -> list[str]:
    if not fidelity:
        return []
    lines = [
        "",
        f"## {title} (all 3 masks at the original size)",
        "",
        "| case | pixels agreeing | max logit change | same best mask |",
        "|---|---|---|---|",
    ]
    for case, row in fidelity["cases"].items():
        lines.append(f"| {case} | {row['agreement']:.4%} | {row['max_logit_change']} | {row['same_best_mask']} |")
    return lines


def chart(results: dict[str, Any], path: Path) -> Path | None:
    """A bar chart of 1-click latency per column and the concurrency curve (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    columns = {
        "transformers\neager": _get(results, "transformers", "prompts", "1 click@1920x1080", "p50"),
        "raw decoder\nsession": _get(results, "raw_decoder", "1 click", "p50"),
        "in-process\npredictor": _get(results, "predictor", "1 click@1920x1080", "p50"),
        "SDK, local\ncache": _get(results, "services", "local_hit/1 click@1920x1080", "p50"),
        "SDK, Redis\nfetch": _get(results, "services", "redis_fetch/1 click@1920x1080", "p50"),
    }
    shown = {k: v for k, v in columns.items() if v is not None}
    left.bar(list(shown), list(shown.values()), color="#4c72b0")
    left.set_ylabel("ms (p50)")
    left.set_title("1 click → mask, 1920x1080")
    concurrency = results.get("concurrency") or {}
    if concurrency:
        clients = [int(c) for c in concurrency]
        right.plot(clients, [r["throughput_per_s"] for r in concurrency.values()], "o-", label="clicks/s")
        right.set_xscale("log", base=2)
        right.set_xlabel("concurrent clients")
        right.set_ylabel("clicks / s")
        twin = right.twinx()
        twin.plot(clients, [r.get("p99", 0) for r in concurrency.values()], "s--", color="#c44e52", label="p99 ms")
        twin.set_ylabel("p99 ms")
        right.set_title("throughput and tail latency")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md"}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["markdown"].write_text(markdown(results))
    png = chart(results, folder / "report.png")
    if png is not None:
        paths["chart"] = png
    return paths
