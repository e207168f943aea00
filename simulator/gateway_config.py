"""The gateway configuration a simulated fleet needs, as TOML text.

``[[zk]]`` entries for its ZK devices (the gateway dials each), ``[[terminals]]`` entries for
native terminals that listen for a gateway dialling out, and open admission with the fleet's
secret for native terminals that dial in. Written from the keys the gateway documents
(README, docs/zk.md); the simulator never imports the gateway.
"""

import tomli_w


def fleet_config(*, secret: str, dial_in: bool = False, listening: dict[int, int] | None = None,
                 zk: dict[int, int] | None = None, comm_key: int = 0, poll_s: float | None = None,
                 host: str = "127.0.0.1") -> str:
    """``listening`` and ``zk`` map terminal ids to the port each listens on."""
    # Terminals dialling in with ids nobody listed: any id, authenticated with the shared secret.
    config: dict = dict(admission="open", default_secret=secret) if dial_in else dict(admission="allowlist")
    config["terminals"] = [dict(id=terminal_id, secret=secret, dial=f"{host}:{port}") for terminal_id, port in sorted((listening or {}).items())]
    config["zk"] = [dict(id=terminal_id, host=host, port=port, comm_key=comm_key, name=f"zk-{terminal_id}",
                         **({} if poll_s is None else dict(poll_s=float(poll_s))))
                    for terminal_id, port in sorted((zk or {}).items())]
    return tomli_w.dumps({key: value for key, value in config.items() if value != []})
