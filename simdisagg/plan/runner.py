"""Running many evaluations: serially, in a process pool, or on Ray."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from simdisagg.errors import ConfigError
from simdisagg.plan.goodput_search import run_task
from simdisagg.trace import Trace


@dataclass(frozen=True, slots=True)
class Job:
    """One evaluation to run: a candidate on a trace (by fingerprint) with search settings
    (``search["task"]`` names the unit of work, see :data:`~simdisagg.plan.goodput_search.TASKS`)."""

    kind: str
    trace_fp: str
    candidate: dict[str, Any]
    search: dict[str, Any]
    key: str


_WORKER_TRACES: dict[str, Trace] = {}


def _init_worker(traces: dict[str, Trace]) -> None:
    _WORKER_TRACES.update(traces)


def _run_in_worker(
    trace_fp: str, candidate: dict[str, Any], slo: dict[str, Any], base: dict[str, Any], search: dict[str, Any],
    profiles_dir: str | None,
) -> dict[str, Any]:
    return run_task(_WORKER_TRACES[trace_fp], candidate, slo, base, search, profiles_dir)


class Runner:
    """Runs jobs serially, in a process pool, or on Ray; yields ``(job index, result)`` as jobs
    finish. Results do not depend on the backend: each job is deterministic on its own."""

    def __init__(
        self,
        traces: dict[str, Trace],
        base: dict[str, Any],
        slo: dict[str, Any],
        *,
        backend: Literal["process", "ray"] = "process",
        workers: int | None = None,
        address: str | None = None,
        profiles_dir: str | None = None,
    ) -> None:
        self.traces, self.base, self.slo = traces, base, slo
        self.backend, self.address, self.profiles_dir = backend, address, profiles_dir
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: Any = None
        self._ray: Any = None
        self._ray_owned = False
        self._ray_refs: dict[str, Any] = {}
        self._remote: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (and a Ray instance this runner started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._ray is not None and self._ray_owned:
            self._ray.shutdown()
        self._ray = None

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Run ``jobs``; yield each result with its index as soon as it is done."""
        if not jobs:
            return
        if self.backend == "ray":
            yield from self._run_ray(jobs)
        elif self.workers == 1 or len(jobs) == 1:
            for i, job in enumerate(jobs):
                yield i, run_task(
                    self.traces[job.trace_fp], job.candidate, self.slo, self.base, job.search, self.profiles_dir
                )
        else:
            yield from self._run_pool(jobs)

    def _run_pool(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if self._pool is None:
            # spawn, not fork: the caller may run threads (a progress bar), and a forked child
            # would inherit their locks.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.traces,),
            )
        futures = {
            self._pool.submit(
                _run_in_worker, job.trace_fp, job.candidate, self.slo, self.base, job.search, self.profiles_dir
            ): i
            for i, job in enumerate(jobs)
        }
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: futures[f]):
                    yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def _run_ray(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--backend ray needs Ray: pip install 'simdisagg[ray]' (or pip install ray)"
            ) from None
        if self._ray is None:
            self._ray = ray
            if not ray.is_initialized():
                pkg_root = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join([pkg_root, *[p for p in sys.path if p]])
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
                self._ray_owned = True
            self._remote = ray.remote(num_cpus=1)(run_task)
            self._ray_refs = {fp: ray.put(tr) for fp, tr in self.traces.items()}
        refs = {
            self._remote.remote(
                self._ray_refs[job.trace_fp], job.candidate, self.slo, self.base, job.search, self.profiles_dir
            ): i
            for i, job in enumerate(jobs)
        }
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield refs[ref], ray.get(ref)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
