"""Partial transcripts that only grow: text is sent once two decodes of the growing turn
agree on it, and never taken back.

Each decode of the turn so far is split into units (words; single characters in scripts
written without spaces, such as Chinese). The units two successive decodes share from the
start are confirmed, except the newest decode's last unit, which may be a word the speaker
is still saying. Confirmed units past what was already sent make the next delta.

Units are compared without case and punctuation (a later decode often adds a comma), and
as one string cut where units end, so a word one decode splits ("grand father") agrees with
the same word whole in the next. When a decode words the sent part differently ("high"
heard again as "I'm"), what was sent is aligned to it and the delta goes on after the
aligned part, so the deltas keep following the speech instead of stopping at the first
disagreement.
"""

from __future__ import annotations

import difflib
import itertools
import re
import unicodedata

# A unit keeps the whitespace before it, so joining units gives the text back.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_UNIT = re.compile(rf"\s*(?:[{_CJK}]|[^\s{_CJK}]+)")


# How far the aligned end of the sent text may move against a plain count of units.
MAX_SHIFT = 2


def units(text: str) -> list[str]:
    return _UNIT.findall(text)


def _key(unit: str) -> str:
    return "".join(c for c in unit.strip().casefold()
                   if not unicodedata.category(c).startswith("P"))


def _common_prefix(reference: list[str], keys: list[str]) -> int:
    """How many of `keys` spell the start of `reference`, ending where one of its units
    ends: units compared as one string, so a word split in two by one decode ("grand
    father") agrees with the same word whole in another."""
    reference_text = "".join(reference)
    boundaries = set(itertools.accumulate(len(k) for k in reference))
    agreed, spelled = 0, ""
    for count, key in enumerate(keys, start=1):
        spelled += key
        if not reference_text.startswith(spelled):
            break
        if len(spelled) in boundaries:
            agreed = count
    return agreed


class StableText:
    """Deltas of one stretch of speech from successive decodes of it."""

    def __init__(self, follows_text: bool = False) -> None:
        self._previous: list[str] = []
        self.sent: list[str] = []  # units already sent as deltas
        # Text of the same turn was sent before this stretch (a long turn's sealed part):
        # the stretch's first words are joined to it by a space, as a file's chunks are.
        self._follows_text = follows_text

    @property
    def sent_text(self) -> str:
        return "".join(self.sent)

    def update(self, text: str) -> str:
        """The delta a new decode allows ("" when nothing new is confirmed)."""
        current = units(text)
        keys = [_key(u) for u in current]
        agreed = _common_prefix(self._previous, keys[:-1])
        self._previous = keys
        start = self._after_sent(keys)
        if agreed <= start:
            return ""
        return self._send(current[start:agreed])

    def finish(self, text: str) -> str:
        """What the final decode adds after the part already sent."""
        final = units(text)
        return self._send(final[self._after_sent([_key(u) for u in final]):])

    def _after_sent(self, keys: list[str]) -> int:
        """Where, in a decode's units, the text already sent ends."""
        sent = [_key(u) for u in self.sent]
        if not sent:
            return 0
        same = _common_prefix(sent, keys)
        if "".join(keys[:same]) == "".join(sent):
            return same
        blocks = [b for b in difflib.SequenceMatcher(None, sent, keys, autojunk=False)
                  .get_matching_blocks() if b.size]
        fallback = min(len(sent), len(keys))
        if not blocks:
            return fallback
        last = blocks[-1]
        sent_end, decode_end = last.a + last.size, last.b + last.size
        # Trusted only near the end of what was sent and about as far into this decode: a
        # lone common word ("the") far ahead would skip words that were never sent.
        if sent_end < len(sent) - MAX_SHIFT or abs(decode_end - sent_end) > MAX_SHIFT:
            return fallback
        # Sent units after the last match stand for as many units of this decode.
        return min(decode_end + len(sent) - sent_end, len(keys))

    def _send(self, new: list[str]) -> str:
        delta = "".join(new)
        if not self.sent and delta.strip():
            delta = (" " if self._follows_text else "") + delta.lstrip()
        self.sent.extend(new)
        return delta
