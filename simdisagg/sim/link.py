"""KV links: the NICs of a prefill instance, shared by its outgoing KV transfers.

A transfer of ``b`` bytes occupies the sender's NICs for ``b / bandwidth`` seconds, then takes
the link's one-way ``latency_s`` to land (pipelined: the NICs are free during that latency).
Two ways of sharing the NICs:

``fifo``
    one transfer at a time, in order (a NIC queue): a burst of transfers queues up.
``fair_share``
    every transfer in flight gets an equal share of the bandwidth (processor sharing, as TCP
    or RDMA flows on one NIC roughly do): each arrival or departure re-computes the projected
    finish of every flow, as Ciw's processor-sharing nodes do.

Contention at the receiving decode instance's NICs and in the network core is not modelled:
the sender side is the bottleneck whenever prefill instances send to several decode
instances, the common case. Say so in results that hinge on the link.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import simpy

from simdisagg.sim.clock import call_later
from simdisagg.sim.recorder import Recorder


class KVLink:
    """The outgoing link of one prefill instance."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        bandwidth_bytes_per_s: float,
        latency_s: float,
        sharing: str,
        rec: Recorder,
    ) -> None:
        self.env, self.index = env, index
        self.nominal_bytes_per_s = bandwidth_bytes_per_s
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s  # now: lower while a link fault lasts
        self.latency_s = latency_s
        self.fair_share = sharing == "fair_share"
        self.rec = rec
        self.busy_s = 0.0
        self.bytes_sent = 0.0
        self._t_send_start = rec.times["kv_send_start_at"]
        self._t_send_end = rec.times["kv_send_end_at"]
        # fifo state
        self._queue: deque[tuple[int, float, Callable[[int], None]]] = deque()
        self._sending = False
        # fair-share state: request -> [remaining bytes, callback]
        self._flows: dict[int, list[object]] = {}
        self._last_update_at = 0.0
        self._gen = 0
        self._busy_since = 0.0
        self.failed = False  # the prefill instance failed: nothing it sent lands
        # fifo: the transfer on the wire [request, callback, bytes left, since]
        self._current: list[object] | None = None

    def send(self, i: int, nbytes: float, on_landed: Callable[[int], None]) -> None:
        """Send request ``i``'s KV (``nbytes``); ``on_landed(i)`` runs when it has arrived."""
        self.bytes_sent += nbytes
        self.rec.kv_bytes_sent[i] = int(nbytes)
        if self.fair_share:
            self._ps_arrive(i, nbytes, on_landed)
        else:
            self._queue.append((i, nbytes, on_landed))
            if not self._sending:
                self._fifo_next()

    # -- fifo ---------------------------------------------------------------------------
    def _fifo_next(self) -> None:
        if not self._queue or self.bandwidth_bytes_per_s <= 0.0:
            self._sending = False  # an outage holds the queue until the link returns
            self._current = None
            return
        self._sending = True
        i, nbytes, on_landed = self._queue.popleft()
        self._t_send_start[i] = self.env.now
        serial_s = nbytes / self.bandwidth_bytes_per_s
        self.busy_s += serial_s
        self._current = [i, on_landed, nbytes, self.env.now]
        self._gen += 1
        call_later(self.env, serial_s, self._fifo_sent, (self._gen, i, on_landed))

    def _fifo_sent(self, item: tuple[int, int, Callable[[int], None]]) -> None:
        gen, i, on_landed = item
        if gen != self._gen:
            return  # re-timed by a change of bandwidth
        call_later(self.env, self.latency_s, self._landed, (i, on_landed))
        self._fifo_next()

    def _landed(self, item: tuple[int, Callable[[int], None]]) -> None:
        if self.failed:
            return
        i, on_landed = item
        self._t_send_end[i] = self.env.now
        on_landed(i)

    # -- faults -------------------------------------------------------------------------
    def set_bandwidth_scale(self, scale: float) -> None:
        """From now the link runs at ``scale`` of its nominal bandwidth (0: an outage, the
        transfer on the wire pauses); transfers in progress are re-timed exactly."""
        now = self.env.now
        old = self.bandwidth_bytes_per_s
        new = self.nominal_bytes_per_s * scale
        if self.fair_share:
            self._ps_advance()
            if self._flows and old <= 0.0 < new:
                self._busy_since = now
            elif self._flows and new <= 0.0 < old:
                self.busy_s += now - self._busy_since
            self.bandwidth_bytes_per_s = new
            self._ps_schedule()
            return
        self.bandwidth_bytes_per_s = new
        cur = self._current
        if cur is None:
            if new > 0.0 and self._queue and not self._sending:
                self._fifo_next()
            return
        i, on_landed, left, since = cur
        if old > 0.0:
            sent = (now - since) * old  # type: ignore[operator]
            left = max(0.0, left - sent)  # type: ignore[operator]
            self.busy_s -= left / old
        self._gen += 1
        self._current = [i, on_landed, left, now]
        if new > 0.0:
            self.busy_s += left / new
            call_later(self.env, left / new, self._fifo_sent, (self._gen, i, on_landed))

    def fail(self) -> None:
        """The sending instance failed: transfers queued, on the wire or in flight are lost
        (their requests are routed again from the start)."""
        self.failed = True
        self._gen += 1
        self._queue.clear()
        self._flows.clear()
        self._current = None
        self._sending = False

    # -- fair share ----------------------------------------------------------------------
    def _ps_advance(self) -> None:
        now = self.env.now
        n = len(self._flows)
        if n:
            done = (now - self._last_update_at) * self.bandwidth_bytes_per_s / n
            for flow in self._flows.values():
                flow[0] -= done  # type: ignore[operator]
        self._last_update_at = now

    def _ps_arrive(self, i: int, nbytes: float, on_landed: Callable[[int], None]) -> None:
        self._ps_advance()
        if not self._flows and self.bandwidth_bytes_per_s > 0.0:
            self._busy_since = self.env.now
        self._t_send_start[i] = self.env.now
        self._flows[i] = [nbytes, on_landed]
        self._ps_schedule()

    def _ps_schedule(self) -> None:
        self._gen += 1
        if not self._flows or self.bandwidth_bytes_per_s <= 0.0:
            return
        n = len(self._flows)
        first = min(self._flows, key=lambda k: (self._flows[k][0], k))  # type: ignore[return-value]
        remaining = max(0.0, float(self._flows[first][0]))  # type: ignore[arg-type]
        call_later(self.env, remaining * n / self.bandwidth_bytes_per_s, self._ps_depart, (self._gen, first))

    def _ps_depart(self, item: tuple[int, int]) -> None:
        gen, i = item
        if gen != self._gen:
            return
        self._ps_advance()
        _, on_landed = self._flows.pop(i)
        if not self._flows and self.bandwidth_bytes_per_s > 0.0:
            self.busy_s += self.env.now - self._busy_since
        call_later(self.env, self.latency_s, self._landed, (i, on_landed))
        self._ps_schedule()
