"""The PUSH kind of terminal: ZKTeco devices that call the gateway over HTTP, listed in ``[push]``."""

from gateway.kinds import ConfiguredTerminal, ServingEach
from gateway.push import PushService
from gateway.push.settings import parse_push


class PushKind:
    name = "push"
    description = "a ZKTeco device that calls the gateway over HTTP (PUSH, ADMS)"
    section = "push"
    native_sessions = False

    def configured(self, section: dict | None) -> list[ConfiguredTerminal]:
        if section is None:
            return []
        return [ConfiguredTerminal(d.terminal_id, self.name, d.name or d.sn, frozenset(d.groups)) for d in parse_push(section).devices]

    def serve(self, section: dict | None, gateway) -> PushService | ServingEach:
        """The listener, when ``[push]`` is given: the feature is off unless configured."""
        if section is None:
            return ServingEach([])
        return PushService(section, gateway.reactor, registry=gateway.registry, db=gateway.db, events=gateway.eventlog,
                           metrics=gateway.metrics)


PUSH = PushKind()
