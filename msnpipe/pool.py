"""Worker processes that never outlive their parent, and never hang it.

    with worker_pool(4) as pool:                   # spawn workers, started once, reused
        for result in ordered_map(pool, fn, items):  # in order; a dead worker raises
            ...

Workers ask the kernel to kill them when the parent dies (Linux `PR_SET_PDEATHSIG`) and also
watch their parent's pid, so `kill -9` of a command leaves no workers behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def die_with_parent(parent: int) -> None:
    """Worker initializer: exit as soon as process `parent` is gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the watcher thread alone
        pass
    if os.getppid() != parent:  # died before the request took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class WorkerPool(ProcessPoolExecutor):
    """A ProcessPoolExecutor that says how many workers it has (`workers`)."""

    def __init__(self, workers: int, **kwargs):
        super().__init__(workers, **kwargs)
        self.workers = workers

    def _spawn_process(self) -> None:
        # a worker inherits this thread's signal mask through fork and exec: SIGINT blocked, a
        # Ctrl-C while it starts (importing, before _init ignores SIGINT) is the parent's alone,
        # which gets it once unblocked here
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            super()._spawn_process()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = (), *,
                method: str = "spawn") -> WorkerPool:
    """`workers` processes that die with this one; `initializer(*initargs)` runs in each. They
    are spawned (fresh interpreters; safe after CUDA or threads started), or forked when the
    caller knows neither has (`method="fork"`: no imports to repeat)."""
    parent = os.getpid()
    return WorkerPool(workers, mp_context=get_context(method), initializer=_init,
                      initargs=(parent, initializer, initargs))


def _init(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    from msnpipe.files import forget_inherited_locks

    forget_inherited_locks()  # forked: the parent's locks must die with the parent alone
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it shuts the pool down
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def result(future: Future):
    """A pool task's result; a dead worker raises a clear error, never hangs."""
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise RuntimeError("a worker process died (out of memory or killed?)") from e


def ordered_map(pool: WorkerPool | None, fn: Callable, items: Iterable, *,
                window: int | None = None) -> Iterator:
    """`map(fn, items)` in order, in `pool` (or here when None), with at most `window` items
    (default: 4 per worker) submitted ahead, so large arguments are not all queued at once.
    A dead worker raises, never hangs."""
    if pool is None:
        yield from map(fn, items)
        return
    window = window or 4 * pool.workers
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as e:
        raise RuntimeError("a worker process died (out of memory or killed?)") from e
    finally:
        for f in pending:
            f.cancel()
