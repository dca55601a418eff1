"""Micro-batching on one model thread: the images that arrive while a model is busy are scored together in its
next batch, and every model of the process is loaded and scored on that same thread.

A request hands its pixels to the model thread and waits; the thread takes the oldest waiting image and every
other one waiting for the same model at that moment (up to the model's ``max_batch``) and scores them in one
``predict`` call. Nothing waits for a batch to fill: a lone request is scored at once, and under load the
batches form by themselves. On a CPU, PatchCore scores ELPV cells about 1.3x faster per image in its batches
of 16 than one per call (``benchmarks/results/service.json``).

Why one thread for all of it: torch runs its operators on an OpenMP team that belongs to the thread that
starts them. Once a second thread has a team -- the main thread's, say, after it loaded a model -- libgomp
counts more worker threads than cores and stops spinning between parallel regions, so each small operator
waits for its team to wake up: EfficientNet-Lite0's forward pass at batch 1 takes 12.3 ms on a second thread
against 5.1 ms on the only one, on the 2-core CPU (``benchmarks/thread_teams.py``). Loading and scoring on one
long-lived thread keeps a single team however many models are served.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from flawscope.models.base import Detector
from flawscope.postprocess import Box

T = TypeVar("T")


@dataclass(frozen=True)
class Decision:
    """One image's score, map and decision at the model's thresholds."""

    score: float
    anomaly_map: np.ndarray
    not_ok: bool
    mask: np.ndarray
    boxes: list[Box]


@dataclass(eq=False)  # a task is itself only: the queue removes it by identity
class _Task:
    done: threading.Event = field(default_factory=threading.Event, init=False)
    error: BaseException | None = field(default=None, init=False)

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


@dataclass(eq=False)
class _Job(_Task):
    batcher: Batcher
    pixels: np.ndarray
    decision: Decision | None = field(default=None, init=False)


@dataclass(eq=False)
class _Call(_Task):
    function: Callable[[], Any]
    result: Any = field(default=None, init=False)


class ModelThread:
    """The thread that loads and scores every model of a station, in the order asked."""

    def __init__(self) -> None:
        self._waiting: deque[_Task] = deque()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="flawscope-models", daemon=True)
        self._thread.start()

    def call(self, function: Callable[[], T]) -> T:
        """``function()`` run on the model thread; blocks until it returns (or raises its exception here)."""
        if threading.current_thread() is self._thread:
            return function()
        task = _Call(function)
        self.submit(task)
        task.wait()
        return task.result

    def submit(self, task: _Task) -> None:
        """Queue ``task`` behind those waiting; its ``wait()`` returns when it is done."""
        with self._changed:
            self._waiting.append(task)
            self._changed.notify()

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._waiting:
                    self._changed.wait()
                first = self._waiting.popleft()
                batch = self._same_model(first) if isinstance(first, _Job) else []
            if isinstance(first, _Job):
                first.batcher.run([first, *batch])
            else:
                assert isinstance(first, _Call)
                _run_call(first)

    def _same_model(self, first: _Job) -> list[_Job]:
        """The jobs waiting for ``first``'s model, up to its batch size, taken out of the queue (the caller holds the
        lock); other tasks keep their places."""
        batch: list[_Job] = []
        for task in list(self._waiting):
            if len(batch) + 1 >= first.batcher.max_batch:
                break
            if isinstance(task, _Job) and task.batcher is first.batcher:
                self._waiting.remove(task)
                batch.append(task)
        return batch


def _run_call(task: _Call) -> None:
    try:
        task.result = task.function()
    except BaseException as error:  # raised again in the caller's thread
        task.error = error
    finally:
        task.done.set()


_SHARED: ModelThread | None = None
_SHARED_LOCK = threading.Lock()


def model_thread() -> ModelThread:
    """The process's model thread, started on first use."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ModelThread()
        return _SHARED


class Batcher:
    """Score images with ``detector`` from any number of threads, up to ``max_batch`` at once, on the model thread."""

    def __init__(self, detector: Detector, max_batch: int = 8, thread: ModelThread | None = None) -> None:
        self.detector = detector
        self.max_batch = max_batch
        self.thread = thread or model_thread()

    def decide(self, pixels: np.ndarray) -> Decision:
        """Score one image (``read_image``'s float ``H x W x C``); blocks until its batch is done."""
        job = _Job(self, pixels)
        self.thread.submit(job)
        job.wait()
        assert job.decision is not None
        return job.decision

    def run(self, batch: list[_Job]) -> None:
        """Score ``batch`` in one ``predict`` call and wake its requests (on the model thread)."""
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
