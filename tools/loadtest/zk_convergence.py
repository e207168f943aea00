"""The convergence check for ZK devices: a device's dump against the server, as the mapping allows.

A ZK device holds less than a server record (docs/zk.md, "Gateway mapping"): a user id, a name of
at most 24 bytes, one card number, a password, fingerprint templates of its own algorithm. So a
device has converged when it holds exactly the server's users (less those deleted at its keypad
and not changed since), each under a name that is the server's, or a beginning of it when it is
longer than 24 bytes, and every finger enrolled at another device of the same algorithm.
A change made at a device's keypad is lost when the server lacks the user, or left a field
vacant that the device filled (name, card): the server keeps its own values, never vacancies.

Punches have no ids a device reports, so they are counted: each must be one stored event of
that terminal with a terminal event id (the driver's key for storing each once).
"""

from protocol.records import UserRecord

NAME_BYTES = 24


def name_matches(server_name: str, device_name: str) -> bool:
    """Whether a device's name is the server's as a 24-byte field holds it: the same when it fits,
    else a non-empty beginning of it (where exactly the driver cuts is its own choice)."""
    full = server_name.encode()
    if len(full) <= NAME_BYTES:
        return device_name == server_name
    held = device_name.encode()
    return 0 < len(held) <= NAME_BYTES and full.startswith(held)


def holds_the_servers_users(dump: dict, server: dict[str, UserRecord], result) -> bool:
    terminal_id, held = dump["terminal_id"], dump["users"]
    expected = set(server) - set(dump["deleted_here"])
    missing = expected - set(held)
    unknown = [u for u in held if u not in server]
    renamed = [u for u, entry in held.items() if u in server and not name_matches(server[u].name, entry["name"])]
    result.missing_deliveries += len(missing)
    result.stale_records += len(unknown) + len(renamed)
    for user_id in sorted(missing)[:2]:
        result.note(f"ZK device {terminal_id} lacks user {user_id}")
    for user_id in unknown[:2]:
        result.note(f"ZK device {terminal_id} holds a user the server does not know: {user_id}")
    for user_id in renamed[:2]:
        result.note(f"ZK device {terminal_id} holds user {user_id} as {held[user_id]['name']!r}, the server as {server[user_id].name!r}")
    return not missing and not unknown and not renamed


def check_changes_made_here(dump: dict, server: dict[str, UserRecord], result) -> None:
    for user_id, local in dump["changed_here"].items():
        kept = server.get(user_id)
        if kept is None:
            lost = "the server lacks the user"
        elif local["name"] and not kept.name:
            lost = "the server's name is vacant"
        elif local["card"] and not kept.cards:
            lost = "the server holds no card"
        else:
            continue
        result.lost_updates += 1
        result.note(f"ZK device {dump['terminal_id']}: its change of user {user_id} did not reach the server ({lost})")


def devices_missing_fingers(dumps: list[dict], result) -> set[int]:
    """Fingers enrolled at one device that another device of the same algorithm holding the user
    lacks; returns the devices that lack some."""
    lacking = set()
    for origin in dumps:
        for user_id, local in origin["changed_here"].items():
            for other in dumps:
                if other is origin or other["fp_version"] != origin["fp_version"] or user_id in other["changed_here"]:
                    continue
                entry = other["users"].get(user_id)
                absent = [] if entry is None else [f for f in local["fingers"] if f not in entry["fingers"]]
                if absent:
                    result.missing_deliveries += 1
                    lacking.add(other["terminal_id"])
                    result.note(f"ZK device {other['terminal_id']} holds user {user_id} without finger(s) {', '.join(absent)} "
                                f"enrolled at device {origin['terminal_id']}")
    return lacking
