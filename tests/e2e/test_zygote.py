"""Replicas forked from the zygote: what they share, whose children they are, and that
neither the zygote's death nor a fall-back to fresh interpreters costs a model."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import APPS, ServerProcess
from tests.e2e.test_workers import BASIC, FAST_LOAD, model_procs, post
from tests.proctree import Proc, alive, descendants, wait_until

pytestmark = pytest.mark.slow

Serve = Callable[..., ServerProcess]
ONE = f"{APPS / 'inline.py'}:small"  # sum in a process, inline-sum in the HTTP worker


def role(server: ServerProcess, name: str) -> list[Proc]:
    return [p for p in descendants(server.proc.pid) if p.role == name]


def private_mib(pid: int) -> float:
    """Memory the process holds alone (USS): private pages, clean and dirty."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024


def test_replicas_are_forked_children_of_the_supervisor(serve: Serve) -> None:
    server = serve(BASIC, env=FAST_LOAD)
    (zygote,) = role(server, "zygote")
    assert zygote.ppid == server.proc.pid
    replicas = role(server, "replica")
    assert len(replicas) >= 5
    for replica in replicas:
        assert replica.ppid == server.proc.pid  # re-parented: the supervisor reaps them
        assert os.getpgid(replica.pid) == replica.pid  # a process group of its own
    for n in range(20):  # some work first: it must not un-share what the zygote imported
        assert post(server, "/v1/models/sum/predict", {"values": [n]}).status_code == 200
    # Sharing what the zygote imported, each holds a few MiB alone, not an interpreter's worth.
    (spawned,) = role(server, "dispatcher")  # a fresh interpreter, for comparison
    assert max(private_mib(r.pid) for r in replicas) < private_mib(spawned.pid) / 2


def test_the_zygote_dying_takes_no_replica_and_comes_back(serve: Serve) -> None:
    server = serve(ONE, env=FAST_LOAD)
    (zygote,) = role(server, "zygote")
    (replica,) = model_procs(server, "replica", "sum")
    os.kill(zygote.pid, signal.SIGKILL)
    wait_until(lambda: [z.pid for z in role(server, "zygote")] not in ([], [zygote.pid]), 30,
               "a new zygote")
    assert alive(replica.pid)
    assert post(server, "/v1/models/sum/predict", {"values": [2]}).json()["pid"] == replica.pid
    # A replica that dies now is forked by the new zygote.
    os.kill(replica.pid, signal.SIGKILL)
    wait_until(lambda: [r.pid for r in model_procs(server, "replica", "sum")]
               not in ([], [replica.pid]), 30, "a new replica")
    (new,) = model_procs(server, "replica", "sum")
    assert new.ppid == server.proc.pid
    answer = post(server, "/v1/models/sum/predict", {"values": [3]})
    assert answer.status_code == 200 and answer.json()["pid"] == new.pid
    assert server.stop() == 0
    assert not alive(new.pid)


def test_spawned_replicas_on_request(serve: Serve) -> None:
    server = serve(ONE, env={**FAST_LOAD, "CORRAL_REPLICA_START": "spawn"})
    assert role(server, "zygote") == []
    (replica,) = model_procs(server, "replica", "sum")
    assert replica.ppid == server.proc.pid
    assert post(server, "/v1/models/sum/predict", {"values": [2]}).json()["pid"] == replica.pid


def test_sizes_travel_to_the_dispatcher_and_group_batches(serve: Serve) -> None:
    import threading

    server = serve(str(APPS / "sized.py"), "--workers", "2", env=FAST_LOAD)
    answers: dict[int, dict[str, object]] = {}

    def send(words: int, delay: float = 0.0) -> None:
        resp = post(server, "/v1/models/grouped/predict",
                    {"text": " ".join(["w"] * words), "delay": delay})
        assert resp.status_code == 200, resp.text
        answers[words] = resp.json()

    busy = threading.Thread(target=send, args=(1, 0.8))
    busy.start()
    wait_until(lambda: post(server, "/v1/models/grouped/predict", {"text": "x"},
                            headers={"X-Request-Timeout": "0.2"}).status_code == 504,
               20, "the replica to be busy")
    senders = [threading.Thread(target=send, args=(n,)) for n in (10, 200, 11, 190, 12, 180)]
    for t in senders:
        t.start()
    for t in [busy, *senders]:
        t.join(30)
    # Sent through both HTTP workers in mixed order; batched by size in the dispatcher.
    assert sorted(answers[10]["batch"]) == [10, 11, 12]  # type: ignore[arg-type]
    assert sorted(answers[200]["batch"]) == [180, 190, 200]  # type: ignore[arg-type]
