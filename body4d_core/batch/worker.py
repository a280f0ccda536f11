"""The long-lived worker of a batch (one per GPU): runs whole videos, or body-stage shards of one video.

A plain class: ``engine`` turns it into a Ray actor (one GPU each; Ray sets CUDA_VISIBLE_DEVICES,
so the worker's device is simply ``cuda``). It runs with two threads so the driver can ask for
its current video and stage while a video runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import Body4DError
from ..pipeline import PipelineOptions, run_pipeline
from .jobs import VideoJob
from .outputs import FAILED, OK, Row, finish_folder, options_record, start_folder

log = logging.getLogger(__name__)


def one_line(err: BaseException) -> str:
    """An error as one line: our errors' message, else the type name and the message's first line."""
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
        self.label = label
        self._status: dict[str, Any] = {}
        self._body: tuple[tuple, Any] | None = None  # ((models_root, device), model)

    def ready(self) -> str:
        """Answers once the worker process is up (the driver waits for every worker before timing)."""
        return self.label

    def set_status(self, video: str, stage: str, done: int, total: int) -> None:
        self._status = {"video": video, "stage": stage, "done": int(done), "total": int(total)}

    def status(self) -> dict[str, Any]:
        """The running video, its stage and the stage's progress ({} when idle)."""
        return dict(self._status)

    def run_video(self, job: VideoJob, opts: PipelineOptions, out_dir: str) -> Row:
        """The whole pipeline on one video into out_dir; a failure becomes a 'failed' row, never an exception."""
        out = Path(out_dir)
        record = options_record(opts)
        base = Row(video=str(job.video), name=job.name, status=FAILED, out_dir=str(out), worker=self.label)
        t0 = time.perf_counter()
        self.set_status(job.name, "start", 0, 0)
        try:
            start_folder(out, str(job.video), record)
            summary = run_pipeline(job.video, out, opts, lambda stage: _StageHooks(self, job.name, stage))
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
        finish_folder(out, record, row)
        return row

    def _body_model(self, models_root: str | None, device: str | None) -> Any:
        """The SAM-3D-Body model, loaded on first use and kept for the worker's life."""
        from ..runtime import pick_device
        from ..sam3d_body import load_sam3d_body

        key = (models_root, device)
        if self._body is None or self._body[0] != key:
            self._body = None
            dirs = [Path(models_root)] if models_root else None
            self._body = (key, load_sam3d_body(search_dirs=dirs, device=pick_device(device)))
        return self._body[1]

    def estimate_bodies(self, frames: np.ndarray, items: Sequence[Any], intrinsics: Any, models_root: str | None,
                        device: str | None, **kwargs: Any) -> list[dict[str, np.ndarray]]:
        """SAM-3D-Body on a shard of one video's crop items (see ``shard``)."""
        from ..sam3d_body import estimate_bodies

        model = self._body_model(models_root, device)
        return estimate_bodies(model, frames, items, intrinsics, **kwargs)
