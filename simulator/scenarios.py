"""Scenarios: what the people at a simulated fleet's terminals do during a load test.

A scenario is a weighted mix of actions (enrol, edit, delete, verify) at randomly chosen
terminals, ``rate`` action units a second across the fleet, plus its own twist: terminals that
go away and come back, one that reads slowly, one that sends line noise. Choices come from
random generators seeded with the run's seed, so the same seed, fleet size and worker count
give the same actions in the same order. Each fleet worker holds its own instance, driving its
own share of the terminals (``Station`` objects, see simulator/fleet.py).

Terminals a scenario takes offline or slows down are ``disturbed``: propagation figures are
given for the steady terminals, and separately for all of them.
"""

import random

from simulator.people import People
from simulator.tcp import Faults


class Scenario:
    name = ""
    about = ""
    default_rate = 20.0  # action units a second, across the whole fleet
    weights: dict[str, float] = {"enroll": 1.0}

    def __init__(self, terminal_ids, seed: int, duration_s: float):
        self.terminal_ids = sorted(terminal_ids)
        self.seed = seed
        self.duration_s = duration_s
        self.stations: list = []
        self.rng = random.Random(f"{self.name}/{seed}")
        self.known: list[str] = []  # users this worker has seen enrolled, to edit, delete or verify
        self._actions = [getattr(self, f"_{action}") for action in self.weights]
        self._cumulative = list(_accumulate(self.weights.values()))

    # -- set-up, identical in every worker ---------------------------------------------------

    def fleet_rng(self, purpose: str) -> random.Random:
        """A generator every worker seeds alike: for choices about the whole fleet."""
        return random.Random(f"{self.name}/{purpose}/{self.seed}")

    def disturbed(self) -> frozenset[int]:
        return frozenset()

    def faults(self, terminal_id: int) -> Faults | None:
        return None

    # -- one worker's part -------------------------------------------------------------------

    def bind(self, stations: list) -> None:
        self.stations = stations
        self.rng = random.Random(f"{self.name}/{self.seed}/{stations[0].terminal_id}")

    def prepare(self) -> None:
        """Set-up once this worker's terminals are online, before the clock starts."""

    def prepared(self) -> bool:
        return True

    def begin(self) -> None:
        """The clock starts."""

    def tick(self, elapsed_s: float) -> None:
        """Called a few times a second while the scenario runs."""

    def end(self) -> None:
        """Production stops: every terminal comes back, so the fleet can settle."""
        for station in self.stations:
            if station.away:
                station.come_back()

    def act(self) -> None:
        """One action unit at a randomly chosen terminal of this worker."""
        pick = self.rng.random() * self._cumulative[-1]
        for action, bound in zip(self._actions, self._cumulative):
            if pick < bound:
                action(self.rng.choice(self.stations))
                return

    # -- actions -----------------------------------------------------------------------------

    def _enroll(self, station) -> None:
        self.known.append(station.enroll_new())

    def _edit(self, station) -> None:
        user_id = self._held_by(station)
        station.edit(user_id) if user_id else self._enroll(station)

    def _delete(self, station) -> None:
        user_id = self._held_by(station)
        station.delete(user_id) if user_id else self._enroll(station)

    def _verify(self, station) -> None:
        station.verify(self.rng.choice(self.known) if self.known else "nobody")

    def _held_by(self, station) -> str | None:
        for _ in range(4):
            if self.known:
                user_id = self.rng.choice(self.known)
                if station.holds(user_id):
                    return user_id
        return None


def _accumulate(values):
    total = 0.0
    for value in values:
        total += value
        yield total


class EnrollStorm(Scenario):
    name = "enroll-storm"
    about = "new people enrolled at every terminal; each record must reach all the others"
    default_rate = 10.0  # with 200 terminals, 2,000 deliveries a second: what a 2-core machine sustains


