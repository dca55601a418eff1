"""The one training loop of the methods that learn weights (autoencoders, DFR, SimpleNet, EfficientAD,
the CAM classifier): optimiser steps over the batches a method draws, progress, an optional
learning-rate schedule, and early stopping on held-out data that keeps the best weights.

A method supplies ``epoch_batches(generator)`` -- what one epoch feeds the network, every random
draw (order, crops, noise) taken from the ``torch.Generator`` it is given -- and
``step_loss(batch)``. The loop owns the rest, identically for every method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch import nn

from flawscope._progress import progress_bar

Batch = TypeVar("Batch")
logger = logging.getLogger("flawscope")


@dataclass
class EarlyStopping:
    """Judge the network on held-out data after every epoch and keep the weights of the best epoch.

    ``measure()`` returns the held-out figure; ``higher_is_better`` says which way is better;
    with ``ties_improve`` an equal figure counts as better (the later, longer-trained epoch is
    kept). Training stops after ``patience`` epochs without improvement (``None``: never stops
    early, only keeps the best). ``keep`` is the module whose weights are saved and restored.
    """

    measure: Callable[[], float]
    keep: nn.Module
    higher_is_better: bool = False
    ties_improve: bool = False
    patience: int | None = None

    def improves(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        if value == best:
            return self.ties_improve
        return value > best if self.higher_is_better else value < best


@dataclass
class TrainingHistory:
    """What a training run did: the mean loss of every epoch, every step's loss, the held-out
    figure of every epoch (with early stopping) and the epoch whose weights were kept (1-based)."""

    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    best_epoch: int | None = None


@dataclass
class TrainingLoop(Generic[Batch]):
    """Adam-style training shared by every method: see the module docstring.

    ``networks`` are put in training mode for every epoch and in evaluation mode at the end.
    ``scheduler`` (if any) steps after every optimiser step. ``stop_after_epoch()`` may end
    training after an epoch (e.g. once the training accuracy is high enough).
    """

    networks: Sequence[nn.Module]
    optimiser: torch.optim.Optimizer
    epoch_batches: Callable[[torch.Generator], Iterable[Batch]]
    step_loss: Callable[[Batch], torch.Tensor]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    early_stopping: EarlyStopping | None = None
    stop_after_epoch: Callable[[], bool] | None = None

    def run(
        self,
        *,
        epochs: int,
        steps_per_epoch: int,
        generator: torch.Generator,
        progress: bool,
        description: str = "training",
    ) -> TrainingHistory:
        """Train ``epochs`` epochs (fewer when stopped early); the progress bar counts steps."""
        history = TrainingHistory()
        best: float | None = None
        best_state: dict[str, torch.Tensor] | None = None
        stale = 0
        with progress_bar(description, epochs * steps_per_epoch, progress) as bar:
            for epoch in range(1, epochs + 1):
                for network in self.networks:
                    network.train()
                epoch_losses = []
                for batch in self.epoch_batches(generator):
                    epoch_losses.append(self._step(batch))
                    bar.advance()
                history.step_losses += epoch_losses
                history.epoch_losses.append(sum(epoch_losses) / max(len(epoch_losses), 1))
                if self.early_stopping is not None:
                    value = self.early_stopping.measure()
                    history.validation.append(value)
                    if self.early_stopping.improves(value, best):
                        best, stale, history.best_epoch = value, 0, epoch
                        best_state = {k: v.detach().clone() for k, v in self.early_stopping.keep.state_dict().items()}
                    else:
                        stale += 1
                if self.stop_after_epoch is not None and self.stop_after_epoch():
                    break
                patience = None if self.early_stopping is None else self.early_stopping.patience
                if patience is not None and stale >= patience:
                    break
        if self.early_stopping is not None and best_state is not None:
            self.early_stopping.keep.load_state_dict(best_state)
        for network in self.networks:
            network.eval()
        return history

    def _step(self, batch: Batch) -> float:
        loss = self.step_loss(batch)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.detach())


def announce_schedule(method: str, planned: str, paper: str, longer: float) -> None:
    """Log (INFO, logger ``flawscope``) the schedule a fit trains for, and the paper's when that is ``longer``
    times as long -- so a fast CPU schedule is never mistaken for the published one."""
    line = f"{method}: training {planned}"
    if longer != 1:
        line += f" (the paper: {paper}, {longer:.0f}x as long; recipe='paper' for it)"
    logger.info(line)
