"""What a person sees of a running job: the progress line and the status table."""
from downpour.ps.progress import status_table, summary_line


def _worker(rank: int, latest: dict, step: int = 10) -> dict:
    return {"role": "worker", "name": f"worker-{rank}", "address": "", "state": "alive", "last_heartbeat": 0.1,
            "stats": {"step": step, "clock": step}, "latest": latest}


def _status(*workers: dict) -> dict:
    return {"state": "running", "elapsed": 1.0, "steps_per_worker": 100, "updates_applied": 20,
            "nodes": list(workers)}


def test_the_progress_line_averages_the_loss_of_the_workers_that_reported_one():
    line = summary_line(_status(_worker(0, {"loss": 1.0, "samples_per_s": 100.0, "step": 10}),
                                _worker(1, {"loss": 3.0, "samples_per_s": 50.0, "step": 10})))
    assert "loss 2.0000" in line and "150 samples/s" in line and "workers 2/2" in line


def test_an_alarm_or_a_worker_yet_to_report_does_not_break_the_progress_line_or_the_table():
    alarm = {"kind": "alarm", "fatal": True, "clock": 250, "message": "gradient norm is nan"}
    status = _status(_worker(0, {"loss": 0.5, "step": 10}), _worker(1, alarm), _worker(2, {}))
    assert "loss 0.5000" in summary_line(status)
    assert "worker-1" in status_table(status)
    assert "loss      -" in summary_line(_status(_worker(0, alarm)))


def test_the_status_table_shows_each_ranges_primary_epoch_and_backup():
    status = dict(_status(_worker(0, {"loss": 0.5, "step": 10})), ranges=[
        {"range": 0, "primary": "shard-1", "epoch": 2, "backup": "shard-0", "backup_state": "waiting",
         "unreplicated_seconds": 3.25},
        {"range": 1, "primary": "shard-1", "epoch": 1, "backup": None, "backup_state": None,
         "unreplicated_seconds": None}])
    lines = status_table(status).splitlines()
    assert lines[-3].split() == ["RANGE", "PRIMARY", "EPOCH", "BACKUP", "UNREPLICATED"]
    assert lines[-2].split() == ["0", "shard-1", "2", "shard-0", "(waiting)", "3.2s"]
    assert lines[-1].split() == ["1", "shard-1", "1", "-", "-"]