class EditStorm(Scenario):
    name = "edit-storm"
    about = "the same people edited on many terminals at once (names, added cards, fingers)"
    default_rate = 5.0  # each unit edits one user on up to `spread` terminals of a worker
    pool_size = 50
    spread = 8

    def pool(self) -> list[str]:
        return [f"pool-{n:03d}" for n in range(self.pool_size)]

    def prepare(self) -> None:
        self.known = self.pool()
        first = next((s for s in self.stations if s.terminal_id == self.terminal_ids[0]), None)
        if first is not None:  # the worker holding the fleet's first terminal enrols the pool there
            people = People(self.seed)
            for user_id in self.known:
                first.enroll(people.person(user_id))

    def prepared(self) -> bool:
        return all(s.holds(u) for s in self.stations for u in self.known)

    def act(self) -> None:
        user_id = self.rng.choice(self.known)
        holders = [s for s in self.stations if s.holds(user_id)]
        for station in self.rng.sample(holders, min(self.spread, len(holders))):
            station.edit(user_id)


class Mixed(Scenario):
    name = "mixed"
    about = "enrolments, edits, deletions at terminals and, mostly, people verifying at doors"
    default_rate = 200.0
    weights = {"enroll": 0.10, "edit": 0.15, "delete": 0.05, "verify": 0.70}


class Trickle(Scenario):
    name = "trickle"
    about = ("the everyday site: now and then someone enrolled at a random terminal, people verifying at doors the rest of "
             "the time; each change travels alone")
    default_rate = 10.0  # with these weights, one enrolment a second across the fleet
    # Enrolments, not edits: an edit can cross a push of the same user (see "lost_updates"), and
    # at these rates that race would decide the run by chance.
    weights = {"enroll": 0.1, "verify": 0.9}


class LogFlood(Scenario):
    name = "log-flood"
    about = "people verifying at every door, nothing else: the event log at full tilt, to measure ingest"
    default_rate = 20_000.0
    weights = {"verify": 1.0}


class Churn(Scenario):
    name = "churn"
    about = "a fifth of the terminals drop off the network for 1-5 s and return, over and over"
    default_rate = 50.0
    weights = {"enroll": 0.3, "edit": 0.1, "verify": 0.6}
    share = 0.2
    leave_chance = 0.05  # per churning terminal and tick (about a departure every 4 s at 5 ticks/s)

    def disturbed(self) -> frozenset[int]:
        count = max(1, round(len(self.terminal_ids) * self.share))
        return frozenset(self.fleet_rng("churners").sample(self.terminal_ids, count))

    def bind(self, stations: list) -> None:
        super().bind(stations)
        churners = self.disturbed()
        self.churners = [s for s in stations if s.terminal_id in churners]

    def tick(self, elapsed_s: float) -> None:
        for station in self.churners:
            if not station.away and self.rng.random() < self.leave_chance:
                station.go_offline()
                station.clock.callLater(self.rng.uniform(1, 5), self._return, station)

    def _return(self, station) -> None:
        if station.away:
            station.come_back()


class OfflineCatchup(Scenario):
    name = "offline-catchup"
    about = "one terminal is away while thousands of changes happen, then catches up"
    default_rate = 50.0
    weights = {"enroll": 0.7, "edit": 0.3}
    away_share_of_run = 0.8

    def disturbed(self) -> frozenset[int]:
        return frozenset(self.terminal_ids[:1])

    def begin(self) -> None:
        for station in self.stations:
            if station.terminal_id in self.disturbed():
                station.go_offline()

    def tick(self, elapsed_s: float) -> None:
        if elapsed_s >= self.away_share_of_run * self.duration_s:
            self.end()


class SlowTerminal(Scenario):
    name = "slow-terminal"
    about = "an enrolment storm while one terminal reads its link only a tenth of the time"
    default_rate = 20.0

    def disturbed(self) -> frozenset[int]:
        return frozenset(self.terminal_ids[:1])

    def faults(self, terminal_id: int) -> Faults | None:
        return Faults(read_duty=0.1, read_period_s=1.0) if terminal_id in self.disturbed() else None


class Garbage(Scenario):
    name = "garbage"
    about = "the mixed load while one terminal writes random bytes between its frames now and then"
    default_rate = 200.0
    weights = Mixed.weights
    noise_every_s = 7.0  # stays under the gateway's limit of 10 corrupt frames a minute

    def faults(self, terminal_id: int) -> Faults | None:
        if terminal_id == self.terminal_ids[0]:
            return Faults(garbage_every_s=self.noise_every_s, seed=self.seed)
        return None


SCENARIOS = {s.name: s for s in (EnrollStorm, EditStorm, Mixed, Trickle, LogFlood, Churn, OfflineCatchup, SlowTerminal, Garbage)}
