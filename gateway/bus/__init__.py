"""RS-485 buses: the gateway as bus master (docs/rs485.md).

``BusMaster`` (master.py) owns one serial port and the exchanges on it; ``PollScheduler``
(scheduler.py) decides who gets the line next; ``LineTiming`` (timing.py) says how long bytes take
and how long to wait; ``BusLink`` (link.py) is what each address's TerminalSession talks through.
"""

from gateway.bus.master import BusMaster

__all__ = ["BusMaster"]
