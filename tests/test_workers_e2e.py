"""End to end: several gateway processes on one PostgreSQL database.

Real ``gateway run --workers N`` processes (and two separate ``gateway run`` on one database, as
two hosts would be), simulated terminals on loopback sockets in the test's reactor. Which process
serves a terminal is read from PostgreSQL itself: the advisory lock of each terminal
(gateway/process/claims.py) and the process that holds it (``pg_stat_activity.application_name``).
"""

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from twisted.internet import defer, reactor, threads

from gateway.admin import ApiClient
from gateway.process.claims import CLAIM_LOCK_SPACE
from gateway.cli import main
from gateway.sync.users import load_record
from api_site import http
from live_site import KeypadStorm, LiveTestCase, secret_of, wait_until
from processes import Process
from simulator.people import People
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal
from protocol.messages import Command
from tools.hostile import RawTerminal
from tools.loadtest.gateway_process import GatewayProcess

TOKEN = "test-token"
GUESSER = "127.0.0.9"  # an address of its own: its lockout keeps no other test terminal out


def greeted(port: int) -> bool:
    """Whether a new connection from GUESSER hears HELLO (a locked-out address is closed at once)."""
    try:
        RawTerminal(port, 701, b"", source=GUESSER, timeout_s=5).next_frame()
        return True
    except ConnectionError:
        return False


