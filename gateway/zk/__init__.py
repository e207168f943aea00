"""The gateway's ZKTeco driver: ZK devices kept in sync through the terminal interface.

``terminal.py`` runs one configured device (dialer, reconnects, why it is offline);
``driver.py`` is the Twisted shell around protocol.zk's client; ``connection.py`` the
``TerminalConnection`` the sync core talks to, with its parts ``copies.py`` (change detection),
``attendance.py``, ``writes.py`` (write passes) and ``plan.py`` (what a pass writes, uids);
``poller.py`` what to read when and which differences are news; ``mapping.py`` server records
to ZK users and back; ``clock.py`` the device's clock and time zone; ``store.py`` the narrow
interface to the database, ``holdings.py`` the driver's own tables. docs/zk.md section
"Gateway mapping" says what maps to what and why.
"""

from gateway.zk.terminal import ZkTerminal

__all__ = ["ZkTerminal"]
