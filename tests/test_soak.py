"""gateway-soak's plan and its memory summary (the soak itself runs with `make soak`, not here)."""

from tools.soak import Fault, lives, schedule


def test_faults_are_spread_over_the_middle_of_the_run_and_the_outage_comes_between_kills():
    faults = schedule(1800, kills=2, outage_s=20)
    assert faults == [Fault(300, "db-outage", 20), Fault(600, "sigkill"), Fault(1200, "sigkill")]
    assert schedule(60, kills=0, outage_s=20) == [Fault(20, "db-outage", 15)]


def test_memory_is_summarised_per_life_of_the_gateway_process():
    rss = [(0, 80.0), (5, 82.0), (10, 81.0), (16, 70.0), (20, 75.0)]
    assert lives(rss, kills=[15]) == [
        dict(from_s=0, samples=3, first_mb=80.0, max_mb=82.0, last_mb=81.0),
        dict(from_s=15, samples=2, first_mb=70.0, max_mb=75.0, last_mb=75.0),
    ]
