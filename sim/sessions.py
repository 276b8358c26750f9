"""When the simulated clients send each request: open, closed-session and concurrency rules.

The rules are ``workload.sessions``' (read from the trace through ``SessionPlan``);
``live.loadgen`` applies the same ones on the wall clock. The cluster asks this
driver to start, tells it when each sent request ended at its client
(``ended``), and the driver calls back ``cluster.send(row, ready_s)`` (or
``dispatch_now`` from its arrival process, which waits for ``apply_due_steps``
itself) and ``cluster.skip(row, reason)``.

Cost: open mode is one SimPy process walking the rows, as before sessions
existed; closed sessions and concurrency clients add one timeout event per
request sent after another one ended (no process per session, nothing per
engine step).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from workload.sessions import SessionPlan

if TYPE_CHECKING:  # pragma: no cover
    from sim.cluster import ClusterSim


class SessionDriver:
    """Sends a trace's rows into ``cluster`` by the trace's session rules."""

    def __init__(self, cluster: ClusterSim, plan: SessionPlan) -> None:
        self.cluster = cluster
        self.env = cluster.env
        self.plan = plan
        self.arrival = cluster.trace.arrival_s.tolist()
        self.next_row = plan.next_row.tolist()
        self.think = plan.think_s.tolist()
        self.session = plan.session
        #: Sessions that ended with a failed turn (open mode checks it at each send).
        self.failed: set[int] = set()
        self._queue = iter(plan.first_rows().tolist() if plan.closed else range(len(self.arrival)))

    @property
    def concurrency(self) -> bool:
        return self.plan.clients > 0

    def horizon(self, drain_s: float) -> float:
        """When the run stops at the latest: ``drain_s`` after the last planned send.

        In concurrency mode clients send until every request is done: no horizon.
        """
        if self.concurrency or not self.arrival:
            return math.inf
        return max(self.arrival) + drain_s

    def start(self) -> None:
        env = self.env
        if self.concurrency:
            for _ in range(self.plan.clients):
                env.timeout(0).callbacks.append(lambda _e: self._pull(env.now))
        elif self.plan.closed:
            env.process(self._arrivals(self.plan.first_rows().tolist()))
        else:
            env.process(self._arrivals(range(len(self.arrival))))

    # --- the arrival process (open rows, or the first turns of closed sessions) ----------
    def _arrivals(self, rows):
        env, arrival, cluster = self.env, self.arrival, self.cluster
        for i in rows:
            t = arrival[i]
            if t > env.now:
                yield env.timeout(t - env.now)
            if self.failed and int(self.session[i]) in self.failed:
                cluster.skip(i, self._why(i))
                continue
            wait = cluster.apply_due_steps()  # KV events of decode runs, before deciding
            if wait is not None:
                yield wait
            cluster.dispatch_now(i, t)

    # --- a sent request ended at its client ----------------------------------------------
    def ended(self, row: int, ok: bool, end: float) -> None:
        """``row`` ended at ``end`` (>= now); ``ok``: its reply arrived in full."""
        plan = self.plan
        if not ok:
            self.failed.add(int(self.session[row]))
        if plan.closed:
            nxt = self.next_row[row]
            if nxt >= 0:
                if ok:
                    self._send_at(nxt, end + self.think[nxt])
                    return  # a concurrency client stays with its session
                self._skip_rest(nxt, row)
        if self.concurrency:
            self.env.timeout(max(end - self.env.now, 0.0)).callbacks.append(
                lambda _e, t=end: self._pull(t))

    def _send_at(self, row: int, ready: float) -> None:
        # Always through an event, never inline: ``ended`` runs inside a backend's step.
        self.env.timeout(max(ready - self.env.now, 0.0)).callbacks.append(
            lambda _e: self.cluster.send(row, ready))

    def _skip_rest(self, row: int, failed_row: int) -> None:
        why = self._why(row, failed_row)
        while row >= 0:
            self.cluster.skip(row, why)
            row = self.next_row[row]

    def _pull(self, ready: float) -> None:
        """A concurrency client is free at ``ready``: it sends the next request (or session)."""
        for i in self._queue:
            if self.failed and int(self.session[i]) in self.failed:
                self.cluster.skip(i, self._why(i))
                continue
            self.cluster.send(i, ready)
            return

    def _why(self, row: int, failed_row: int = -1) -> str:
        trace = self.cluster.trace
        turn = f"turn {int(trace.turn[failed_row])}" if failed_row >= 0 else "an earlier turn"
        return (f"not sent: {turn} of session {trace.conversation_id[row]} failed, which ends "
                "the session")
