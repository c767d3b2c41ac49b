"""The dispatch core, driven by hand: a fake clock, peers as strings, no I/O, no threads.

Inputs are ints (the core never looks inside them): request ``id`` with ``n`` inputs
sends ``[id*100, id*100+1, ...]``, and the fake replica answers each input ``x`` with
``str(x).encode()``, so every output says which input it came from.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from corral.batching.queue import BACKGROUND_AGING, BACKGROUND_SHARE, LIVE_ACTIVE
from corral.dispatch.core import HELLO_GRACE, DispatchCore, Effect, Kill, ModelConfig, Send
from corral.errors import ModelError
from corral.model import Batching
from tests.fixtures import FakeClock
from corral.transport.protocol import Cancel, Done, Failure, Hello, Result, Stop, Submit, Work

KEY = "sum:1"
OTHER = "echo:1"
BATCHING = Batching(max_size=4, max_wait_ms=10, max_queue=8, timeout=5)


def make(replicas: int = 1, keys: tuple[str, ...] = (KEY,),
         stall_grace: float = 30.0) -> tuple[DispatchCore, FakeClock]:
    clock = FakeClock()
    core = DispatchCore([ModelConfig(k, BATCHING, replicas) for k in keys], clock=clock,
                        stall_grace=stall_grace)
    return core, clock


def hello(core: DispatchCore, peer: str, index: int = 0, state: str = "ready",
          key: str = KEY, error: str | None = None) -> list[Effect]:
    core.handle(peer, Hello(model=key, replica=index, pid=1000 + index, state=state,
                            error=error))
    return core.take_effects()


def submit(core: DispatchCore, clock: FakeClock, id: int, n: int = 1, key: str = KEY,
           lane: str = "live", timeout: float = 5.0, client: str = "client") -> list[Effect]:
    core.handle(client, Submit(id=id, model=key, deadline=clock() + timeout, lane=lane,
                               inputs=[id * 100 + i for i in range(n)]))
    return core.take_effects()


def out(*inputs: int) -> list[bytes]:
    return [str(x).encode() for x in inputs]


def done(core: DispatchCore, peer: str, work: Work, index: int = 0, key: str = KEY,
         outcomes: list[dict[str, Any]] | None = None,
         outputs: list[bytes] | None = None) -> list[Effect]:
    """The replica's answer to ``work``: every group ok, unless told otherwise."""
    core.handle(peer, Done(
        batch=work.batch, model=key, replica=index, pid=1000 + index,
        outcomes=[{"ok": g} for g in work.groups] if outcomes is None else outcomes,
        outputs=out(*work.inputs) if outputs is None else outputs))
    return core.take_effects()


def works(effects: list[Effect]) -> list[tuple[Any, Work]]:
    return [(e.to, e.msg) for e in effects if isinstance(e, Send) and isinstance(e.msg, Work)]


def only_work(effects: list[Effect], peer: str | None = None) -> Work:
    sent = works(effects)
    assert len(sent) == 1, effects
    if peer is not None:
        assert sent[0][0] == peer
    return sent[0][1]


def results(effects: list[Effect]) -> dict[int, list[bytes]]:
    return {e.msg.id: e.msg.outputs for e in effects
            if isinstance(e, Send) and isinstance(e.msg, Result)}


def failures(effects: list[Effect]) -> dict[int, dict[str, Any]]:
    return {e.msg.id: e.msg.error for e in effects
            if isinstance(e, Send) and isinstance(e.msg, Failure)}


def error_types(effects: list[Effect]) -> dict[int, str]:
    return {id: error["type"] for id, error in failures(effects).items()}


def busy_with_one(core: DispatchCore, clock: FakeClock, peer: str = "r0",
                  id: int = 1) -> Work:
    """Make ``peer`` (already ready) hold a one-input batch of request ``id``."""
    return only_work(submit(core, clock, id), peer)


# -- refusals ---------------------------------------------------------------------------


def test_unknown_model_is_refused_at_once() -> None:
    core, clock = make()
    effects = submit(core, clock, 1, key="nope:1")
    assert len(effects) == 1 and isinstance(effects[0], Send) and effects[0].to == "client"
    assert error_types(effects) == {1: "model-not-found"}


def test_loading_model_is_refused_with_retry_after() -> None:
    core, clock = make()
    assert hello(core, "r0", state="loading") == []
    effects = submit(core, clock, 1)
    assert error_types(effects) == {1: "model-loading"}
    assert failures(effects)[1]["retry_after"] == 2
    assert core.status(KEY).state == "loading"
    assert core.depth(KEY) == 0


