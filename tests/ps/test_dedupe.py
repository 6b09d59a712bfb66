"""Exactly-once pushes: each (worker, clock, range) is applied once, across restarts too."""
from downpour.ps.dedupe import PushLog


def test_a_push_is_new_once_and_seen_after():
    log = PushLog()
    assert not log.seen(0, 5, 0, 10)
    log.add(0, 5, 0, 10)
    assert log.seen(0, 5, 0, 10)
    assert not log.seen(1, 5, 0, 10)       # another worker's clock 5
    assert not log.seen(0, 5, 10, 20)      # another sub-range at the same clock
    assert not log.seen(0, 6, 0, 10)


def test_pushes_older_than_the_window_count_as_applied_and_memory_stays_bounded():
    log = PushLog(window=8)
    for clock in range(100):
        log.add(0, clock, 0, 1)
    assert log.seen(0, 3, 0, 1)
    assert len(log.recent[0]) <= 16


def test_the_log_survives_a_checkpoint_round_trip():
    log = PushLog()
    for clock in (0, 1, 2, 7):
        log.add(3, clock, 0, 4)
    restored = PushLog.from_state(log.state())
    assert all(restored.seen(3, c, 0, 4) for c in (0, 1, 2, 7))
    assert not restored.seen(3, 5, 0, 4)
