"""Splitting datasets: at random (:func:`holdout_split`, :func:`stratified_split`) and by group
(:func:`group_split`, :func:`group_kfold`).

Images of one physical part -- a solar module's cells, a tile's captures under several lights, a
spindle position's frames -- resemble each other far more than images of different parts. A
split at random puts siblings of the training images into the test set and reports a figure a
line never sees on parts it was not trained on. The group splits keep every group on one side;
a sample's group is ``Sample.group``, or given by ``groups``: a sequence aligned with the
dataset, a function of a sample, or a regular expression (:func:`groups_from_pattern`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from flawscope.data.datasets import DEFECTIVE, GOOD, ImageDataset, Sample
from flawscope.errors import DataError

GroupSource = Sequence[Hashable] | Callable[[Sample], Hashable] | str | None


def holdout_split(dataset: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Split ``dataset`` into (rest, held out) with ``fraction`` of the samples held out, seeded."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"The held-out fraction must be in (0, 1); got {fraction}.")
    if len(dataset) < 2:
        raise DataError(f"{dataset!r} has {len(dataset)} image(s); a hold-out split needs at least 2.")
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_held = min(max(1, round(fraction * len(dataset))), len(dataset) - 1)
    held, rest = sorted(order[:n_held].tolist()), sorted(order[n_held:].tolist())
    return (
        dataset.subset(rest, f"{dataset.description} (minus {n_held} held out)"),
        dataset.subset(held, f"{dataset.description} (held out, {n_held})"),
    )


def stratified_split(dataset: ImageDataset, fractions: Sequence[float], seed: int = 0) -> tuple[ImageDataset, ...]:
    """Split labelled ``dataset`` into parts of the given ``fractions`` (summing to 1), seeded, with
    good and defective images in every part in the proportions of the whole."""
    _check_fractions(fractions)
    labels = dataset.labels
    if (labels < 0).any():
        raise DataError(f"{dataset!r} has unlabelled images; a stratified split needs labels.")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in (GOOD, DEFECTIVE):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        bounds = np.round(np.cumsum(fractions) * len(members)).astype(int)
        for part, (start, stop) in zip(parts, zip(np.r_[0, bounds[:-1]], bounds)):
            part.extend(members[start:stop].tolist())
    return tuple(
        dataset.subset(sorted(part), f"{dataset.description} (part {i + 1} of {len(fractions)}, seed {seed})")
        for i, part in enumerate(parts)
    )


def groups_from_pattern(pattern: str) -> Callable[[Sample], str]:
    """A sample's group read from its file name by a regular expression: the first capturing group
    (or the whole match) of ``re.search(pattern, file name)``; a name without a match is an error."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise DataError(f"The group pattern {pattern!r} is not a regular expression: {error}.") from error

    def group_of(sample: Sample) -> str:
        name = Path(sample.name).name
        match = compiled.search(name)
        if match is None:
            raise DataError(f"The group pattern {pattern!r} does not match the file name {name!r}.")
        return match.group(1) if compiled.groups else match.group(0)

    return group_of


def sample_groups(dataset: ImageDataset, groups: GroupSource = None) -> list[str]:
    """The group of every sample: from ``groups`` when given, else ``Sample.group``."""
    if groups is None:
        found = [sample.group for sample in dataset.samples]
        missing = next((sample for sample in dataset.samples if sample.group is None), None)
        if missing is not None:
            raise DataError(
                f"{missing.name} has no group: give groups (a sequence, a function of a sample or a file-name "
                "pattern) to split by group."
            )
        return [str(group) for group in found]
    if isinstance(groups, str):
        groups = groups_from_pattern(groups)
    if callable(groups):
        return [str(groups(sample)) for sample in dataset.samples]
    if len(groups) != len(dataset):
        raise DataError(f"Got {len(groups)} groups for the {len(dataset)} samples of {dataset!r}.")
    return [str(group) for group in groups]


