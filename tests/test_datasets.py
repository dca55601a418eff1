import numpy as np
import pytest
from PIL import Image

import flawscope as fs
from flawscope.data.datasets import ELPV, FolderDataset, MVTecLayout, holdout_split, open_dataset
from flawscope.data.synthetic import make_texture_set, write_mvtec_layout
from flawscope.errors import DataError
from flawscope.workflow import training_data


def test_mvtec_layout_reads_labels_types_and_masks(tmp_path):
    root = write_mvtec_layout(tmp_path / "cat", n_train=5, n_test_good=3, n_test_defective=4, size=(40, 40))
    train, test = MVTecLayout(root, "train"), MVTecLayout(root, "test")
    assert len(train) == 5 and set(train.labels) == {0}
    assert len(test) == 7 and test.labels.sum() == 4 and test.has_masks
    defective = [s for s in test if s.label == 1]
    assert all(s.defect_type == "defect" for s in defective)
    assert defective[0].read_mask((40, 40)).any()


def test_mvtec_layout_without_ground_truth_has_image_labels_only(tmp_path):
    root = write_mvtec_layout(tmp_path / "cat", n_train=2, n_test_good=2, n_test_defective=3, size=(40, 40))
    mask_folder = root / "ground_truth" / "defect"
    first_mask = sorted(mask_folder.iterdir())[0]
    first_mask.unlink()  # one mask missing: a clear error naming it
    with pytest.raises(DataError, match=first_mask.name):
        MVTecLayout(root, "test")
    for mask in mask_folder.iterdir():
        mask.unlink()
    mask_folder.rmdir()
    (root / "ground_truth").rmdir()  # no ground truth at all: image-level labels only
    test = MVTecLayout(root, "test")
    assert sorted(test.labels) == [0, 0, 1, 1, 1] and not test.has_masks
    assert all(sample.mask is None for sample in test)


def test_mask_of_wrong_size_is_refused(tmp_path):
    root = write_mvtec_layout(tmp_path / "cat", n_train=2, n_test_good=1, n_test_defective=1, size=(40, 40))
    mask_path = next((root / "ground_truth" / "defect").iterdir())
    Image.fromarray(np.zeros((39, 40), np.uint8)).save(mask_path)
    with pytest.raises(DataError, match=str(mask_path.name)):
        MVTecLayout(root, "test")


def test_empty_training_folder_is_an_error(tmp_path):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        MVTecLayout(tmp_path / "cat", "train")
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nowhere", "train")


def test_folder_layout_matches_masks_by_stem(tmp_path):
    for sub in ("good", "defect", "masks"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "good" / "a.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "defect" / "b.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "masks" / "b_mask.png")
    test = FolderDataset(tmp_path, "test")
    assert list(test.labels) == [0, 1] and test.has_masks
    assert len(FolderDataset(tmp_path, "train")) == 1


def test_holdout_split_is_seeded_and_disjoint():
    data = make_texture_set(10, 0, size=(16, 16))
    rest, held = holdout_split(data, 0.3, seed=4)
    _, again_held = holdout_split(data, 0.3, seed=4)
    assert [s.name for s in held] == [s.name for s in again_held]
    assert len(held) == 3 and not {s.name for s in rest} & {s.name for s in held}


def test_elpv_splits_are_disjoint_and_deterministic():
    train, val, test = (ELPV(split, "mono") for split in ("train", "validation", "test"))
    assert (len(train), len(val)) == (200, 50)
    names = [set(s.name for s in d) for d in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert test.labels.sum() == 313 and (test.labels == 0).sum() == 588 - 250
    assert [s.name for s in ELPV("train", "mono")] == [s.name for s in train]
    assert fs.datasets.ELPV("train", "poly", seed=1)[0].name != ELPV("train", "poly", seed=2)[0].name


def test_training_data_holds_out_part_of_train_or_uses_elpv_validation(tmp_path):
    root = write_mvtec_layout(tmp_path / "cat", n_train=10, n_test_good=1, n_test_defective=1, size=(24, 24))
    data = training_data(str(root), supervised=False, validation_fraction=0.2, seed=3)
    train, validation = data.train, data.calibration
    names = {s.name for s in train}, {s.name for s in validation}
    assert (len(train), len(validation)) == (8, 2) and not names[0] & names[1]
    assert names[0] | names[1] == {s.name for s in MVTecLayout(root, "train")}
    elpv = training_data("elpv:mono", supervised=False, validation_fraction=0.2, seed=3)
    elpv_train, elpv_validation = elpv.train, elpv.calibration
    assert (len(elpv_train), len(elpv_validation)) == (200, 50)
