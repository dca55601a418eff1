"""The ELPV solar-cell images (``elpv-dataset`` package): Buerhop-Lutz et al. 2018, Deitsch et al.
2019; CC BY-NC-SA 4.0. 2,624 cells of 300 x 300 px cut from electroluminescence images of 44 solar
modules (18 mono-, 26 polycrystalline), each with an expert defect probability 0, 1/3, 2/3 or 1.

The package says nothing of which module a cell comes from; its order does. The cells of one
module are consecutive, and the cell type changes only between modules. The rule
(:func:`module_ids`): every run of consecutive cells of one type holds ``round(n / 60)``
modules (60 cells is a 6 x 10 module); they are consecutive blocks of 60 cells, the last block
of a run taking the rest. On the package's data it gives 44 modules -- 18 mono, 26 poly, as
the data's authors state -- of 60 cells, one of 72 and one of 48 (runs that are one module
each), and one of 54 and one of 50: the runs of 714 and 530 cells each hold one shorter module.
Where in those two runs the short module lies is not known; the rule puts it last, so up to 6
(resp. 10) cells of each later module there may be counted with the module before.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from flawscope.data.datasets import DEFECTIVE, GOOD, ImageDataset, Sample
from flawscope.data.splits import assign_folds
from flawscope.errors import DataError

CELLS_PER_MODULE = 60
SPLITS = ("train", "validation", "test", "labelled")
SCHEMES = ("module", "shuffled")
CELL_TYPES = ("mono", "poly", "all")

Row = tuple[str, float, str]  # (path, defect probability, cell type)


def module_ids(cell_types: list[str]) -> list[str]:
    """The module of every cell, from the cells' types in the package's order (see the module docstring):
    ``"mono00"``, ``"mono01"``, ... and ``"poly00"``, ... numbered in order of appearance."""
    ids: list[str] = []
    counters = {cell_type: 0 for cell_type in set(cell_types)}
    for cell_type, run in itertools.groupby(cell_types):
        size = len(list(run))
        count = max(1, round(size / CELLS_PER_MODULE))
        for index in range(size):
            block = min(index // CELLS_PER_MODULE, count - 1)
            ids.append(f"{cell_type}{counters[cell_type] + block:02d}")
        counters[cell_type] += count
    return ids


class ELPV(ImageDataset):
    """ELPV cells (in the package's order) of one ``cell_type`` ("mono", "poly" or "all"), good =
    probability 0, defective = probability ``>= defect_probability`` (default 1.0; the uncertain ones
    in between are left out).

    ``scheme="module"`` (default): no module is on two sides. The modules are shuffled with
    ``seed``; ``split="train"`` takes ``n_train`` good cells from the first modules, the last one
    it touches in part; ``"validation"`` takes ``n_validation`` good cells from the modules after
    it; ``"test"`` is every good and defective cell of the modules neither touched. With
    ``n_folds``, the modules are first dealt into that many folds (about equal cell counts):
    ``"test"`` is fold ``fold`` and training and validation come from the other folds, so the
    folds together test every module once.

    ``scheme="shuffled"``: the split of flawscope before 0.2, kept for comparison. The good cells
    are shuffled with ``seed`` regardless of their module: the first ``n_train`` train, the next
    ``n_validation`` validate, the rest and every defective cell test -- so the test's good cells
    are neighbours of training cells on the same modules.

    ``split="labelled"`` is every good and defective cell, for a supervised method to split. With
    ``scheme="module"`` every cell carries its module as ``Sample.group`` (so the group splits of
    :mod:`flawscope.data.splits` keep modules whole); with ``"shuffled"`` none does.
    """

    def __init__(
        self,
        split: str = "train",
        cell_type: str = "mono",
        n_train: int = 200,
        n_validation: int = 50,
        seed: int = 0,
        defect_probability: float = 1.0,
        scheme: str = "module",
        n_folds: int | None = None,
        fold: int = 0,
    ) -> None:
        _check_choice("split", split, SPLITS)
        _check_choice("cell_type", cell_type, CELL_TYPES)
        _check_choice("scheme", scheme, SCHEMES)
        rows = [(row, module) for row, module in zip(_elpv_rows(), _all_module_ids()) if cell_type in ("all", row[2])]
        kept = [(row, module) for row, module in rows if row[1] == 0.0 or row[1] >= defect_probability]
        if split == "labelled":
            chosen = kept
        elif scheme == "shuffled":
            if n_folds is not None:
                raise DataError("n_folds splits by module; it needs scheme='module'.")
            chosen = _shuffled_split(kept, split, n_train, n_validation, seed)
        else:
            chosen = _module_split(kept, split, n_train, n_validation, seed, n_folds, fold)
        samples = [
            Sample(
                path,
                Path(path).name,
                GOOD if prob == 0.0 else DEFECTIVE,
                "good" if prob == 0.0 else f"p={prob:.2f}",
                group=module if scheme == "module" else None,
            )
            for (path, prob, _), module in chosen
        ]
        fold_text = "" if n_folds is None else f", fold {fold + 1} of {n_folds}"
        super().__init__(samples, f"elpv-{cell_type}/{split} (by {scheme}{fold_text}, seed {seed})")


def _check_choice(what: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DataError(f"{what} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def _shuffled_split(
    rows: list[tuple[Row, str]], split: str, n_train: int, n_validation: int, seed: int
) -> list[tuple[Row, str]]:
    good = [item for item in rows if item[0][1] == 0.0]
    if n_train + n_validation >= len(good):
        raise DataError(f"ELPV has {len(good)} good cells here; n_train + n_validation must be fewer.")
    shuffled = [good[i] for i in np.random.default_rng(seed).permutation(len(good))]
    if split == "train":
        return shuffled[:n_train]
    if split == "validation":
        return shuffled[n_train : n_train + n_validation]
    return sorted(shuffled[n_train + n_validation :]) + [item for item in rows if item[0][1] != 0.0]


def _module_split(
    rows: list[tuple[Row, str]],
    split: str,
    n_train: int,
    n_validation: int,
    seed: int,
    n_folds: int | None,
    fold: int,
) -> list[tuple[Row, str]]:
    rng = np.random.default_rng(seed)
    modules = sorted({module for _, module in rows})
    modules = [modules[i] for i in rng.permutation(len(modules))]
    good_of = {module: [item for item in rows if item[1] == module and item[0][1] == 0.0] for module in modules}
    for module in modules:  # the order in which a module gives its good cells
        good_of[module] = [good_of[module][i] for i in rng.permutation(len(good_of[module]))]
    if n_folds is None:
        pool, held = modules, []
    else:
        if not 0 <= fold < n_folds:
            raise DataError(f"fold must be in [0, {n_folds}); got {fold}.")
        sizes = [sum(1 for _, module in rows if module == name) for name in modules]
        fold_of = assign_folds(modules, sizes, n_folds)
        pool = [module for module in modules if fold_of[module] != fold]
        held = [module for module in modules if fold_of[module] == fold]
    train, after_train = _take_good(good_of, pool, n_train, "n_train")
    validation, after_validation = _take_good(good_of, pool[after_train:], n_validation, "n_validation")
    if split == "train":
        return sorted(train)
    if split == "validation":
        return sorted(validation)
    tested = held if n_folds is not None else pool[after_train + after_validation :]
    if not tested:
        raise DataError("No module is left to test on; lower n_train or n_validation.")
    return [item for item in rows if item[1] in tested]


def _take_good(
    good_of: dict[str, list[tuple[Row, str]]], modules: list[str], count: int, what: str
) -> tuple[list[tuple[Row, str]], int]:
    """``count`` good cells from ``modules`` in order, and how many modules they touched."""
    taken: list[tuple[Row, str]] = []
    for used, module in enumerate(modules, start=1):
        taken += good_of[module][: count - len(taken)]
        if len(taken) == count:
            return taken, used
    raise DataError(f"{what}={count} is more than the {len(taken)} good cells these modules hold.")


def _all_module_ids() -> list[str]:
    return module_ids([cell_type for _, _, cell_type in _elpv_rows()])


def _elpv_rows() -> list[Row]:
    """``(path, probability, type)`` for every cell of the installed ``elpv-dataset``, in the package's order."""
    try:
        import elpv_dataset
    except ImportError as error:
        raise DataError(
            "The ELPV data needs the package elpv-dataset: pip install 'flawscope[demo]' (or elpv-dataset)"
        ) from error
    data_dir = Path(elpv_dataset.__file__).parent / "data"
    with open(data_dir / "labels.csv", newline="") as handle:
        rows = [line.split() for line in handle if line.strip()]
    return [(str(data_dir / path), float(prob), cell_type) for path, prob, cell_type in rows]