def with_groups(dataset: ImageDataset, groups: GroupSource) -> ImageDataset:
    """``dataset`` with ``Sample.group`` set from ``groups`` (see :func:`sample_groups`)."""
    found = sample_groups(dataset, groups)
    samples = [replace(sample, group=group) for sample, group in zip(dataset.samples, found)]
    return ImageDataset(samples, dataset.description)


def group_split(
    dataset: ImageDataset, fractions: Sequence[float], seed: int = 0, groups: GroupSource = None
) -> tuple[ImageDataset, ...]:
    """Split ``dataset`` into parts of about the given ``fractions`` of its samples, whole groups to
    a part (no group on two sides), groups shuffled with ``seed``."""
    _check_fractions(fractions)
    found = sample_groups(dataset, groups)
    names = _shuffled_groups(found, seed)
    if len(names) < len(fractions):
        raise DataError(f"{dataset!r} has {len(names)} group(s); a split into {len(fractions)} parts needs as many.")
    sizes = Counter(found)
    bounds = np.cumsum(fractions) * len(found)
    part_of: dict[str, int] = {}
    done = 0
    for name in names:  # a group goes to the part its middle sample falls in
        middle = done + sizes[name] / 2
        part_of[name] = min(int(np.searchsorted(bounds, middle)), len(fractions) - 1)
        done += sizes[name]
    _fill_empty_parts(part_of, names, len(fractions))
    return tuple(
        dataset.subset(
            [i for i, group in enumerate(found) if part_of[group] == part],
            f"{dataset.description} (groups part {part + 1} of {len(fractions)}, seed {seed})",
        )
        for part in range(len(fractions))
    )


def group_kfold(
    dataset: ImageDataset, n_folds: int, seed: int = 0, groups: GroupSource = None
) -> list[tuple[ImageDataset, ImageDataset]]:
    """``(rest, fold)`` pairs for ``n_folds`` folds of whole groups; every group is in exactly one fold,
    and the folds hold about as many samples each (groups shuffled with ``seed``, each added to the
    fold with the fewest samples so far)."""
    if n_folds < 2:
        raise DataError(f"group_kfold needs at least 2 folds; got {n_folds}.")
    found = sample_groups(dataset, groups)
    names = _shuffled_groups(found, seed)
    if len(names) < n_folds:
        raise DataError(f"{dataset!r} has {len(names)} group(s); {n_folds} folds need as many.")
    sizes = Counter(found)
    fold_of = assign_folds(names, [sizes[name] for name in names], n_folds)
    pairs = []
    for fold in range(n_folds):
        inside = [i for i, group in enumerate(found) if fold_of[group] == fold]
        outside = [i for i, group in enumerate(found) if fold_of[group] != fold]
        label = f"{dataset.description} (group fold {fold + 1} of {n_folds}, seed {seed})"
        pairs.append((dataset.subset(outside, f"{label}, rest"), dataset.subset(inside, label)))
    return pairs


def assign_folds(names: Sequence[str], sizes: Sequence[int], n_folds: int) -> dict[str, int]:
    """Each of ``names`` (in the order given) to the fold with the fewest samples so far (ties: the lowest)."""
    totals = [0] * n_folds
    fold_of = {}
    for name, size in zip(names, sizes):
        fold = int(np.argmin(totals))
        fold_of[name] = fold
        totals[fold] += size
    return fold_of


def _shuffled_groups(found: Sequence[str], seed: int) -> list[str]:
    names = sorted(set(found))
    order = np.random.default_rng(seed).permutation(len(names))
    return [names[i] for i in order]


def _fill_empty_parts(part_of: dict[str, int], names: Sequence[str], n_parts: int) -> None:
    """Move a group into every part left empty (small fractions of few, large groups)."""
    for part in range(n_parts):
        if part in part_of.values():
            continue
        counts = Counter(part_of.values())
        donor = next(name for name in reversed(names) if counts[part_of[name]] > 1)
        part_of[donor] = part


def _check_fractions(fractions: Sequence[float]) -> None:
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise DataError(f"fractions must be positive and sum to 1; got {tuple(fractions)}.")
