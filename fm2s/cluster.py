"""Where dask tasks run: local threads (default), a local cluster of worker processes,
an existing dask.distributed cluster, or workers started as batch jobs of an HPC scheduler
(SLURM, PBS, LSF, SGE) through dask-jobqueue with the user's jobqueue settings."""

from __future__ import annotations

import os
import time
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
        """Compute ``tasks`` (dask delayed objects); call ``done(i)`` as task ``i`` finishes.

        On an error or an interrupt, tasks not started are cancelled and those running
        are waited for before the exception goes on, so no task writes after it.
        """
        if not tasks:
            return []
        if self.client is not None:
            return self._run_distributed(tasks, done)
        from concurrent.futures import ThreadPoolExecutor

        from dask.callbacks import Callback

        index = {t.key: i for i, t in enumerate(tasks)}

        class _Done(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if done is not None and key in index:
                    done(index[key])

        pool = ThreadPoolExecutor(self.threads)
        try:
            with _Done():
                return list(dask.compute(*tasks, scheduler="threads", pool=pool))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _run_distributed(self, tasks: Sequence, done: Callable[[int], None] | None) -> list:
        from distributed import as_completed

        futures = self.client.compute(list(tasks))
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for future in as_completed(futures):
                future.result()  # raises the task's error here
                if done is not None:
                    done(index[future.key])
            return [f.result() for f in futures]
        except BaseException:
            self._stop(futures)
            raise

    def _stop(self, futures: list, timeout: float = 120.0) -> None:
        """Cancel ``futures`` and wait (up to ``timeout`` s) until none of them runs."""
        keys = {f.key for f in futures}
        try:
            self.client.cancel(futures)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                processing = self.client.processing()
                if not any(k in keys for tasks in processing.values() for k in tasks):
                    return
                time.sleep(0.2)
        except Exception:  # noqa: BLE001 - the cluster may be gone: nothing runs there then
            return


#: ``--cluster`` names: dask-jobqueue's cluster classes (``local``: its local job class,
#: jobs as processes on this machine, to try the settings)
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster",
            "sge": "SGECluster", "local": "LocalCluster"}


def check_cluster_options(scheduler: str | None, workers: int | None,
                          cluster: str | None = None) -> None:
    """Refuse ``scheduler`` with ``workers`` or ``cluster``, a worker count below 1, an
    unknown cluster kind and a malformed scheduler address (before any work)."""
    if cluster is not None:
        if cluster not in JOBQUEUE:
            raise ParameterError("cluster", cluster, f"choose one of {', '.join(JOBQUEUE)}")
        if scheduler:
            raise ParameterError("cluster", cluster, "excludes scheduler: give one of the two")
        if workers is not None and workers < 1:
            raise ParameterError("workers", workers, "give a positive number of jobs")
        check_jobqueue(cluster)
        return
    if scheduler and workers:
        raise ParameterError("scheduler", scheduler, "excludes workers: give one of the two")
    if workers is not None and workers < 1:
        raise ParameterError("workers", workers, "give a positive number of worker processes")
    if scheduler is not None:
        check_scheduler_address(scheduler)


#: the protocols of a dask scheduler address fm2s-tile connects with
SCHEMES = ("tcp", "tls", "ws", "wss")
_EXAMPLE = "give an address such as tcp://10.0.0.5:8786"