def holders(engine) -> dict[int, int]:
    """{terminal id: pid of the gateway process that serves it}, from PostgreSQL's advisory locks."""
    stmt = text("SELECT l.objid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.classid = :space AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    with engine.connect() as conn:
        return {int(objid): int(name.rsplit(" ", 1)[1]) for objid, name in conn.execute(stmt, dict(space=CLAIM_LOCK_SPACE))}


class WorkersTests(LiveTestCase):
    backend = "postgresql"
    timeout = 180

    def gateway(self, terminal_ids, workers: int = 1, name: str = "gateway", sync_mode: str | None = None, settings: str = "",
                groups: dict[int, list[int]] | None = None) -> GatewayProcess:
        folder = self.tmp_path / name
        folder.mkdir()
        config = folder / "gateway.toml"
        groups = groups or {}
        config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "{TOKEN}"\n' + settings
                          + (f'sync_mode = "{sync_mode}"\n' if sync_mode else "")
                          + "".join(f'\n[[terminals]]\nid = {t}\nsecret = "{secret_of(t)}"\ngroups = {groups.get(t, [])}\n' for t in terminal_ids))
        gateway = GatewayProcess(folder, self.db_url, config_file=config, workers=workers)
        self.addCleanup(gateway.stop)
        return gateway

    def dial(self, terminals: dict[int, Terminal], port: int) -> dict[int, DialingTerminal]:
        dialers = {}
        for terminal_id, terminal in terminals.items():
            dialers[terminal_id] = DialingTerminal(terminal, reactor, "127.0.0.1", port).start()
            self.addCleanup(dialers[terminal_id].go_offline)
        return dialers

    @defer.inlineCallbacks
    def served(self, ids: list[int], workers: int, sync_mode: str | None = None, settings: str = "", groups=None):
        """``gateway run --workers N`` with terminals ``ids`` dialled in, once each is served by a
        worker: (the gateway, the terminals, an engine on its database)."""
        gateway = self.gateway(ids, workers=workers, sync_mode=sync_mode, settings=settings, groups=groups)
        yield wait_until(gateway.spawn().listening, "the workers listening", timeout=60)
        terminals = {t: Terminal(t, secret_of(t)) for t in ids}
        self.dial(terminals, gateway.tcp_port)
        engine = self.engine()
        yield wait_until(lambda: set(holders(engine)) == set(ids), "every terminal served by a worker", timeout=60)
        return gateway, terminals, engine

    def engine(self):
        engine = create_engine(self.db_url)
        self.addCleanup(engine.dispose)
        return engine

    def api(self, gateway: GatewayProcess, method: str, path: str, body: dict):
        client = ApiClient(f"http://127.0.0.1:{gateway.http_port}", TOKEN)
        return threads.deferToThread(client.call, method, path, body=body)

    @defer.inlineCallbacks
    def test_terminals_spread_over_three_workers_converge_and_an_enrolment_reaches_the_others(self):
        ids = list(range(301, 313))
        gateway, terminals, engine = yield self.served(ids, workers=3)
        served = holders(engine)
        self.assertLessEqual(set(served.values()), set(gateway.worker_pids()), "only workers serve terminals")
        self.assertGreater(len(set(served.values())), 1, f"terminals spread over the workers: {served}")
        api = ApiClient(f"http://127.0.0.1:{gateway.http_port}", TOKEN)
        yield wait_until(lambda: all(t["online"] for t in api.call("GET", "/api/terminals")["terminals"]),
                         "the API (worker 0) showing online the terminals the other workers serve too", timeout=30)

        people = People(seed=5)
        for terminal_id in ids:
            terminals[terminal_id].enroll(people.person(f"u{terminal_id}"))
        everyone = {f"u{t}" for t in ids}
        yield wait_until(lambda: all(set(t.users) == everyone for t in terminals.values()),
                         "every terminal holding every user enrolled at any of them", timeout=60)
        with engine.connect() as conn:
            for user_id in everyone:
                server = load_record(conn, user_id)
                for terminal in terminals.values():
                    self.assertEqual(terminal.users[user_id], server, f"user {user_id} on terminal {terminal.terminal_id}")
        # What was enrolled at a terminal of one worker is on the terminals of the others.
        first = ids[0]
        others = [t for t, pid in served.items() if pid != served[first]]
        self.assertTrue(others)
        for terminal_id in others:
            self.assertIn(f"u{first}", terminals[terminal_id].users)

    @defer.inlineCallbacks
    def test_a_worker_killed_mid_storm_loses_nothing_and_stores_nothing_twice(self):
        ids = list(range(401, 407))
        per_terminal = 30
        gateway, terminals, engine = yield self.served(ids, workers=3)

        storm = KeypadStorm(terminals, per_terminal, seed=9)
        storm_done = storm.start(self)
        yield wait_until(storm.held, "two thirds of the storm enrolled", timeout=60)
        victim = holders(engine)[ids[0]]
        its_terminals = {t for t, pid in holders(engine).items() if pid == victim}
        gateway.kill_worker(victim)
        storm.release()
        yield wait_until(lambda: all(holders(engine).get(t) not in (None, victim) for t in its_terminals),
                         "the killed worker's terminals served by another", timeout=60)
        yield storm_done
        yield wait_until(storm.everywhere, "every terminal holding every user, its log acknowledged", timeout=90)
        storm.check_stored(self, engine)
        self.assertIn(victim, [int(p) for p in re.findall(r"worker \d \(pid (\d+)\) ended", gateway.log_path.read_text())],
                      "the supervisor saw the worker end and started it again")

    @defer.inlineCallbacks
    def test_in_specific_mode_a_change_through_one_worker_wakes_only_the_terminals_of_its_group_in_every_worker(self):
        ids = list(range(601, 613))
        groups = {t: [1 + t % 2] for t in ids}  # odd ids serve group 2, even ones group 1
        gateway, terminals, engine = yield self.served(ids, workers=2, sync_mode="specific", groups=groups)
        yield self.api(gateway, "POST", "/api/users", {"user_id": "9002", "name": "Rui Sá", "access_groups": [1]})
        ones, twos = [t for t in ids if t % 2 == 0], [t for t in ids if t % 2]

        def cursors():
            with engine.connect() as conn:
                return dict(conn.execute(text("SELECT terminal_id, cursor FROM terminals")).all())

        with engine.connect() as conn:
            seq = conn.execute(text("SELECT change_seq FROM users WHERE user_id = '9002'")).scalar_one()
        yield wait_until(lambda: all("9002" in terminals[t].users for t in ones) and all(cursors()[t] >= seq for t in ones),
                         "every terminal of group 1, whichever worker serves it, holding her", timeout=30)
        # Neither worker woke a terminal of group 2 for her: no round, so no cursor move (before,
        # each worker moved them in the same commit as its group 1 terminals'), and no lag shown.
        self.assertEqual({t: cursors()[t] for t in twos}, {t: 0 for t in twos})
        self.assertFalse(any("9002" in terminals[t].users for t in twos))
        shown = yield self.api(gateway, "GET", "/api/terminals", None)
        self.assertEqual({t["id"]: t["lag"] for t in shown["terminals"] if t["id"] in twos}, {t: 0 for t in twos})

    @defer.inlineCallbacks
    def test_a_sync_mode_change_made_through_one_worker_applies_in_all(self):
        ids = list(range(501, 513))
        gateway, terminals, engine = yield self.served(ids, workers=2, sync_mode="disabled")
        self.assertEqual(len(set(holders(engine).values())), 2, "both workers serve terminals")
        yield self.api(gateway, "POST", "/api/users", {"user_id": "9001", "name": "Ana Lima"})
        # Disabled: nobody gets her. The mode changes through the API, which worker 0 serves; the
        # terminals of worker 1 get her only if worker 1 follows the change without a restart.
        yield self.api(gateway, "PUT", "/api/sync", {"mode": "all"})
        yield wait_until(lambda: all("9001" in t.users for t in terminals.values()), "every terminal holding her", timeout=30)
        yield wait_until(lambda: "by another gateway process" in gateway.log_path.read_text(),
                         "the other worker saying it follows the change", timeout=10)
        # Terminals admitted through the API (worker 0) are admitted by every worker.
        admitted = {t: Terminal(t, secret_of(t)) for t in range(521, 531)}
        for terminal_id in admitted:
            yield self.api(gateway, "POST", f"/api/terminals/{terminal_id}/admit", {"secret": secret_of(terminal_id)})
        self.dial(admitted, gateway.tcp_port)
        yield wait_until(lambda: set(admitted) <= set(holders(engine)), "the terminals admitted at run time served", timeout=30)
        self.assertEqual(len({holders(engine)[t] for t in admitted}), 2, "both workers serve terminals admitted at run time")
        yield wait_until(lambda: all("9001" in t.users for t in admitted.values()), "they hold her too", timeout=30)
        workers = gateway.worker_pids()
        gateway.stop()  # SIGTERM to the supervisor: it stops every worker, then exits 0
        self.assertEqual(gateway.proc.returncode, 0)
        self.assertEqual([pid for pid in workers if Path(f"/proc/{pid}").exists()], [], "workers left running")

    @defer.inlineCallbacks
    def test_wrong_proofs_spread_over_the_workers_lock_the_address_out_of_all_and_an_operator_lifts_it_in_all(self):
        gateway = self.gateway([701], workers=2, settings="auth_slow_after = 8\nauth_lockout_after = 4\n")
        yield wait_until(gateway.spawn().listening, "the workers listening", timeout=60)
        api = ApiClient(f"http://127.0.0.1:{gateway.http_port}", TOKEN)
        for _ in range(4):  # the kernel spreads these over both workers: each checks some
            refusal = yield threads.deferToThread(lambda: RawTerminal(gateway.tcp_port, 701, b"guess", source=GUESSER).authenticate())
            self.assertTrue(refusal.is_error)
        # Eight connections in a row turned away at once, whichever worker takes each.
        yield wait_until(lambda: all(not greeted(gateway.tcp_port) for _ in range(8)), "every worker refusing the address", timeout=20)
        listed = api.call("GET", "/api/lockouts")["lockouts"]
        self.assertEqual(sorted((entry["kind"], entry["address"] or entry["terminal_id"]) for entry in listed),
                         [("address", GUESSER), ("terminal", 701)], "worker 0 counting the wrong proofs the other worker checked")
        api.call("DELETE", f"/api/lockouts/{GUESSER}")
        yield wait_until(lambda: all(greeted(gateway.tcp_port) for _ in range(8)), "every worker letting the address in again", timeout=20)
        welcome = yield threads.deferToThread(lambda: RawTerminal(gateway.tcp_port, 701, secret_of(701).encode(), source=GUESSER).authenticate())
        self.assertEqual(welcome.command, Command.WELCOME)

    @defer.inlineCallbacks
    def test_the_api_shows_the_links_and_the_metrics_of_the_terminals_every_worker_serves(self):
        ids = list(range(811, 823))  # twelve: the kernel puts them all on one of two workers once in 2,048 starts, six once in 32
        gateway, terminals, engine = yield self.served(ids, workers=2)
        self.assertEqual(len(set(holders(engine).values())), 2, "both workers serve terminals")
        api = ApiClient(f"http://127.0.0.1:{gateway.http_port}", TOKEN)
        yield wait_until(lambda: all(t["online"] and t["link"] and t["last_seen_ms"]
                                     for t in api.call("GET", "/api/terminals")["terminals"]),
                         "worker 0's API showing every terminal's link and when it was heard", timeout=30)

        def online_by_process():
            _, exposition, _ = http("GET", f"http://127.0.0.1:{gateway.http_port}/metrics")
            return {s.labels.get("process"): s.value for f in text_string_to_metric_families(exposition)
                    for s in f.samples if s.name == "gateway_terminals_online"}

        yield wait_until(lambda: sum(online_by_process().values()) == len(ids) and len(online_by_process()) == 2,
                         "/metrics counting the terminals of both workers", timeout=30)
        self.assertIn(None, online_by_process(), "worker 0's own series, unlabelled")

    @defer.inlineCallbacks
    def test_reconcile_through_the_api_compares_and_repairs_the_terminals_every_worker_serves(self):
        ids = list(range(801, 811))  # ten: the kernel puts them all on one of two workers once in 512 starts
        gateway, terminals, engine = yield self.served(ids, workers=2)
        yield self.api(gateway, "POST", "/api/users", {"user_id": "9001", "name": "Ana Lima"})
        yield wait_until(lambda: all("9001" in t.users for t in terminals.values()), "every terminal holding her", timeout=30)
        api = ApiClient(f"http://127.0.0.1:{gateway.http_port}", TOKEN)
        yield wait_until(lambda: all(t["online"] for t in api.call("GET", "/api/terminals")["terminals"]),
                         "the API (worker 0) showing online the terminals the other worker serves", timeout=30)
        served = holders(engine)
        wiped = sorted({pid: t for t, pid in served.items()}.values())  # one terminal of each worker
        self.assertEqual(len(wiped), 2, f"both workers serve terminals: {served}")
        for terminal_id in wiped:
            terminals[terminal_id].users.clear()  # a factory reset while online: no reconnect to trigger a comparison
        found = yield self.api(gateway, "POST", "/api/reconcile", {})
        self.assertEqual(sorted(t["id"] for t in found["terminals"]), ids, "the answer covers every worker's terminals")
        repaired = {t["id"]: t["repaired"] for t in found["terminals"] if t["repaired"]}
        self.assertEqual(repaired, {terminal_id: {"pushed": 1} for terminal_id in wiped})
        self.assertEqual(found["repaired"], 2)
        self.assertTrue(all("9001" in terminals[t].users for t in wiped))
        shown = yield self.api(gateway, "GET", "/api/terminals", None)
        self.assertEqual({t["id"]: t["reconciliation"]["repaired_total"] for t in shown["terminals"] if t["id"] in wiped},
                         {terminal_id: 1 for terminal_id in wiped})

    @defer.inlineCallbacks
    def test_the_newest_connection_of_a_terminal_wins_across_processes(self):
        first, second = self.gateway([601, 602], name="a"), self.gateway([601, 602], name="b")
        yield wait_until(first.spawn().listening, "gateway a listening", timeout=60)
        yield wait_until(second.spawn().listening, "gateway b listening", timeout=60)
        engine = self.engine()
        rebooting = Terminal(601, secret_of(601))
        old_link = self.dial({601: rebooting}, first.tcp_port)[601]
        yield wait_until(lambda: holders(engine).get(601) == first.pid, "terminal 601 served by gateway a", timeout=30)
        old_link.stop_redialling()  # its rebooted self dials gateway b; this one must not dial back

        rebooted = Terminal(601, secret_of(601))
        new_link = self.dial({601: rebooted}, second.tcp_port)[601]
        yield wait_until(lambda: old_link.link is None, "gateway a closing the older connection", timeout=30)
        yield wait_until(lambda: holders(engine).get(601) == second.pid, "terminal 601 served by gateway b", timeout=30)
        self.assertIsNotNone(new_link.link)
        # Served by b only: a user added through a reaches the new connection, through b.
        yield self.api(first, "POST", "/api/users", {"user_id": "7001", "name": "Bea"})
        yield wait_until(lambda: "7001" in rebooted.users, "the newest connection getting the user", timeout=30)
        self.assertNotIn("7001", rebooting.users)
        self.assertEqual(holders(engine).get(601), second.pid)


