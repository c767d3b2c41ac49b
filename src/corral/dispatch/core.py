"""The dispatch core: every model's queue, its replicas and its state. Pure, no I/O.

One :class:`DispatchCore` is the whole of dispatching for both modes:

* in process mode the dispatcher process (:mod:`corral.process.dispatcher`) feeds it
  the messages it reads from its sockets and sends what it asks to send;
* in in-process mode (:mod:`corral.inprocess.engine`) the same messages travel
  through memory between request threads, replica threads and the core.

It takes messages (:class:`Submit`, :class:`Cancel` from clients; :class:`Hello`,
:class:`Done` from replicas), replica deaths, configuration changes and the
passing of time (:meth:`tick`, with an injected clock), and answers with effects
collected in :attr:`effects`: messages to send to a peer (:class:`Send`) and
processes to kill (:class:`Kill`). Peers are opaque hashable ids chosen by the
transport. Each model has its own :class:`BatchQueue` and replicas: nothing one
model does (a replica stuck in predict, crashing, or never loading) holds up
another's queue.

A request is admitted or refused at once (unknown, unloaded, failed or loading
model; queue full); once queued it is answered exactly once: its outputs, a
model's error, 504 when its deadline passes before a batch takes it, 502 when the
replica computing it dies. A replica holds one batch at a time, so the core
always knows what each one holds.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..batching.queue import Batch, BatchQueue, Clock, Lane, Ticket
from ..errors import (
    CorralError,
    InternalError,
    InvalidInput,
    ModelFailed,
    ModelNotFound,
    ModelUnloaded,
    Overloaded,
    RequestTimeout,
    WorkerCrashed,
    error_from_dict,
)
from ..model import Batching
from ..transport.protocol import (
    Cancel,
    Done,
    Failure,
    Hello,
    Message,
    ProtocolError,
    Result,
    Stop,
    Submit,
    Work,
)
from .status import ModelStatus

logger = logging.getLogger(__name__)

Peer = Hashable
# How long an idle replica known to have loaded (before this core started) has to say so.
HELLO_GRACE = 3.0
MAX_REPLICAS = 64  # per model version


@dataclass(frozen=True)
class ModelConfig:
    """What the core needs to know of one model version (never its code)."""

    key: str  # "name:version"
    batching: Batching
    replicas: int  # wanted; 0 means unloaded


@dataclass(frozen=True)
class Send:
    """Effect: send ``msg`` to ``to``."""

    to: Peer
    msg: Message


@dataclass(frozen=True)
class Kill:
    """Effect: kill the replica process ``pid`` (it is hung)."""

    pid: int


Effect = Send | Kill


@dataclass(eq=False)
class _Request:
    """A client's request while the core holds it."""

    client: Peer
    id: int
    model: str
    outputs: list[bytes | None]
    filled: int = 0  # inputs with an output or an error
    errors: list[dict[str, Any]] = field(default_factory=list)  # inputs that failed alone
    request_id: str = ""
    batch: int = 0  # largest batch that computed part of it
    finished: bool = False


@dataclass(eq=False)
class _Replica:
    peer: Peer
    index: int
    pid: int
    state: str = "loading"
    batch: tuple[int, Batch] | None = None
    batch_deadline: float = 0.0  # the latest deadline in the batch it holds
    killed: bool = False  # the watchdog asked for its death
    leaving: bool = False  # told to Stop


