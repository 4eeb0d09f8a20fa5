"""Dask campaign under failure, real LocalCluster of 2 worker processes: a worker process killed
(SIGKILL) in the middle of a task, and a task that raises. The campaign must finish, keep every
finished result on disk, and a re-run must run only what is missing."""
import os
import signal
import threading
import time

import numpy as np
import openmm

from harmonic import PARAM, harmonic_system, start_positions
from mlpolar.workflows.campaign import result_path, run_tasks
from mlpolar.workflows.fe_tasks import sample_window


def _window_tasks(n_tasks, n_samples, platform="Reference"):
    xml = openmm.XmlSerializer.serialize(harmonic_system(3))
    kw = dict(system_xml=xml, positions=start_positions(3), box=None, parameter=PARAM,
              lambdas=[0.0, 1.0], n_samples=n_samples, steps_per_sample=400,
              equilibration_steps=0, temperature_K=300.0, friction_per_ps=10.0,
              platform=platform)
    return {f"w-{i}": (sample_window, dict(kw, k=i % 2, seed=i)) for i in range(n_tasks)}


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_killed_worker_task_is_rerun_and_campaign_completes(client, tmp_path):
    tasks = _window_tasks(4, n_samples=800)  # 3.2e5 steps: seconds per task
    killed = {}

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            busy = {w: ks for w, ks in client.processing().items() if ks}
            if busy:
                time.sleep(0.5)  # let the task get under way
                addr, keys = next(iter(busy.items()))
                name = str(keys[0]).rsplit("-", 1)[0]  # keys are "<task name>-<stamp>"
                pid = client.run(os.getpid, workers=[addr])[addr]
                # its result not yet on disk: the task is still running when the worker dies
                killed.update(pid=pid, name=name,
                              finished_before=result_path(tmp_path, name).exists())
                os.kill(pid, signal.SIGKILL)  # a worker process started by this test's cluster
            time.sleep(0.05)

    th = threading.Thread(target=killer)
    th.start()
    out = run_tasks(tasks, tmp_path, client=client, retries=1, progress=False,
                    log=lambda *a: None)
    th.join()
    assert killed, "no task was seen running, so no worker was killed"
    time.sleep(0.5)
    assert not _alive(killed["pid"])
    assert out["failed"] == {} and sorted(out["results"]) == sorted(tasks)
    assert all(result_path(tmp_path, n).exists() for n in tasks)
    # the task that was running on the dead worker was rerun elsewhere, from the same seed:
    # on the Reference platform its result equals a direct run bit for bit
    name = killed["name"]
    assert name in tasks and not killed["finished_before"]
    fn, kw = tasks[name]
    np.testing.assert_array_equal(out["results"][name]["u_ln"], fn(**kw)["u_ln"])
    assert len(client.scheduler_info()["workers"]) >= 1  # the nanny restarts the worker


def test_failing_task_is_reported_others_kept_and_rerun_only_missing(client, tmp_path):
    tasks = _window_tasks(3, n_samples=5)
    fn, kw = tasks["w-1"]
    broken = dict(tasks, **{"w-1": (fn, dict(kw, platform="NoSuchPlatform"))})
    out = run_tasks(broken, tmp_path, client=client, retries=1, progress=False,
                    log=lambda *a: None)
    assert list(out["failed"]) == ["w-1"] and "NoSuchPlatform" in out["failed"]["w-1"]
    assert sorted(out["results"]) == ["w-0", "w-2"]
    assert not result_path(tmp_path, "w-1").exists()
    stamp = result_path(tmp_path, "w-0").stat().st_mtime_ns
    out2 = run_tasks(tasks, tmp_path, client=client, progress=False, log=lambda *a: None)
    assert out2["new"] == ["w-1"] and out2["failed"] == {}
    assert result_path(tmp_path, "w-0").stat().st_mtime_ns == stamp  # not re-run
    assert sorted(out2["results"]) == ["w-0", "w-1", "w-2"]


def test_task_names_are_checked(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="task names"):
        run_tasks({"a/b": (sample_window, {})}, tmp_path)


def test_campaign_on_an_external_scheduler(tmp_path):
    """The cluster route: a separately started `dask scheduler` and `dask worker` processes (as
    dask-jobqueue starts them on a batch system), reached by address with scheduler=...; the
    campaign's results equal direct runs on the Reference platform bit for bit."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        if not sched_file.exists():
            pytest.fail("the dask scheduler did not start within 60 s")
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", "--scheduler-file", str(sched_file),
                                       "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import json
        address = json.loads(sched_file.read_text())["address"]
        tasks = _window_tasks(2, n_samples=5)
        out = run_tasks(tasks, tmp_path / "out", scheduler=address, retries=1, progress=False,
                        log=lambda *a: None)
        assert out["failed"] == {} and sorted(out["results"]) == sorted(tasks)
        for name, (fn, kw) in tasks.items():
            np.testing.assert_array_equal(out["results"][name]["u_ln"], fn(**kw)["u_ln"])
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
