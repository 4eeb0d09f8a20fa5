"""Independent tasks on Dask, each result kept on disk as it arrives, so a campaign resumes.

:func:`run_tasks` takes named tasks (function + keyword arguments), skips those whose result file
``<outdir>/<name>.npz`` exists, submits the rest to a Dask cluster and writes each result (a dict
of numpy arrays) as soon as it comes back — on the client, so workers need no shared file system.
Files are written to a temporary name and renamed, so a killed client leaves no half file.

Failure handling: a task whose worker process dies is rescheduled by the Dask scheduler on another
worker (up to ``distributed.scheduler.allowed-failures`` times, default 3); a task that raises is
retried ``retries`` times; what still fails is reported and the campaign returns the rest
(running again retries only the missing ones).

Cluster: a ``LocalCluster`` (processes, one thread each) by default; ``scheduler="tcp://..."``
connects to a running one, e.g. from dask-jobqueue on SLURM (docs/workflows.md).
"""
from __future__ import annotations

import os
import re
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

_SCATTER_BYTES = 100_000
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def result_path(outdir, name: str) -> Path:
    return Path(outdir) / f"{name}.npz"


def save_result(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in result.items()})
    os.replace(tmp, path)


def load_result(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@contextmanager
def dask_client(scheduler: Optional[str] = None, n_workers: int = 2,
                threads_per_worker: int = 1):
    """A Client on ``scheduler`` (address) or on a fresh LocalCluster of ``n_workers``
    processes; the LocalCluster is closed on exit."""
    from dask.distributed import Client, LocalCluster
    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    if int(n_workers) < 1:
        raise ValueError(f"n_workers={n_workers} must be >= 1")
    cluster = LocalCluster(n_workers=int(n_workers), threads_per_worker=int(threads_per_worker),
                           processes=True, dashboard_address=":0")
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def run_tasks(tasks: Dict[str, Tuple[Callable, dict]], outdir, *, client=None,
              scheduler: Optional[str] = None, n_workers: int = 2, retries: int = 2,
              shared: Optional[dict] = None, progress: bool = True,
              log: Callable = print) -> dict:
    """Run every task not yet on disk; see the module doc. ``shared``: keyword arguments given
    to every task, sent to the workers once (e.g. a large serialised System) instead of with
    each task. Returns dict(results: name -> result dict for all finished tasks (old and new),
    new: names run now, failed: name -> error)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    bad = [n for n in tasks if not _NAME.match(n)]
    if bad:
        raise ValueError(f"task names {bad[:3]} may hold only letters, digits and _.+- "
                         "(they become file names)")
    if int(retries) < 0:
        raise ValueError("retries must be >= 0")
    todo = [n for n in tasks if not result_path(out, n).exists()]
    failed: Dict[str, str] = {}
    if todo:
        log(f"[mlpolar] {len(tasks) - len(todo)} of {len(tasks)} tasks already done in {out}; "
            f"running {len(todo)}")
        if client is None:
            with dask_client(scheduler, n_workers) as c:
                failed = _drive(c, tasks, todo, out, retries, shared, progress, log)
        else:
            failed = _drive(client, tasks, todo, out, retries, shared, progress, log)
    results = {n: load_result(result_path(out, n)) for n in tasks
               if result_path(out, n).exists()}
    return dict(results=results, new=[n for n in todo if n not in failed], failed=failed)


def _drive(client, tasks, todo, out, retries, shared, progress, log) -> dict:
    from dask.distributed import as_completed
    from tqdm import tqdm
    stamp = time.time_ns()
    common = {k: client.scatter(v, broadcast=True) for k, v in (shared or {}).items()}
    scattered = {}  # large arguments (a serialised System) go to the cluster once, not per task

    def share(v):
        if (isinstance(v, (str, bytes)) and len(v) > _SCATTER_BYTES) or (
                isinstance(v, np.ndarray) and v.nbytes > _SCATTER_BYTES):
            if id(v) not in scattered:
                scattered[id(v)] = (v, client.scatter(v, hash=False))
            return scattered[id(v)][1]
        return v

    futures, names = [], {}
    for name in todo:
        fn, kwargs = tasks[name]
        kwargs = {k: share(v) for k, v in kwargs.items()}
        fut = client.submit(fn, **common, **kwargs, key=f"{name}-{stamp}", pure=False,
                            retries=int(retries))
        futures.append(fut)
        names[fut.key] = name
    failed = {}
    bar = tqdm(total=len(todo), desc="tasks", disable=not progress)
    ac, futures = as_completed(futures), None  # as_completed holds them; release as they land
    for fut in ac:
        name = names[fut.key]
        if fut.status == "error":
            exc = fut.exception()
            failed[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log(f"[mlpolar] task {name} failed after {retries} retries: {failed[name]}")
        else:
            save_result(result_path(out, name), fut.result())
        fut.release()
        bar.update(1)
    bar.close()
    return failed
