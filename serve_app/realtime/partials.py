"""Partial transcripts that only grow: text is sent once two decodes of the growing turn
agree on it, and never taken back.

Each decode of the turn so far is split into units (words; single characters in scripts
written without spaces, such as Chinese). Past what was already sent, the units two
successive decodes share are confirmed and make the next delta, except the newest decode's
last unit, which may be a word the speaker is still saying (unless its audio ends in a
pause). Only what follows the sent text is compared: the sent words are fixed, so two
decodes that word them differently ("high in every" and "I'm every") may still agree on
what came next.

Units are compared without case and punctuation (a later decode often adds a comma), and
as one string cut where units end, so a word one decode splits ("grand father") agrees with
the same word whole in the next. When a decode words the sent part differently ("high"
heard again as "I'm"), what was sent is aligned to it and the delta goes on after the
aligned part, so the deltas keep following the speech instead of stopping at the first
disagreement.

Two decodes that differ on a word or two and go on alike for BRIDGE_RUN words past them
confirm those words too, with the newer decode's reading of the disputed ones (it heard
more of what follows them). Without that, one word the two decodes hear differently
("platform nine" and "platform I and") holds back every word after it until a third
decode agrees, and the deltas stall for two decodes or more.

A decode that finds nothing to agree on may be `overdue`: waiting for the next decode would
leave the speaker longer without a delta than the session allows (the session decides). The
newest decode alone then confirms its words past the sent text, all but its last one (the
word still being said), or all of them when the older decode heard the same words past the
sent text (the newer one heard more speech and no more words, so its last is whole).
Decodes mostly disagree on the older decode's last word, cut off mid-word; the words the
newer decode heard before its own last one had speech after them, and the final decode of
the turn is authoritative either way.

No delta says again, word for word, a run of REPEAT_RUN units that came before it in the
stretch. A decoder given the sent words as its start sometimes loops: it reads them a
second time, or starts the turn over ("The quick brown" + "fox jumps. The quick brown
fox"); an overdue send, or two decodes that loop alike, would otherwise make that loop
permanent. Such a delta is cut where the repeat begins; a phrase the speaker really said
twice comes with the turn's final decode.
"""

from __future__ import annotations

import difflib
import itertools
import re
import unicodedata

# A unit keeps the whitespace before it, so joining units gives the text back.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_UNIT = re.compile(rf"\s*(?:[{_CJK}]|[^\s{_CJK}]+)")


# How far the aligned end of the sent text may move against a plain count of units, unless
# at least ANCHOR_RUN units in a row match there: a long turn's final decode may word it with
# a few units more or fewer ("high in" for "9") and still end on the same words.
MAX_SHIFT = 2
ANCHOR_RUN = 3
# The most units, in either decode, that a disagreement bridged over may span, and how
# many units the two decodes must share after it (0 disputed units: never bridged).
MAX_DISPUTED = 2
BRIDGE_RUN = 2
# A run of this many units said again in a stretch is taken for a decoder's loop.
REPEAT_RUN = 4


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


def _matching_blocks(a: list[str], b: list[str]) -> list[difflib.Match]:
    """The runs of units two key lists share, in order (difflib's closing empty one left
    out)."""
    return [m for m in difflib.SequenceMatcher(None, a, b, autojunk=False)
            .get_matching_blocks() if m.size]


def _last_match(sent: list[str], keys: list[str]) -> tuple[int, int, int] | None:
    """Where the last run of units common to the sent keys and a decode's keys ends, in
    each, and its length (None when they share none)."""
    blocks = _matching_blocks(sent, keys)
    if not blocks:
        return None
    last = blocks[-1]
    return last.a + last.size, last.b + last.size, last.size


def _before_repeat(sent: list[str], new: list[str]) -> int:
    """How many of `new` come before a run of REPEAT_RUN units that already came earlier
    (in `sent` + `new`, ending before it starts); all of them when none does. A run that is
    itself a shorter run repeated ("no no no no") is speech, not a loop."""
    keys = sent + new
    seen: set[tuple[str, ...]] = set()
    for start in range(len(keys) - REPEAT_RUN + 1):
        if start >= REPEAT_RUN:  # runs that end before this one starts
            seen.add(tuple(keys[start - REPEAT_RUN:start]))
        run = tuple(keys[start:start + REPEAT_RUN])
        if start >= len(sent) and run in seen and not _periodic(run):
            return start - len(sent)
    # A decode that started the stretch over and was cut before a whole run: its last
    # units are the stretch's first ones. They wait for the next decode.
    tail = REPEAT_RUN - 1
    if (len(new) >= tail and len(keys) >= 2 * tail and keys[-tail:] == keys[:tail]
            and not _periodic(tuple(keys[:tail]))):
        return len(new) - tail
    return len(new)


def _periodic(run: tuple[str, ...]) -> bool:
    return any(all(run[i] == run[i - period] for i in range(period, len(run)))
               for period in range(1, len(run)))


