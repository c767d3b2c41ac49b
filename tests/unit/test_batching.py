"""The batch policy and queue, driven by a fake clock: no sleeps, no threads."""

from __future__ import annotations

import pytest

from corral.batching.queue import BACKGROUND_SHARE, LIVE_ACTIVE, BatchQueue, Lane, Ticket
from corral.errors import Overloaded
from corral.model import Batching
from tests.fixtures import FakeClock


def make(max_size: int = 4, max_wait_ms: float = 10, max_queue: int = 16,
         aging: float = 1.0) -> tuple[BatchQueue, FakeClock]:
    clock = FakeClock()
    policy = Batching(max_size=max_size, max_wait_ms=max_wait_ms, max_queue=max_queue, timeout=5)
    return BatchQueue(policy, clock, aging=aging), clock


def ticket(n: int, clock: FakeClock, timeout: float = 5.0, tag: str = "",
           lane: Lane = "live") -> Ticket:
    return Ticket([f"{tag}{i}" for i in range(n)], deadline=clock() + timeout, lane=lane)


def test_empty_queue_is_never_ready() -> None:
    q, _ = make()
    assert not q.ready(busy_replicas=0)
    assert q.next_wakeup(busy_replicas=0) is None


def test_goes_at_once_when_no_replica_is_busy() -> None:
    q, clock = make()
    q.put(ticket(1, clock))
    assert q.ready(busy_replicas=0)
    assert q.next_wakeup(busy_replicas=0) == 0.0


def test_waits_for_max_wait_while_a_replica_is_busy() -> None:
    q, clock = make(max_wait_ms=10)
    q.put(ticket(1, clock))
    assert not q.ready(busy_replicas=1)
    assert q.next_wakeup(busy_replicas=1) == pytest.approx(0.010)
    clock.advance(0.009)
    assert not q.ready(busy_replicas=1)
    clock.advance(0.001)
    assert q.ready(busy_replicas=1)


def test_full_batch_goes_without_waiting() -> None:
    q, clock = make(max_size=4, max_wait_ms=1000)
    for _ in range(4):
        q.put(ticket(1, clock))
    assert q.ready(busy_replicas=3)
    batch = q.take()
    assert batch.size == 4
    assert len(q) == 0


def test_batch_never_exceeds_max_size_and_keeps_order() -> None:
    q, clock = make(max_size=4)
    tickets = [ticket(1, clock, tag=f"t{i}-") for i in range(10)]
    for t in tickets:
        q.put(t)
    sizes, seen = [], []
    while q.ready(busy_replicas=0):
        batch = q.take()
        sizes.append(batch.size)
        seen += batch.inputs()
    assert sizes == [4, 4, 2]
    assert seen == [t.inputs[0] for t in tickets]


def test_large_ticket_is_split_across_batches_in_order() -> None:
    q, clock = make(max_size=4)
    big = ticket(6, clock, tag="big")
    small = ticket(1, clock, tag="small")
    q.put(big)
    q.put(small)
    first = q.take()
    assert [(s.ticket, s.start, s.stop) for s in first.slices] == [(big, 0, 4)]
    second = q.take()
    assert [(s.ticket, s.start, s.stop) for s in second.slices] == [(big, 4, 6), (small, 0, 1)]
    assert second.inputs() == ["big4", "big5", "small0"]


def test_queue_bound_counts_inputs_and_refuses_whole_requests() -> None:
    q, clock = make(max_queue=5)
    q.put(ticket(3, clock))
    with pytest.raises(Overloaded) as info:
        q.put(ticket(3, clock))
    assert info.value.status == 503 and info.value.headers() == {"Retry-After": "1"}
    assert len(q) == 3
    q.put(ticket(2, clock))
    assert len(q) == 5


def test_expired_tickets_are_removed_and_never_handed_out() -> None:
    q, clock = make()
    short = ticket(1, clock, timeout=0.5, tag="short")
    long = ticket(1, clock, timeout=5.0, tag="long")
    q.put(short)
    q.put(long)
    clock.advance(0.5)
    assert q.pop_expired() == [short]
    assert q.take().inputs() == ["long0"]


def test_wakeup_accounts_for_the_nearest_deadline() -> None:
    q, clock = make(max_wait_ms=1000)
    q.put(ticket(1, clock, timeout=0.2))
    assert q.next_wakeup(busy_replicas=1) == pytest.approx(0.2)


def test_discard_removes_only_waiting_inputs() -> None:
    q, clock = make(max_size=2)
    big = ticket(3, clock)
    q.put(big)
    q.take()  # two of three handed out
    assert len(q) == 1
    q.discard(big)
    assert len(q) == 0
    assert not q.ready(busy_replicas=0)


