"""The device clock seen from the desktop: an NTP-style offset from PING/PONG round trips.

A device stamps frames with its own clock, of any epoch (ARKit's is seconds since boot), so
capture-to-receipt latency needs the offset between that clock and the desktop's. Each PONG
gives one estimate, ``t_reply - (t_sent + t_received) / 2``, wrong by at most half its round
trip; the estimate of the fastest recent round trip is kept (docs/protocol.md section 5.2). A
window of recent ones rather than the fastest ever, so the two clocks' drift (tens of ppm)
cannot build up over a long session.
"""

from __future__ import annotations

import collections

WINDOW = 8                  # PONGs considered: 16 s at one PING every 2 s
MAX_RTT_S = 10.0            # a PONG slower than this says nothing useful


class ClockOffset:
    """Device clock minus desktop clock, in seconds; None until a PONG arrived."""

    def __init__(self, window: int = WINDOW):
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)

    def add(self, t_sent: float, t_reply: float, t_received: float) -> None:
        """One round trip: our PING's ``t``, the device's ``t_reply``, and when the PONG arrived."""
        rtt = t_received - t_sent
        if 0 <= rtt <= MAX_RTT_S:
            self._samples.append((rtt, t_reply - (t_sent + t_received) / 2))

    @property
    def offset(self) -> float | None:
        return min(self._samples)[1] if self._samples else None

    @property
    def round_trip(self) -> float | None:
        """The round trip of the estimate in use: the offset is right to within half of it."""
        return min(self._samples)[0] if self._samples else None

    def to_desktop(self, device_time: float) -> float | None:
        """A device timestamp on the desktop's clock, or None while the offset is unknown."""
        offset = self.offset
        return None if offset is None else device_time - offset
