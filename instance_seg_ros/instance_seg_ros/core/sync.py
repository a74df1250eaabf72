"""Stamp synchronization of several input streams, and a latest-wins mailbox (pure Python, no ROS).

:class:`StampSynchronizer` plays the role of message_filters' ApproximateTime policy for the node's
``image`` / ``depth`` / ``camera_info`` inputs: messages are queued per stream (bounded), a set is
emitted as soon as every stream holds a message within ``slop`` seconds of a message of the first
("pivot") stream, and unmatched messages age out. Per stream, stamps must increase: zero, duplicate
and out-of-order stamps raise :class:`StampError` (a ``ValueError``) with a ``reason`` key. A time base
that starts over (a looping rosbag, a restarted camera or simulation) resets the synchronizer instead:
it is recognised by a large jump back in time, by a message from another publisher (``source``) that is
older than the stream's previous one, or by a run of ``restart_after`` out-of-order messages whose
stamps increase among themselves (a new clock that started behind the old one).

:class:`LatestSlot` holds the newest matched set for one worker: ``put`` replaces what the worker
has not taken yet (counted as skipped), so latency stays bounded when frames arrive faster than
they are processed.

Both are thread-safe, and neither calls user code while holding its lock.

Example::

    sync = StampSynchronizer(("image", "depth", "camera_info"), slop=0.02, on_match=slot.put)
    sync.add("image", stamp_ns, msg)          # from each subscription callback
    frame = slot.take(timeout=0.5)            # in the worker
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["LatestSlot", "Matched", "StampError", "StampSynchronizer", "SyncStats"]

T = TypeVar("T")

_NS = 1_000_000_000


class StampError(ValueError):
    """A message's stamp cannot be used.

    Attributes:
        reason (str): ``zero_stamp``, ``duplicate_stamp`` or ``out_of_order_stamp`` (a diagnostics key).
        stream (str): the stream the message was added to.
    """

    def __init__(self, reason: str, stream: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.stream = stream


@dataclass(frozen=True)
class Matched:
    """One synchronized set.

    Attributes:
        stamp_ns (int): stamp of the pivot (first stream's) message, nanoseconds.
        msgs (tuple): one message per stream, in the synchronizer's stream order.
        stamps (tuple[int, ...]): each message's stamp, nanoseconds.
    """

    stamp_ns: int
    msgs: tuple[Any, ...]
    stamps: tuple[int, ...]

    def __getitem__(self, i: int) -> Any:
        return self.msgs[i]


@dataclass
class SyncStats:
    """Counters since construction (a snapshot; mutate freely).

    Attributes:
        received: messages accepted per stream.
        dropped: accepted messages that never became part of a set, per stream (aged out, queue full,
            or older than a set that was emitted).
        missing: per stream, how many dropped pivot messages found no partner on that stream within slop.
        rejected: refused messages per :class:`StampError` reason.
        matched: sets emitted.
        resets: time-base restarts that reset the synchronizer (see ``reset_reasons``).
        reset_reasons: resets per cause: ``jump_back`` (a large jump back in time), ``new_source`` (an older
            stamp from another publisher) and ``restarted_clock`` (a run of increasing out-of-order stamps).
    """

    received: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    resets: int = 0
    reset_reasons: dict[str, int] = field(default_factory=dict)


DropCallback = Callable[[str, int, tuple[str, ...]], None]
ResetCallback = Callable[[str, int, int, str], None]


class StampSynchronizer:
    """Match messages of several streams by stamp.

    A set is emitted as soon as each partner stream's choice is final: it holds a message stamped at
    or after the pivot (so nothing closer can come), or a newer pivot message has arrived (so waiting
    longer would add latency). With identical stamps on all streams (aligned depth, simulators) that
    is the moment the last of the three arrives.

    Args:
        streams: stream names; the first is the pivot (the color image): each emitted set carries
            one pivot message and, for every other stream, the message closest to it in time.
        slop: max stamp difference in seconds between the pivot and each partner (>= 0).
        queue_size: unmatched messages kept per stream (>= 1); the oldest is dropped beyond it.
        max_age: messages older than the newest stamp seen on any stream by more than this many
            seconds are dropped (>= 0).
        jump_back_reset: a stamp this many seconds older than its stream's previous one is taken as a
            time reset (bag loop, simulation restart): every queue is cleared and the message accepted.
        restart_after: this many consecutive out-of-order messages on one stream, with stamps increasing
            among themselves, are taken as a clock that started over behind the old one (a short bag
            looping, a camera restarted after a few seconds): the last of them resets the synchronizer and
            is accepted (>= 2). The earlier ones are rejected as ``out_of_order_stamp``.
        on_match: called with each :class:`Matched` set, outside the lock, in stamp order.
        on_drop: called as ``on_drop(stream, stamp_ns, missing_streams)`` for each dropped message,
            outside the lock; ``missing_streams`` names the partner streams that had no message within
            slop (pivot messages only, else empty).
        on_reset: called as ``on_reset(stream, previous_ns, stamp_ns, reason)`` after each reset, outside
            the lock; ``reason`` is a key of :attr:`SyncStats.reset_reasons`.

    Raises:
        ValueError: fewer than two or duplicate stream names, or an out-of-range setting.
    """

    def __init__(
        self,
        streams: Sequence[str],
        *,
        slop: float = 0.02,
        queue_size: int = 10,
        max_age: float = 1.0,
        jump_back_reset: float = 3.0,
        restart_after: int = 3,
        on_match: Callable[[Matched], None] | None = None,
        on_drop: DropCallback | None = None,
        on_reset: ResetCallback | None = None,
    ) -> None:
        streams = tuple(str(s) for s in streams)
        if len(streams) < 2 or len(set(streams)) != len(streams):
            raise ValueError(f"StampSynchronizer needs two or more distinct stream names, got {list(streams)}.")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}.")
        if not jump_back_reset > 0:
            raise ValueError(f"jump_back_reset must be a positive number of seconds, got {jump_back_reset}.")
        if int(restart_after) < 2:
            raise ValueError(f"restart_after must be at least 2 messages, got {restart_after}.")
        self._streams = streams
        self._index = {s: i for i, s in enumerate(streams)}
        self._queue_size = int(queue_size)
        self._slop_ns = 0
        self._max_age_ns = 0
        self.configure(slop=slop, max_age=max_age)
        self._jump_ns = int(round(jump_back_reset * _NS))
        self._restart_after = int(restart_after)
        self._on_match = on_match
        self._on_drop = on_drop
        self._on_reset = on_reset
        self._lock = threading.Lock()
        # per stream: deque of (stamp_ns, msg), stamps strictly increasing
        self._queues: list[deque[tuple[int, Any]]] = [deque() for _ in streams]
        self._last: list[int | None] = [None] * len(streams)
        self._source: list[Any] = [None] * len(streams)  # publisher of each stream's previous message
        # per stream: (count, newest stamp) of the current run of increasing out-of-order messages
        self._behind: list[tuple[int, int]] = [(0, 0)] * len(streams)
        self._newest = 0
        self._stats = SyncStats(
            received=dict.fromkeys(streams, 0), dropped=dict.fromkeys(streams, 0), missing=dict.fromkeys(streams, 0)
        )

    # ------------------------------------------------------------------ settings
    @property
    def streams(self) -> tuple[str, ...]:
        return self._streams

    @property
    def slop(self) -> float:
        return self._slop_ns / _NS

    @property
    def max_age(self) -> float:
        return self._max_age_ns / _NS

    def configure(self, *, slop: float | None = None, max_age: float | None = None) -> None:
        """Change ``slop`` and/or ``max_age`` (seconds) at run time."""
        if slop is not None:
            if not (slop >= 0 and slop < float("inf")):
                raise ValueError(f"slop must be a finite number of seconds >= 0, got {slop}.")
            self._slop_ns = int(round(slop * _NS))
        if max_age is not None:
            if not (max_age >= 0 and max_age < float("inf")):
                raise ValueError(f"max_age must be a finite number of seconds >= 0, got {max_age}.")
            self._max_age_ns = int(round(max_age * _NS))

    # ------------------------------------------------------------------ input
    def add(self, stream: str, stamp_ns: int, msg: Any, source: Any = None) -> list[Matched]:
        """Queue ``msg`` (stamped ``stamp_ns`` nanoseconds) on ``stream`` and emit every set that is complete.

        ``source`` optionally identifies the publisher (e.g. its GID, any hashable value): a message older
        than the stream's previous one that comes from another publisher than that one means the camera
        was restarted with its clock starting over, so the synchronizer resets instead of rejecting it.

        Returns:
            The sets emitted by this call (also passed to ``on_match``), oldest first.

        Raises:
            KeyError: ``stream`` is not one of the synchronizer's streams.
            StampError: the stamp is zero, equal to or (slightly) older than the stream's previous one.
        """
        if stream not in self._index:
            raise KeyError(f"Unknown stream '{stream}'; this synchronizer has {', '.join(self._streams)}.")
        i = self._index[stream]
        stamp = int(stamp_ns)
        matches: list[Matched] = []
        drops: list[tuple[str, int, tuple[str, ...]]] = []
        resets: list[tuple[str, int, int, str]] = []
        with self._lock:
            self._admit(i, stream, stamp, source, drops, resets)
            self._queues[i].append((stamp, msg))
            self._stats.received[stream] += 1
            self._newest = max(self._newest, stamp)
            self._age_out(drops)
            if len(self._queues[i]) > self._queue_size:
                old_stamp, _ = self._queues[i].popleft()
                drops.append(self._drop_record(i, old_stamp))
            self._match(matches, drops)
        for rec in drops:
            if self._on_drop is not None:
                self._on_drop(*rec)
        for rst in resets:
            if self._on_reset is not None:
                self._on_reset(*rst)
        for m in matches:
            if self._on_match is not None:
                self._on_match(m)
        return matches

    def reset(self) -> None:
        """Forget every queued message and the previous stamps (counters are kept)."""
        with self._lock:
            self._clear()

    def pending(self) -> dict[str, int]:
        """Messages currently queued per stream (bounded by ``queue_size``)."""
        with self._lock:
            return {s: len(q) for s, q in zip(self._streams, self._queues, strict=True)}

    def stats(self) -> SyncStats:
        """A snapshot of the counters."""
        with self._lock:
            s = self._stats
            return SyncStats(dict(s.received), dict(s.dropped), dict(s.missing), dict(s.rejected), s.matched,
                             s.resets, dict(s.reset_reasons))

    # ------------------------------------------------------------------ internals (lock held)
    def _clear(self) -> None:
        for q in self._queues:
            q.clear()
        self._last = [None] * len(self._streams)
        self._source = [None] * len(self._streams)
        self._behind = [(0, 0)] * len(self._streams)
        self._newest = 0

    def _admit(self, i: int, stream: str, stamp: int, source: Any, drops: list, resets: list) -> None:
        if stamp <= 0:
            self._reject("zero_stamp", stream, f"{stream} message has stamp {stamp} ns; the publisher must stamp "
                                               "its messages (header.stamp is zero or negative).")
        last = self._last[i]
        if last is not None and stamp <= last:
            why = None
            if last - stamp >= self._jump_ns:
                why = "jump_back"  # time went back a lot: a new recording or simulation run
            elif source is not None and self._source[i] is not None and source != self._source[i]:
                why = "new_source"  # another publisher, on its own clock: the camera was restarted
            elif stamp < last:
                count, prev = self._behind[i]
                count = count + 1 if count and stamp > prev else 1
                self._behind[i] = (count, stamp)
                if count >= self._restart_after:
                    why = "restarted_clock"  # a steady clock running behind the old one
            if why is not None:
                for j, q in enumerate(self._queues):
                    for old_stamp, _ in q:
                        self._stats.dropped[self._streams[j]] += 1
                        drops.append((self._streams[j], old_stamp, ()))
                self._clear()
                self._stats.resets += 1
                self._stats.reset_reasons[why] = self._stats.reset_reasons.get(why, 0) + 1
                resets.append((stream, last, stamp, why))
            elif stamp == last:
                self._reject("duplicate_stamp", stream, f"{stream} message repeats the previous stamp "
                                                        f"{_fmt(stamp)}; each message needs a new stamp.")
            else:
                self._reject("out_of_order_stamp", stream, f"{stream} message stamp {_fmt(stamp)} is older than "
                                                           f"the previous one {_fmt(last)}; messages arrived out of "
                                                           "order.")
        self._last[i] = stamp
        self._source[i] = source
        self._behind[i] = (0, 0)

    def _reject(self, reason: str, stream: str, message: str) -> None:
        self._stats.rejected[reason] = self._stats.rejected.get(reason, 0) + 1
        raise StampError(reason, stream, message)

    def _drop_record(self, i: int, stamp: int) -> tuple[str, int, tuple[str, ...]]:
        stream = self._streams[i]
        self._stats.dropped[stream] += 1
        missing: tuple[str, ...] = ()
        if i == 0:
            missing = tuple(self._streams[j] for j in range(1, len(self._streams))
                            if self._closest(j, stamp) is None)
            for s in missing:
                self._stats.missing[s] += 1
        return stream, stamp, missing

    def _age_out(self, drops: list) -> None:
        horizon = self._newest - self._max_age_ns
        for i, q in enumerate(self._queues):
            while q and q[0][0] < horizon:
                stamp, _ = q[0]
                drops.append(self._drop_record(i, stamp))
                q.popleft()

    def _closest(self, j: int, stamp: int) -> int | None:
        """Index in queue ``j`` of the message closest to ``stamp`` within slop, or None."""
        q = self._queues[j]
        if not q:
            return None
        stamps = [s for s, _ in q]
        k = bisect.bisect_left(stamps, stamp)
        best, best_d = None, self._slop_ns + 1
        for c in (k - 1, k):
            if 0 <= c < len(stamps):
                d = abs(stamps[c] - stamp)
                if d < best_d:
                    best, best_d = c, d
        return best

    def _match(self, matches: list[Matched], drops: list) -> None:
        pivot = self._queues[0]
        while True:
            found = None
            for p, (stamp, _) in enumerate(pivot):
                partners = [self._closest(j, stamp) for j in range(1, len(self._queues))]
                if any(c is None for c in partners):
                    continue
                # The closest partner is final once its stream has a message at or after the pivot (later
                # ones are farther away). Otherwise a closer one may still come: wait, but at most until
                # the next pivot message arrives.
                final = all(self._queues[j][-1][0] >= stamp for j in range(1, len(self._queues)))
                if final or p < len(pivot) - 1:
                    found = (p, partners)
                break
            if found is None:
                return
            p, partners = found
            # older pivots can no longer match (stamps increase per stream): they are dropped
            for _ in range(p):
                stamp, _m = pivot[0]
                drops.append(self._drop_record(0, stamp))
                pivot.popleft()
            stamp, msg = pivot.popleft()
            msgs, stamps = [msg], [stamp]
            for j, c in enumerate(partners, start=1):
                q = self._queues[j]
                for _ in range(c):  # partners older than the chosen one are superseded
                    old_stamp, _m = q.popleft()
                    drops.append(self._drop_record(j, old_stamp))
                s, m = q.popleft()
                msgs.append(m)
                stamps.append(s)
            self._stats.matched += 1
            matches.append(Matched(stamp, tuple(msgs), tuple(stamps)))


def _fmt(ns: int) -> str:
    return f"{ns // _NS}.{ns % _NS:09d} s"


class LatestSlot(Generic[T]):
    """A one-item mailbox between producers and one consumer: the newest item wins.

    ``put`` never blocks; an item that was not taken before the next ``put`` is discarded and counted
    in :attr:`skipped`. ``take`` blocks until an item is there, the timeout passes or the slot is closed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.put_count = 0
        self.taken = 0
        self.skipped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; returns True when it replaced an item nobody took (a skipped frame)."""
        with self._cond:
            replaced = self._full
            if replaced:
                self.skipped += 1
            self._item, self._full = item, True
            self.put_count += 1
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (removing it), or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            self.taken += 1
            return item

    def clear(self) -> bool:
        """Discard a waiting item (not counted as skipped); returns whether there was one."""
        with self._cond:
            had = self._full
            self._item, self._full = None, False
            return had

    def close(self) -> None:
        """Wake the consumer; later ``take`` calls return None at once (until :meth:`reopen`)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> bool:
        """Whether an item waits to be taken."""
        return self._full
