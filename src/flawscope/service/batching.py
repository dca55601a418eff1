"""Micro-batching: the images that arrive while a model is busy are scored together in its next batch.

One worker thread per served model owns the detector. A request hands its pixels to the worker and waits;
the worker takes every image queued at that moment (up to ``max_batch``) and scores them in one
``predict`` call. Nothing waits for a batch to fill: a lone request is scored at once, and under load the
batches form by themselves. On a CPU, PatchCore scores a batch of 8 ELPV cells about 2.7x faster per
image than 8 calls of one (``benchmarks/results/service.json``).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from flawscope.models.base import Detector
from flawscope.postprocess import Box


@dataclass(frozen=True)
class Decision:
    """One image's score, map and decision at the model's thresholds."""

    score: float
    anomaly_map: np.ndarray
    not_ok: bool
    mask: np.ndarray
    boxes: list[Box]


@dataclass
class _Job:
    pixels: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    decision: Decision | None = None
    error: BaseException | None = None


class Batcher:
    """Score images with ``detector`` from any number of threads, batched in one worker thread."""

    def __init__(self, detector: Detector, max_batch: int = 8) -> None:
        self.detector = detector
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name="flawscope-batcher", daemon=True)
        self._worker.start()

    def decide(self, pixels: np.ndarray) -> Decision:
        """Score one image (``read_image``'s float ``H x W x C``); blocks until its batch is done."""
        job = _Job(pixels)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.decision is not None
        return job.decision

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join()

    def _work(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)
                    break
                batch.append(job)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        try:
            prediction = self.detector.predict([job.pixels for job in batch], progress=False)
            assert prediction.labels is not None and prediction.masks is not None and prediction.boxes is not None
            for index, job in enumerate(batch):
                job.decision = Decision(
                    float(prediction.scores[index]),
                    prediction.anomaly_maps[index],
                    bool(prediction.labels[index]),
                    prediction.masks[index],
                    prediction.boxes[index],
                )
        except Exception as error:  # handed to every waiting request, which answers with it
            for job in batch:
                job.error = error
        finally:
            for job in batch:
                job.done.set()
