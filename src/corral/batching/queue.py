"""The batching policy and the bounded queue it works on. Pure Python, no I/O.

One :class:`BatchQueue` per model version. It holds *tickets* (one per request),
each with one or more inputs; it admits or refuses them (``max_queue``), drops
those whose deadline has passed, and decides when a batch goes and what is in it:

* a batch never holds more than ``max_size`` inputs; a ticket with more inputs
  than that is split across consecutive batches, in order;
* a batch goes when ``max_size`` inputs are waiting, or when the oldest has waited
  ``max_wait_ms``, or at once when no replica is busy (no needless wait at low
  load: with nothing in flight, waiting only adds latency);
* expired and cancelled tickets are never handed out, so they are never computed.

The clock is injected, so tests drive it by hand. Callers provide the locking.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Overloaded
from ..model import Batching

Clock = Callable[[], float]


@dataclass(eq=False)
class Ticket:
    """One request in the queue: its inputs, its deadline, and where results go."""

    inputs: list[Any]
    deadline: float
    enqueued_at: float = 0.0
    # Index of the next input not yet handed out in a batch.
    next_index: int = 0
    # The engine's own record of the request (where results go).
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
    """What one call to predict gets: slices of one or more tickets, in arrival order."""

    slices: list[Slice] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(s.stop - s.start for s in self.slices)

    def inputs(self) -> list[Any]:
        return [x for s in self.slices for x in s.inputs]


class BatchQueue:
    """A bounded FIFO of tickets and the rule that turns it into batches."""

    def __init__(self, policy: Batching, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._tickets: deque[Ticket] = deque()
        self._waiting = 0  # inputs not yet handed out, over all tickets

    def __len__(self) -> int:
        """Inputs waiting to be handed out."""
        return self._waiting

    def put(self, ticket: Ticket) -> None:
        """Admit a ticket, or raise Overloaded if its inputs do not fit."""
        n = len(ticket.inputs)
        if self._waiting + n > self.policy.max_queue:
            raise Overloaded(
                f"The queue holds {self._waiting} inputs and admits at most "
                f"{self.policy.max_queue}; retry later.",
                retry_after=1,
            )
        ticket.enqueued_at = self.clock()
        self._tickets.append(ticket)
        self._waiting += n

    def discard(self, ticket: Ticket) -> None:
        """Remove a cancelled or finished ticket's waiting inputs."""
        if ticket in self._tickets:
            self._tickets.remove(ticket)
            self._waiting -= ticket.remaining

    def drain(self) -> list[Ticket]:
        """Remove and return every waiting ticket (on shutdown or when the model fails)."""
        tickets = list(self._tickets)
        self._tickets.clear()
        self._waiting = 0
        return tickets

    def pop_expired(self) -> list[Ticket]:
        """Remove and return every waiting ticket whose deadline has passed."""
        now = self.clock()
        expired = [t for t in self._tickets if t.deadline <= now]
        for t in expired:
            self.discard(t)
        return expired

    def ready(self, busy_replicas: int) -> bool:
        """Whether a free replica should take a batch now."""
        if not self._tickets:
            return False
        if self._waiting >= self.policy.max_size or busy_replicas == 0:
            return True
        return self.clock() - self._tickets[0].enqueued_at >= self.policy.max_wait_ms / 1000.0

    def next_wakeup(self, busy_replicas: int, free_replicas: int = 1) -> float | None:
        """Seconds until something changes without new input: a batch falls due or a deadline passes.

        With no free replica, no batch can go, so only the nearest deadline counts.
        """
        if not self._tickets:
            return None
        now = self.clock()
        deadline = min(t.deadline for t in self._tickets)
        if free_replicas <= 0:
            return max(0.0, deadline - now)
        if self.ready(busy_replicas):
            return 0.0
        due = self._tickets[0].enqueued_at + self.policy.max_wait_ms / 1000.0
        return max(0.0, min(due, deadline) - now)

    def take(self) -> Batch:
        """Hand out up to ``max_size`` inputs, oldest first. Call when ready() says so."""
        batch = Batch()
        room = self.policy.max_size
        while room and self._tickets:
            ticket = self._tickets[0]
            n = min(room, ticket.remaining)
            batch.slices.append(Slice(ticket, ticket.next_index, ticket.next_index + n))
            ticket.next_index += n
            self._waiting -= n
            room -= n
            if ticket.remaining == 0:
                self._tickets.popleft()
        return batch
