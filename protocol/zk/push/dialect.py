"""Which PUSH a device speaks, and the commands the server writes to it in that dialect
(docs/zk-push.md, "PUSH 2 and PUSH 3").

A 2.x attendance device and a 3.x access device share the endpoints and the command envelope
(``C:<id>:...``, results on devicecmd) but not the text of a command: a 3.x device refuses
``DATA UPDATE USERINFO`` (``Return=-629``, no such table) and a 2.x device ``DATA UPDATE user``.
``Dialect`` is that difference as one object the server side holds per device; ``evidence``
reads a request for what the device said of itself.
"""

from dataclasses import dataclass
from typing import Callable

from protocol.zk.push import commands as v2
from protocol.zk.push import v3
from protocol.zk.push.lines import FingerLine

# Endpoints and upload tables that only a 3.x device uses (the access-control document's own).
_V3_ENDPOINTS = frozenset({"registry", "push", "querydata"})
_V3_TABLES = frozenset({"rtlog", "rtstate", "tabledata"})
_V2_TABLES = frozenset({"ATTLOG", "OPERLOG"})


@dataclass(frozen=True)
class Dialect:
    name: str  # "2" or "3"
    update_user: Callable[..., str]  # the held UserLine's fields (2.x names) -> command text
    grant: Callable[[str, int], list[str]]  # what a person new to the device needs beside the user to pass its doors (pin, doors)
    deletion: Callable[[str, str], list[str]]  # a person's deletion (pin, template kind)
    delete_user: Callable[[str], str]
    update_finger: Callable[[FingerLine], str]
    delete_finger: Callable[[str, int, str], str]  # pin, finger index, the kind the device uses ("FP" or "BIODATA")
    list_users: str  # the queries that make the device list its users, then its fingers
    list_fingers: Callable[[bool], str]  # biodata device or not

    def listing(self, biodata: bool) -> list[str]:
        return [self.list_users, self.list_fingers(biodata)]


PUSH2 = Dialect("2", v2.update_user, grant=lambda pin, doors: [], deletion=lambda pin, kind: [v2.delete_user(pin)],
                delete_user=v2.delete_user, update_finger=v2.update_finger, delete_finger=lambda pin, fid, kind: v2.delete_finger(pin, fid),
                list_users=v2.query_users(), list_fingers=lambda biodata: v2.query_fingers())
PUSH3 = Dialect("3", v3.update_user, grant=lambda pin, doors: [v3.authorize(pin, doors)], deletion=v3.deletion,
                delete_user=v3.delete_user, update_finger=v3.update_finger, delete_finger=v3.delete_finger, list_users=v3.query(v3.USER),
                list_fingers=lambda biodata: v3.query(v3.BIODATA, "Type=1") if biodata else v3.query(v3.TEMPLATE))
DIALECTS = {"2": PUSH2, "3": PUSH3}


def evidence(method: str, endpoint: str, query: dict[str, str]) -> Dialect | None:
    """The dialect a request shows (``query`` with lower-case keys), or None when it shows neither:
    ``DeviceType=acc``, registration, ``push``, ``querydata`` and the 3.x upload tables are 3.x;
    ATTLOG and OPERLOG uploads, or ``DeviceType=att``, are 2.x. ``pushver`` is no evidence: 2.x
    attendance firmware sends it too, and what it says varies by firmware."""
    device_type = query.get("devicetype", "").strip().lower()
    if device_type == "acc":
        return PUSH3
    if device_type == "att":
        return PUSH2
    if endpoint in _V3_ENDPOINTS:
        return PUSH3
    if endpoint == "cdata" and method == "POST":
        table = query.get("table", "")
        if table in _V3_TABLES or table.lower().startswith("tablename="):
            return PUSH3
        if table in _V2_TABLES:
            return PUSH2
    return None
