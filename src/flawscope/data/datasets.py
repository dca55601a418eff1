"""Datasets: lists of :class:`Sample` records with image sources, labels and optional masks.

Layouts read from disk:

* :class:`MVTecLayout` -- ``train/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``.
* :class:`FolderDataset` -- ``good/``, optionally ``defect/`` and ``masks/``.
* :class:`~flawscope.data.elpv.ELPV` -- the solar-cell images of the ``elpv-dataset`` package
  (:mod:`flawscope.data.elpv`).
* :class:`InMemoryDataset` -- arrays or PIL images held by the caller.

:func:`open_dataset` picks the layout of a folder; :mod:`flawscope.data.splits` splits datasets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flawscope.data.io import IMAGE_SUFFIXES, ImageInput, describe, image_size, read_mask
from flawscope.errors import DataError

GOOD = 0
DEFECTIVE = 1
UNKNOWN = -1


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``label`` is 0 (good), 1 (defective) or -1 (unknown); ``mask`` is a mask file path or a
    bool array (``None`` when the image has no ground-truth mask). ``group`` names the physical
    part, module, position or lot the image shows, when known: the splits of
    :mod:`flawscope.data.splits` never put images of one group on both sides. ``view`` is 0 for an image
    as it was taken and ``n`` for the n-th augmented view of it (:func:`flawscope.data.augment.augment`).
    """

    image: ImageInput
    name: str
    label: int = UNKNOWN
    defect_type: str = ""
    mask: str | os.PathLike | np.ndarray | None = None
    group: str | None = None
    view: int = 0

    def read_mask(self, expected_size: tuple[int, int]) -> np.ndarray:
        """The ground-truth mask as bool ``H x W``; all False for a good image without a mask file."""
        if self.mask is None:
            if self.label == DEFECTIVE:
                raise DataError(f"Sample {self.name} is defective but has no mask.")
            return np.zeros(expected_size, dtype=bool)
        if isinstance(self.mask, np.ndarray):
            if self.mask.shape != tuple(expected_size):
                raise DataError(f"Mask of {self.name} has shape {self.mask.shape}, its image {expected_size}.")
            return self.mask.astype(bool)
        return read_mask(self.mask, expected_size)


