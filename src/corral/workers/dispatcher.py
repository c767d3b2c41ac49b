"""The dispatcher of one model version: owns its queue, forms batches, feeds replicas.

Run by the supervisor as ``python -m corral.workers dispatcher PLAN MODEL``. It binds
two ROUTER sockets in the instance's runtime directory: the frontend, where every
HTTP worker sends Submit/Cancel/StatusQuery, and the backend, where replicas say
Hello and return Done. Batches form across all HTTP workers with the same
:class:`BatchQueue` the in-process engine uses. A replica gets one batch at a time,
so the dispatcher always knows what each replica holds; when a replica's process
exits (watched through a pidfd), only the batch it held fails, with 502
``worker-crashed``, and the queue goes on to the other replicas or its replacement.
"""

from __future__ import annotations

import itertools
from pathlib import Path
import logging
import os
import signal
import sys
from dataclasses import dataclass, field

import zmq

from .. import metrics
from ..batching.queue import Batch, BatchQueue, Ticket
from ..cli.discover import load_server
from ..errors import (
    CorralError,
    InternalError,
    ModelFailed,
    ModelLoading,
    Overloaded,
    RequestTimeout,
    WorkerCrashed,
    error_from_dict,
)
from ..log import configure_logging
from ..registry.spec import ModelSpec
from ..transport.protocol import (
    Cancel,
    Done,
    Failure,
    Hello,
    Message,
    ProtocolError,
    Result,
    StatusQuery,
    StatusReply,
    Submit,
    Work,
    decode,
    encode,
)
from .plan import Plan

logger = logging.getLogger(__name__)

_DRAIN = 256  # most messages read from one socket before looking at the other


@dataclass(eq=False)
class _Request:
    """A client's request while the dispatcher holds it."""

    client: bytes
    id: int
    outputs: list[bytes | None]
    filled: int = 0
    finished: bool = False


@dataclass(eq=False)
class _Replica:
    identity: bytes
    index: int
    pid: int
    pidfd: int | None
    state: str = "loading"
    error: str | None = None
    batch: tuple[int, Batch] | None = None
    batch_deadline: float = 0.0  # the latest deadline in the batch it holds