def test_drain_empties_the_queue() -> None:
    q, clock = make()
    a, b = ticket(1, clock), ticket(2, clock)
    q.put(a)
    q.put(b)
    assert q.drain() == [a, b]
    assert len(q) == 0


@pytest.mark.parametrize("kwargs", [{"max_size": 0}, {"max_wait_ms": -1}, {"max_queue": 0},
                                    {"timeout": 0}])
def test_batching_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Batching(**kwargs)  # type: ignore[arg-type]


def test_no_wakeups_for_batches_while_no_replica_is_free() -> None:
    q, clock = make(max_wait_ms=10)
    q.put(ticket(8, clock, timeout=2.0))  # full: "ready", but nobody can take it
    assert q.next_wakeup(busy_replicas=1, free_replicas=0) == pytest.approx(2.0)
    assert q.next_wakeup(busy_replicas=1, free_replicas=1) == 0.0


# -- the background lane ----------------------------------------------------------------


def test_background_is_not_counted_against_max_queue() -> None:
    q, clock = make(max_queue=4)
    q.put(ticket(10, clock, lane="background"))  # more than max_queue: admitted
    q.put(ticket(4, clock))  # the live lane is still empty: admitted
    with pytest.raises(Overloaded):
        q.put(ticket(1, clock))
    q.put(ticket(3, clock, lane="background"))  # background puts never raise
    assert (q.waiting("live"), q.waiting("background"), len(q)) == (4, 13, 17)


def test_live_goes_before_background_at_equal_arrival() -> None:
    q, clock = make(max_size=2)
    bg = ticket(2, clock, tag="bg", lane="background")
    live = ticket(2, clock, tag="live")
    q.put(bg)
    q.put(live)
    assert q.take().inputs() == ["live0", "live1"]
    assert q.take(free_replicas=2).inputs() == ["bg0", "bg1"]


def test_background_not_yet_aged_stays_behind_newer_live() -> None:
    q, clock = make(max_size=1, aging=2.0)
    q.put(ticket(1, clock, tag="bg", lane="background"))
    clock.advance(1.5)
    q.put(ticket(1, clock, tag="live"))
    assert q.take().inputs() == ["live0"]
    assert q.take().inputs() == ["bg0"]


def test_aged_background_goes_ahead_of_newer_live() -> None:
    q, clock = make(max_size=1, aging=2.0)
    q.put(ticket(1, clock, tag="bg", lane="background"))
    clock.advance(2.5)
    q.put(ticket(1, clock, tag="live"))
    assert q.take().inputs() == ["bg0"]
    assert q.take().inputs() == ["live0"]


def test_aged_background_shares_a_batch_with_live() -> None:
    q, clock = make(max_size=4, aging=2.0)
    bg = ticket(3, clock, tag="bg", lane="background")
    q.put(bg)
    clock.advance(2.5)
    live = ticket(2, clock, tag="live")
    q.put(live)
    first = q.take(free_replicas=2)  # a spare replica: no share limit
    assert [(s.ticket, s.start, s.stop) for s in first.slices] == [(bg, 0, 3), (live, 0, 1)]
    assert (q.waiting("live"), q.waiting("background"), len(q)) == (1, 0, 1)
    assert q.take().inputs() == ["live1"]
    assert len(q) == 0


def test_queued_live_requests_keep_background_out_of_their_batch() -> None:
    q, clock = make(max_size=4, aging=2.0)
    q.put(ticket(3, clock, tag="bg", lane="background"))
    q.put(ticket(2, clock, tag="live"))
    clock.advance(LIVE_ACTIVE + 0.01)  # no new live request, but these still wait
    assert q.take(free_replicas=2).inputs() == ["live0", "live1"]
    assert not q.live_active()
    assert q.take().inputs() == ["bg0", "bg1", "bg2"]


def test_waiting_counts_each_lane() -> None:
    q, clock = make()
    assert (q.waiting("live"), q.waiting("background"), len(q)) == (0, 0, 0)
    q.put(ticket(2, clock))
    q.put(ticket(3, clock, lane="background"))
    assert (q.waiting("live"), q.waiting("background"), len(q)) == (2, 3, 5)


def test_background_alone_goes_at_once_when_live_traffic_is_quiet() -> None:
    q, clock = make(max_wait_ms=10)
    q.put(ticket(1, clock, tag="bg", lane="background"))
    assert q.ready(busy_replicas=0)
    assert q.ready(busy_replicas=1)  # nobody waits on it: no max_wait_ms
    assert q.take().inputs() == ["bg0"]


