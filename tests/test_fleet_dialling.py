"""A fleet worker dials its terminals as the gateway lets them in (unit, task.Clock): no more
shaking hands at once than the gateway takes from one address, or the rest are refused and redial;
and a dial refused, failed or never ending holds no place, or such terminals would block the rest."""

from types import SimpleNamespace

from twisted.internet import task

from simulator.fleet_worker import FleetWorker


class Dial:
    """A terminal's link factory that records its dial; the test says when it is online, or sets
    ``trouble`` as a real one does when its dial failed or the gateway refused it."""

    def __init__(self):
        self.started = False
        self.trouble = None

    def start(self):
        self.started = True


class Station:
    def __init__(self):
        self.link_factory = Dial()
        self.online = False


def dialling_worker(devices: int, workers: int):
    clock = task.Clock()
    worker = FleetWorker(clock, lambda line: None)
    worker.spec = SimpleNamespace(listen=0, worker_count=lambda: workers)
    stations = [Station() for _ in range(devices)]
    worker._connecting = worker._repeat(worker.tick_s, worker._connect_some, iter(stations), {})
    return worker, clock, stations


def dialled(stations) -> int:
    return sum(s.link_factory.started for s in stations)


def test_dials_wait_for_earlier_ones_to_be_let_in():
    worker, clock, stations = dialling_worker(200, workers=2)
    share = FleetWorker.dials_in_flight // 2
    clock.advance(1)  # twenty ticks: nobody let in yet
    assert dialled(stations) == share
    for station in stations[:5]:
        station.online = True
    clock.advance(worker.tick_s)
    assert dialled(stations) == share + 5


def test_each_handshake_done_makes_room_for_the_next_until_every_terminal_is_online():
    worker, clock, stations = dialling_worker(100, workers=1)
    started = []
    for _ in range(3):
        clock.advance(worker.tick_s)
        started.append(dialled(stations))
        for station in stations:
            station.online = station.link_factory.started  # the gateway let every dialled one in
    assert started == [48, 96, 100]
    clock.advance(worker.tick_s)
    assert not worker._connecting.running


def test_terminals_refused_for_good_make_room_for_the_rest():
    worker, clock, stations = dialling_worker(100, workers=1)
    refused = stations[:FleetWorker.dials_in_flight]
    for _ in range(20):  # one second
        clock.advance(worker.tick_s)
        for station in stations:
            if station.link_factory.started:
                if station in refused:
                    station.link_factory.trouble = "the gateway answered an error: pending admission (code 7)"
                else:
                    station.online = True
    assert dialled(stations) == 100
    assert not worker._connecting.running


def test_a_handshake_that_never_ends_gives_up_its_place_after_the_deadline():
    worker, clock, stations = dialling_worker(60, workers=1)
    clock.advance(worker.dial_place_s - worker.tick_s)  # nobody answered, nobody refused
    assert dialled(stations) == FleetWorker.dials_in_flight
    clock.advance(2 * worker.tick_s)
    assert dialled(stations) == 60
