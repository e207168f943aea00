"""A kind of terminal registered by tests alone: what a new kind brings, and nothing more."""

from twisted.internet import defer

from gateway.config import checked
from gateway.kinds import ConfiguredTerminal


class LampKind:
    name = "lamp"
    description = "a lamp that calls in"
    section = "lamps"
    native_sessions = False
    served: list = []

    def configured(self, entries: list[dict] | None) -> list[ConfiguredTerminal]:
        return [ConfiguredTerminal(checked(entry["id"], int, f"[[lamps]] entry {n}"), self.name, entry.get("name"))
                for n, entry in enumerate(entries or [], start=1)]

    def serve(self, entries: list[dict] | None, gateway) -> "Lamps":
        lamps = Lamps([entry["id"] for entry in entries or []])
        self.served.append(lamps)
        return lamps


class Lamps:
    def __init__(self, ids: list[int]):
        self.ids, self.running, self.online = ids, False, []

    def start(self) -> None:
        self.running = True

    def stop(self):
        self.running = False
        return defer.succeed(None)

    def terminal_online(self, terminal_id: int) -> None:
        self.online.append(terminal_id)


LAMP = LampKind()
