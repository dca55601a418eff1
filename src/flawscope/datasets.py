"""Public dataset API: ``fs.datasets.MVTecLayout``, ``FolderDataset``, ``ELPV``, ``InMemoryDataset`` and splits."""

from flawscope.data.datasets import (  # noqa: F401
    ELPV,
    FolderDataset,
    ImageDataset,
    InMemoryDataset,
    MVTecLayout,
    Sample,
    holdout_split,
    open_dataset,
    stratified_split,
)
from flawscope.data.synthetic import make_texture_set, write_mvtec_layout  # noqa: F401
