"""Stop strings: end a sequence when its text contains one, and never show the stop string.

As in vLLM, the returned text stops right before the first stop string, and a streamed piece
never contains text that may turn out to be the start of a stop string: such a tail is held
back until the next piece decides it (then released, or dropped with the stop string). The
matcher works on text only, so anything with a detokenizer (llmirc.api, a server) can use it.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field


@dataclass
class StopStringMatcher:
    """Feed it the text of each new token; it says what may be shown and whether to stop."""

    stops: Seq[str]
    text: str = ""  # everything shown so far
    stopped: bool = False
    stop_string: str | None = None  # the stop string that ended it (the earliest in the text)
    _held: str = field(default="", repr=False)  # tail that might begin a stop string

    def feed(self, piece: str) -> str:
        """The part of `piece` (plus any held tail) that is safe to show now; sets `stopped`
        when a stop string is complete (the text before it is returned, the rest never)."""
        if self.stopped:
            return ""
        buf = self._held + piece
        found = min(((i, s) for s, i in ((s, buf.find(s)) for s in self.stops) if i >= 0), default=None)
        if found is not None:
            cut, self.stop_string = found
            self.stopped, self._held = True, ""
            return self._show(buf[:cut])
        keep = _longest_partial(buf, self.stops)
        self._held = buf[len(buf) - keep:] if keep else ""
        return self._show(buf[:len(buf) - keep])

    def flush(self) -> str:
        """At the end of a sequence that did not stop on a string: release the held tail."""
        held, self._held = ("", "") if self.stopped else (self._held, "")
        return self._show(held)

    def _show(self, s: str) -> str:
        self.text += s
        return s


def _longest_partial(text: str, stops: Seq[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
