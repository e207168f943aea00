"""The gateway's ZKTeco driver: ZK devices kept in sync through the terminal interface.

``terminal.py`` runs one configured device (dialer, reconnects, why it is offline);
``driver.py`` is the Twisted shell around protocol.zk's client; ``connection.py`` the
``TerminalConnection`` the sync core talks to; ``poller.py`` change detection; ``mapping.py``
server records to ZK users and back; ``holdings.py`` what is kept durably. docs/zk.md section
"Gateway mapping" says what maps to what and why.
"""

from gateway.zk.terminal import ZkTerminal

__all__ = ["ZkTerminal"]
