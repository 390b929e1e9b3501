"""The capacity model's two halves agree with each other and with what the fleet bench measures."""

from __future__ import annotations

import pytest

from sam3_bench.capacity import ROUTINGS, Load, Replica, hit_rate, main, plan, simulate

SMALL = Load(annotators=30, clicks_per_second=1.0, images_per_minute=6.0)  # 10 clicks per image


@pytest.mark.parametrize("routing", ROUTINGS)
def test_simulated_hit_rates_match_the_closed_form(routing: str) -> None:
    simulated = simulate(SMALL, decoders=3, routing=routing, seconds=600, seed=1)
    assert simulated["click_hit_rate"] == pytest.approx(hit_rate(routing, 3, SMALL.clicks_per_image), abs=0.02)


def test_closed_form_hit_rates_match_the_fleet_bench_measurement() -> None:
    # `sam3 bench --fleet` (tiny model, 3 decoders, 10 clicks on each of 8 images, 4 annotators at once)
    # measured 71.2 % / 90.0 % / 100 % (docs/capacity.md); the model predicts:
    assert hit_rate("round_robin", 3, 10) == pytest.approx(0.712, abs=0.01)
    assert hit_rate("affinity", 3, 10) == 0.9
    assert hit_rate("affinity+prefetch", 3, 10) == 1.0


def test_one_replica_queues_like_md1() -> None:
    replica = Replica(click_ms=45.0, fetch_ms=0.0)
    load = Load(annotators=11, clicks_per_second=1.0, images_per_minute=1.0)  # rho = 11 * 0.045 = 0.5
    simulated = simulate(load, decoders=1, routing="affinity", replica=replica, seconds=3000, seed=2)
    rho, service = 11 * 0.045, 45.0
    assert simulated["decoder_utilisation"] == pytest.approx(rho, rel=0.1)
    assert simulated["click_ms_mean"] == pytest.approx(service + rho * service / (2 * (1 - rho)), rel=0.15)


def test_plans_size_for_hot_spots_and_shard_on_bandwidth() -> None:
    plans = {routing: plan(Load(), routing=routing) for routing in ROUTINGS}
    assert plans["affinity+prefetch"]["decoders"] < plans["round_robin"]["decoders"]
    assert plans["round_robin"]["redis_shards"] > plans["affinity+prefetch"]["redis_shards"]  # every click fetches
    for sized in plans.values():
        assert sized["hottest_decoder_utilisation"] <= 0.9 and sized["decoder_cache_holds_them"]
    assert plans["affinity+prefetch"]["click_hit_rate"] == 1.0


def test_the_command_prints_plans_and_simulations(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["--annotators", "60", "--simulate-seconds", "60", "--float16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["plans"]) == set(report["simulated"]) == set(ROUTINGS)
    assert report["load"]["value_bytes"] == 10_616_926