def test_model_fails_only_when_every_slot_failed() -> None:
    core, clock = make(replicas=2)
    hello(core, "r0", 0, state="failed", error="out of memory")
    assert error_types(submit(core, clock, 1)) == {1: "model-loading"}
    hello(core, "r1", 1, state="failed", error="out of memory")
    status = core.status(KEY)
    assert (status.state, status.error) == ("failed", "out of memory")
    effects = submit(core, clock, 2)
    assert error_types(effects) == {2: "model-failed"}
    assert "out of memory" in failures(effects)[2]["detail"]


def test_model_failure_drains_queued_requests() -> None:
    core, clock = make()
    hello(core, "r0")
    busy_with_one(core, clock, id=1)
    assert submit(core, clock, 2) == []  # queued behind request 1
    core.replica_gone("r0", "exited")
    assert error_types(core.take_effects()) == {1: "worker-crashed"}
    effects = hello(core, "r0-new", 0, state="failed", error="CUDA error")
    assert error_types(effects) == {2: "model-failed"}
    assert works(effects) == []
    assert core.depth(KEY) == 0


def test_unloaded_model_is_refused() -> None:
    core, clock = make(replicas=0)
    assert core.status(KEY).state == "unloaded"
    assert error_types(submit(core, clock, 1)) == {1: "model-unloaded"}


def test_full_queue_is_refused_counting_only_live_inputs() -> None:
    core, clock = make()
    hello(core, "r0")
    busy_with_one(core, clock, id=1)
    assert submit(core, clock, 2, n=6, lane="background") == []
    assert submit(core, clock, 3, n=8) == []  # exactly max_queue live inputs
    effects = submit(core, clock, 4)
    assert error_types(effects) == {4: "overloaded"}
    assert failures(effects)[4]["retry_after"] == 1
    assert core.depth(KEY) == 14


def test_stopping_core_refuses_new_requests_and_fails_queued_ones() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2)
    core.stop()
    assert error_types(core.take_effects()) == {2: "overloaded"}
    assert error_types(submit(core, clock, 3)) == {3: "overloaded"}
    assert results(done(core, "r0", work)) == {1: out(100)}  # in flight: still answered


# -- batches ----------------------------------------------------------------------------


def test_ready_replica_gets_work_at_once_when_idle() -> None:
    core, clock = make()
    assert hello(core, "r0") == []
    assert core.status(KEY).state == "ready"
    work = only_work(submit(core, clock, 1, n=2), "r0")
    assert (work.groups, work.inputs) == ([2], [100, 101])
    assert done(core, "r0", work) == [Send("client", Result(id=1, batch=2,
                                                           outputs=out(100, 101)))]


def test_batches_respect_max_size() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    for id in (2, 3, 4):
        assert submit(core, clock, id, n=2) == []
    effects = done(core, "r0", work)
    assert results(effects) == {1: out(100)}
    work = only_work(effects, "r0")
    assert (work.groups, work.inputs) == ([2, 2], [200, 201, 300, 301])
    effects = done(core, "r0", work)
    assert results(effects) == {2: out(200, 201), 3: out(300, 301)}
    assert only_work(effects, "r0").inputs == [400, 401]


def test_large_request_is_split_and_answered_once_in_order() -> None:
    core, clock = make()
    hello(core, "r0")
    first = only_work(submit(core, clock, 1, n=6), "r0")
    assert (first.groups, first.inputs) == ([4], [100, 101, 102, 103])
    effects = done(core, "r0", first)
    assert results(effects) == {} and failures(effects) == {}
    second = only_work(effects, "r0")
    assert (second.groups, second.inputs) == ([2], [104, 105])
    effects = done(core, "r0", second)
    assert effects == [Send("client", Result(id=1, batch=4, outputs=out(*range(100, 106))))]


def test_two_replicas_hold_slices_of_one_request() -> None:
    core, clock = make(replicas=2)
    hello(core, "r0", 0)
    hello(core, "r1", 1)
    sent = dict(works(submit(core, clock, 1, n=8)))
    assert set(sent) == {"r0", "r1"}
    assert sorted(sent["r0"].inputs + sent["r1"].inputs) == list(range(100, 108))
    # The replica holding the second half answers first: no Result until both did.
    later = "r0" if sent["r0"].inputs[0] == 104 else "r1"
    earlier = "r1" if later == "r0" else "r0"
    assert done(core, later, sent[later], index=int(later[1])) == []
    effects = done(core, earlier, sent[earlier], index=int(earlier[1]))
    assert effects == [Send("client", Result(id=1, batch=4, outputs=out(*range(100, 108))))]


