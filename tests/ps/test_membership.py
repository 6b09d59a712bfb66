"""The coordinator's state machine, driven by hand with a clock of our own: no process, no socket."""
import pytest

from downpour.ps import protocol as P
from downpour.ps.membership import ALIVE, DEAD, FINISHED, Membership, Refused

TIMEOUT, STARTUP = 2.0, 30.0


def config(shards=2, workers=2, replication=1, **workers_extra):
    return {"shards": {"count": shards, "replication": replication},
            "workers": {"count": workers, **workers_extra},
            "cluster": {"heartbeat_timeout": TIMEOUT, "startup_timeout": STARTUP}}


def running(shards=2, workers=2, replication=1, now=0.0):
    """A job with every node registered and beating once: running."""
    m = Membership(config(shards, workers, replication), now)
    for r in range(shards):
        m.register(P.SHARD, {"rank": r, "address": f"tcp://s{r}"}, now)
    m.register(P.EVALUATOR, {}, now)
    for _ in range(workers):
        m.register(P.WORKER, {}, now)
    beat_all(m, now)
    return m


def advance(m, start, end, silent=()):
    """Time passes from `start` to `end`: everyone else beats every half second, the clock ticks."""
    t = start
    while t < end:
        t = min(end, t + 0.5)
        beat_all(m, t, but=silent)
        m.tick(t)
    return t


def beat_all(m, now, but=()):
    for name, node in list(m.nodes.items()):
        if name not in but and node.state in (ALIVE, DEAD):
            m.beat(name, {}, now)


def test_nodes_get_the_rank_they_ask_for_or_the_lowest_free_one():
    m = Membership(config(), 0.0)
    assert m.register(P.WORKER, {"rank": 1}, 0.0)[0].rank == 1
    assert m.register(P.WORKER, {}, 0.0)[0].rank == 0
    assert m.register(P.WORKER, {}, 0.0)[0].rank == 2      # elastic: beyond workers.count
    assert m.register(P.SHARD, {}, 0.0)[0].rank == 0
    with pytest.raises(Refused, match="out of range"):
        m.register(P.SHARD, {"rank": 2}, 0.0)
    with pytest.raises(Refused, match="already taken") as taken:
        m.register(P.SHARD, {"rank": 0}, 0.0)
    assert taken.value.retry                                 # the holder may yet be declared dead


def test_the_job_runs_once_every_shard_the_evaluator_and_the_expected_workers_have_registered():
    m = Membership(config(workers=2, external=1), 0.0)
    for r in range(2):
        m.register(P.SHARD, {"rank": r}, 0.0)
    m.register(P.EVALUATOR, {}, 0.0)
    m.register(P.WORKER, {}, 0.0)
    m.register(P.WORKER, {}, 0.0)
    assert m.state == P.STARTING                             # count + external: one more to come
    assert "waiting for worker 2" in m._missing()
    m.register(P.WORKER, {}, 0.0)
    assert m.state == P.RUNNING


def test_a_start_up_that_never_completes_fails_naming_who_is_missing():
    m = Membership(config(), 0.0)
    m.register(P.SHARD, {"rank": 0}, 0.0)
    m.beat("shard-0", {}, STARTUP)
    m.tick(STARTUP + 0.1)
    assert m.state == P.FAILED and "waiting for shard 1;" in m.reason and "evaluator 0" in m.reason


def test_during_start_up_the_heartbeat_names_no_workers_and_no_shards():
    m = Membership(config(), 0.0)
    node, _ = m.register(P.SHARD, {"rank": 0}, 0.0)
    reply = m.heartbeat_reply(node)
    assert reply["state"] == P.STARTING and reply["workers"] is None and reply["shards"] is None


