"""The dispatcher process: the dispatch core of every model, behind Unix sockets.

Run by the supervisor as ``python -m corral.process dispatcher RUNTIME_DIR``. It
listens on two sockets in the runtime directory (see :mod:`corral.transport.stream`):
the frontend, where HTTP workers send Submit and Cancel (and the supervisor
Configure), and the backend, where replicas say Hello and return Done. Everything
else is the :class:`DispatchCore`: batches form across all HTTP workers, each model
in its own queue.

It never imports the app: what it knows of each model (batching, replicas wanted)
comes from the runtime directory's models.json, so its memory does not grow with
the user's imports. Replica deaths are seen through pidfds, without polling; only
the batch the dead replica held fails. Model states go to status.json whenever they
change, for HTTP workers to read without asking.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from .. import metrics
from ..dispatch.core import DispatchCore, Kill, ModelConfig, Peer
from ..dispatch.status import ModelStatus
from ..log import configure_logging
from ..transport.protocol import Configure, Hello, Message, ProtocolError, decode, encode
from ..transport.stream import Hub
from .runtime import Runtime
from .title import set_title

logger = logging.getLogger(__name__)

_FRONT, _BACK = "f", "b"


class Dispatcher:
    """The socket shell around a DispatchCore."""

    def __init__(self, runtime: Runtime, core: DispatchCore, hub: Hub) -> None:
        self.runtime = runtime
        self.core = core
        self.hub = hub
        self.pidfds: dict[int, Peer] = {}  # replica process watches
        self.watched: dict[Peer, int] = {}
        self.dead: set[Peer] = set()  # replicas whose exit was seen: late messages are ignored
        self.depths: dict[str, int] = {}  # by model name (the gauge's label)
        self.changed = True  # model states may have changed
        self.written: dict[str, ModelStatus] | None = None  # what status.json says

    def run(self) -> None:
        while True:
            wait = self.core.next_wakeup()
            messages, ready = self.hub.poll(1.0 if wait is None else max(0.0, wait) + 0.001)
            # Which replicas died, decided before any message can re-use a pidfd number.
            dead = [fd for fd in ready if fd in self.pidfds]
            for sender, frames in messages:
                try:
                    msg = decode(frames)
                    if sender[0] == _FRONT:
                        self.handle_client(sender, msg)
                    else:
                        self.handle_replica(sender, msg)
                except ProtocolError as exc:
                    logger.warning("dispatcher dropped a message: %s", exc)
                except Exception:  # one bad message must not take every model's queue down
                    logger.exception("dispatcher failed on a message")
            for fd in dead:
                peer = self.pidfds.pop(fd)
                del self.watched[peer]
                self.dead.add(peer)
                self.core.replica_gone(peer, "exited")
                self.hub.unwatch(fd)
                os.close(fd)
                self.changed = True
            self.core.tick()
            self.flush()

    def handle_client(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Configure):
            model = self.core.models.get(msg.model)
            if model is None:
                raise ProtocolError(f"Configure for an unknown model {msg.model!r}")
            failed = {int(i): str(e) for i, e in msg.failed.items() if str(i).isdigit()}
            self.core.configure(ModelConfig(msg.model, model.config.batching, msg.replicas),
                                retry=msg.retry, failed=failed)
            self.changed = True
        else:
            self.core.handle(peer, msg)

    def handle_replica(self, peer: Peer, msg: Message) -> None:
        if peer in self.dead:
            return  # sent before its process exited: the core has already failed its batch
        if peer not in self.watched:
            pid = getattr(msg, "pid", None)
            try:
                fd = os.pidfd_open(pid) if isinstance(pid, int) and pid > 0 else -1
            except OSError:
                fd = -1
            if fd < 0:
                return  # the process is already gone: never register a ghost
            self.pidfds[fd] = peer
            self.watched[peer] = fd
            self.hub.watch(fd)
        self.core.handle(peer, msg)
        if isinstance(msg, Hello):
            self.changed = True

    def flush(self) -> None:
        for effect in self.core.take_effects():
            if isinstance(effect, Kill):
                fd = next((fd for fd, peer in self.pidfds.items()
                           if self.core.replica_pid(peer) == effect.pid), None)
                if fd is not None:  # through the pidfd: never a reused pid
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)  # the pidfd reports it
                    except ProcessLookupError:
                        pass
                continue
            if not self.hub.send(effect.to, encode(effect.msg)):
                # The peer is gone or not reading: it has its own deadline.
                logger.debug("dispatcher: a message to a peer was dropped")
        for name, depth in self.core.depths_by_name().items():
            if self.depths.get(name) != depth:
                self.depths[name] = depth
                metrics.labelled(metrics.QUEUE_DEPTH, name).set(depth)
        if self.changed or self.core.expecting():
            self.changed = False
            statuses = self.core.statuses()
            if statuses != self.written:
                self.runtime.write_status(statuses)
                self.written = statuses


def main(argv: list[str]) -> int:
    runtime = Runtime(argv[0])
    set_title("dispatcher", runtime.path)
    _, settings = runtime.read_plan()
    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Listening before models.json is read: a Configure the supervisor sends from now on
    # waits in the socket, and one it sent before is already in the file.
    hub = Hub()
    hub.listen(runtime.frontend, _FRONT)
    hub.listen(runtime.backend, _BACK)
    models = runtime.read_models()
    core = DispatchCore((ModelConfig(m.key, m.batching, m.replicas) for m in models),
                        stall_grace=settings.stall_grace, on_batch=metrics.observe_batch)
    for m in models:
        # A restarted dispatcher queues at once for replicas that had loaded (they say so
        # within a second), and remembers the replicas the supervisor gave up on.
        core.expect(m.key, runtime.ready_replicas(m.key), m.failed)
    logger.info("dispatcher for %d model version(s) listening (pid %d)", len(models),
                os.getpid())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        Dispatcher(runtime, core, hub).run()
    finally:
        hub.close()
    return 0