def test_small_request_waits_max_wait_while_a_replica_is_busy() -> None:
    core, clock = make(replicas=2)
    hello(core, "r0", 0)
    hello(core, "r1", 1)
    busy_peer, _ = works(submit(core, clock, 1))[0]
    free_peer = "r1" if busy_peer == "r0" else "r0"
    assert submit(core, clock, 2) == []
    assert core.next_wakeup() == pytest.approx(0.010)
    clock.advance(0.009)
    core.tick()
    assert core.take_effects() == []
    assert core.next_wakeup() == pytest.approx(0.001)
    clock.advance(0.002)
    core.tick()
    assert only_work(core.take_effects(), free_peer).inputs == [200]


def test_expired_request_times_out_and_is_never_sent() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2, timeout=1.0)
    assert core.next_wakeup() == pytest.approx(1.0)
    clock.advance(0.5)
    core.tick()
    assert core.take_effects() == []
    clock.advance(0.5)
    core.tick()
    assert error_types(core.take_effects()) == {2: "timeout"}
    effects = done(core, "r0", work)
    assert results(effects) == {1: out(100)}
    assert works(effects) == []


def test_cancel_removes_a_queued_request() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2)
    submit(core, clock, 3)
    core.handle("client", Cancel(id=2))
    assert core.take_effects() == []
    assert core.depth(KEY) == 1
    effects = done(core, "r0", work)
    assert only_work(effects, "r0").inputs == [300]
    assert 2 not in results(effects) and 2 not in failures(effects)


def test_model_error_fails_only_its_request() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2, n=2)
    submit(core, clock, 3)
    work = only_work(done(core, "r0", work), "r0")
    assert work.groups == [2, 1]
    error = ModelError("predict raised", error_id="abc123").to_dict()
    effects = done(core, "r0", work, outcomes=[{"error": error}, {"ok": 1}],
                   outputs=out(300))
    assert failures(effects) == {2: error}
    assert results(effects) == {3: out(300)}


def test_done_out_of_shape_fails_every_request_of_the_batch() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2, n=2)
    submit(core, clock, 3)
    work = only_work(done(core, "r0", work), "r0")
    effects = done(core, "r0", work, outcomes=[{"ok": 2}, {"ok": 1}], outputs=out(200, 201))
    assert error_types(effects) == {2: "internal-error", 3: "internal-error"}
    assert results(effects) == {}
    # The replica is free again.
    assert only_work(submit(core, clock, 4), "r0").inputs == [400]


def test_crashed_replica_fails_only_its_batch() -> None:
    core, clock = make(replicas=2)
    hello(core, "r0", 0)
    busy_with_one(core, clock, id=1)
    submit(core, clock, 2)
    core.replica_gone("r0", "exited")
    effects = core.take_effects()
    assert error_types(effects) == {1: "worker-crashed"}
    assert core.depth(KEY) == 1
    work = only_work(hello(core, "r1", 1), "r1")
    assert work.inputs == [200]
    assert results(done(core, "r1", work, index=1)) == {2: out(200)}


def test_watchdog_kills_a_hung_replica_exactly_once() -> None:
    core, clock = make(stall_grace=1.0)
    hello(core, "r0")  # pid 1000
    busy_with_one(core, clock, id=1)  # deadline 105
    assert core.next_wakeup() == pytest.approx(6.0)
    clock.advance(6.0)
    core.tick()
    assert core.take_effects() == []
    clock.advance(0.5)
    core.tick()
    assert core.take_effects() == [Kill(1000)]
    clock.advance(60)
    core.tick()
    assert core.take_effects() == []


def test_next_wakeup_stays_finite_after_a_kill() -> None:
    core, clock = make(stall_grace=1.0)
    hello(core, "r0")
    busy_with_one(core, clock, id=1)
    clock.advance(7.0)
    core.tick()
    assert core.take_effects() == [Kill(1000)]
    wait = core.next_wakeup()
    assert wait is None or math.isfinite(wait)



