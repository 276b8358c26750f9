"""Worker processes for sweeps that stop when asked and never outlive their parent.

``concurrent.futures.ProcessPoolExecutor`` queues work ahead in its workers, joins
them at interpreter exit (so a Ctrl-C waited for queued units to finish) and shares
one result queue and its locks between processes (so a second Ctrl-C could leave a
lock held and hang the exit). This pool hands each worker one task at a time over
its own pipe, and ``stop`` ends them with SIGTERM then SIGKILL: a stop takes at most
``grace_s``, and a worker killed mid-task disturbs no other.

Workers ignore SIGINT (the terminal sends Ctrl-C to the whole process group; the
parent alone decides what happens) and die with the parent
(``die_with_parent``). A worker that dies during a task (a crash, the
OOM killer) is reported through ``on_lost`` and replaced; the other tasks go on.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

_PR_SET_PDEATHSIG = 1

#: ``fn(task, emit)`` runs one task in a worker; ``emit(item)`` hands an item to the parent.
TaskFn = Callable[[Any, Callable[[Any], None]], None]


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """End this process (at once, without clean-up) when ``parent_pid`` is gone.

    Linux delivers SIGKILL on the parent's death (``PR_SET_PDEATHSIG``). Elsewhere, and
    as a second line, a daemon thread checks every ``poll_s`` whether this process has
    been re-parented. Called first thing in each worker.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread remains
            pass
    if os.getppid() != parent_pid:  # the parent died before the watch was set up
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-death-watch", daemon=True).start()


def _worker_main(conn: Connection, fn: TaskFn, parent_pid: int) -> None:  # pragma: no cover - child
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def emit(item: Any) -> None:
        conn.send(("item", item))

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            fn(task, emit)
            conn.send(("done", None))
        except Exception:  # noqa: BLE001 - the parent reports it against the task
            conn.send(("error", traceback.format_exc()))


@dataclass
class _Worker:
    proc: Any  # multiprocessing.Process
    conn: Connection
    task: Any = None
    busy: bool = False


def describe_exit(code: int | None) -> str:
    """A worker's exit status in words (a negative code is the signal that killed it)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {code}"


class WorkerPool:
    """``n`` worker processes running ``fn``; ``run(tasks, on_item, on_lost)`` drives them."""

    def __init__(self, n: int, fn: TaskFn, *, grace_s: float = 3.0) -> None:
        if n < 1:
            raise ValueError(f"a pool needs at least one worker, got {n}")
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self.ctx = mp.get_context(method)
        self.n = n
        self.fn = fn
        self.grace_s = grace_s
        self.workers: list[_Worker] = []

    def _start_worker(self) -> _Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main, args=(child, self.fn, os.getpid()),
                                name="sim-worker", daemon=True)
        proc.start()
        child.close()
        w = _Worker(proc, parent)
        self.workers.append(w)
        return w

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc.pid is not None]

    def kill_now(self) -> None:
        """SIGKILL every worker without waiting (safe inside a signal handler)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def run(self, tasks: Iterable[Any], on_item: Callable[[Any], None],
            on_lost: Callable[[Any, str], None]) -> None:
        """Run every task; returns when all are done. Any exception (``KeyboardInterrupt``
        included) stops the workers first, then propagates."""
        queue = deque(tasks)
        try:
            for _ in range(min(self.n, len(queue))):
                self._start_worker()
            while True:
                for w in self.workers:
                    if not w.busy and queue:
                        w.task, w.busy = queue.popleft(), True
                        try:
                            w.conn.send(w.task)
                        except OSError:
                            pass  # it died idle: its sentinel wakes the wait, the task is lost
                busy = [w for w in self.workers if w.busy]
                if not busy:
                    break
                ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
                for w in busy:
                    if w.conn in ready or w.proc.sentinel in ready:
                        self._service(w, on_item, on_lost, bool(queue))
            self.stop(graceful=True)
        except BaseException:
            self.stop()
            raise

    def _service(self, w: _Worker, on_item, on_lost, more: bool) -> None:
        """Read what worker ``w`` sent; notice its death and replace it if work remains."""
        try:
            while w.conn.poll():
                kind, payload = w.conn.recv()
                if kind == "item":
                    on_item(payload)
                    continue
                task, w.task, w.busy = w.task, None, False
                if kind == "error":
                    on_lost(task, payload)
                return
            if w.proc.is_alive():
                return  # woken early (the sentinel races the last message): keep waiting
        except (EOFError, OSError):
            pass  # the pipe closed: the worker is gone
        w.proc.join(self.grace_s)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        self.workers.remove(w)
        w.conn.close()
        if w.busy:
            on_lost(w.task, f"the worker process {describe_exit(w.proc.exitcode)}")
        if more:
            self._start_worker()

    def stop(self, graceful: bool = False) -> None:
        """Graceful: idle workers are told to leave. Otherwise: SIGTERM, then SIGKILL after
        ``grace_s``. Either way every worker is reaped when this returns."""
        workers = list(self.workers)  # kept in self.workers until reaped: kill_now sees them
        for w in workers:
            try:
                if graceful and not w.busy:
                    w.conn.send(None)
                else:
                    w.proc.terminate()
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + self.grace_s
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
            self.workers.remove(w)
