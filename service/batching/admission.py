"""Admission control per model: refuse at once what would only queue until it times out.

A request is admitted before it is decoded (so a shed request costs almost nothing) and leaves
when it is answered. A request that becomes several items of the model (an explanation's occluded
copies) is admitted with their count and weighs that many requests in every bound and in the
answer rate, so the bounds hold in items. Three bounds; any one sheds with 503 + Retry-After /
RESOURCE_EXHAUSTED:
- `max_requests` admitted at once (decoding, queued or computing): memory stays bounded;
- Little's law: at most (requests answered per second, over the last WINDOW_S of this busy
  period) x `max_wait_s` inside at once, never fewer than `floor`: an admitted request then
  waits about `max_wait_s` at most. A busy period starts when a request arrives after IDLE_GAP_S
  with nothing inside; until it is WINDOW_S old its rate is over its own length (at least
  MIN_SPAN_S), not over a window still half idle, and never below the rate the last period
  measured of its own, if that is under PRIOR_TTL_S old (a pause does not make the model
  slower). Over a half-idle window the rate was a fraction of the true one and refused the
  excess of every burst after a pause (imagenet-cnn, 32 clients on 2 gateway workers with a
  floor of 16 each: thousands of 503s a second, 2026-12-02). A request heavier than this
  limit is admitted when nothing else is inside (refused always, it could never run);
- `max_wait_s` itself: while the oldest admitted request has been inside longer than that, the
  model is not keeping up (or is stuck), so new requests are refused (the CoDel idea).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from service.core.errors import Overloaded

WINDOW_S = 2.0
IDLE_GAP_S = 0.25
MIN_SPAN_S = 0.25
MIN_ANSWERS = 8
"""A busy period with fewer answered items (or shorter than MIN_SPAN_S) tells no rate of its
own."""
PRIOR_TTL_S = 60.0
"""A rate measured longer ago than this is not carried into a new busy period."""


class Admission:
    def __init__(
        self,
        name: str,
        max_requests: int,
        max_wait_s: float,
        on_reject: Callable[[str], None] | None = None,
        floor: int = 64,
        request_scope: Callable[[], AbstractContextManager[object]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.max_requests = max_requests
        self.max_wait_s = max_wait_s
        self.on_reject = on_reject
        self.floor = floor
        self.request_scope = request_scope or nullcontext
        """Entered around each admitted request (the model's statistics scope its requests)."""
        # ticket -> (admitted at, items); insertion order = age order
        self._inside: dict[int, tuple[float, int]] = {}
        self._items = 0  # the items of every request inside
        self._multi: dict[int, int] = {}  # ticket -> items, of the requests of several items
        self._tickets = itertools.count()
        self._answered: deque[tuple[float, int]] = deque()  # (left at, items), oldest first
        self._answered_items = 0
        self.clock = clock
        self._busy_since = float("-inf")  # when this busy period began
        self._last_left = float("-inf")
        self._prior_rate = 0.0  # answers per second when the last busy period ended
        self._ending_rate = 0.0  # the latest rate a period measured of its own ...
        self._ending_at = float("-inf")  # ... and when

    def _own_rate(self, now: float) -> float:
        """Answered items per second in this busy period's last WINDOW_S."""
        while self._answered and self._answered[0][0] < now - WINDOW_S:
            self._answered_items -= self._answered.popleft()[1]
        span = min(WINDOW_S, max(MIN_SPAN_S, now - self._busy_since))
        return self._answered_items / span

    def rate(self, now: float) -> float:
        """The answer rate that admission counts on: this busy period's own, and while the
        period is younger than WINDOW_S at least the rate the last one measured."""
        rate = self._own_rate(now)
        return max(rate, self._prior_rate) if now - self._busy_since < WINDOW_S else rate

    def limit(self, now: float) -> int:
        """Items that may be inside at once (Little's law on the recent answer rate)."""
        rate = self.rate(now)
        return min(self.max_requests, max(self.floor, int(rate * self.max_wait_s)))

    @property
    def inside(self) -> int:
        """Items inside: each request's count (1 unless admitted with more)."""
        return self._items

    def oldest_wait(self, now: float | None = None) -> float:
        """Seconds the oldest admitted one-item request has been inside (0 when none). A
        request of many items is expected to take as long as they do, so it is no sign of a
        stall; the one-item requests behind it show one if there is."""
        for since, items in self._inside.values():  # oldest first
            if items == 1:
                return (now or self.clock()) - since
        return 0.0

    def _load_seen_by(self, items: int, limit: int) -> int:
        """The items inside as a new request of `items` weighs them against the wait limit: all
        of them for a request of many items; for a one-item request, each request of many counts
        at most half the limit, so that explanations slow other traffic down but never shut it
        out (it waits behind their items, as the batcher queues them)."""
        if items > 1 or not self._multi:
            return self._items
        cap = max(1, limit // 2)
        return self._items - sum(max(0, n - cap) for n in self._multi.values())

    @contextmanager
    def admit(self, items: int = 1) -> Iterator[None]:
        """Hold places for one request of `items` items (each weighs one request in every
        bound), or raise Overloaded."""
        if items < 1:
            raise ValueError(f"a request holds at least one item, not {items}")
        now = self.clock()
        if not self._inside and now - self._last_left > IDLE_GAP_S:  # a new busy period
            recent = now - self._ending_at < PRIOR_TTL_S
            self._prior_rate = self._ending_rate if recent else 0.0
            self._answered.clear()  # answers before the pause say nothing of the rate now
            self._answered_items = 0
            self._busy_since = now
        heavy = "" if items == 1 else f"; this request counts as {items}"
        if self._items + items > self.max_requests:
            self._refuse(
                "queue_full",
                f"model {self.name} has {self._items} requests in progress "
                f"(limit {self.max_requests}{heavy}); retry later",
            )
        limit = self.limit(now)
        if (
            self.max_wait_s > 0
            and self._inside
            and self._load_seen_by(items, limit) + items > limit
        ):
            also = "" if items == 1 else f" and this one, which counts as {items},"
            self._refuse(
                "queue_wait",
                f"model {self.name} is overloaded: {self._items} requests in progress{also} "
                f"would wait over {self.max_wait_s:g} s; retry later",
            )
        if self.max_wait_s > 0 and self.oldest_wait(now) > self.max_wait_s:
            self._refuse(
                "queue_wait",
                f"model {self.name} is overloaded: its oldest request has waited "
                f"{self.oldest_wait(now):.2f} s (limit {self.max_wait_s:g} s); retry later",
            )
        ticket = next(self._tickets)
        self._inside[ticket] = (now, items)
        self._items += items
        if items > 1:
            self._multi[ticket] = items
        try:
            with self.request_scope():
                yield
        finally:
            del self._inside[ticket]
            self._multi.pop(ticket, None)
            self._items -= items
            self._last_left = self.clock()
        # answered, not failed: the rate is capacity
        self._answered.append((self._last_left, items))
        self._answered_items += items
        enough = self._answered_items >= MIN_ANSWERS
        if enough and self._last_left - self._busy_since >= MIN_SPAN_S:
            self._ending_rate = self._own_rate(self._last_left)  # its own: a prior is not passed on
            self._ending_at = self._last_left

    def _refuse(self, reason: str, message: str) -> None:
        if self.on_reject is not None:
            self.on_reject(reason)
        raise Overloaded(message)