def test_liveness_follows_each_nodes_own_last_word():
    m = running()
    t = advance(m, 0.0, 3 * TIMEOUT, silent=("worker-1",))
    assert m.nodes["worker-1"].state == DEAD
    assert all(n.state == ALIVE for name, n in m.nodes.items() if name != "worker-1")
    dead = [e for e in m.events if e["event"] == "dead"]
    assert [e["node"] for e in dead] == ["worker-1"] and TIMEOUT < dead[0]["silent_seconds"] <= TIMEOUT + 0.5
    assert m.live_workers() == [0]
    m.beat("worker-1", {"clock": 7}, t + 0.1)
    assert m.nodes["worker-1"].state == ALIVE and m.live_workers() == [0, 1]
    assert m.events[-1]["event"] == "rejoined"


def test_a_node_that_never_beat_is_given_the_start_up_timeout():
    m = Membership(config(), 0.0)
    m.register(P.WORKER, {}, 0.0)
    m.tick(TIMEOUT + 1)
    assert m.nodes["worker-0"].state == ALIVE
    m.tick(STARTUP + 1)
    assert m.nodes["worker-0"].state == DEAD


def test_the_job_finishes_when_every_live_worker_is_done_and_ends_with_the_result():
    m = running()
    m.done(m.nodes["worker-0"], {"clock": 10}, 1.0)
    assert m.state == P.RUNNING
    m.done(m.nodes["worker-1"], {"clock": 10}, 1.0)
    assert m.state == P.FINISHING and m.nodes["worker-1"].state == FINISHED
    m.finish(P.DONE_STATE, "finished", 2.0)
    m.finish(P.FAILED, "too late", 3.0)                     # the first ending stands
    assert (m.state, m.reason) == (P.DONE_STATE, "finished")


def test_when_every_worker_dies_the_job_fails():
    m = running(workers=1)
    advance(m, 0.0, TIMEOUT + 0.5, silent=("worker-0",))
    assert m.state == P.FAILED and m.reason == "every worker died"


def test_the_evaluator_dying_fails_the_job():
    m = running()
    advance(m, 0.0, TIMEOUT + 0.5, silent=("evaluator-0",))
    assert m.state == P.FAILED and "evaluator" in m.reason


def test_a_dead_shard_without_a_backup_is_waited_for_then_fails_the_job():
    m = running()
    t = advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-1",))
    assert m.nodes["shard-1"].state == DEAD and m.state == P.RUNNING
    assert m.heartbeat_reply(m.nodes["worker-0"])["shards"] is None   # range 1 has nobody to serve it
    advance(m, t, TIMEOUT + STARTUP - 0.5, silent=("shard-1",))
    assert m.state == P.RUNNING
    advance(m, TIMEOUT + STARTUP - 0.5, TIMEOUT + STARTUP + 0.5, silent=("shard-1",))
    assert m.state == P.FAILED and "shard-1" in m.reason and "did not come back" in m.reason


def test_early_stopping_is_the_evaluators_call():
    m = running()
    m.early_stop(m.nodes["worker-0"], "a worker cannot stop the job", 5, 1.0)
    assert m.state == P.RUNNING
    m.early_stop(m.nodes["evaluator-0"], "early stopping: no better in 5", 5, 1.0)
    assert m.state == P.FINISHING and m.reason.startswith("early stopping")


def test_a_restarted_shard_is_told_so_and_its_rollback_is_counted():
    m = running()
    m.beat("shard-1", {"updates": 500}, 1.0)
    with pytest.raises(Refused, match="already taken"):       # not before it is declared dead
        m.register(P.SHARD, {"rank": 1}, 1.5)
    advance(m, 1.0, 4.0, silent=("shard-1",))
    node, restart = m.register(P.SHARD, {"rank": 1}, 4.0)
    assert restart and node.registrations == 2
    m.beat("shard-1", {"updates": 450, "restored_updates": 420}, 4.5)
    assert m.rolled_back == {"shard-1": 80}


def test_unknown_senders_must_register_first_and_a_finished_job_takes_nobody():
    m = running()
    with pytest.raises(Refused, match="register first"):
        m.beat("worker-9", {}, 1.0)
    m.finish(P.STOPPED, "stopped by request", 1.0)
    with pytest.raises(Refused, match="the job is over"):
        m.register(P.WORKER, {}, 1.0)
