"""The long-lived worker of a batch (one per GPU): runs whole videos, or body-stage shards of one video.

A plain class: ``engine`` turns it into a Ray actor (one GPU each; Ray sets CUDA_VISIBLE_DEVICES,
so the worker's device is simply ``cuda``). It runs several threads so the driver can ask for
its current video and stage while a video runs, and so a video's body stage can use this worker
as one of its shards. Where ``run_pipeline`` accepts them, the worker passes its model cache
(models stay loaded across videos), frames decoded by a separate CPU task, and the sharded body
estimator, amodal job runners and overlay render (one video over every worker). Without Ray it runs videos in
this process (``local``), keeping the same model cache.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import socket
import threading
import time
from collections import UserDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import Body4DError
from ..pipeline import PipelineOptions, run_pipeline
from .jobs import VideoJob
from .outputs import FAILED, FRESH, OK, OVERWRITE, RESUME, Row, record_row

log = logging.getLogger(__name__)


def one_line(err: BaseException) -> str:
    """An error as one line: our errors' message, else the type name and the message's first line."""
    cause = getattr(err, "cause", None)  # a Ray task error: what the task raised
    err = cause if isinstance(cause, BaseException) else err
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, Body4DError) and text else f"{type(err).__name__}: {text}".rstrip(": ")


class _StageHooks:
    """Pipeline hooks that record the worker's current stage and its progress."""

    def __init__(self, worker: "VideoWorker", video: str, stage: str) -> None:
        self.worker, self.video, self.stage = worker, video, stage
        worker.set_status(video, stage, 0, 0)

    def progress(self, done: int, total: int) -> None:
        self.worker.set_status(self.video, self.stage, done, total)

    def check_interrupt(self) -> None:
        return None


class VideoWorker:
    """Runs videos one after another; keeps the SAM-3D-Body model loaded for body-stage shards."""

    def __init__(self, label: str) -> None:
        from ..runtime import limit_malloc_arenas

        limit_malloc_arenas()  # a worker process runs video after video (see runtime.limit_malloc_arenas)
        self.label = label
        self._status: dict[str, Any] = {}
        self._models: dict[tuple, Any] = {}  # loaded once, kept for the worker's life (the pipeline's model cache)
        self._shards = 0
        self._amodal_shards = 0
        self._render_shards = 0
        self._render_lock = threading.Lock()  # one render range at a time on this device (the next one waits)

    def ready(self) -> str:
        """Answers once the worker process is up (the driver waits for every worker before timing)."""
        return self.label

    def process(self) -> tuple[str, int]:
        """This worker's host name and process id (the driver waits for the process to end when it replaces it)."""
        return socket.gethostname(), os.getpid()

    def stats(self) -> dict[str, Any]:
        """Which models this worker holds and how many body-stage, amodal and render shards it ran."""
        return {"models": sorted(str(k[0]) for k in self._models), "shards": self._shards,
                "amodal_shards": self._amodal_shards, "render_shards": self._render_shards}

    def set_status(self, video: str, stage: str, done: int, total: int) -> None:
        self._status = {"video": video, "stage": stage, "done": int(done), "total": int(total)}

    def status(self) -> dict[str, Any]:
        """The running video, its stage and the stage's progress ({} when idle)."""
        return dict(self._status)

    def _extras(self, opts: PipelineOptions, decoded: list | None, shard_over: list | None) -> dict[str, Any]:
        """The optional run_pipeline arguments this version of the pipeline accepts."""
        params = inspect.signature(run_pipeline).parameters
        extras: dict[str, Any] = {}
        if "models" in params:
            extras["models"] = _SplitCache(self._models, shard_over, opts) if shard_over else self._models
        if decoded and "decoded" in params:
            import ray

            extras["decoded"] = ray.get(decoded[0])
        if shard_over and "estimate" in params:
            extras["estimate"] = _sharded_estimator(shard_over, opts)
        if shard_over and len(shard_over) > 1 and "render" in params:
            extras["render"] = _split_renderer(shard_over)
        return extras

    def run_video(self, job: VideoJob, opts: PipelineOptions, out_dir: str, decoded: list | None = None,
                  shard_over: list | None = None, mode: str = FRESH) -> Row:
        """The whole pipeline on one video into out_dir; a failure becomes a 'failed' row, never an exception.

        decoded: [ref] to (frames, clip) from ``decode_video`` (a list, so Ray hands over the reference);
        shard_over: worker handles (this one included) that share the video's body, amodal and render stages;
        mode: FRESH, RESUME (reuse the finished stages run.json allows) or OVERWRITE (replace the old run).
        """
        if mode not in (FRESH, RESUME, OVERWRITE):
            raise ValueError(f"unknown folder mode {mode!r}")
        out = Path(out_dir)
        base = Row(video=str(job.video), name=job.name, status=FAILED, out_dir=str(out), worker=self.label)
        t0 = time.perf_counter()
        self.set_status(job.name, "start", 0, 0)
        try:
            extras = self._extras(opts, decoded, shard_over)
            summary = run_pipeline(job.video, out, opts, lambda stage: _StageHooks(self, job.name, stage),
                                   overwrite=mode == OVERWRITE, resume=mode == RESUME, **extras)
        except Exception as err:  # noqa: BLE001 - one video's failure is reported, the batch goes on
            log.warning("video %s failed: %s", job.video, err, exc_info=not isinstance(err, Body4DError))
            base.error = one_line(err)
            base.seconds = {"total": time.perf_counter() - t0}
            return base
        finally:
            self._status = {}
        row = Row(video=str(job.video), name=job.name, status=OK, out_dir=str(out), frames=summary.num_frames,
                  people=[int(i) for i in summary.obj_ids],
                  seconds={**summary.timings, "total": time.perf_counter() - t0},
                  outputs={k: str(Path(v).relative_to(out)) if Path(v).is_relative_to(out) else str(v)
                           for k, v in summary.files.items()},
                  worker=self.label)
        record_row(out, row)
        return row

    def _body_model(self, models_root: str | None, device: str | None) -> Any:
        """The SAM-3D-Body model, loaded on first use and kept for the worker's life (shared with the pipeline's)."""
        from ..runtime import pick_device
        from ..sam3d_body import load_sam3d_body

        key = ("sam3d_body", str(models_root), device)
        if key not in self._models:
            dirs = [Path(models_root)] if models_root else None
            self._models[key] = load_sam3d_body(search_dirs=dirs, device=pick_device(device))
        return self._models[key]

    def estimate_bodies(self, frames: np.ndarray, items: Sequence[Any], intrinsics: Any, models_root: str | None,
                        device: str | None, **kwargs: Any) -> list[dict[str, np.ndarray]]:
        """SAM-3D-Body on a shard of one video's crop items (see ``shard``)."""
        from ..sam3d_body import estimate_bodies

        model = self._body_model(models_root, device)
        self._shards += 1
        return estimate_bodies(model, frames, items, intrinsics, **kwargs)

    def amodal_jobs(self, part: str, jobs: Sequence[Any], sampler: Any, budget_px: int, opts: PipelineOptions,
                    memory: Any = None) -> list[Any]:
        """One shard of a video's amodal jobs through this worker's own ``part`` ("mask" or "content") sampler."""
        from ..runtime import NULL_HOOKS

        runner = getattr(self._amodal_models(opts), part)
        self._amodal_shards += 1
        extra = {} if memory is None else {"memory": memory}  # the plan's low-memory mode, as on the driver
        return runner.run_jobs(list(jobs), sampler, NULL_HOOKS, budget_px, **extra)

    def render_frames(self, frames: np.ndarray | None, bodies: Any, camera: Any, mode: str, batch_size: int,
                      **kwargs: Any) -> np.ndarray:
        """One contiguous frame range of a video's render on this worker's device (see ``split_render``)."""
        from .split_render import render_range

        with self._render_lock:
            self._render_shards += 1
            return render_range(frames, bodies, camera, mode, batch_size, **kwargs)

    def _amodal_models(self, opts: PipelineOptions) -> Any:
        """The amodal models under the pipeline's own cache key (loaded once, shared with this worker's videos)."""
        from ..pipeline import amodal_models

        return amodal_models(opts, self._models)


