"""An emulated ZKTeco device: its store and keypad (device.py), one client's conversation
(session.py), and the TCP server and command line (tcp.py). Written against protocol.zk and
docs/zk.md, never against the gateway."""
