"""The one training loop of the methods that learn weights (autoencoders, DFR, SimpleNet, EfficientAD,
the CAM classifier): optimiser steps over the batches a method draws, progress, an optional
learning-rate schedule, and early stopping on held-out data that keeps the best weights.

A method supplies ``epoch_batches(generator)`` -- what one epoch feeds the network, every random
draw (order, crops, noise) taken from the ``torch.Generator`` it is given -- and
``step_loss(batch)``. The loop owns the rest, identically for every method.

``precision="bfloat16"`` computes each step's loss under bfloat16 autocast (the forward pass's matrix products
and convolutions in bfloat16, the weights, optimiser and losses in float32): 1.2-2.1x the steps per second where
the hardware computes bfloat16 natively (``benchmarks/results/training_speed.json``). A method offers it as its
``training_precision`` parameter (:func:`resolve_training_precision`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from flawscope._progress import progress_bar
from flawscope._validation import Constraints, Options
from flawscope.devices import native_bfloat16

Batch = TypeVar("Batch")
logger = logging.getLogger("flawscope")

TRAINING_PRECISIONS = ("auto", "float32", "bfloat16")
# the parameter of the methods that offer it (the autoencoders, DFR, SimpleNet; EfficientAD has its own ``precision``)
TRAINING_CONSTRAINTS: Constraints = {"training_precision": [Options(TRAINING_PRECISIONS)]}
# the named schedules of the methods that train: "fast" (the default, minutes on a 2-core CPU), "long" (the
# longest that fits 60 minutes of one fit on the 2-core AVX512-BF16 CPU at the steps per second of
# benchmarks/results/training_speed.json, never longer than the paper's) and "paper" (the published one)
RECIPES = ("fast", "long", "paper")
RECIPE_CONSTRAINTS: Constraints = {"recipe": [Options(RECIPES)]}


def computes_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (a CPU with AVX512-BF16 or AMX, a GPU from Ampere on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and native_bfloat16()


def resolve_training_precision(requested: str, device: torch.device, bfloat16_pays: bool) -> str:
    """The precision a fit trains in: ``"auto"`` is bfloat16 where ``device`` computes it in hardware and the
    method measured it faster at the same quality (``bfloat16_pays``), float32 elsewhere; ``"float32"`` and
    ``"bfloat16"`` are honoured as asked (bfloat16 without hardware support is emulated: correct, slower -- said
    in a warning)."""
    native = computes_bfloat16(device)
    precision = requested
    if requested == "auto":
        precision = "bfloat16" if bfloat16_pays and native else "float32"
    elif requested == "bfloat16" and not native:
        logger.warning(
            "training_precision='bfloat16' on %s, which emulates bfloat16: slower than float32 here.", device.type
        )
    return precision


def saved_training_precision(meta: Mapping[str, Any]) -> str:
    """The precision a saved model trained in, from its saved ``meta`` (models saved before ``training_precision``
    existed trained in float32)."""
    return str(meta.get("training_precision", "float32"))


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
    training after an epoch (e.g. once the training accuracy is high enough). ``precision``:
    ``"float32"`` or ``"bfloat16"`` (see the module docstring).
    """

    networks: Sequence[nn.Module]
    optimiser: torch.optim.Optimizer
    epoch_batches: Callable[[torch.Generator], Iterable[Batch]]
    step_loss: Callable[[Batch], torch.Tensor]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    early_stopping: EarlyStopping | None = None
    stop_after_epoch: Callable[[], bool] | None = None
    precision: str = "float32"

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
        device_type = next(self.networks[0].parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
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


def recipe_epochs(method: str, recipes: Mapping[str, int], recipe: str, epochs: int | None, precision: str) -> int:
    """The epochs a fit trains (``epochs``, else its ``recipe``'s), announced beside the paper's
    (:func:`announce_schedule`): for the methods whose recipes count epochs (DFR, SimpleNet)."""
    chosen = epochs or recipes[recipe]
    paper = recipes["paper"]
    announce_schedule(method, f"{chosen} epochs in {precision}", f"{paper} epochs", paper / chosen)
    return chosen


def training_length(schedule: Mapping[str, int] | int) -> int:
    """A recipe's training as one number, to compare recipes: patches x epochs of an autoencoder's
    (``{"n_patches": ..., "epochs": ...}``), else its epochs or steps."""
    return schedule["n_patches"] * schedule["epochs"] if isinstance(schedule, Mapping) else schedule
