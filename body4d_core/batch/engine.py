"""The batch engine on Ray: an embedded local Ray (or a cluster), one worker per GPU, a scheduling loop.

Ray is imported here only. Without an address a local Ray starts inside this process (nothing
to install or start beyond ``pip install ray``); with one, the batch joins that cluster. Each
worker is a long-lived actor holding one GPU (on a machine without GPUs: one CPU slot each).
Where the pipeline takes decoded frames, each video is decoded ahead by a CPU task of its own
(at most one per worker waits in Ray's object store), so a GPU worker goes from one video's
last stage straight to the next video's first. With ``split`` the videos run one at a time and
each one's body and amodal stages and its overlay render are shared by every worker. A video
whose worker dies is reported failed and the worker is replaced; Ctrl-C stops the workers and
writes the summary; every video folder keeps its run.json, so the next batch skips finished
videos and resumes the others from their finished stages.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Body4DError
from ..pipeline import PipelineOptions
from .jobs import VideoJob
from .local import Event, plan_jobs
from .outputs import FAILED, Row, finish_summary
from .worker import VideoWorker, one_line

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often the driver looks at the workers' stages


def import_ray() -> Any:
    """Ray, or a one-line error naming the install command."""
    try:
        import ray
    except ImportError:
        raise Body4DError('the batch command needs Ray: pip install "ray>=2.9" (or the [batch] extra)') from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None, object_store_mb: int = 0,
             temp_dir: str | None = None, setup_hook: str | None = None, env: dict[str, str] | None = None) -> Any:
    """Start an embedded local Ray, or join the cluster at ``address``; reuse one already running here.

    object_store_mb: the local Ray's shared-memory store for decoded frames (0: Ray's default, 30% of RAM);
    setup_hook: "module.function" every worker process runs first, env: variables it sees (benches only).
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    extra: dict[str, Any] = {"worker_process_setup_hook": setup_hook} if setup_hook else {}
    if address:
        runtime_env = {**extra, "env_vars": dict(env)} if env else extra
        ray.init(address=address, log_to_driver=False, **({"runtime_env": runtime_env} if runtime_env else {}))
        return ray
    temp = temp_dir or os.path.join(tempfile.gettempdir(), "body4d_ray")
    package_parent = str(Path(__file__).resolve().parents[2])  # workers import this very copy of body4d_core
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=int(object_store_mb) * 2**20 or None, _temp_dir=temp,
             runtime_env={**extra, "env_vars": {**(env or {}), "PYTHONPATH": path}})
    return ray


@dataclass
class WorkerSpec:
    """How many workers and what each one holds."""

    count: int
    gpus: float
    cpus: float


def plan_workers(requested: int = 0) -> WorkerSpec:
    """One worker per GPU of the cluster (``requested`` caps it); without GPUs, ``requested`` CPU workers (1)."""
    ray = import_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        count = min(requested, gpus) if requested > 0 else gpus
        return WorkerSpec(count, 1.0, 1.0)
    return WorkerSpec(max(1, requested), 0.0, 1.0)


def _process_of(ray: Any, actor: Any) -> tuple[str, int] | None:
    """The actor's (host, pid), or None when it does not answer (already dead)."""
    try:
        return tuple(ray.get(actor.process.remote(), timeout=10.0))
    except Exception:  # noqa: BLE001 - a dead or stuck actor: nothing to wait for by pid
        return None


def _wait_dead(ray: Any, actor: Any, process: tuple[str, int] | None, timeout: float = 30.0) -> None:
    """Wait until Ray reports ``actor`` dead and, on this host, its process has exited, so the folder lock of
    the video it ran names a finished process (a lock of a live pid is another run's)."""
    deadline = time.monotonic() + timeout
    try:
        ray.get(actor.ready.remote(), timeout=timeout)
    except ray.exceptions.RayActorError:
        pass
    except ray.exceptions.GetTimeoutError:
        log.warning("worker %s did not stop within %.0f s", actor, timeout)
        return
    if process is None or process[0] != socket.gethostname():
        return
    while time.monotonic() < deadline:
        try:
            os.kill(process[1], 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.05)
    log.warning("worker process %d did not exit within %.0f s", process[1], timeout)