def check_scheduler_address(address: str) -> None:
    """Refuse a malformed dask scheduler address (``[PROTOCOL://]HOST:PORT``) before any
    work: an unknown protocol, no host, a port that is not a number from 1 to 65535."""
    def bad(problem: str) -> ParameterError:
        return ParameterError("scheduler", address, f"{problem}: {_EXAMPLE}")

    text = address.strip()
    if not text:
        raise bad("empty")
    scheme, sep, location = text.partition("://")
    if not sep:
        scheme, location = "tcp", text
    if scheme.lower() not in SCHEMES:
        raise bad(f"unknown protocol '{scheme}' (fm2s-tile connects with "
                  f"{', '.join(SCHEMES)})")
    if location.startswith("["):  # an IPv6 address: [::1]:8786
        host, close, rest = location[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise bad("an IPv6 address in brackets needs a port after it, e.g. [::1]:8786")
        port = rest[1:]
    else:
        host, colon, port = location.rpartition(":")
        if not colon:
            raise bad("no port")
        if ":" in host:
            raise bad("an IPv6 address needs brackets, e.g. tcp://[::1]:8786")
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise bad("no host" if not host else f"'{host}' is not a host name")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise bad(f"port '{port}' is not a number from 1 to 65535" if port else "no port")


#: local cluster settings: workers may start processes; quiet logs; no statistical profiler
#: sampling every thread's stack 100 times a second, no GIL monitor (a few percent of the
#: cores of a compute-bound worker, measured in benchmarks/RESULTS.md)
WORKER_CONFIG = {"distributed.worker.daemon": False, "logging.distributed": "error",
                 "distributed.worker.profile.enabled": False,
                 "distributed.admin.system-monitor.gil.enabled": False}


#: how long connecting to a ``--scheduler`` may take
CONNECT_TIMEOUT = "10s"


def _unreachable(exc: Exception) -> str:
    detail = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "ssl_context" in detail or "TLS" in detail:
        fix = "configure TLS for dask (distributed.comm.tls) or use tcp://"
    else:
        fix = "check the address and that 'dask scheduler' runs there"
    return f"cannot reach a dask scheduler there ({detail[:200]}): {fix}"


def check_jobqueue(cluster: str) -> None:
    """Refuse ``--cluster`` without dask-jobqueue, or without the settings a job needs
    (cores and memory under ``jobqueue.<kind>`` in the dask config), before any work."""
    try:
        import dask_jobqueue  # noqa: F401 - its import loads its default settings
    except ImportError:
        raise FM2SError("--cluster needs dask-jobqueue, which is not installed: pip install "
                        "dask-jobqueue") from None
    missing = [key for key in ("cores", "memory")
               if dask.config.get(f"jobqueue.{cluster}.{key}", None) is None]
    if missing:
        raise ParameterError("cluster", cluster, f"no dask-jobqueue settings for {cluster} "
                             f"({' and '.join(missing)} not set): write them (and queue, "
                             f"account, walltime, ...) under jobqueue: {cluster}: in "
                             "~/.config/dask/jobqueue.yaml (see docs/guides/cluster.md)")


def jobqueue_cluster(cluster: str, jobs: int):
    """A dask-jobqueue cluster of kind ``cluster`` (settings: the user's dask config,
    ``jobqueue.<kind>`` in ``~/.config/dask/jobqueue.yaml``), scaled to ``jobs`` jobs.

    Raises
    ------
    FM2SError
        dask-jobqueue not installed, or no settings (cores, memory) for that kind.
    """
    check_jobqueue(cluster)
    import importlib

    module = importlib.import_module("dask_jobqueue" if cluster != "local" else
                                     "dask_jobqueue.local")
    # the user's scheduler options; the scheduler's web server on a free port unless they
    # name one (a second run beside another would warn that 8787 is taken)
    options = dict(dask.config.get(f"jobqueue.{cluster}.scheduler-options", None) or {})
    options.setdefault("dashboard_address", ":0")
    try:
        with dask.config.set({"logging.distributed": "error"}):
            queue = getattr(module, JOBQUEUE[cluster])(scheduler_options=options)
    except ValueError as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ParameterError("cluster", cluster, f"dask-jobqueue has no settings for it "
                             f"({detail}): write cores and memory (and queue, account, ...) "
                             f"under jobqueue: {cluster}: in ~/.config/dask/jobqueue.yaml "
                             "(see docs/guides/cluster.md)") from None
    queue.scale(jobs=jobs)
    return queue


def _default_client():
    """The distributed client dask would use by default, or None."""
    from distributed import Client

    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def _close_failed_client(before) -> None:
    """Close the client a failed connection left behind. distributed registers a client as
    the default before it connects, and one that fails to (a ``tls://`` address without
    TLS settings) stays registered, ``connecting``, for the rest of the process; anything
    that then asks for the default client (a notebook's next dask computation) gets it."""
    left = _default_client()
    if left is not None and left is not before and left.status != "running":
        left.close()


@contextmanager
def default_scheduler_kept() -> Iterator[None]:
    """Dask's default scheduler as it was before, afterwards: a distributed client makes
    itself dask's default scheduler, and one closing after its cluster can leave that
    setting behind, sending the next ``compute`` to a client that is gone."""
    saved = dask.config.get("scheduler", None)
    try:
        yield
    finally:
        if dask.config.get("scheduler", None) != saved:
            if saved is None:
                dask.config.config.pop("scheduler", None)
            else:
                dask.config.set(scheduler=saved)


@contextmanager
def runner(scheduler: str | None = None, workers: int | None = None,
           cluster: str | None = None) -> Iterator[Runner]:
    """:func:`_runner` within :func:`default_scheduler_kept`."""
    with default_scheduler_kept(), _runner(scheduler, workers, cluster) as run:
        yield run


@contextmanager
def _runner(scheduler: str | None = None, workers: int | None = None,
            cluster: str | None = None) -> Iterator[Runner]:
    """A :class:`Runner` for ``--scheduler ADDRESS``, ``--workers N``, ``--cluster KIND``
    or none of them.

    ``--workers N`` starts a local cluster of N single-threaded worker processes and
    stops it afterwards; ``--scheduler`` connects to a running scheduler; ``--cluster``
    submits ``--workers`` (default 1) batch jobs of workers through dask-jobqueue and
    cancels them afterwards.
    """
    check_cluster_options(scheduler, workers, cluster)
    if cluster is not None:
        from distributed import Client

        queue = jobqueue_cluster(cluster, workers or 1)
        try:
            with Client(queue) as client:
                yield Runner(client)
        finally:
            queue.close()
        return
    if not scheduler and not workers:
        yield Runner()
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency
        raise FM2SError("dask.distributed is not installed: pip install distributed") from None
    if scheduler:
        before = _default_client()
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # distributed raises OSError, TimeoutError, TypeError, ...
            _close_failed_client(before)
            raise ParameterError("scheduler", scheduler, _unreachable(exc)) from None
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
