"""The coordinator's state machine, driven by hand with a clock of our own: no process, no socket."""
import pytest

from downpour.ps import protocol as P
from downpour.ps.membership import ALIVE, DEAD, FINISHED, Membership, Refused

TIMEOUT, STARTUP = 2.0, 30.0


def config(shards=2, workers=2, replication=1, **workers_extra):
    return {"shards": {"count": shards, "replication": replication},
            "workers": {"count": workers, "external": 0, **workers_extra},
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


def test_a_registration_asked_again_after_a_lost_reply_keeps_its_rank_instead_of_taking_a_second():
    m = Membership(config(), 0.0)
    first, restart = m.register(P.SHARD, {"token": "a1"}, 0.0)
    again, restart_again = m.register(P.SHARD, {"token": "a1"}, 1.0)    # the reply was lost: asked again
    assert (again.rank, restart_again) == (first.rank, restart) == (0, False)
    assert m.register(P.SHARD, {"token": "b2"}, 1.0)[0].rank == 1       # another shard
    named = m.register(P.WORKER, {"rank": 1, "token": "c3"}, 1.0)[0]
    assert m.register(P.WORKER, {"rank": 1, "token": "c3"}, 2.0)[0] is named   # not "rank 1 already taken"
    assert [n.name for n in m.nodes.values()] == ["shard-0", "shard-1", "worker-1"]


def test_an_external_worker_never_takes_a_rank_the_launchers_workers_will_ask_for():
    m = Membership(config(workers=2, external=2), 0.0)
    assert m.register(P.WORKER, {"external": True}, 0.0)[0].rank == 2
    assert m.register(P.WORKER, {"rank": 0}, 0.0)[0].rank == 0
    assert m.register(P.WORKER, {"external": True}, 0.0)[0].rank == 3
    assert m.num_workers == 4


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
    advance(m, 0.0, STARTUP + 0.5)
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
    t = advance(m, 0.0, TIMEOUT + 1, silent=("worker-0",))
    assert m.nodes["worker-0"].state == ALIVE
    advance(m, t, STARTUP + 1, silent=("worker-0",))
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


def test_a_dead_evaluator_is_waited_for_and_fails_the_job_only_if_it_does_not_come_back():
    m = running()
    t = advance(m, 0.0, TIMEOUT + 0.5, silent=("evaluator-0",))
    assert m.nodes["evaluator-0"].state == DEAD and m.state == P.RUNNING     # a stall: it may come back
    m.beat("evaluator-0", {}, t)
    assert m.nodes["evaluator-0"].state == ALIVE
    t = advance(m, t, t + TIMEOUT + STARTUP + 1.0, silent=("evaluator-0",))
    assert m.state == P.FAILED and "evaluator-0" in m.reason and "did not come back" in m.reason


def test_a_coordinator_that_did_not_run_holds_nobodys_silence_against_them():
    m = running()
    t = advance(m, 0.0, 1.0)
    m.tick(t + 5 * TIMEOUT)                                  # stopped for longer than anybody's timeout
    assert all(n.state == ALIVE for n in m.nodes.values())
    assert m.events[-1]["event"] == "coordinator_stalled" and m.events[-1]["seconds"] == 5 * TIMEOUT
    advance(m, t + 5 * TIMEOUT, t + 7 * TIMEOUT, silent=("worker-1",))   # after it, silence counts again
    assert m.nodes["worker-1"].state == DEAD and m.nodes["worker-0"].state == ALIVE


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


# ---- replication: epochs, promotion, fencing, restored backups ------------------------------------

def report(m, shard, now, synced=True):
    """`shard` tells the coordinator which backups it holds, as its orders say it does."""
    orders = m.heartbeat_reply(m.nodes[f"shard-{shard}"])["backups"]
    m.beat(f"shard-{shard}", {"backups": {r: [o["gen"], synced] for r, o in orders.items()}}, now)


def replicated(shards=2, now=0.0):
    """A replicated job whose backups have all taken their ranges' state: running."""
    m = Membership(config(shards, replication=2), now)
    for r in range(shards):
        m.register(P.SHARD, {"rank": r, "address": f"tcp://s{r}"}, now)
    m.register(P.EVALUATOR, {}, now)
    for _ in range(2):
        m.register(P.WORKER, {}, now)
    beat_all(m, now)
    for r in range(shards):
        report(m, r, now)
    assert m.state == P.RUNNING
    return m


def orders(m, shard):
    reply = m.heartbeat_reply(m.nodes[f"shard-{shard}"])
    return {k: reply[k] for k in ("serve", "replicate", "backups")}


def test_with_replication_the_job_runs_once_every_range_has_a_ready_backup():
    m = Membership(config(replication=2), 0.0)
    for r in range(2):
        m.register(P.SHARD, {"rank": r, "address": f"tcp://s{r}"}, 0.0)
    m.register(P.EVALUATOR, {}, 0.0)
    m.register(P.WORKER, {}, 0.0)
    m.register(P.WORKER, {}, 0.0)
    assert m.state == P.STARTING
    # shard-1 backs up range 0; shard-0 is told to replicate only once shard-1 has heard of it
    assert orders(m, 1)["backups"] == {"0": {"gen": m.ranges[0].gen, "epoch": 1}}
    assert orders(m, 0)["replicate"] == {"0": None}
    report(m, 1, 0.1, synced=False)
    assert orders(m, 0)["replicate"] == {"0": {"to": "tcp://s1", "gen": m.ranges[0].gen}}
    report(m, 1, 0.2)
    report(m, 0, 0.2)
    assert m.state == P.RUNNING
    assert [r["backup_state"] for r in m.ranges.table(0.3)] == ["ready", "ready"]


def test_a_stalled_primary_is_deposed_and_its_ready_backup_serves_the_range_at_a_new_epoch():
    m = replicated()
    advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-0",))
    assert m.nodes["shard-0"].state == DEAD
    assert orders(m, 1) == {"serve": {"0": 2, "1": 1}, "replicate": {"0": None, "1": None}, "backups": {}}
    reply = m.heartbeat_reply(m.nodes["worker-0"])
    assert reply["shards"] == ["tcp://s1", "tcp://s1"] and reply["epochs"] == [2, 1]
    promoted = [e for e in m.events if e["event"] == "promoted"]
    assert promoted == [{"time": promoted[0]["time"], "event": "promoted", "node": "shard-1", "range": 0,
                         "epoch": 2, "deposed": 0}]


def test_a_deposed_primary_that_comes_back_is_told_it_serves_nothing_and_rejoins_as_the_backup():
    m = replicated()
    t = advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-0",))
    m.beat("shard-0", {}, t)                                 # SIGCONT: its first word to the coordinator
    assert m.nodes["shard-0"].state == ALIVE
    mine = orders(m, 0)
    assert mine["serve"] == {} and set(mine["backups"]) == {"0", "1"}
    assert orders(m, 1)["replicate"] == {"0": None, "1": None}     # not before shard-0 has heard
    report(m, 0, t + 0.1, synced=False)
    assert {r: o["to"] for r, o in orders(m, 1)["replicate"].items()} == {"0": "tcp://s0", "1": "tcp://s0"}
    report(m, 0, t + 1.0)
    table = m.ranges.table(t + 1.0)
    assert [(r["primary"], r["backup"], r["backup_state"], r["epoch"]) for r in table] == \
        [("shard-1", "shard-0", "ready", 2), ("shard-1", "shard-0", "ready", 1)]
    # unreplicated from the moment shard-0 was declared dead (at t) until it held both states again
    assert [r["unreplicated_seconds"] for r in table] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_after_replication_is_restored_a_second_failure_promotes_again():
    m = replicated()
    t = advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-0",))
    m.beat("shard-0", {}, t)
    report(m, 0, t)
    t = advance(m, t, t + TIMEOUT + 0.5, silent=("shard-1",))    # kill -9 of the new primary
    assert m.nodes["shard-1"].state == DEAD and m.state == P.RUNNING
    assert orders(m, 0)["serve"] == {"0": 3, "1": 2}
    assert m.heartbeat_reply(m.nodes["worker-0"])["epochs"] == [3, 2]


def test_a_backup_that_does_not_hold_the_state_yet_is_never_promoted():
    m = replicated()
    t = advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-0",))
    m.beat("shard-0", {}, t)
    report(m, 0, t, synced=False)                            # still waiting for range 0's state
    t = advance(m, t, t + TIMEOUT + 0.5, silent=("shard-1",))
    assert orders(m, 0)["serve"] == {}                       # no copy to promote: range 0 is down
    assert m.heartbeat_reply(m.nodes["worker-0"])["shards"] is None
    advance(m, t, t + STARTUP + TIMEOUT, silent=("shard-1",))
    assert m.state == P.FAILED and "shard-1" in m.reason


def test_a_report_about_an_earlier_assignment_is_not_taken_for_the_present_one():
    m = replicated()
    old_gen = m.ranges[0].gen
    t = advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-1",))  # the backup of range 0 stalls: dropped
    assert m.ranges[0].backup is None
    m.beat("shard-1", {"backups": {"0": [old_gen, True]}}, t)   # back, still holding its stale copy
    assert m.ranges[0].backup == 1 and m.ranges[0].gen != old_gen
    assert m.ranges[0].backup_state == "assigned"            # the stale copy counts for nothing


def test_a_shard_restarted_after_losing_its_range_is_given_nothing_to_serve():
    m = replicated()
    t = advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-0",))
    node, restart = m.register(P.SHARD, {"rank": 0, "address": "tcp://s0-again"}, t)
    assert restart and orders(m, 0)["serve"] == {} and set(orders(m, 0)["backups"]) == {"0", "1"}


def test_without_replication_a_range_keeps_its_primary_and_its_epoch_through_a_stall():
    m = running()
    t = advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-0",))
    m.beat("shard-0", {}, t)
    assert orders(m, 0) == {"serve": {"0": 1}, "replicate": {"0": None}, "backups": {}}
    assert m.ranges.table(t)[0]["unreplicated_seconds"] is None


def test_a_range_that_lost_its_backup_gets_another_live_shard():
    m = replicated(shards=3)
    assert [(r.primary, r.backup) for r in m.ranges] == [(0, 1), (1, 2), (2, 0)]    # each next neighbour
    advance(m, 0.0, TIMEOUT + 0.5, silent=("shard-2",))
    # range 1's backup died with shard-2, range 2 was promoted to shard-0: both need a new backup
    assert [(r.primary, r.backup, r.epoch) for r in m.ranges] == [(0, 1, 1), (1, 0, 1), (0, 1, 2)]


def test_an_evaluator_that_leaves_before_the_job_is_over_fails_it():
    m = running()
    m.leave(m.nodes["evaluator-0"], {}, 1.0)
    assert m.state == P.FAILED and "evaluator left" in m.reason
