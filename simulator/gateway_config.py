"""The gateway configuration a simulated fleet needs, as TOML text.

``[[zk]]`` entries for its ZK devices (the gateway dials each), ``[[terminals]]`` entries for
native terminals that listen for a gateway dialling out, and open admission with the fleet's
secret for native terminals that dial in. Written from the keys the gateway documents
(README, docs/zk.md); the simulator never imports the gateway.
"""

import json


def fleet_config(*, secret: str, dial_in: bool = False, listening: dict[int, int] | None = None,
                 zk: dict[int, int] | None = None, comm_key: int = 0, poll_s: float | None = None,
                 host: str = "127.0.0.1") -> str:
    """``listening`` and ``zk`` map terminal ids to the port each listens on."""
    lines = []
    if dial_in:  # terminals with ids nobody listed: any id, authenticated with the shared secret
        lines += ['admission = "open"', f"default_secret = {_quoted(secret)}"]
    else:
        lines.append('admission = "allowlist"')
    for terminal_id, port in sorted((listening or {}).items()):
        lines += ["", "[[terminals]]", f"id = {terminal_id}", f"secret = {_quoted(secret)}", f"dial = {_quoted(f'{host}:{port}')}"]
    for terminal_id, port in sorted((zk or {}).items()):
        lines += ["", "[[zk]]", f"id = {terminal_id}", f"host = {_quoted(host)}", f"port = {port}",
                  f"comm_key = {comm_key}", f"name = {_quoted(f'zk-{terminal_id}')}"]
        if poll_s is not None:
            lines.append(f"poll_s = {float(poll_s)!r}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string
