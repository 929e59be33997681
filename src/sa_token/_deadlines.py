"""The deadline heap: when to call what. A data structure with invariants, and nothing else:
no thread, no lock (its owner's lock guards it), no clock (times are whatever the owner says).

* An entry may have a **slot** (any hashable object: a source, a keeper). A slot has at most
  one live entry: pushing again for the same slot replaces it, `cancel` drops it.
* A replaced or cancelled entry stays in the heap, skipped when it comes up, until it is popped
  or compacted away: compaction runs once the dead entries outnumber the live ones (and are at
  least `COMPACT_MIN`), so the heap never grows with the rate of re-reads.
* `pop_due(now)` returns the functions of every live entry due at ``now``, earliest first (ties
  in the order pushed).
* A slot may be **shared** by several users (an object with a ``users`` count: a
  `sa_token._tokenfile.FileView`): `occupy` counts one more, `vacate` one less and cancels the
  entry once none is left; a shared slot nobody uses gets no entry (`push` only cancels).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Callable, Optional

__all__ = ["COMPACT_MIN", "Deadlines"]

# Compact once replaced entries outnumber the live ones (and are this many): each re-read
# replaces its source's entry, so without it the heap would grow with the read rate (a kubelet
# rotating every 5 ms left ~700 dead entries, 120 KB, per 4 s), freed only when due.
COMPACT_MIN = 64

Fire = Callable[[], None]


class Deadlines:
    """A heap of ``(due, fire)`` entries, at most one live entry per slot."""

    __slots__ = ("_compact_min", "_dead", "_heap", "_seq", "_slots")

    def __init__(self, *, compact_min: int = COMPACT_MIN) -> None:
        self._compact_min = compact_min  # smaller in tests, so that compaction is reached
        # (due, seq, fire, slot): an entry with a slot is live while _slots[slot] is its seq.
        self._heap: list[tuple[float, int, Fire, Optional[object]]] = []
        self._slots: dict[object, int] = {}
        self._dead = 0  # entries in the heap that are replaced or cancelled
        self._seq = itertools.count()  # tells a slot's live entry apart; orders ties

    def push(self, due: float, fire: Fire, slot: Optional[object] = None) -> None:
        """Call ``fire`` at ``due``; with ``slot``, instead of the slot's entry. An infinite
        ``due`` (or a shared slot nobody uses) only cancels the slot's entry."""
        if slot is not None:
            self.cancel(slot)
            if getattr(slot, "users", 1) == 0:
                return
        if due == math.inf:
            return
        seq = next(self._seq)
        if slot is not None:
            self._slots[slot] = seq
        heapq.heappush(self._heap, (due, seq, fire, slot))

    def occupy(self, slot: object) -> bool:
        """One more user of a shared slot; returns whether it had none (no entry: plan it)."""
        slot.users += 1  # type: ignore[attr-defined]
        return slot.users == 1  # type: ignore[attr-defined, no-any-return]

    def vacate(self, slot: object) -> None:
        """A user of ``slot`` is gone: cancel its entry, once no user is left (a plain slot
        has one user)."""
        users: Optional[int] = getattr(slot, "users", None)
        if users is not None:
            users = slot.users = max(0, users - 1)  # type: ignore[attr-defined]
        if not users:
            self.cancel(slot)

    def cancel(self, slot: object) -> None:
        """Drop the slot's entry, if any: it will not fire."""
        if self._slots.pop(slot, None) is None:
            return
        self._dead += 1
        self._compact()

    def _compact(self) -> None:
        """Drop the dead entries once they outnumber the live ones (and are `COMPACT_MIN`)."""
        if self._dead >= self._compact_min and 2 * self._dead > len(self._heap):
            slots = self._slots
            self._heap = [e for e in self._heap if e[3] is None or slots.get(e[3]) == e[1]]
            heapq.heapify(self._heap)
            self._dead = 0

    def pop_due(self, now: float) -> list[Fire]:
        """Remove and return what is due at ``now`` (``due <= now``), earliest first."""
        due: list[Fire] = []
        heap, slots = self._heap, self._slots
        while heap and heap[0][0] <= now:
            _, seq, fire, slot = heapq.heappop(heap)
            if slot is not None:
                if slots.get(slot) != seq:
                    self._dead -= 1  # replaced or cancelled since
                    continue
                del slots[slot]
            due.append(fire)
        if due:
            self._compact()  # the live entries popped may leave the dead ones the majority
        return due

    def next_due(self) -> float:
        """When the earliest entry is due (maybe a dead one: waking for it is harmless);
        ``inf`` when there is none."""
        return self._heap[0][0] if self._heap else math.inf

    def __len__(self) -> int:
        """Live entries."""
        return len(self._heap) - self._dead

    @property
    def size(self) -> int:
        """Entries in the heap, dead ones included (for tests and benchmarks)."""
        return len(self._heap)

    def due_of(self, slot: object) -> Optional[float]:
        """When the slot's entry is due, ``None`` without one (for tests; O(n))."""
        seq = self._slots.get(slot)
        if seq is None:
            return None
        return next(e[0] for e in self._heap if e[1] == seq)
