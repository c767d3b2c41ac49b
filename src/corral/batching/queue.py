"""The batching policy and the bounded queue it works on. Pure Python, no I/O.

One :class:`BatchQueue` per model version. It holds *tickets* (one per request),
each with one or more inputs, in two lanes:

* **live**: requests someone is waiting on over HTTP. Bounded by ``max_queue``
  (beyond it, :class:`~corral.errors.Overloaded`).
* **background**: work nobody waits on (async jobs). Not counted against
  ``max_queue`` (its feeder bounds it), and ranked below live traffic: a background
  ticket competes as if it had arrived ``aging`` seconds later than it did, so it
  fills the room live requests leave in a batch, and one that has waited long
  enough still goes ahead of newer live requests: it never starves.

The queue admits or refuses tickets, drops those whose deadline has passed, and
decides when a batch goes and what is in it:

* a batch never holds more than ``max_size`` inputs; a ticket with more inputs
  than that is split across consecutive batches, in order; live and background
  tickets share batches;
* a batch goes when ``max_size`` inputs are waiting, or when the oldest has waited
  ``max_wait_ms``, or at once when no replica is busy (no needless wait at low
  load: with nothing in flight, waiting only adds latency);
* expired and cancelled tickets are never handed out, so they are never computed.

The clock is injected, so tests drive it by hand. Callers provide the locking.
"""

from __future__ import annotations

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


@dataclass(eq=False)
class Ticket:
    """One request in the queue: its inputs, its deadline, and where results go."""

    inputs: list[Any]
    deadline: float
    lane: Lane = "live"
    enqueued_at: float = 0.0
    # Index of the next input not yet handed out in a batch.
    next_index: int = 0
    queued: bool = False  # in a lane now (so discarding a ticket that is not costs nothing)
    # The owner's own record of the request (where results go).
    context: Any = None

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
        ticket.enqueued_at = self.clock()
        ticket.queued = True
        self._lanes[ticket.lane].append(ticket)
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

    def ready(self, busy_replicas: int) -> bool:
        """Whether a free replica should take a batch now."""
        oldest = self._oldest()
        if oldest is None:
            return False
        if len(self) >= self.policy.max_size or busy_replicas == 0:
            return True
        return self.clock() - oldest >= self.policy.max_wait_ms / 1000.0

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
        if self.ready(busy_replicas):
            return 0.0
        due = oldest + self.policy.max_wait_ms / 1000.0
        return max(0.0, min(due, deadline) - now)

    def _next_lane(self) -> Lane | None:
        live, background = self._lanes["live"], self._lanes["background"]
        if not background:
            return "live" if live else None
        if not live:
            return "background"
        aged = background[0].enqueued_at + self.aging
        return "background" if aged < live[0].enqueued_at else "live"

    def take(self) -> Batch:
        """Hand out up to ``max_size`` inputs, by rank. Call when ready() says so."""
        batch = Batch()
        room = self.policy.max_size
        while room:
            lane = self._next_lane()
            if lane is None:
                break
            ticket = self._lanes[lane][0]
            n = min(room, ticket.remaining)
            batch.slices.append(Slice(ticket, ticket.next_index, ticket.next_index + n))
            ticket.next_index += n
            self._waiting[lane] -= n
            room -= n
            if ticket.remaining == 0:
                self._lanes[lane].popleft()
                ticket.queued = False
        return batch