def test_while_live_is_active_background_keeps_the_last_replica_free() -> None:
    q, clock = make(max_size=16, aging=2.0)
    q.put(ticket(1, clock, tag="live"))
    q.take()  # the live request is computing
    q.put(ticket(20, clock, tag="bg", lane="background"))
    assert not q.ready(busy_replicas=1, free_replicas=1)
    assert q.next_wakeup(busy_replicas=1, free_replicas=1) == pytest.approx(LIVE_ACTIVE)
    assert q.ready(busy_replicas=1, free_replicas=2)  # a spare replica: a full batch
    assert q.take(free_replicas=2).inputs() == [f"bg{i}" for i in range(16)]
    clock.advance(LIVE_ACTIVE + 0.01)  # quiet
    assert q.ready(busy_replicas=2, free_replicas=1)
    assert q.take().inputs() == ["bg16", "bg17", "bg18", "bg19"]


def test_while_live_is_active_a_live_batch_is_not_filled_with_background() -> None:
    q, clock = make(max_size=8, aging=2.0)
    q.put(ticket(4, clock, tag="bg", lane="background"))
    q.put(ticket(2, clock, tag="live"))
    assert q.take(free_replicas=3).inputs() == ["live0", "live1"]


def test_aged_background_on_the_last_replica_takes_a_small_share() -> None:
    q, clock = make(max_size=16, aging=2.0)
    q.put(ticket(10, clock, tag="bg", lane="background"))
    clock.advance(2.5)
    q.put(ticket(3, clock, tag="live"))
    assert q.ready(busy_replicas=0)
    # 16 // BACKGROUND_SHARE background inputs first (they aged), the rest for live.
    share = 16 // BACKGROUND_SHARE
    assert q.take().inputs() == [f"bg{i}" for i in range(share)] + ["live0", "live1", "live2"]
    q.put(ticket(3, clock, tag="more"))
    assert q.take().inputs() == ["more0", "more1", "more2"]  # the rest ranks anew
    clock.advance(2.5)
    q.put(ticket(1, clock, tag="last"))
    assert q.take().inputs()[:share] == [f"bg{i}" for i in range(share, 2 * share)]


def test_a_reranked_ticket_goes_behind_older_background_tickets() -> None:
    q, clock = make(max_size=16, aging=2.0)
    first = ticket(10, clock, tag="a", lane="background")
    q.put(first)
    clock.advance(0.5)
    q.put(ticket(10, clock, tag="b", lane="background"))
    clock.advance(2.0)  # both aged
    q.put(ticket(1, clock, tag="live"))
    share = 16 // BACKGROUND_SHARE
    assert q.take().inputs() == [f"a{i}" for i in range(share)] + ["live0"]
    assert first.rank_at == clock()
    q.put(ticket(1, clock, tag="live2"))
    # b now ranks before the rest of a, which ranks as if it had just arrived.
    assert q.take().inputs() == ["live20"] + [f"b{i}" for i in range(share)]


def test_aged_background_alone_with_a_long_max_wait_does_not_spin() -> None:
    q, clock = make(max_size=16, max_wait_ms=5000, aging=1.0)
    q.put(ticket(1, clock, tag="live"))
    q.take()
    q.put(ticket(4, clock, tag="bg", lane="background"))
    assert not q.ready(busy_replicas=1)
    assert q.next_wakeup(busy_replicas=1) == pytest.approx(LIVE_ACTIVE)
    clock.advance(1.0)  # the background has aged; live still active (just answered)
    q.live_answered()
    assert q.live_active() and not q.waiting("live")
    assert q.ready(busy_replicas=1) and q.next_wakeup(busy_replicas=1) == 0.0
    assert q.take().inputs() == ["bg0", "bg1"]  # its share


def test_drain_covers_both_lanes() -> None:
    q, clock = make()
    live, bg = ticket(1, clock), ticket(2, clock, lane="background")
    q.put(bg)
    q.put(live)
    assert set(q.drain()) == {live, bg}
    assert (q.waiting("live"), q.waiting("background"), len(q)) == (0, 0, 0)
    assert not q.ready(busy_replicas=0)


def test_pop_expired_covers_both_lanes() -> None:
    q, clock = make()
    live_short = ticket(1, clock, timeout=0.5)
    bg_short = ticket(2, clock, timeout=0.5, lane="background")
    live_long = ticket(1, clock, tag="live")
    bg_long = ticket(1, clock, tag="bg", lane="background")
    for t in (live_short, bg_short, live_long, bg_long):
        q.put(t)
    clock.advance(0.5)
    assert set(q.pop_expired()) == {live_short, bg_short}
    assert (q.waiting("live"), q.waiting("background")) == (1, 1)
    assert q.take().inputs() == ["live0"]
    assert q.take().inputs() == ["bg0"]


