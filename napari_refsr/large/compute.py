"""Where the chunks run: dask's threaded scheduler (default) or a ``dask.distributed`` cluster, with
progress over chunks and cancel between chunks on both.

``scheduler("threads")`` runs in this process; ``"processes"`` starts a ``LocalCluster`` of worker
processes (one thread each); any other value is the address of a running scheduler
(``tcp://host:8786``), whose workers must see the output path (a shared file system).
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import dask
from dask.callbacks import Callback

from ..errors import Cancelled, RefSRError

__all__ = ["scheduler", "run_tasks", "local_run"]

Progress = Callable[[int, int], None]


@contextlib.contextmanager
def scheduler(spec: str | None = "threads", workers: int | None = None) -> Iterator[object | None]:
    """Yield None for the threaded scheduler, or a ``distributed.Client`` (closed afterwards)."""
    spec = spec or "threads"
    if spec == "threads":
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RefSRError("a dask cluster needs the 'large' extra: pip install 'napari-refsr[large]'") from None
    with contextlib.ExitStack() as stack:
        if spec == "processes":
            cluster = stack.enter_context(LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            if "://" not in spec and ":" not in spec:
                raise RefSRError(f"scheduler must be threads, processes or a scheduler address "
                                 f"(tcp://host:port), got {spec!r}")
            try:
                client = stack.enter_context(Client(spec, timeout="10s"))
            except (OSError, TimeoutError) as err:
                raise RefSRError(f"cannot reach the dask scheduler at {spec}: {err}") from None
        yield client


class _Watch(Callback):
    """Counts finished tasks among ``keys`` and raises Cancelled between tasks when asked."""

    def __init__(self, keys: set, progress: Progress | None, cancel: Callable[[], bool] | None):
        super().__init__()
        self.keys, self.progress, self.cancel = keys, progress, cancel
        self.done = 0

    def _check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")

    def _pretask(self, key, dsk, state) -> None:
        self._check()

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if key in self.keys:
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, len(self.keys))
        self._check()


def _settle(client, futures, timeout: float = 60.0) -> None:
    """After a cancel: wait (bounded) until none of these tasks still runs on a worker."""
    keys = {f.key for f in futures}
    client.cancel(futures)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        busy = {k for tasks in client.processing().values() for k in tasks}
        if not busy & keys:
            return
        time.sleep(0.1)


@contextlib.contextmanager
def local_run(*, progress: Progress | None = None, cancel: Callable[[], bool] | None = None, keys=(),
              workers: int | None = None) -> Iterator[None]:
    """dask computations inside run on a thread pool of ``workers`` threads, with
    ``progress(done, len(keys))`` as tasks among ``keys`` finish and ``cancel()`` checked between
    tasks; on leaving (also after an error or a cancel) it waits until no task still runs."""
    pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)
    try:
        with dask.config.set(scheduler="threads", pool=pool), _Watch(set(keys), progress, cancel):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_tasks(tasks: Sequence, *, client=None, progress: Progress | None = None,
              cancel: Callable[[], bool] | None = None, workers: int | None = None) -> None:
    """Compute ``tasks`` (dask Delayed) with ``progress(done, len(tasks))`` after each one and
    ``cancel()`` checked between them; returns only when nothing of the run is still running."""
    if client is None:
        with local_run(progress=progress, cancel=cancel, keys=[t.key for t in tasks], workers=workers):
            dask.compute(*tasks)
        return
    from distributed import as_completed

    futures = client.compute(list(tasks))
    try:
        for done, future in enumerate(as_completed(futures), 1):
            future.result()
            if progress is not None:
                progress(done, len(futures))
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
    except BaseException:
        _settle(client, futures)
        raise
