"""Public dataset API: ``fs.datasets.MVTecLayout``, ``FolderDataset``, ``ELPV``, ``InMemoryDataset``,
the random and the group splits, training-time augmentation, and the synthetic data of the tests."""

from flawscope.data.augment import augment  # noqa: F401
from flawscope.data.datasets import (  # noqa: F401
    FolderDataset,
    ImageDataset,
    InMemoryDataset,
    MVTecLayout,
    Sample,
    open_dataset,
)
from flawscope.data.elpv import ELPV  # noqa: F401
from flawscope.data.splits import (  # noqa: F401
    group_kfold,
    group_split,
    groups_from_pattern,
    holdout_split,
    stratified_split,
    with_groups,
)
from flawscope.data.synthetic import make_texture_set, write_mvtec_layout  # noqa: F401
