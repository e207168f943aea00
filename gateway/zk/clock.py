"""A ZK device's clock: the local time it keeps, read as the gateway's time, and its drift.

A ZK device holds local time with no zone (docs/zk.md, "ZK time"). ``DeviceClock`` turns it
into the gateway's time with the device's own time zone (``[[zk]] timezone``, an IANA name;
none: the gateway's local zone), so a punch at 08:30 in Madrid is stored as 08:30 in Madrid
whatever zone the gateway runs in. At connect the driver reads the device's clock, shows and
counts how far it is from the gateway's, and sets it when ``set_clock`` says so.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

SET_AFTER_S = 2.0  # a clock this far off is set (when setting is on): ZK time counts whole seconds


@dataclass(frozen=True)
class DeviceClock:
    zone: ZoneInfo | None = None  # the device's time zone; None: the gateway's local zone
    set_clock: bool = False  # set the device's clock at connect when it is off

    def seconds(self, local: datetime) -> float:
        """A device-local time as seconds since the epoch. A local time the zone's change of
        hour makes ambiguous is taken at its first occurrence, as the device cannot say."""
        if self.zone is None:
            return local.timestamp()
        return local.replace(tzinfo=self.zone).timestamp()

    def local(self, seconds: float) -> datetime:
        """The device-local time (naive, whole seconds) of a moment on the gateway's clock."""
        if self.zone is None:
            return datetime.fromtimestamp(int(seconds))
        return datetime.fromtimestamp(int(seconds), timezone.utc).astimezone(self.zone).replace(tzinfo=None)

    def drift_s(self, device_local: datetime, now_s: float) -> float:
        """How far the device's clock is ahead of the gateway's (negative: behind)."""
        return self.seconds(device_local) - now_s
