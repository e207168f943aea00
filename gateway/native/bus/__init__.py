"""RS-485 buses: the gateway as bus master (docs/rs485.md).

``BusMaster`` (master.py) keeps a session per address and polls it; ``ExchangeLine``
(exchanges.py) puts one frame on the line at a time and waits for its answer; ``BusPort``
(port.py) is the serial port itself; ``PollScheduler`` (scheduler.py) decides who gets the line
next; ``LineTiming`` (timing.py) says how long bytes take and how long to wait; ``BusLink``
(link.py) is what each address's TerminalSession talks through.
"""

from gateway.native.bus.master import BusMaster

__all__ = ["BusMaster"]