@dataclass
class Dispatcher:
    spec: ModelSpec
    frontend: zmq.Socket[bytes]
    backend: zmq.Socket[bytes]
    # A replica still in predict() this long after the last deadline of its batch is hung:
    # every client has had its 504, so it is killed and its replacement serves.
    stall_grace: float = 30.0
    queue: BatchQueue = field(init=False)
    replicas: dict[bytes, _Replica] = field(default_factory=dict)
    requests: dict[tuple[bytes, int], Ticket] = field(default_factory=dict)
    failed_slots: dict[int, str] = field(default_factory=dict)
    ever_ready: bool = False
    batch_ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.queue = BatchQueue(self.spec.batching)
        self.depth = metrics.QUEUE_DEPTH.labels(self.spec.name)
        self.poller = zmq.Poller()
        self.poller.register(self.frontend, zmq.POLLIN)
        self.poller.register(self.backend, zmq.POLLIN)

    # -- state ------------------------------------------------------------------------

    @property
    def ready_replicas(self) -> list[_Replica]:
        return [r for r in self.replicas.values() if r.state == "ready"]

    @property
    def busy(self) -> int:
        return sum(1 for r in self.replicas.values() if r.batch is not None)

    def state(self) -> tuple[str, str | None]:
        if self.ready_replicas:
            return "ready", None
        if len(self.failed_slots) >= self.spec.replicas:
            return "failed", next(iter(self.failed_slots.values()))
        return "loading", None

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        depth = 0
        while True:
            ready = self.ready_replicas
            free = sum(1 for r in ready if r.batch is None)
            wait = self.queue.next_wakeup(len(ready) - free, free)
            timeout = 1000 if wait is None else max(0, int(wait * 1000) + 1)
            events = dict(self.poller.poll(timeout))
            # Which replicas died, decided before any message can re-use a pidfd number.
            dead = [r for r in self.replicas.values() if r.pidfd is not None and r.pidfd in events]
            if self.frontend in events:
                self._drain(self.frontend, self.handle_client)
            if self.backend in events:
                self._drain(self.backend, self.handle_replica)
            for replica in dead:
                if self.replicas.get(replica.identity) is replica:
                    self.replica_gone(replica, "exited")
            self.expire()
            self.watchdog()
            self.dispatch()
            if len(self.queue) != depth:
                depth = len(self.queue)
                self.depth.set(depth)

    def _drain(self, sock: zmq.Socket[bytes], handle: object) -> None:
        for _ in range(_DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode(frames[1:])
                handle(frames[0], msg)  # type: ignore[operator]
            except ProtocolError as exc:
                logger.warning("dispatcher %s dropped a message: %s", self.spec.key, exc)
            except Exception:  # one bad message must not take the model's queue down
                logger.exception("dispatcher %s failed on a message", self.spec.key)

    def send_client(self, client: bytes, msg: Message) -> None:
        try:
            self.frontend.send_multipart([client, *encode(msg)], zmq.NOBLOCK)
        except zmq.Again:  # the client is gone or not reading: it has its own deadline
            logger.debug("dispatcher %s: reply to a client dropped", self.spec.key)

    def fail(self, ticket: Ticket, error: CorralError) -> None:
        req: _Request = ticket.context
        if req.finished:
            return
        req.finished = True
        self.queue.discard(ticket)
        self.requests.pop((req.client, req.id), None)
        self.send_client(req.client, Failure(id=req.id, error=error.to_dict()))

    # -- clients ----------------------------------------------------------------------

    def handle_client(self, client: bytes, msg: Message) -> None:
        if isinstance(msg, Submit):
            self.submit(client, msg)
        elif isinstance(msg, Cancel):
            ticket = self.requests.pop((client, msg.id), None)
            if ticket is not None:
                ticket.context.finished = True
                self.queue.discard(ticket)
        elif isinstance(msg, StatusQuery):
            state, error = self.state()
            self.send_client(client, StatusReply(id=msg.id, state=state, error=error,
                                                 replicas_ready=len(self.ready_replicas)))

    def submit(self, client: bytes, msg: Submit) -> None:
        state, error = self.state()
        refusal: CorralError | None = None
        if state == "failed":
            refusal = ModelFailed(f"Model {self.spec.key} failed to load: {error}")
        elif state == "loading" and not self.ever_ready:
            refusal = ModelLoading(f"Model {self.spec.key} is still loading; retry shortly.",
                                   retry_after=2)
        elif not msg.inputs:
            refusal = CorralError("A request with no inputs reached the dispatcher.")
        if refusal is None:
            req = _Request(client, msg.id, [None] * len(msg.inputs))
            ticket = Ticket(msg.inputs, msg.deadline, context=req)
            try:
                self.queue.put(ticket)
            except Overloaded as exc:
                refusal = exc
            else:
                self.requests[(client, msg.id)] = ticket
                return
        self.send_client(client, Failure(id=msg.id, error=refusal.to_dict()))

    def expire(self) -> None:
        for ticket in self.queue.pop_expired():
            self.fail(ticket, RequestTimeout(
                f"Model {self.spec.key} did not start this request before its deadline."))

    def dispatch(self) -> None:
        free = [r for r in self.ready_replicas if r.batch is None]
        while free and self.queue.ready(self.busy):
            replica = free.pop()
            batch = self.queue.take()
            metrics.observe_batch(self.spec.name, batch, self.queue.clock())
            batch_id = next(self.batch_ids)
            replica.batch = (batch_id, batch)
            replica.batch_deadline = max(piece.ticket.deadline for piece in batch.slices)
            work = Work(batch=batch_id, groups=[s.stop - s.start for s in batch.slices],
                        inputs=batch.inputs())
            self.backend.send_multipart([replica.identity, *encode(work)])

    # -- replicas ---------------------------------------------------------------------

    def handle_replica(self, identity: bytes, msg: Message) -> None:
        if isinstance(msg, Hello):
            self.hello(identity, msg)
        elif isinstance(msg, Done):
            if identity not in self.replicas:  # a replica that outlived the old dispatcher
                self.hello(identity, Hello(replica=msg.replica, pid=msg.pid, state="ready"))
            replica = self.replicas.get(identity)
            if replica is None or replica.batch is None or replica.batch[0] != msg.batch:
                return  # a batch from before this dispatcher started
            _, batch = replica.batch
            replica.batch = None
            self.done(batch, msg)

    def hello(self, identity: bytes, msg: Hello) -> None:
        replica = self.replicas.get(identity)
        if replica is None:
            # A new replica process for this slot replaces any earlier one.
            for old in [r for r in self.replicas.values() if r.index == msg.replica]:
                self.replica_gone(old, "was replaced")
            if not 0 <= msg.replica < self.spec.replicas:
                raise ProtocolError(f"replica index {msg.replica} out of range")
            pidfd = _pidfd(msg.pid)
            if pidfd is None:
                return  # the process is already gone: never register a ghost
            replica = _Replica(identity, msg.replica, msg.pid, pidfd)
            self.poller.register(pidfd, zmq.POLLIN)
            self.replicas[identity] = replica
        replica.state, replica.error = msg.state, msg.error
        if msg.state == "ready":
            self.ever_ready = True
            self.failed_slots.pop(msg.replica, None)
        elif msg.state == "failed":
            self.failed_slots[msg.replica] = msg.error or "load() failed"
            if self.state()[0] == "failed":
                for ticket in self.queue.drain():
                    self.fail(ticket, ModelFailed(f"Model {self.spec.key} failed to load: "
                                                  f"{msg.error}"))

    def done(self, batch: Batch, msg: Done) -> None:
        sizes = [piece.stop - piece.start for piece in batch.slices]
        counts = [o.get("ok") for o in msg.outcomes]
        if (len(counts) != len(sizes)
                or any(c is not None and c != n for c, n in zip(counts, sizes))
                or sum(c or 0 for c in counts) != len(msg.outputs)):
            logger.error("dispatcher %s: replica answered batch %d out of shape", self.spec.key,
                         msg.batch)
            for piece in batch.slices:
                self.fail(piece.ticket, InternalError(
                    f"Model {self.spec.key} answered out of shape; see the server log."))
            return
        outputs = iter(msg.outputs)
        for piece, outcome in zip(batch.slices, msg.outcomes):
            req: _Request = piece.ticket.context
            if "ok" in outcome:
                values = [next(outputs) for _ in range(piece.stop - piece.start)]
                if req.finished:
                    continue
                req.outputs[piece.start : piece.stop] = values
                req.filled += len(values)
                if req.filled == len(req.outputs):
                    req.finished = True
                    self.requests.pop((req.client, req.id), None)
                    self.send_client(req.client, Result(id=req.id, outputs=req.outputs))  # type: ignore[arg-type]
            else:
                self.fail(piece.ticket, error_from_dict(outcome.get("error") or {}))

    def watchdog(self) -> None:
        now = self.queue.clock()
        for replica in self.replicas.values():
            if replica.batch is not None and now > replica.batch_deadline + self.stall_grace:
                logger.error("dispatcher %s: replica %d (pid %d) is still in predict() %.0f s "
                             "after every deadline of its batch; killing it", self.spec.key,
                             replica.index, replica.pid, now - replica.batch_deadline)
                try:
                    os.kill(replica.pid, signal.SIGKILL)  # its pidfd reports the death
                except ProcessLookupError:
                    pass
                replica.batch_deadline = float("inf")  # once

    def crash_batch(self, replica: _Replica) -> None:
        if replica.batch is None:
            return
        _, batch = replica.batch
        replica.batch = None
        for piece in batch.slices:
            self.fail(piece.ticket, WorkerCrashed(
                f"The replica computing this request for model {self.spec.key} died (pid "
                f"{replica.pid}). Other requests are unaffected; this input may be the cause."))

    def replica_gone(self, replica: _Replica, how: str) -> None:
        logger.warning("dispatcher %s: replica %d (pid %d) %s", self.spec.key, replica.index,
                       replica.pid, how)
        self.crash_batch(replica)
        self.replicas.pop(replica.identity, None)
        if replica.pidfd is not None:
            self.poller.unregister(replica.pidfd)
            os.close(replica.pidfd)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def main(argv: list[str]) -> int:
    plan = Plan.load(argv[0])
    endpoints = plan.models[int(argv[1])]
    settings = plan.build_settings()
    configure_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = load_server(plan.target).catalog(settings).resolve(endpoints.name, endpoints.version)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.ROUTER)
    for sock, address in ((frontend, endpoints.frontend), (backend, endpoints.backend)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if address.startswith("ipc://"):
            try:
                os.unlink(address[len("ipc://"):])  # left by a dispatcher that was killed
            except FileNotFoundError:
                pass
        sock.bind(address)
    logger.info("dispatcher for %s listening (pid %d)", spec.key, os.getpid())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dispatcher = Dispatcher(spec, frontend, backend, stall_grace=settings.stall_grace)
    # A restarted dispatcher queues requests at once (its replicas are already loaded
    # and will say so), and remembers the replicas the supervisor gave up on.
    dispatcher.ever_ready = len(argv) > 2 and argv[2] != "0"
    for r in range(spec.replicas):
        failed = Path(f"{endpoints.pid_file}.{r}.failed")
        if failed.exists():
            dispatcher.failed_slots[r] = failed.read_text()
    try:
        dispatcher.run()
    finally:
        frontend.close()
        backend.close()
        ctx.term()
    return 0