class _SplitCache(UserDict):
    """The worker's model cache as one split video sees it: the amodal models hand their jobs to every worker.

    The entries are the worker's own (loads land in its cache); only what the amodal stage reads
    is a view whose samplers split their job lists over ``workers`` (see ``shard.SplitJobRunner``).
    """

    def __init__(self, store: dict, workers: list, opts: PipelineOptions) -> None:
        super().__init__()
        self.data = store  # shared, not copied
        self.workers, self.opts = workers, opts

    def __getitem__(self, key: Any) -> Any:
        from .shard import SplitJobRunner

        value = self.data[key]
        if not (isinstance(key, tuple) and key and key[0] == "amodal") or len(self.workers) < 2:
            return value
        split = {part: SplitJobRunner(self.workers, part, getattr(value, part), self.opts)
                 for part in ("mask", "content") if getattr(value, part) is not None}
        return dataclasses.replace(value, **split)


def decode_video(video: str, opts: Any) -> tuple[np.ndarray, Any]:
    """A video's frames and clip (a CPU task of its own, run ahead so the GPU workers never wait on decoding)."""
    from ..video import load_video

    return load_video(video, opts)


def _sharded_estimator(workers: list, opts: PipelineOptions) -> Any:
    """An ``estimate_bodies`` stand-in that splits the items over ``workers`` (same results, see ``shard``)."""
    from .shard import estimate_bodies_sharded

    root = None if opts.models_root is None else str(opts.models_root)

    def estimate(model: Any, frames: np.ndarray, items: Sequence[Any], intrinsics: Any = None, hooks: Any = None,
                 *, into: Any = None, **kwargs: Any) -> list[dict[str, np.ndarray]]:
        del model, hooks  # each worker uses its own copy; progress stays with the stage as a whole
        return estimate_bodies_sharded(workers, frames, items, intrinsics, models_root=root, device=opts.device,
                                       into=into, **kwargs)

    return estimate


def _split_renderer(workers: list) -> Any:
    """A ``render_bodies`` stand-in whose streamed batches are rendered by ``workers`` (same frames, see
    ``split_render``)."""
    from .split_render import render_split

    def render(*args: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        return render_split(workers, *args, **kwargs)

    return render
