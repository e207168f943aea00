"""Scenarios (unit): what ``trickle`` asks of the people at the terminals."""

from simulator.scenarios import SCENARIOS


class Station:
    """The part of a fleet station a scenario drives; it counts what it was asked."""

    def __init__(self, terminal_id: int):
        self.terminal_id = terminal_id
        self.enrolled, self.verified = 0, 0
        self.away = False

    def enroll_new(self) -> str:
        self.enrolled += 1
        return f"{self.terminal_id}-{self.enrolled}"

    def verify(self, user_id: str) -> None:
        self.verified += 1


def test_trickle_enrols_now_and_then_at_random_terminals_and_people_verify_the_rest_of_the_time():
    scenario = SCENARIOS["trickle"](range(1, 21), seed=4711, duration_s=60)
    stations = [Station(t) for t in range(1, 21)]
    scenario.bind(stations)
    for _ in range(1000):
        scenario.act()
    enrolled = sum(s.enrolled for s in stations)
    assert 70 <= enrolled <= 130  # one unit in ten: a change a second at the default 10 units a second
    assert enrolled + sum(s.verified for s in stations) == 1000
    assert sum(1 for s in stations if s.enrolled) >= 15  # spread over the fleet, not one terminal
    assert scenario.default_rate * scenario.weights["enroll"] == 1.0