def test_next_wakeup_agrees_with_tick_while_a_leaving_replica_is_busy() -> None:
    core, clock = make(replicas=2)
    hello(core, "r0", 0)
    hello(core, "r1", 1)
    sent = dict(works(submit(core, clock, 1, n=8)))
    core.configure(ModelConfig(KEY, BATCHING, replicas=1))  # r1 leaves after its batch
    done(core, "r0", sent["r0"])
    sent_at_once = works(submit(core, clock, 2))
    wait = core.next_wakeup()
    core.tick()
    assert sent_at_once or works(core.take_effects()) or (wait is not None and wait > 0)

# -- the background lane ----------------------------------------------------------------


def test_background_requests_are_not_counted_against_max_queue() -> None:
    core, clock = make()
    hello(core, "r0")
    busy_with_one(core, clock, id=1)
    assert submit(core, clock, 2, n=20, lane="background") == []
    assert submit(core, clock, 3, n=8) == []
    assert error_types(submit(core, clock, 4)) == {4: "overloaded"}
    assert submit(core, clock, 5, n=3, lane="background") == []
    assert core.depth(KEY) == 31


def test_unknown_lane_is_refused() -> None:
    core, clock = make()
    hello(core, "r0")
    assert error_types(submit(core, clock, 1, lane="urgent")) == {1: "internal-error"}


def test_queued_live_requests_go_alone_then_background_in_full_batches() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2, n=3, lane="background")
    submit(core, clock, 3, n=3)  # live, same time; then no new live request
    clock.advance(LIVE_ACTIVE + 0.01)
    work = only_work(done(core, "r0", work), "r0")
    assert work.inputs == [300, 301, 302]  # not filled: on a CPU that would slow them
    effects = done(core, "r0", work)
    assert results(effects) == {3: out(300, 301, 302)} and works(effects) == []
    clock.advance(LIVE_ACTIVE + 0.01)  # its client did not come back
    core.tick()
    work = only_work(core.take_effects(), "r0")
    assert work.inputs == [200, 201, 202]
    assert results(done(core, "r0", work)) == {2: out(200, 201, 202)}


def test_while_live_traffic_is_active_background_waits_for_a_spare_replica() -> None:
    core, clock = make(replicas=3)
    for i in range(3):
        hello(core, f"r{i}", i)
    submit(core, clock, 1)  # a live request takes one replica
    first = only_work(submit(core, clock, 2, n=3, lane="background"))  # two were free
    assert first.inputs == [200, 201, 202]
    assert submit(core, clock, 3, n=3, lane="background") == []  # the last free one: kept
    clock.advance(LIVE_ACTIVE + 0.01)
    core.tick()
    assert only_work(core.take_effects()).inputs == [300, 301, 302]  # live went quiet


def test_answering_live_requests_keeps_live_traffic_active() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2, n=3, lane="background")
    clock.advance(LIVE_ACTIVE * 5)  # a long batch: its client arrived long ago...
    assert works(done(core, "r0", work)) == []  # ...but it is answered now and comes back
    clock.advance(LIVE_ACTIVE + 0.01)
    core.tick()
    assert only_work(core.take_effects()).inputs == [200, 201, 202]  # it did not