def test_discard_covers_both_lanes() -> None:
    q, clock = make(max_size=2)
    bg = ticket(3, clock, lane="background")
    live = ticket(1, clock)
    q.put(bg)
    q.put(live)
    q.take()  # live0 handed out
    q.take(free_replicas=2)  # bg0 and bg1
    assert (q.waiting("live"), q.waiting("background")) == (0, 1)
    q.discard(bg)
    q.discard(live)  # already fully handed out: nothing to remove
    assert (q.waiting("live"), q.waiting("background"), len(q)) == (0, 0, 0)
    assert not q.ready(busy_replicas=0)


# -- batches of similar size (Model.input_size) ---------------------------------------


def sized(q: BatchQueue, clock: FakeClock, *sizes: float, n: int = 1,
          lane: Lane = "live") -> list[Ticket]:
    tickets = []
    for size in sizes:
        t = Ticket([f"s{size}-{i}" for i in range(n)], deadline=clock() + 5, lane=lane,
                   size=size)
        q.put(t)
        tickets.append(t)
        clock.advance(0.001)
    return tickets


def test_a_sized_batch_groups_similar_sizes_around_the_oldest() -> None:
    q, clock = make(max_size=8, max_queue=64)
    t10, t100, t12, t18, t25, t9, t200 = sized(q, clock, 10, 100, 12, 18, 25, 9, 200)
    first = q.take()
    # The oldest (10) and those nearest it while largest <= 2 x smallest: 9, 12, 18; not
    # 25 (25 > 2 x 9). In arrival order.
    assert [s.ticket for s in first.slices] == [t10, t12, t18, t9]
    assert [s.ticket for s in q.take().slices] == [t100, t200]  # 200 = 2 x 100: still in
    assert [s.ticket for s in q.take().slices] == [t25]
    assert len(q) == 0 and not q.ready(busy_replicas=0)


def test_sized_batches_hold_whole_requests_within_max_size() -> None:
    q, clock = make(max_size=4, max_queue=64)
    a, b, c, d = sized(q, clock, 10, 11, 12, 13, n=2)
    assert [s.ticket for s in q.take().slices] == [a, b]
    assert [s.ticket for s in q.take().slices] == [c, d]
    # A request larger than a batch is split in order, as without sizes.
    (big,) = sized(q, clock, 10, n=6)
    assert [(s.start, s.stop) for s in q.take().slices] == [(0, 4)]
    assert [(s.start, s.stop) for s in q.take().slices] == [(4, 6)]


def test_a_request_of_a_rare_size_waits_only_until_it_is_the_oldest() -> None:
    q, clock = make(max_size=4, max_queue=64)
    (first,) = sized(q, clock, 10)
    (rare,) = sized(q, clock, 500)
    taken = []
    for _ in range(6):  # short requests keep arriving faster than batches go
        sized(q, clock, 10, 10, 10, 10)
        taken.append([s.ticket for s in q.take().slices])
    assert first in taken[0] and rare not in taken[0]
    assert taken[1] == [rare]  # the oldest once the first batch went: it goes, alone


def test_background_work_is_not_grouped_and_ranks_as_before() -> None:
    q, clock = make(max_size=4, max_queue=64, aging=1.0)
    (job,) = sized(q, clock, 10, n=3, lane="background")
    clock.advance(2.0)  # aged: ranks ahead of live traffic
    sized(q, clock, 300)
    batch = q.take()
    assert batch.slices[0].ticket is job


def test_size_ratio_is_checked() -> None:
    with pytest.raises(ValueError, match="size_ratio"):
        Batching(size_ratio=0.5)
    with pytest.raises(ValueError, match="size_ratio"):
        Batching(size_ratio=float("nan"))


def test_sized_batches_look_at_the_oldest_requests_only_and_keep_the_rest_in_order() -> None:
    from corral.batching.queue import SIZED_WINDOW

    q, clock = make(max_size=2, max_queue=4096)
    window = SIZED_WINDOW * 2
    early = sized(q, clock, *([100.0] + [500.0] * (window - 1)))
    late = sized(q, clock, 100.0, 100.0)  # beyond the window: not looked at yet
    first = [s.ticket for s in q.take().slices]
    assert first == [early[0]]  # nothing near 100 within the window
    assert [s.ticket for s in q.take().slices] == early[1:3]
    rest = list(q._lanes["live"])
    assert rest == early[3:] + late
