"""A run left RUNNING by a process that was SIGKILLed is ended as KILLED by the next run on the host; a live
process's run is left alone."""

import os
import subprocess
import sys

from components.services import tracking

KILLED_STEP = """
import os, signal
from components.services import tracking
with tracking.step_run(None, "compress") as t:
    print(t.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_sigkilled_runs_status_is_ended_as_killed(tracking_env, mlflow_client):
    proc = subprocess.run([sys.executable, "-c", KILLED_STEP], capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert proc.returncode == -9, proc.stderr[-2000:]
    dead_id = proc.stdout.split()[0]
    assert mlflow_client.get_run(dead_id).info.status == "RUNNING"  # what the kill leaves behind
    with tracking.step_run(None, "compress") as live:
        live_status = mlflow_client.get_run(live.run_id).info.status
        experiment = mlflow_client.get_run(live.run_id).info.experiment_id
        assert tracking.end_dead_runs(mlflow_client, experiment) == []  # this very run's process is alive
    dead = mlflow_client.get_run(dead_id)
    assert dead.info.status == "KILLED" and "ended while the run was RUNNING" in dead.data.tags["idap.error"]
    assert live_status == "RUNNING" and mlflow_client.get_run(live.run_id).info.status == "FINISHED"
