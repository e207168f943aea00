"""The gateway's ZK driver and pyzk, doing the same operation against the emulated device, send the
same requests: the same commands with the same data, in the same order (checksums, session and
reply ids aside). The emulator records what it receives (``device.recorded``).

pyzk runs in a thread (it blocks); the driver is the gateway's ``ZkLink`` on a real loopback
connection. The one deliberate difference is byte 39 of a user record in a bulk upload, which
pyzk writes 1 and we write 0 (docs/zk.md, "Records": nobody reads it), so uploads are compared
by what they carry (users and templates), every other request byte for byte.
"""

from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from zk import ZK
from zk.finger import Finger
from zk.user import User as PyzkUser

from gateway.zk.driver import ZkLink
from protocol.zk import bodies
from protocol.zk.client import ZkClient
from protocol.zk.commands import Command
from protocol.zk.records import Template, User, encode_user
from simulator.zk.device import populate
from test_zk_pyzk import PYZK_TIMEOUT_S, EmulatorTestCase

COMM_KEY = 4711


class SameRequests(EmulatorTestCase):
    timeout = 60

    def setUp(self):
        self.start(comm_key=COMM_KEY)
        populate(self.device, 1200, fingers=1)  # tables big enough to be read in chunks
        self.device.punch("7")

    def pyzk_does(self, work):
        """Requests pyzk sends for ``work(connection)``, between its connect and disconnect."""

        def run():
            conn = ZK("127.0.0.1", self.port.getHost().port, timeout=PYZK_TIMEOUT_S, password=COMM_KEY, ommit_ping=True).connect()
            try:
                work(conn)
            finally:
                conn.disconnect()

        return self._recorded(threads.deferToThread(run))

    @defer.inlineCallbacks
    def driver_does(self, work):
        """Requests the driver sends for ``work(link)`` (a generator of Deferreds), between connect and EXIT."""

        @defer.inlineCallbacks
        def run():
            link = ZkLink(ZkClient(COMM_KEY, timeout_s=PYZK_TIMEOUT_S), reactor, on_realtime=lambda e: None, on_broken=lambda r: None)
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port), link)
            yield link.run("connect")
            try:
                yield from_generator(work(link))
            finally:
                yield link.run("disconnect")
                link.transport.loseConnection()

        return (yield self._recorded(run()))

    @defer.inlineCallbacks
    def _recorded(self, d):
        self.device.recorded = []
        yield d
        recorded, self.device.recorded = self.device.recorded, None
        return _comparable(recorded)

    @defer.inlineCallbacks
    def assertSame(self, pyzk_work, driver_work, only_theirs=()):
        theirs = yield self.pyzk_does(pyzk_work)
        ours = yield self.driver_does(driver_work)
        for extra in only_theirs:
            at = next(i for i in range(len(theirs)) if theirs[i : i + len(extra)] == extra)
            del theirs[at : at + len(extra)]
        self.assertEqual([c for c, _ in ours], [c for c, _ in theirs])
        self.assertEqual(ours, theirs)

    def test_connect_with_a_comm_key_and_exit(self):
        return self.assertSame(lambda conn: None, lambda link: iter(()))

    def test_read_users_in_chunks(self):
        return self.assertSame(lambda conn: conn.get_users(), lambda link: iter([link.run("read_users")]))

    def test_read_templates(self):
        return self.assertSame(lambda conn: conn.get_templates(), lambda link: iter([link.run("read_templates")]))

    @defer.inlineCallbacks
    def test_read_attendance(self):
        # pyzk's get_attendance reads the whole user table too, to name each record's uid; the
        # driver reads the user id the 40- and 16-byte records carry. Everything else is the same.
        users_read = yield self.pyzk_does(lambda conn: conn.get_users())
        yield self.assertSame(lambda conn: conn.get_attendance(), lambda link: iter([link.run("read_attendance")]),
                              only_theirs=[users_read[2:-1]])

    def test_keypad_held_and_given_back(self):
        return self.assertSame(lambda conn: (conn.disable_device(), conn.enable_device()),
                               lambda link: iter([link.run("request", Command.DISABLEDEVICE), link.run("request", Command.ENABLEDEVICE)]))

    def test_write_one_user(self):
        def theirs(conn):
            conn.set_user(uid=1300, name="Grace Hopper", privilege=0, password="", group_id="1", user_id="g.hopper", card=123456)

        ours = User(1300, "g.hopper", "Grace Hopper", 0, "", 123456, "1")
        return self.assertSame(theirs, lambda link: iter([link.run("request", Command.USER_WRQ, encode_user(ours)),
                                                          link.run("request", Command.REFRESHDATA)]))

    def test_delete_one_user(self):
        return self.assertSame(lambda conn: conn.delete_user(uid=3),
                               lambda link: iter([link.run("request", Command.DELETE_USER, bodies.uid_body(3)),
                                                  link.run("request", Command.REFRESHDATA)]))

    def test_bulk_upload_of_users_with_templates(self):
        template = bytes(range(200)) * 3
        people = [(1400 + n, f"u{n}", f"Person {n}") for n in range(3)]

        def theirs(conn):
            for uid, user_id, name in people:
                user = PyzkUser(uid, name, 0, "", "1", user_id, 0)
                conn.save_user_template(user, [Finger(uid, 2, 1, template)])

        def ours(link):
            for uid, user_id, name in people:
                yield link.run("save_users", [User(uid, user_id, name, 0, "", 0, "1")], [Template(uid, 2, template, 1)])

        return self.assertSame(theirs, ours)


def from_generator(deferreds):
    """Wait for each Deferred a generator gives, in turn."""

    @defer.inlineCallbacks
    def run():
        for d in deferreds:
            yield d

    return run()


def _comparable(packets) -> list[tuple[int, object]]:
    """(command, data) of each request; an upload's DATA pieces as what the upload carries."""
    out, upload = [], None
    for packet in packets:
        if packet.command == Command.PREPARE_DATA:
            upload = bytearray()
            out.append((packet.command, packet.data))
        elif packet.command == Command.DATA and upload is not None:
            upload += packet.data
        else:
            if upload is not None:
                users, templates = bodies.parse_upload(bytes(upload))
                out.append((Command.DATA, (users, templates)))
                upload = None
            out.append((packet.command, packet.data))
    return out
