"""The batching policy and the bounded queue it works on. Pure Python, no I/O.

One :class:`BatchQueue` per model version. It holds *tickets* (one per request),
each with one or more inputs, in two lanes:

* **live**: requests someone is waiting on over HTTP. Bounded by ``max_queue``
  (beyond it, :class:`~corral.errors.Overloaded`).
* **background**: work nobody waits on (async jobs). Not counted against
  ``max_queue`` (its feeder bounds it), and ranked below live traffic: a background
  ticket competes as if it had arrived ``aging`` seconds later than it did, so one
  that has waited long enough goes ahead of newer live requests: it never starves.

Background work uses capacity live traffic leaves idle, and on a CPU every input
in a batch costs time, so while live traffic is *active* (live requests wait, or one
arrived or was answered in the last ``LIVE_ACTIVE`` seconds):

* a batch that carries live inputs is not filled up with background ones (unless
  they have aged ahead of them);
* a batch of background inputs alone goes only to a replica that is not the last
  free one (the last is kept for live requests), or once its head has aged; on the
  last free replica it is cut to ``max_size // 8`` inputs, so a live request that
  arrives meanwhile waits little, and the rest of that ticket ranks anew (one such
  share per ticket per ``aging`` seconds).

When live traffic is quiet, background inputs go at once, in full batches. Aged
background inputs share batches with live ones.

The queue admits or refuses tickets, drops those whose deadline has passed, and
decides when a batch goes and what is in it:

* a batch never holds more than ``max_size`` inputs; a ticket with more inputs
  than that is split across consecutive batches, in order; live and background
  tickets share batches;
* a batch goes when ``max_size`` inputs are waiting, or when the oldest has waited
  ``max_wait_ms``, or at once when no replica is busy (no needless wait at low
  load: with nothing in flight, waiting only adds latency);
* expired and cancelled tickets are never handed out, so they are never computed;
* for a model that sizes its inputs (``Model.input_size``), a live batch holds requests
  of similar size: the oldest request always goes, and others join it nearest in size
  first, as long as the largest is at most ``size_ratio`` times the smallest. Requests
  of other sizes wait for a later batch, where they become the oldest in turn, so none
  waits forever; a padded sequence model then computes less padding per input. Such a
  batch is not filled with background inputs (they go once their aged rank beats the
  oldest live request, as above).

The clock is injected, so tests drive it by hand. Callers provide the locking.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import Overloaded
from ..model import Batching

Clock = Callable[[], float]
Lane = Literal["live", "background"]

# Seconds a background ticket is ranked behind a live one that arrived at the same time.
BACKGROUND_AGING = 1.0
# Live traffic counts as active this long after a live request arrived.
LIVE_ACTIVE = 0.1
# While it is, a batch of background inputs alone on the last free replica holds at most
# max_size // this.
BACKGROUND_SHARE = 8
# A batch of similar sizes is picked among the oldest this-many max_size's of requests.
SIZED_WINDOW = 4


@dataclass(eq=False)
class Ticket:
    """One request in the queue: its inputs, its deadline, and where results go."""

    inputs: list[Any]
    deadline: float
    lane: Lane = "live"
    enqueued_at: float = 0.0
    rank_at: float = 0.0  # when it counts as having arrived, for ranking (background re-ranks)
    # Index of the next input not yet handed out in a batch.
    next_index: int = 0
    queued: bool = False  # in a lane now (so discarding a ticket that is not costs nothing)
    # The owner's own record of the request (where results go).
    context: Any = None
    # The largest input_size() of its inputs, for models that declare one.
    size: float | None = None

    @property
    def remaining(self) -> int:
        return len(self.inputs) - self.next_index


@dataclass(frozen=True)
class Slice:
    """A contiguous run of one ticket's inputs inside a batch."""

    ticket: Ticket
    start: int
    stop: int

    @property
    def inputs(self) -> list[Any]:
        return self.ticket.inputs[self.start : self.stop]


@dataclass
class Batch:
    """What one call to predict gets: slices of one or more tickets."""

    slices: list[Slice] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(s.stop - s.start for s in self.slices)

    def inputs(self) -> list[Any]:
        return [x for s in self.slices for x in s.inputs]