class WorkerPool:
    """The batch's Ray actors; a dead or stopped one is replaced on demand."""

    def __init__(self, spec: WorkerSpec) -> None:
        ray = import_ray()
        self.spec = spec
        # threads: the video, the driver's status questions, a body-stage shard of a video run by any worker
        # (or a split render's two ranges: one rendering, one waiting for it)
        self._cls = ray.remote(VideoWorker).options(num_gpus=spec.gpus, num_cpus=spec.cpus, max_concurrency=4)
        self._made = 0
        self.actors = [self._new() for _ in range(spec.count)]
        ray.get([a.ready.remote() for a in self.actors])

    def _new(self) -> Any:
        self._made += 1
        return self._cls.remote(f"worker-{self._made}")

    def replace(self, actor: Any) -> Any:
        """Kill ``actor`` (if alive) and start another in its place."""
        ray = import_ray()
        process = _process_of(ray, actor)
        ray.kill(actor)
        _wait_dead(ray, actor, process)
        new = self._new()
        self.actors[self.actors.index(actor)] = new
        return new

    def shutdown(self) -> None:
        ray = import_ray()
        for a in self.actors:
            ray.kill(a)
        self.actors = []


def _status_line(jobs: list[VideoJob], rows: dict[int, Row], stages: list[dict[str, Any]]) -> str:
    done = sum(r.status in ("done", "done earlier") for r in rows.values())
    failed = sum(r.status == FAILED for r in rows.values())
    parts = [f"batch: {done}/{len(jobs)} done, {len(stages)} running, {failed} failed"]
    for s in stages:
        frac = f" {s['done']}/{s['total']}" if s.get("total") else ""
        parts.append(f"{s['video']}: {s['stage']}{frac}")
    return " | ".join(parts)


def _stages(ray: Any, actors: list[Any]) -> list[dict[str, Any]]:
    """The busy workers' current video and stage (a worker that just died is left out)."""
    out = []
    for ref in [a.status.remote() for a in actors]:
        try:
            status = ray.get(ref, timeout=10)
        except ray.exceptions.RayError:
            continue
        if status:
            out.append(status)
    return out


def _decoder(ray: Any) -> Any | None:
    """The decode task, where the pipeline accepts decoded frames (None: each worker decodes its video)."""
    from ..pipeline import run_pipeline
    from .worker import decode_video

    if "decoded" not in inspect.signature(run_pipeline).parameters:
        return None
    return ray.remote(decode_video).options(num_cpus=0)  # bounded by the loop: one waiting video per worker


def run_batch(jobs: list[VideoJob], base: PipelineOptions, out_root: str | Path, *, pool: WorkerPool | None = None,
              workers: int = 0, overwrite: bool = False, split: bool = False,
              on_event: Event | None = None) -> list[Row]:
    """Run every job on the pool (made here when not given; Ray must be initialised); returns one row per job.

    split: one video at a time, its body and amodal stages shared by every worker (for fewer videos than GPUs).
    """
    ray = import_ray()
    decode = _decoder(ray)
    out_root = Path(out_root)
    on_event = on_event or (lambda kind, data: None)
    rows, todo = plan_jobs(jobs, base, out_root, overwrite)
    for i in sorted(rows):
        on_event("row", {"row": rows[i]})
    own = pool is None
    queue = deque(todo)
    running: dict[Any, tuple[int, Any]] = {}
    decoded: dict[int, Any] = {}
    last = ""
    try:
        if queue:
            pool = pool or WorkerPool(plan_workers(workers))
        idle = (pool.actors[:1] if split else list(pool.actors)) if queue else []
        while queue or running:
            for i, opts, _ in list(queue)[:len(pool.actors)] if decode is not None else []:
                if i not in decoded:
                    decoded[i] = decode.remote(str(jobs[i].video), opts.video)
            while idle and queue:
                i, opts, mode = queue.popleft()
                actor = idle.pop(0)
                ref = actor.run_video.remote(jobs[i], opts, str(out_root / jobs[i].name),
                                             [decoded.pop(i)] if i in decoded else None,
                                             list(pool.actors) if split else None, mode)
                running[ref] = (i, actor)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                i, actor = running.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died (out of memory, lost node, ...)
                    row = Row(str(jobs[i].video), jobs[i].name, FAILED, str(out_root / jobs[i].name),
                              error=f"worker lost: {one_line(err)}")
                    actor = pool.replace(actor)
                rows[i] = row
                idle.append(actor)
                on_event("row", {"row": row})
            line = _status_line(jobs, rows, _stages(ray, [a for _, a in running.values()]))
            if line != last:
                on_event("progress", {"line": line})
                last = line
    except BaseException:
        if pool is not None and not own:  # stop the videos in flight (an owned pool is shut down below)
            for _, actor in running.values():
                pool.replace(actor)
        raise
    finally:
        ordered = finish_summary(out_root, jobs, rows)
        if own and pool is not None:
            pool.shutdown()
    return ordered