@dataclass(eq=False)
class _Model:
    config: ModelConfig
    queue: BatchQueue
    replicas: dict[Peer, _Replica] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # replica index -> why it gave up
    # Replica indices that had loaded before this core started, until they say hello.
    expected: dict[int, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.config.key

    def _taking_work(self) -> Iterator[_Replica]:
        return (r for r in self.replicas.values() if r.state == "ready" and not r.leaving)

    def ready(self) -> list[_Replica]:
        return list(self._taking_work())

    def serving(self) -> bool:
        """Whether :meth:`ready` would not be empty, without building it."""
        return next(self._taking_work(), None) is not None

    def busy(self) -> int:
        return sum(1 for r in self.replicas.values() if r.batch is not None)

    def status(self, now: float) -> ModelStatus:
        self.expected = {i: until for i, until in self.expected.items() if until > now}
        wanted = self.config.replicas
        # Replicas that loaded before a restarted core began count until they say hello.
        expected = sum(1 for i, until in self.expected.items() if until > now and i < wanted)
        ready = len(self.ready()) + expected
        if wanted == 0:
            return ModelStatus("unloaded", 0, 0)
        if ready:
            return ModelStatus("ready", ready, wanted)
        failed = [e for i, e in self.failed.items() if i < wanted]
        if len(failed) >= wanted:
            return ModelStatus("failed", 0, wanted, failed[0])
        return ModelStatus("loading", 0, wanted)


def _fits(batch: Batch, msg: Done) -> bool:
    """Whether a replica's Done has the shape of the batch it was given."""
    if len(msg.outcomes) != len(batch.slices):
        return False
    frames = 0
    for piece, outcome in zip(batch.slices, msg.outcomes):
        size = piece.stop - piece.start
        if "ok" in outcome:
            if outcome["ok"] != size:
                return False
            frames += size
        elif "items" in outcome:
            items = outcome["items"]
            if not isinstance(items, list) or len(items) != size or not all(
                    e is None or isinstance(e, dict) for e in items):
                return False
            frames += sum(1 for e in items if e is None)
        elif not isinstance(outcome.get("error"), dict):
            return False
    return frames == len(msg.outputs)


class DispatchCore:
    """Queues, batches and replica bookkeeping for a set of model versions."""

    def __init__(self, configs: Iterable[ModelConfig], clock: Clock = time.monotonic,
                 stall_grace: float = 30.0,
                 on_batch: Callable[[str, Batch, float], None] | None = None) -> None:
        self.clock = clock
        # A replica still in predict() this long after the last deadline of its batch is
        # hung: every client has had its 504, so it is killed and replaced.
        self.stall_grace = stall_grace
        self.on_batch = on_batch
        self.models: dict[str, _Model] = {}
        self.requests: dict[tuple[Peer, int], Ticket] = {}
        self.effects: list[Effect] = []
        self.stopping = False
        # Batch ids differ between cores, so that a Done from before a restart never
        # matches a batch of this one.
        self._batch_ids = itertools.count(random.randrange(1 << 40))
        self._replica_model: dict[Peer, _Model] = {}
        for config in configs:
            self.configure(config)

    # -- configuration ----------------------------------------------------------------

    def configure(self, config: ModelConfig, retry: bool = False,
                  failed: dict[int, str] | None = None) -> None:
        """Add a model, or change how many replicas it wants (0: unload).

        ``retry`` forgets the replicas that gave up loading, so new ones may try again;
        ``failed`` records slots given up on elsewhere (a replica that died loading).
        Replicas beyond the wanted count are told to stop once their batch is done.
        Unloading fails what is queued with ModelUnloaded.
        """
        if not 0 <= config.replicas <= MAX_REPLICAS:
            raise InvalidInput(f"replicas must be between 0 and {MAX_REPLICAS}; got "
                               f"{config.replicas}.")
        model = self.models.get(config.key)
        if model is None:
            model = self.models[config.key] = _Model(config, BatchQueue(config.batching,
                                                                        self.clock))
        model.config = config
        model.queue.policy = config.batching
        if retry:
            model.failed.clear()
        model.failed.update(failed or {})
        for replica in list(model.replicas.values()):
            if replica.index >= config.replicas:
                self._release(model, replica)
        if config.replicas == 0:
            for ticket in model.queue.drain():
                self._fail(ticket, ModelUnloaded(f"Model {model.key} was unloaded."))
        elif model.status(self.clock()).state == "failed":
            for ticket in model.queue.drain():
                self._fail(ticket, ModelFailed(f"Model {model.key} failed to load: "
                                               f"{model.status(self.clock()).error}"))

    def expect(self, key: str, indices: Iterable[int], failed: dict[int, str]) -> None:
        """What a restarted dispatcher knows from before: replicas that had loaded
        (queue for them until they say hello) and replicas that gave up loading.

        An idle replica says hello within a second; a busy one when its batch is done,
        which is at most the model's timeout plus the stall grace away (or it is killed).
        """
        model = self.models[key]
        until = self.clock() + model.config.batching.timeout + self.stall_grace + HELLO_GRACE
        model.expected = {i: until for i in indices}
        model.failed.update(failed)

    def status(self, key: str) -> ModelStatus:
        return self.models[key].status(self.clock())

    def statuses(self) -> dict[str, ModelStatus]:
        now = self.clock()
        return {key: model.status(now) for key, model in self.models.items()}

    def depth(self, key: str) -> int:
        """Inputs waiting in one model version's queue."""
        return len(self.models[key].queue)

    def depths_by_name(self) -> dict[str, int]:
        """Inputs waiting, summed over the versions of each model (the metric's label)."""
        by_name: dict[str, int] = {}
        for key, model in self.models.items():
            name = key.rpartition(":")[0]
            by_name[name] = by_name.get(name, 0) + len(model.queue)
        return by_name

    def expecting(self) -> bool:
        """Whether some replica that loaded before this core started has yet to say hello."""
        return any(model.expected for model in self.models.values())

    def replica_pid(self, peer: Peer) -> int | None:
        model = self._replica_model.get(peer)
        return model.replicas[peer].pid if model is not None else None

    def stop(self) -> None:
        """Refuse new requests, fail the queued ones and release every replica (shutting
        down): each is told to Stop once it holds no batch."""
        self.stopping = True
        for model in self.models.values():
            for replica in list(model.replicas.values()):
                self._release(model, replica)
            for ticket in model.queue.drain():
                self._fail(ticket, Overloaded(f"Model {model.key} is shutting down; retry.",
                                              retry_after=1))

    # -- messages ---------------------------------------------------------------------

    def handle(self, peer: Peer, msg: Message) -> None:
        """One message from a client or a replica. ProtocolError if it makes no sense."""
        if isinstance(msg, Submit):
            self.submit(peer, msg)
        elif isinstance(msg, Cancel):
            ticket = self.requests.pop((peer, msg.id), None)
            if ticket is not None:
                ticket.context.finished = True
                self.models[ticket.context.model].queue.discard(ticket)
        elif isinstance(msg, Hello):
            self.hello(peer, msg)
        elif isinstance(msg, Done):
            self.done(peer, msg)
        else:
            raise ProtocolError(f"{type(msg).__name__} is not for the dispatcher")

    def submit(self, client: Peer, msg: Submit) -> None:
        model = self.models.get(msg.model)
        refusal = self._refusal(model, msg)
        if refusal is None:
            assert model is not None
            req = _Request(client, msg.id, model.key, [None] * len(msg.inputs),
                           request_id=msg.request_id[:128])
            lane: Lane = "background" if msg.lane == "background" else "live"
            ticket = Ticket(msg.inputs, msg.deadline, lane=lane, context=req, size=msg.size)
            try:
                model.queue.put(ticket)
            except Overloaded as exc:
                refusal = exc
            else:
                self.requests[(client, msg.id)] = ticket
                self._dispatch(model)
                return
        self.effects.append(Send(client, Failure(id=msg.id, error=refusal.to_dict())))

    def _refusal(self, model: _Model | None, msg: Submit) -> CorralError | None:
        if model is None:
            return ModelNotFound(f"No model {msg.model} in this dispatcher.")
        if self.stopping:
            return Overloaded(f"Model {model.key} is shutting down; retry.", retry_after=1)
        if not msg.inputs:
            return InternalError("A request with no inputs reached the dispatcher.")
        if msg.lane not in ("live", "background"):
            return InternalError(f"A request in an unknown lane {msg.lane!r}.")
        if model.config.replicas and model.serving():
            return None  # the common case, without building the whole status
        return model.status(self.clock()).refusal(model.key)

    # -- replicas ---------------------------------------------------------------------

    def hello(self, peer: Peer, msg: Hello) -> None:
        model = self._register(peer, msg)
        if model is not None:
            self._dispatch(model)

    def _register(self, peer: Peer, msg: Hello) -> _Model | None:
        """Record a replica's state; None if it was told to stop instead."""
        model = self.models.get(msg.model)
        if model is None or msg.replica < 0:
            raise ProtocolError(f"hello from replica {msg.replica} of unknown model {msg.model!r}")
        replica = model.replicas.get(peer)
        if replica is None:
            # A new process for this slot replaces an earlier one (one leaving may finish).
            for old in [r for r in model.replicas.values()
                        if r.index == msg.replica and not r.leaving]:
                self.replica_gone(old.peer, "was replaced")
            replica = _Replica(peer, msg.replica, msg.pid)
            model.replicas[peer] = replica
            self._replica_model[peer] = model
        if msg.state in ("ready", "failed"):
            model.expected.pop(msg.replica, None)
        replica.state = msg.state
        if msg.state == "retiring" and msg.replica < model.config.replicas:
            # Recycled after its max_requests: its slot counts as ready until the fresh
            # replica is (requests queue for it rather than being refused as loading).
            model.expected[msg.replica] = (self.clock() + model.config.batching.timeout
                                           + HELLO_GRACE)
        if msg.replica >= model.config.replicas or self.stopping or msg.state == "retiring":
            self._release(model, replica)
            return None
        if msg.state == "ready":
            model.failed.pop(msg.replica, None)
        elif msg.state == "failed":
            model.failed[msg.replica] = msg.error or "load() failed"
            if model.status(self.clock()).state == "failed":
                for ticket in model.queue.drain():
                    self._fail(ticket, ModelFailed(f"Model {model.key} failed to load: "
                                                   f"{msg.error}"))
        return model

    def done(self, peer: Peer, msg: Done) -> None:
        if peer not in self._replica_model:  # a replica that outlived an earlier core
            self._register(peer, Hello(model=msg.model, replica=msg.replica, pid=msg.pid,
                                       state="ready"))
        model = self._replica_model.get(peer)
        replica = model.replicas.get(peer) if model is not None else None
        if model is None or replica is None:
            return
        if replica.batch is None or replica.batch[0] != msg.batch:
            self._dispatch(model)  # a batch from before this core started: it is free now
            return
        _, batch = replica.batch
        replica.batch = None
        if any(piece.ticket.lane == "live" for piece in batch.slices):
            model.queue.live_answered()  # its clients will be back: still active
        self._deliver(model, batch, msg)
        if replica.leaving:
            self.effects.append(Send(peer, Stop()))
        self._dispatch(model)

    def _deliver(self, model: _Model, batch: Batch, msg: Done) -> None:
        if not _fits(batch, msg):
            logger.error("model %s: a replica answered batch %d out of shape", model.key,
                         msg.batch)
            for piece in batch.slices:
                self._fail(piece.ticket, InternalError(
                    f"Model {model.key} answered out of shape; see the server log."))
            return
        outputs = iter(msg.outputs)
        for piece, outcome in zip(batch.slices, msg.outcomes):
            req: _Request = piece.ticket.context
            if "error" in outcome:
                self._fail(piece.ticket, error_from_dict(outcome["error"] or {}))
                continue
            req.batch = max(req.batch, batch.size)
            items = outcome.get("items") or [None] * (piece.stop - piece.start)
            for i, error in enumerate(items, start=piece.start):
                if error is None:
                    req.outputs[i] = next(outputs)
                else:
                    req.errors.append({**error, "item": i})
            if req.finished:
                continue
            req.filled += piece.stop - piece.start
            if req.filled == len(req.outputs):
                req.finished = True
                self.requests.pop((req.client, req.id), None)
                self.effects.append(Send(req.client, Result(
                    id=req.id, batch=req.batch, errors=req.errors,
                    outputs=[o or b"" for o in req.outputs])))

    def replica_gone(self, peer: Peer, how: str) -> None:
        """A replica process exited (or was replaced): only the batch it held fails."""
        model = self._replica_model.pop(peer, None)
        if model is None:
            return
        replica = model.replicas.pop(peer)
        if not replica.leaving and replica.state != "failed":
            logger.warning("model %s: replica %d (pid %d) %s", model.key, replica.index,
                           replica.pid, how)
        if replica.batch is not None:
            _, batch = replica.batch
            for piece in batch.slices:
                self._fail(piece.ticket, WorkerCrashed(
                    f"The replica computing this request for model {model.key} died (pid "
                    f"{replica.pid}). Other requests are unaffected; this input may be the "
                    "cause."))

    def _release(self, model: _Model, replica: _Replica) -> None:
        """Stop giving work to a replica; it is told to stop when it holds none."""
        if not replica.leaving:
            replica.leaving = True
            if replica.batch is None:
                self.effects.append(Send(replica.peer, Stop()))

    # -- time -------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire what waited too long, kill hung replicas, send batches that are due."""
        for model in self.models.values():
            for ticket in model.queue.pop_expired():
                self._fail(ticket, RequestTimeout(
                    f"Model {model.key} did not start this request before its deadline."))
            self._watchdog(model)
            self._dispatch(model)

    def next_wakeup(self) -> float | None:
        """Seconds until :meth:`tick` has something to do without new messages."""
        waits = []
        now = self.clock()
        for model in self.models.values():
            free = sum(1 for r in model.ready() if r.batch is None)
            wait = model.queue.next_wakeup(model.busy(), free)
            if wait is not None:
                waits.append(wait)
            waits.extend(max(0.0, r.batch_deadline + self.stall_grace - now)
                         for r in model.replicas.values() if r.batch is not None and not r.killed)
            waits.extend(max(0.0, until - now) for until in model.expected.values())
        return min(waits) if waits else None

    def _watchdog(self, model: _Model) -> None:
        now = self.clock()
        for replica in model.replicas.values():
            if (replica.batch is not None and not replica.killed
                    and now > replica.batch_deadline + self.stall_grace):
                logger.error("model %s: replica %d (pid %d) is still in predict() %.0f s after "
                             "every deadline of its batch; killing it", model.key,
                             replica.index, replica.pid, now - replica.batch_deadline)
                self.effects.append(Kill(replica.pid))  # its death is reported to us
                replica.killed = True  # once

    def _dispatch(self, model: _Model) -> None:
        free = [r for r in model.ready() if r.batch is None]
        while free and model.queue.ready(model.busy(), len(free)):
            batch = model.queue.take(len(free))
            replica = free.pop()
            batch_id = next(self._batch_ids)
            replica.batch = (batch_id, batch)
            replica.batch_deadline = max(piece.ticket.deadline for piece in batch.slices)
            self.effects.append(Send(replica.peer, Work(
                batch=batch_id, groups=[s.stop - s.start for s in batch.slices],
                request_ids=[s.ticket.context.request_id for s in batch.slices],
                inputs=batch.inputs())))
            if self.on_batch is not None:
                try:
                    self.on_batch(model.key, batch, self.clock())
                except Exception:  # metrics must never lose a batch
                    logger.exception("model %s: recording a batch failed", model.key)

    def _fail(self, ticket: Ticket, error: CorralError) -> None:
        req: _Request = ticket.context
        if req.finished:
            return
        req.finished = True
        self.models[req.model].queue.discard(ticket)
        self.requests.pop((req.client, req.id), None)
        self.effects.append(Send(req.client, Failure(id=req.id, error=error.to_dict())))

    def take_effects(self) -> list[Effect]:
        """The effects since the last call, in order."""
        effects, self.effects = self.effects, []
        return effects
