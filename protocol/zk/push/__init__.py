"""ZKTeco's PUSH (ADMS) protocol, the server side, with no I/O: devices call the server over HTTP.

``lines`` reads and writes the text records (tab-separated ``key=value`` fields, upload lines);
``commands`` the commands the server queues and the results devices report; ``server`` the
conversation with one device (``PushServer``: requests and ``now`` in, events and answers out,
in the shape of h11's ``Connection``). docs/zk-push.md is the spec. The gateway's listener
(gateway/push/) and the emulated device (simulator/push/) share it.
"""

from protocol.zk.push.commands import CommandResult, PushCommand
from protocol.zk.push.lines import BadLine, FingerLine, OpLog, Punch, UserLine
from protocol.zk.push.server import PushServer, Request, RequestError

__all__ = ["BadLine", "CommandResult", "FingerLine", "OpLog", "PushCommand", "PushServer", "Punch", "Request", "RequestError", "UserLine"]