def _bridged(earlier: list[str], newer: list[str], agreed: int) -> int:
    """How far two decodes agree when a few disputed units may be passed over: `agreed`
    (their common start, in `newer`'s units) moved past each dispute of at most
    MAX_DISPUTED units in each decode that BRIDGE_RUN shared units follow."""
    if MAX_DISPUTED == 0:
        return agreed
    earlier_end = 0  # where the agreement so far ends in `earlier`
    for block in _matching_blocks(earlier, newer):
        if block.b + block.size <= agreed:
            earlier_end = block.a + block.size
            continue
        skip = max(0, agreed - block.b)  # a block that began inside the agreed part
        start_a, start_b, size = block.a + skip, block.b + skip, block.size - skip
        disputed_earlier, disputed_newer = start_a - earlier_end, start_b - agreed
        if disputed_earlier < 0 or max(disputed_earlier, disputed_newer) > MAX_DISPUTED:
            break
        if earlier_end == 0 and disputed_earlier == 0 and disputed_newer:
            # Words only the newer decode has, right after the sent text: more often the
            # last sent word heard again as two ("I'm" as "I am") than a word the earlier
            # decode missed, and bridging would send it twice.
            break
        if disputed_earlier + disputed_newer and size < BRIDGE_RUN:
            break
        agreed, earlier_end = start_b + size, start_a + size
    return agreed


class StableText:
    """Deltas of one stretch of speech from successive decodes of it."""

    def __init__(self, follows_text: bool = False) -> None:
        self._previous: list[str] = []  # the last decode's units, compared as keys
        self.sent: list[str] = []  # units already sent as deltas
        # Text of the same turn was sent before this stretch (a long turn's sealed part):
        # the stretch's first words are joined to it by a space, as a file's chunks are.
        self._follows_text = follows_text

    @property
    def sent_text(self) -> str:
        return "".join(self.sent)

    def update(self, text: str, ends_in_pause: bool = False, overdue: bool = False) -> str:
        """The delta a new decode allows ("" when nothing new is confirmed).

        `ends_in_pause`: the decode's audio ends after the speaker stopped, so its last
        word is whole and may be confirmed too. `overdue`: a delta is due now, so when the
        two decodes agree on nothing, this one's words are confirmed on its own reading."""
        current = units(text)
        keys = [_key(u) for u in current]
        previous, self._previous = self._previous, keys
        start = self._after_sent(keys)
        candidates = keys[start:] if ends_in_pause else keys[start:-1]
        earlier = previous[self._after_sent(previous):]
        agreed = _bridged(earlier, candidates, _common_prefix(earlier, candidates))
        if not agreed and overdue:
            rest = keys[start:]
            # Two decodes that end alike though the newer heard more speech: its last word
            # is whole (the model did not hear the next one yet).
            agreed = len(rest) if rest == earlier else len(candidates)
        agreed = _before_repeat([_key(u) for u in self.sent], keys[start:start + agreed])
        if not agreed:
            return ""
        return self._send(current[start:start + agreed])

    def finish(self, text: str) -> str:
        """What the final decode adds after the part already sent."""
        final = units(text)
        return self._send(final[self._after_sent([_key(u) for u in final]):])

    def covered_by(self, text: str) -> int:
        """How many sent units a decode of the stretch's start covers: its end aligned to
        the sent units, not counted, since a decode that leaves out a phrase is shorter."""
        keys = [_key(u) for u in units(text)]
        sent = [_key(u) for u in self.sent]
        match = _last_match(sent, keys)
        if match is None:
            return min(len(keys), len(sent))
        sent_end, decode_end, _ = match
        # The decode's units after its last match stand for as many sent units.
        return min(sent_end + len(keys) - decode_end, len(sent))

    def rest_after(self, kept: int, follows_text: bool) -> StableText:
        """This stretch without its first `kept` units (set aside as a sealed part): what
        was sent past them goes on, and so does the last decode's text past them, so the
        next decode can agree with it at once."""
        rest = StableText(follows_text)
        rest.sent, rest._previous = self.sent[kept:], self._previous[kept:]
        return rest

    def _after_sent(self, keys: list[str]) -> int:
        """Where, in a decode's units, the text already sent ends."""
        sent = [_key(u) for u in self.sent]
        if not sent:
            return 0
        same = _common_prefix(sent, keys)
        if "".join(keys[:same]) == "".join(sent):
            return same
        fallback = min(len(sent), len(keys))
        match = _last_match(sent, keys)
        if match is None:
            return fallback
        sent_end, decode_end, run = match
        # Trusted only near the end of what was sent, and about as far into this decode
        # unless a run of words anchors it: a lone common word ("the") far ahead would skip
        # words that were never sent.
        shifted = abs(decode_end - sent_end) > MAX_SHIFT
        if sent_end < len(sent) - MAX_SHIFT or (shifted and run < ANCHOR_RUN):
            return fallback
        # Sent units after the last match stand for as many units of this decode.
        return min(decode_end + len(sent) - sent_end, len(keys))

    def _send(self, new: list[str]) -> str:
        delta = "".join(new)
        if not self.sent and delta.strip():
            delta = (" " if self._follows_text else "") + delta.lstrip()
        self.sent.extend(new)
        return delta