def test_several_workers_on_sqlite_are_refused(tmp_path, capsys):
    status = main(["run", "--workers", "2", "--db", f"sqlite:///{tmp_path / 'gateway.db'}"])
    assert status == 2
    assert "needs a PostgreSQL database" in capsys.readouterr().err
    assert not (tmp_path / "gateway.db").exists()


def test_a_worker_that_cannot_start_stops_them_all(postgres, tmp_path):
    """Worker 0 cannot read its TLS certificate: the supervisor stops the other worker and exits 1."""
    (tmp_path / "not-a-cert.pem").write_text("nothing\n")
    config = tmp_path / "gateway.toml"
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "{TOKEN}"\n[tls]\nport = 0\n'
                      f'cert = "{tmp_path / "not-a-cert.pem"}"\nkey = "{tmp_path / "not-a-cert.pem"}"\n')
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", postgres.new_database(),
                      "--tcp-port", "0", "--http-port", "0", "--workers", "2")
    try:
        pids = [int(gateway.wait_for(r"worker \d of 2 started, pid (\d+)").group(1)) for _ in range(2)]
        assert gateway.wait_exit(60) == 1
        output = gateway.all_output()
        assert "not a PEM certificate" in output
        assert "gateway: worker 0 could not start; stopping the others" in output
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        gateway.stop()
