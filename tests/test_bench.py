"""`sam3 bench --quick` runs end to end (CI exercises it; the numbers are not asserted, only their shape)."""

from __future__ import annotations

import json
from pathlib import Path

from sam3_bench.report import TARGETS
from sam3_cli.main import main


def test_quick_bench_writes_every_section_and_the_ratios(tmp_path: Path) -> None:
    copy = tmp_path / "copy.json"
    code = main(
        [
            "bench",
            "--quick",
            "--repeats",
            "2",
            "--sweep-seconds",
            "0.3",
            "--out",
            str(tmp_path / "out"),
            "--json",
            str(copy),
        ]
    )
    assert code == 0
    report = json.loads(copy.read_text())
    assert set(report["ratios"]) == set(TARGETS)
    assert report["encoders"]["fp32"]["model"]["p50"] > 0
    assert report["raw_decoder"]["1 click"]["p50"] > 0
    assert {"1 click@1920x1080", "3 objects@4000x3000"} <= set(report["predictor"])
    assert report["services"]["local_hit/1 click@4000x3000"]["p50"] > 0
    assert report["services"]["redis_fetch/1 click@1920x1080"]["p50"] > 0
    assert report["services"]["rpc_redis_fetch/1 click@4000x3000"]["server_stages_p50_ms"]["fetch"] > 0
    assert list(report["concurrency"]) == ["1", "2", "4", "8", "16"]
    assert all(level["throughput_per_s"] > 0 and not level["errors"] for level in report["concurrency"].values())
    assert "skipped" in report["transformers"] or report["transformers"]["prompts"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "Headline ratios" in markdown and "segment_local_hit_vs_raw" in markdown


def test_fleet_mode_measures_the_click_hit_rate_of_each_routing(tmp_path: Path) -> None:
    code = main(["bench", "--quick", "--fleet", "--fleet-images", "2", "--fleet-clicks", "3", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    fleet = report["fleet"]
    # Affinity: each image's first click fetches on its owner, the other two hit; prefetch warms the owner.
    assert fleet["affinity"]["click_hit_rate"] == round(2 / 3, 4)
    assert fleet["affinity+prefetch"]["click_hit_rate"] == 1.0
    assert fleet["round_robin"]["click_hit_rate"] <= fleet["affinity"]["click_hit_rate"]
    assert report["ratios"]["fleet_click_hit_rate_affinity_prefetch"] == 1.0
    assert "round_robin" in (tmp_path / "report.md").read_text()


def test_the_concept_column_measures_queries_and_bytes_per_image(tmp_path: Path) -> None:
    folder = str(Path(__file__).parent / "fixtures" / "model-tiny-concept")
    code = main(["bench", "--quick", "--concepts-only", "--model-dir", folder, "--out", str(tmp_path)])
    assert code == 0
    concepts = json.loads((tmp_path / "report.json").read_text())["concepts"]
    assert set(concepts["bytes_per_image"]) == {"emb", "det"} and concepts["bytes_per_image"]["det"] > 0
    assert concepts["first_query_on_a_replica_ms"]["fetch"]["p50"] > 0
    assert concepts["cached_image_and_phrase_ms"]["concept_decoder"]["p50"] > 0
    assert "## Concept prompts through the services" in (tmp_path / "report.md").read_text()