class ImageDataset(Sequence[Sample]):
    """A fixed list of samples. Subclasses only build the list."""

    def __init__(self, samples: Iterable[Sample], description: str) -> None:
        self.samples: list[Sample] = list(samples)
        self.description = description

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ImageDataset(self.samples[index], f"{self.description}[{index.start}:{index.stop}]")
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r}, n={len(self)})"

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` int array of labels (0 good, 1 defective, -1 unknown)."""
        return np.array([sample.label for sample in self.samples], dtype=np.int64)

    @property
    def has_masks(self) -> bool:
        """True when every defective sample has a ground-truth mask."""
        defective = [sample for sample in self.samples if sample.label == DEFECTIVE]
        return bool(defective) and all(sample.mask is not None for sample in defective)

    def subset(self, indices: Sequence[int], description: str) -> ImageDataset:
        """A new dataset of the samples at ``indices``, in that order."""
        return ImageDataset([self.samples[i] for i in indices], description)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def _require_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"Folder {folder} does not exist.")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"Folder {folder} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return paths


def _check_mask_size(image_path: Path, mask_path: Path) -> None:
    image_hw, mask_hw = image_size(image_path), image_size(mask_path)
    if image_hw != mask_hw:
        raise DataError(
            f"Mask {mask_path} is {mask_hw[1]}x{mask_hw[0]} but image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]} (width x height); masks must have the size of their image."
        )


class MVTecLayout(ImageDataset):
    """A category folder in MVTec AD layout.

    ``split="train"`` gives ``train/good`` (label 0). ``split="test"`` gives every
    ``test/<type>`` folder, ``good`` as label 0 and any other type as label 1 with its mask
    ``ground_truth/<type>/<stem>_mask.png`` (mask sizes are checked against their images).
    A category without ``ground_truth/`` has image-level labels only: its defective images come
    without masks (and evaluation then reports image metrics only). With ``ground_truth/``,
    every defective image needs its mask.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        root = Path(root)
        if split not in ("train", "test"):
            raise DataError(f"split must be 'train' or 'test'; got {split!r}.")
        if split == "train":
            samples = [Sample(path, str(path), GOOD, "good") for path in _require_images(root / "train" / "good")]
        else:
            samples = list(self._test_samples(root))
        super().__init__(samples, f"{root.name}/{split}")

    @staticmethod
    def _test_samples(root: Path) -> Iterator[Sample]:
        test_root = root / "test"
        if not test_root.is_dir():
            raise DataError(f"Folder {test_root} does not exist; an MVTec-layout category needs test/<type>/.")
        with_masks = (root / "ground_truth").is_dir()
        for type_dir in sorted(path for path in test_root.iterdir() if path.is_dir()):
            defect_type = type_dir.name
            for path in _require_images(type_dir):
                if defect_type == "good":
                    yield Sample(path, str(path), GOOD, "good")
                    continue
                if not with_masks:
                    yield Sample(path, str(path), DEFECTIVE, defect_type)
                    continue
                mask_path = root / "ground_truth" / defect_type / f"{path.stem}_mask.png"
                if not mask_path.is_file():
                    raise DataError(
                        f"Defective image {path} has no mask; expected {mask_path} (a category with "
                        "ground_truth/ needs a mask for every defective image; without ground_truth/ it is judged on "
                        "image labels only)."
                    )
                _check_mask_size(path, mask_path)
                yield Sample(path, str(path), DEFECTIVE, defect_type, mask_path)


class FolderDataset(ImageDataset):
    """A folder with ``good/`` and optionally ``defect/`` and ``masks/``.

    A mask for ``defect/x.png`` is ``masks/x.png`` or ``masks/x_mask.png``. ``split="train"``
    gives only ``good/``; ``split="test"`` gives ``good/`` and ``defect/``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "test") -> None:
        root = Path(root)
        if split not in ("train", "test"):
            raise DataError(f"split must be 'train' or 'test'; got {split!r}.")
        samples = [Sample(path, str(path), GOOD, "good") for path in _require_images(root / "good")]
        if split == "test" and (root / "defect").is_dir():
            samples += [self._defect_sample(root, path) for path in _require_images(root / "defect")]
        super().__init__(samples, f"{root.name}/{split}")

    @staticmethod
    def _defect_sample(root: Path, path: Path) -> Sample:
        for candidate in (
            root / "masks" / path.name,
            root / "masks" / f"{path.stem}_mask.png",
            root / "masks" / f"{path.stem}.png",
        ):
            if candidate.is_file():
                _check_mask_size(path, candidate)
                return Sample(path, str(path), DEFECTIVE, "defect", candidate)
        return Sample(path, str(path), DEFECTIVE, "defect")


def open_dataset(root: str | os.PathLike, split: str) -> ImageDataset:
    """Open a dataset folder in MVTec layout (``train/good``) or good/defect layout (``good/``)."""
    root = Path(root)
    if (root / "train").is_dir() or (root / "test").is_dir():
        return MVTecLayout(root, split)
    if (root / "good").is_dir():
        return FolderDataset(root, split)
    if not root.exists():
        raise DataError(f"Dataset folder {root} does not exist.")
    raise DataError(f"Dataset folder {root} has neither MVTec layout (train/good, test/<type>) nor a good/ folder.")


class InMemoryDataset(ImageDataset):
    """Images held in memory (arrays or PIL images), with optional labels and masks."""

    def __init__(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[int] | None = None,
        masks: Sequence[np.ndarray | None] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        count = len(images)
        for given, what in ((labels, "labels"), (masks, "masks"), (names, "names")):
            if given is not None and len(given) != count:
                raise DataError(f"Got {count} images but {len(given)} {what}.")
        samples = [
            Sample(
                image=images[i],
                name=names[i] if names is not None else f"image_{i:05d}",
                label=int(labels[i]) if labels is not None else UNKNOWN,
                defect_type="" if labels is None else ("good" if labels[i] == GOOD else "defect"),
                mask=masks[i] if masks is not None else None,
            )
            for i in range(count)
        ]
        super().__init__(samples, f"in-memory ({count} images)")


def as_dataset(images: ImageDataset | Sequence[ImageInput] | str | os.PathLike, split: str = "train") -> ImageDataset:
    """Turn what a user passes to ``fit``/``predict`` into a dataset.

    A dataset is returned as it is; a folder path is opened with :func:`open_dataset` (or, if it
    is a plain folder of images, read as unlabelled images); a list of paths or arrays becomes
    unlabelled samples.
    """
    if isinstance(images, ImageDataset):
        return images
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if folder.is_dir() and not any((folder / sub).is_dir() for sub in ("train", "test", "good")):
            return ImageDataset([Sample(path, str(path)) for path in _require_images(folder)], str(folder))
        return open_dataset(folder, split)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    return ImageDataset(
        (
            Sample(image, describe(image) if not isinstance(image, np.ndarray) else f"image_{i:05d}")
            for i, image in enumerate(images)
        ),
        f"{len(images)} images",
    )
