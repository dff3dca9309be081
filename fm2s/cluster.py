"""Where dask tasks run: local threads (default), a local cluster of worker processes,
or an existing dask.distributed cluster."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import dask

from .errors import FM2SError, ParameterError


class Runner:
    """Runs lists of dask tasks and reports each one's completion.

    Parameters
    ----------
    client
        A ``distributed.Client``, or None for the local threaded scheduler.
    threads
        Threads of the local scheduler.
    """

    def __init__(self, client=None, threads: int | None = None) -> None:
        self.client = client
        self.threads = threads or os.cpu_count() or 1

    def describe(self) -> str:
        """Where the tasks run, in words."""
        if self.client is None:
            return f"{self.threads} local threads"
        workers = self.client.scheduler_info().get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        return (f"dask cluster {self.client.scheduler.address} ({len(workers)} workers, "
                f"{threads} threads)")

    def compute(self, collection):
        """Compute one dask collection where the tasks run and return its value."""
        if self.client is not None:
            return self.client.compute(collection).result()
        return dask.compute(collection, scheduler="threads", num_workers=self.threads)[0]

    def run(self, tasks: Sequence, done: Callable[[int], None] | None = None) -> list:
        """Compute ``tasks`` (dask delayed objects); call ``done(i)`` as task ``i`` finishes."""
        if not tasks:
            return []
        if self.client is not None:
            from distributed import as_completed

            futures = self.client.compute(list(tasks))
            index = {f.key: i for i, f in enumerate(futures)}
            for future in as_completed(futures):
                future.result()  # raises the task's error here
                if done is not None:
                    done(index[future.key])
            return [f.result() for f in futures]
        from dask.callbacks import Callback

        index = {t.key: i for i, t in enumerate(tasks)}

        class _Done(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if done is not None and key in index:
                    done(index[key])

        with _Done():
            return list(dask.compute(*tasks, scheduler="threads", num_workers=self.threads))


def check_cluster_options(scheduler: str | None, workers: int | None) -> None:
    """Refuse ``scheduler`` with ``workers``, a worker count below 1 and a malformed
    scheduler address (before any work)."""
    if scheduler and workers:
        raise ParameterError("scheduler", scheduler, "excludes workers: give one of the two")
    if workers is not None and workers < 1:
        raise ParameterError("workers", workers, "give a positive number of worker processes")
    if scheduler is not None and "://" not in scheduler and ":" not in scheduler:
        raise ParameterError("scheduler", scheduler, "give an address such as "
                             "tcp://10.0.0.5:8786")


#: local cluster settings: workers may start processes; quiet logs; no statistical profiler
#: sampling every thread's stack 100 times a second, no GIL monitor (a few percent of the
#: cores of a compute-bound worker, measured in benchmarks/RESULTS.md)
WORKER_CONFIG = {"distributed.worker.daemon": False, "logging.distributed": "error",
                 "distributed.worker.profile.enabled": False,
                 "distributed.admin.system-monitor.gil.enabled": False}


@contextmanager
def runner(scheduler: str | None = None, workers: int | None = None) -> Iterator[Runner]:
    """A :class:`Runner` for ``--scheduler ADDRESS``, ``--workers N`` or neither.

    ``--workers N`` starts a local cluster of N single-threaded worker processes and
    stops it afterwards; ``--scheduler`` connects to a running scheduler.
    """
    check_cluster_options(scheduler, workers)
    if not scheduler and not workers:
        yield Runner()
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency
        raise FM2SError("dask.distributed is not installed: pip install distributed") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ParameterError("scheduler", scheduler, f"cannot reach a dask scheduler there "
                                 f"({str(exc).splitlines()[0] if str(exc) else exc}): check "
                                 "the address and that 'dask scheduler' runs there") from None
        try:
            yield Runner(client)
        finally:
            client.close()
        return
    with dask.config.set(WORKER_CONFIG):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=50)
    try:
        with Client(cluster) as client:
            yield Runner(client)
    finally:
        cluster.close()
