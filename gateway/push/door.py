"""PushDoor: which PUSH devices may talk to the gateway, decided by serial number and address.

PUSH 2.x has no secret: a serial number is all a device says of itself, so admission works as
for terminals (``allowlist``, ``pending``, ``open``: gateway/admission.py), by the terminal id
the serial maps to, and the rest is the network's: a per-device list of source networks, TLS,
and one address at a time. An unknown or pending serial is recorded (``pending``) and answered
so that it keeps its data and retries; it is never given a command. A known serial calling
from another address while the device is online is refused and reported: two devices claim
one serial, or someone copies it. Each refusal is logged once per serial, reason and address,
and counted in ``gateway_push_refused{reason}``. Made-up serials cost a bounded amount
(``MAX_PENDING``, ``MAX_SAID``).
"""

from dataclasses import dataclass

from prometheus_client import Counter
from twisted.logger import Logger

from gateway.sync.connection import Refused, TerminalInfo
from gateway.push.settings import PushDeviceEntry, terminal_id_of, within
from gateway.terminals import ADMITTED, PENDING

log = Logger(namespace="gateway.push")

PUSH = "push"  # the registry's kind for these devices (gateway/push/kind.py)
LINK_PREFIX = "push "  # how the registry's link column names a PUSH device's address: "push 10.0.0.5"
# A flood of made-up serials costs a bounded amount: at most this many wait for admission (policy
# ``pending``), and the refusals logged once each are forgotten past this many.
MAX_PENDING = 1000
MAX_SAID = 10_000


@dataclass(frozen=True)
class Refusal:
    status: int  # the HTTP status the device gets
    reason: str  # a label for the metric
    text: str  # for people: the log and the answer's body


class PushDoor:
    def __init__(self, registry, devices: list[PushDeviceEntry], metrics_registry):
        self._registry = registry
        self._entries = {d.sn: d for d in devices}
        self._said: set[tuple[str, str, str]] = set()
        self.refused = Counter("gateway_push_refused", "PUSH requests refused, by reason", ["reason"], registry=metrics_registry)

    def entry(self, serial: str) -> PushDeviceEntry:
        return self._entries.get(serial) or PushDeviceEntry(sn=serial)

    def terminal_id(self, serial: str) -> int:
        entry = self._entries.get(serial)
        return entry.terminal_id if entry is not None else terminal_id_of(serial)

    def admit(self, serial: str, address: str, online_from: str | None) -> Refusal | None:
        """None if the device ``serial`` may talk from ``address``; else why not.
        ``online_from``: the address it is online from now, if it is."""
        refusal = self._judge(serial, address, online_from)
        if refusal is not None:
            self.refused.labels(refusal.reason).inc()
            key = (serial, refusal.reason, address)
            if key not in self._said:  # a refused device retries every ErrorDelay: say it once
                if len(self._said) >= MAX_SAID:  # made-up serials by the thousand: say them again rather than grow
                    self._said.clear()
                self._said.add(key)
                log.warn("PUSH device {sn} from {address} refused: {text}", sn=serial, address=address, text=refusal.text)
        return refusal

    def _judge(self, serial: str, address: str, online_from: str | None) -> Refusal | None:
        if not serial or len(serial) > 64 or not serial.isprintable():
            return Refusal(400, "bad_serial", "a request without a usable SN")
        terminal_id = self.terminal_id(serial)
        term = self._registry.terminals.get(terminal_id)
        if term is not None and term.kind != PUSH:
            return Refusal(403, "id_taken", f"terminal id {terminal_id} (from serial {serial}) is another kind of terminal's; "
                                            f"give the device an id in [[push.devices]]")
        entry = self._entries.get(serial)
        if entry is not None and entry.networks and not within(address, entry.networks):
            return Refusal(403, "network", f"{address} is not in the device's networks {', '.join(entry.networks)}")
        if online_from is not None and online_from != address:
            return Refusal(403, "another_address", f"serial {serial} is online from {online_from}: two devices with one serial, "
                                                   f"or a copied one")
        if term is not None and term.admission == ADMITTED:
            return None
        if term is None and self._registry.policy == "pending" and self._pending() >= MAX_PENDING:
            return Refusal(403, "unknown", f"{MAX_PENDING} terminals wait for admission already: serial {serial} is not recorded")
        try:
            # Records an unknown serial as pending (policy ``pending``), refuses it (``allowlist``),
            # or admits it as a PUSH device (``open``).
            self._registry.caller_admitted(terminal_id, PUSH, TerminalInfo(model=f"PUSH device {serial}"), LINK_PREFIX + address)
        except Refused as exc:
            pending = self._registry.terminals.get(terminal_id)
            if pending is not None and not pending.link:
                pending.link = LINK_PREFIX + address
            return Refusal(403, "pending" if pending is not None and pending.admission != ADMITTED else "unknown", exc.reason)
        return None


    def _pending(self) -> int:
        return sum(1 for t in self._registry.terminals.values() if t.admission == PENDING)