class BatchQueue:
    """A bounded two-lane queue of tickets and the rule that turns it into batches."""

    def __init__(self, policy: Batching, clock: Clock = time.monotonic,
                 aging: float = BACKGROUND_AGING) -> None:
        self.policy = policy
        self.clock = clock
        self.aging = aging
        self._lanes: dict[Lane, deque[Ticket]] = {"live": deque(), "background": deque()}
        self._last_live = float("-inf")
        self._waiting: dict[Lane, int] = {"live": 0, "background": 0}

    def __len__(self) -> int:
        """Inputs waiting to be handed out, in both lanes."""
        return self._waiting["live"] + self._waiting["background"]

    def waiting(self, lane: Lane) -> int:
        """Inputs of one lane waiting to be handed out."""
        return self._waiting[lane]

    def _tickets(self) -> Iterator[Ticket]:
        yield from self._lanes["live"]
        yield from self._lanes["background"]

    def put(self, ticket: Ticket) -> None:
        """Admit a ticket, or raise Overloaded if a live ticket's inputs do not fit."""
        n = len(ticket.inputs)
        live = self._waiting["live"]
        if ticket.lane == "live" and live + n > self.policy.max_queue:
            raise Overloaded(
                f"The queue holds {live} inputs and admits at most "
                f"{self.policy.max_queue}; retry later.",
                retry_after=1,
            )
        ticket.enqueued_at = ticket.rank_at = self.clock()
        ticket.queued = True
        self._lanes[ticket.lane].append(ticket)
        if ticket.lane == "live":
            self._last_live = ticket.enqueued_at
        self._waiting[ticket.lane] += n

    def discard(self, ticket: Ticket) -> None:
        """Remove a cancelled or finished ticket's waiting inputs."""
        if ticket.queued:
            ticket.queued = False
            self._lanes[ticket.lane].remove(ticket)
            self._waiting[ticket.lane] -= ticket.remaining

    def drain(self) -> list[Ticket]:
        """Remove and return every waiting ticket (on shutdown or when the model fails)."""
        tickets = list(self._tickets())
        for ticket in tickets:
            ticket.queued = False
        for lane in self._lanes.values():
            lane.clear()
        self._waiting = {"live": 0, "background": 0}
        return tickets

    def pop_expired(self) -> list[Ticket]:
        """Remove and return every waiting ticket whose deadline has passed (one pass)."""
        now = self.clock()
        expired: list[Ticket] = []
        for name, lane in self._lanes.items():
            if not any(t.deadline <= now for t in lane):
                continue
            kept: deque[Ticket] = deque()
            for t in lane:
                if t.deadline <= now:
                    t.queued = False
                    self._waiting[name] -= t.remaining
                    expired.append(t)
                else:
                    kept.append(t)
            self._lanes[name] = kept
        return expired

    def _oldest(self) -> float | None:
        heads = [lane[0].enqueued_at for lane in self._lanes.values() if lane]
        return min(heads) if heads else None

    def live_answered(self) -> None:
        """A batch with live inputs was answered: clients in a closed loop send their next
        request now, so live traffic counts as active from here (not from their last
        arrival, which may be a long batch ago)."""
        self._last_live = self.clock()

    def live_active(self) -> bool:
        """Whether live requests wait, or one arrived or was answered in the last
        ``LIVE_ACTIVE`` seconds."""
        return bool(self._lanes["live"]) or self.clock() - self._last_live < LIVE_ACTIVE

    def _aged(self) -> bool:
        """Whether the head of the background lane ranks ahead of live traffic now."""
        background = self._lanes["background"]
        return bool(background) and background[0].rank_at + self.aging <= self.clock()

    def ready(self, busy_replicas: int, free_replicas: int = 1) -> bool:
        """Whether one of ``free_replicas`` free replicas should take a batch now."""
        if self._lanes["live"]:
            if self._waiting["live"] >= self.policy.max_size or busy_replicas == 0:
                return True
            return self.clock() - self._oldest_due() >= self.policy.max_wait_ms / 1000.0
        if not self._lanes["background"]:
            return False
        # Background alone goes at once (nobody waits on it to fill), unless it would take
        # the last free replica from active live traffic before it has aged.
        return free_replicas >= 2 or not self.live_active() or self._aged()

    def _oldest_due(self) -> float:
        live = self._lanes["live"]
        heads = [live[0].enqueued_at] if live else []
        if self._aged():
            heads.append(self._lanes["background"][0].rank_at)
        return min(heads)

    def next_wakeup(self, busy_replicas: int, free_replicas: int = 1) -> float | None:
        """Seconds until something changes without new input: a batch falls due or a deadline passes.

        With no free replica, no batch can go, so only the nearest deadline counts.
        """
        oldest = self._oldest()
        if oldest is None:
            return None
        now = self.clock()
        deadline = min(t.deadline for t in self._tickets())
        if free_replicas <= 0:
            return max(0.0, deadline - now)
        if self.ready(busy_replicas, free_replicas):
            return 0.0
        if self._lanes["live"]:
            due = self._oldest_due() + self.policy.max_wait_ms / 1000.0
        else:  # background held back: until live traffic goes quiet, or it ages
            due = min(self._last_live + LIVE_ACTIVE,
                      self._lanes["background"][0].rank_at + self.aging)
        return max(0.0, min(due, deadline) - now)

    def _next_lane(self) -> Lane | None:
        live, background = self._lanes["live"], self._lanes["background"]
        if not background:
            return "live" if live else None
        if not live:
            return "background"
        aged = background[0].rank_at + self.aging
        return "background" if aged < live[0].rank_at else "live"

    def take(self, free_replicas: int = 1) -> Batch:
        """Hand out up to ``max_size`` inputs, by rank. Call when ready() says so, with the
        number of free replicas counting the one that takes the batch."""
        if self._next_lane() == "live":
            head = self._lanes["live"][0]
            if head.size is not None and head.remaining < self.policy.max_size:
                return self._take_similar(head)
        batch = Batch()
        room = self.policy.max_size
        active = self.live_active()
        capped = active and free_replicas < 2  # the last free replica: a share at most
        background_room = max(1, room // BACKGROUND_SHARE) if capped else room
        has_live = False
        while room:
            lane = self._next_lane()
            if lane is None:
                break
            if lane == "background" and active and (
                    background_room == 0 or (has_live and not self._aged())):
                # No filling a live batch while live traffic is active; past its share,
                # background gives the rest of the batch to live requests.
                if not self._lanes["live"]:
                    break
                lane = "live"
            ticket = self._lanes[lane][0]
            n = min(room, ticket.remaining)
            shared = lane == "background" and capped
            if shared:
                n = min(n, background_room)
                background_room -= n
            has_live = has_live or lane == "live"
            batch.slices.append(Slice(ticket, ticket.next_index, ticket.next_index + n))
            ticket.next_index += n
            self._waiting[lane] -= n
            room -= n
            if ticket.remaining == 0:
                self._lanes[lane].popleft()
                ticket.queued = False
            elif shared:
                # Its share taken, the rest of it ranks as if it had just arrived (one share
                # per ``aging`` seconds while live traffic is active, not one per batch), at
                # the back of its lane, which stays in rank order.
                ticket.rank_at = self.clock()
                self._lanes[lane].rotate(-1)
        return batch

    def _take_similar(self, head: Ticket) -> Batch:
        """A live batch of whole requests of similar size around the oldest, ``head``.

        Only the oldest ``SIZED_WINDOW`` batches' worth of requests are looked at, so a
        long queue costs no more per batch than a short one.
        """
        live = self._lanes["live"]
        ratio = self.policy.size_ratio
        room = self.policy.max_size - head.remaining
        assert head.size is not None
        window = [live.popleft() for _ in range(min(len(live), SIZED_WINDOW * self.policy.max_size))]
        low = high = head.size
        chosen = {head}
        if room:
            anchor = math.log(head.size)
            others = sorted((t for t in window[1:] if t.size is not None),
                            key=lambda t: abs(math.log(t.size) - anchor))  # type: ignore[arg-type]
            for ticket in others:
                size = ticket.size
                assert size is not None
                if ticket.remaining > room or max(high, size) > ratio * min(low, size):
                    continue
                chosen.add(ticket)
                low, high = min(low, size), max(high, size)
                room -= ticket.remaining
                if not room:
                    break
        batch = Batch()
        for ticket in window:  # in arrival order, within the batch too
            if ticket in chosen:
                batch.slices.append(Slice(ticket, ticket.next_index, len(ticket.inputs)))
                self._waiting["live"] -= ticket.remaining
                ticket.next_index = len(ticket.inputs)
                ticket.queued = False
        live.extendleft(reversed([t for t in window if t not in chosen]))
        return batch