def test_aged_background_goes_ahead_of_newer_live_with_a_small_share() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2, n=4, lane="background")
    clock.advance(BACKGROUND_AGING + 0.5)
    submit(core, clock, 3, n=4)
    work = only_work(done(core, "r0", work), "r0")
    share = max(1, BATCHING.max_size // BACKGROUND_SHARE)
    assert work.inputs == [200 + i for i in range(share)] + [300, 301, 302, 303][
        :BATCHING.max_size - share]


# -- replicas come and go ---------------------------------------------------------------


def test_scale_down_stops_a_busy_replica_only_after_its_done() -> None:
    core, clock = make(replicas=2)
    hello(core, "r0", 0)
    hello(core, "r1", 1)
    sent = dict(works(submit(core, clock, 1, n=8)))
    assert set(sent) == {"r0", "r1"}
    core.configure(ModelConfig(KEY, BATCHING, replicas=1))
    assert core.take_effects() == []
    assert done(core, "r1", sent["r1"], index=1) == [Send("r1", Stop())]
    effects = done(core, "r0", sent["r0"])
    assert effects == [Send("client", Result(id=1, batch=4, outputs=out(*range(100, 108))))]
    # Only r0 gets work from now on.
    assert only_work(submit(core, clock, 2), "r0").inputs == [200]
    status = core.status(KEY)
    assert (status.state, status.replicas_ready, status.replicas) == ("ready", 1, 1)


def test_scale_down_stops_an_idle_replica_at_once() -> None:
    core, clock = make(replicas=2)
    hello(core, "r0", 0)
    hello(core, "r1", 1)
    core.configure(ModelConfig(KEY, BATCHING, replicas=1))
    assert core.take_effects() == [Send("r1", Stop())]
    assert core.status(KEY).replicas_ready == 1


def test_hello_beyond_the_wanted_count_gets_stop() -> None:
    core, clock = make(replicas=1)
    assert hello(core, "r1", 1) == [Send("r1", Stop())]
    assert core.status(KEY).state == "loading"
    assert error_types(submit(core, clock, 1)) == {1: "model-loading"}


def test_unload_fails_queued_requests() -> None:
    core, clock = make()
    hello(core, "r0")
    work = busy_with_one(core, clock, id=1)
    submit(core, clock, 2)
    submit(core, clock, 3, lane="background")
    core.configure(ModelConfig(KEY, BATCHING, replicas=0))
    assert error_types(core.take_effects()) == {2: "model-unloaded", 3: "model-unloaded"}
    assert core.status(KEY).state == "unloaded"
    assert core.depth(KEY) == 0
    assert error_types(submit(core, clock, 4)) == {4: "model-unloaded"}
    # The batch in flight is still answered, then the replica is told to stop.
    assert done(core, "r0", work) == [Send("client", Result(id=1, batch=1, outputs=out(100))),
                                      Send("r0", Stop())]


def test_retry_forgets_failed_slots() -> None:
    core, clock = make()
    hello(core, "r0", state="failed", error="bad weights")
    assert core.status(KEY).state == "failed"
    core.configure(ModelConfig(KEY, BATCHING, replicas=1), retry=True)
    assert core.status(KEY).state == "loading"
    assert error_types(submit(core, clock, 1)) == {1: "model-loading"}


# -- a restarted dispatcher -------------------------------------------------------------


def test_restarted_core_queues_for_expected_replicas_during_hello_grace() -> None:
    core, clock = make()
    core.expect(KEY, [0], {})
    # It loaded before the restart: ready, and requests queue for it.
    assert core.status(KEY).state == "ready"
    clock.advance(HELLO_GRACE / 2)
    assert submit(core, clock, 1) == []
    assert core.depth(KEY) == 1
    assert only_work(hello(core, "r0"), "r0").inputs == [100]


def test_restarted_core_refuses_as_loading_after_hello_grace() -> None:
    core, clock = make()
    core.expect(KEY, [0], {})
    # A busy replica has until the end of its batch (timeout + stall grace) to say so.
    clock.advance(BATCHING.timeout + core.stall_grace + HELLO_GRACE - 0.01)
    assert core.status(KEY).state == "ready"
    clock.advance(0.01)
    assert core.status(KEY).state == "loading"
    assert error_types(submit(core, clock, 1)) == {1: "model-loading"}


def test_restarted_core_keeps_failed_slots() -> None:
    core, clock = make()
    core.expect(KEY, [], {0: "load() raised"})
    assert core.status(KEY).state == "failed"
    assert error_types(submit(core, clock, 1)) == {1: "model-failed"}


def test_done_from_an_unknown_peer_registers_a_ready_replica() -> None:
    core, clock = make()
    core.expect(KEY, [0], {})
    core.handle("r0", Done(batch=41, model=KEY, replica=0, pid=1000, outcomes=[{"ok": 1}],
                           outputs=[b"old"]))
    assert core.take_effects() == []
    assert core.status(KEY).state == "ready"
    assert only_work(submit(core, clock, 1), "r0").inputs == [100]


def test_stale_done_from_before_a_restart_never_answers_a_new_request() -> None:
    core, clock = make()
    core.expect(KEY, [0], {})
    submit(core, clock, 1)  # queued during the hello grace
    core.handle("r0", Done(batch=0, model=KEY, replica=0, pid=1000, outcomes=[{"ok": 1}],
                           outputs=[b"stale"]))
    effects = core.take_effects()
    assert only_work(effects, "r0").inputs == [100]
    assert results(effects) == {}


def test_stuck_replica_of_one_model_does_not_delay_another() -> None:
    core, clock = make(keys=(KEY, OTHER))
    hello(core, "r0")
    busy_with_one(core, clock, id=1)  # never done
    assert submit(core, clock, 2) == []
    hello(core, "e0", key=OTHER)
    work = only_work(submit(core, clock, 3, key=OTHER), "e0")
    assert work.inputs == [300]
    assert results(done(core, "e0", work, key=OTHER)) == {3: out(300)}
    assert core.depth(KEY) == 1
