import numpy as np
import pytest
from PIL import Image

from flawscope.data.datasets import FolderDataset, MVTecLayout, open_dataset
from flawscope.data.elpv import ELPV, module_ids
from flawscope.data.splits import group_kfold, group_split, holdout_split, with_groups
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


def test_elpv_module_rule_gives_the_44_modules_of_the_data():
    rows = [("a.png", 0.0, "mono")] * 60 + [("b.png", 0.0, "poly")] * 714 + [("c.png", 0.0, "mono")] * 48
    ids = module_ids([cell_type for _, _, cell_type in rows])
    sizes = {module: ids.count(module) for module in dict.fromkeys(ids)}
    assert list(sizes.values()) == [60] + [60] * 11 + [54] + [48]  # runs of 60, the rest last; 48 is one module
    assert ids[:2] == ["mono00", "mono00"] and ids[60] == "poly00" and ids[-1] == "mono01"
    modules = {sample.group for sample in ELPV("labelled", "all")}
    assert len(modules) == 44 and sum(m.startswith("mono") for m in modules) == 18  # 18 mono, 26 poly: the paper's


def test_elpv_default_split_keeps_modules_apart():
    train, val, test = (ELPV(split, "mono") for split in ("train", "validation", "test"))
    assert (len(train), len(val)) == (200, 50) and set(train.labels) == set(val.labels) == {0}
    groups = [{s.group for s in d} for d in (train, val, test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert test.labels.sum() > 50 and (test.labels == 0).sum() > 200
    assert [s.name for s in ELPV("train", "mono")] == [s.name for s in train]  # deterministic
    assert {s.group for s in ELPV("train", "mono", seed=1)} != groups[0]
    folds = [ELPV("test", "poly", n_folds=3, fold=fold) for fold in range(3)]
    tested = [{s.group for s in fold} for fold in folds]
    assert sum(len(t) for t in tested) == 26 and not (tested[0] & tested[1] or tested[1] & tested[2])
    assert not {s.group for s in ELPV("train", "poly", n_folds=3, fold=1)} & tested[1]


def test_elpv_shuffled_split_is_the_old_one():
    train, val, test = (ELPV(split, "mono", scheme="shuffled") for split in ("train", "validation", "test"))
    assert (len(train), len(val)) == (200, 50)
    names = [set(s.name for s in d) for d in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert test.labels.sum() == 313 and (test.labels == 0).sum() == 588 - 250
    assert all(s.group is None for s in train)  # shuffled ignores the modules
    with pytest.raises(DataError, match="scheme must be one of"):
        ELPV("train", "mono", scheme="random")


def test_group_split_and_kfold_keep_groups_whole():
    data = make_texture_set(30, 0, size=(16, 16))
    lots = [f"lot{i // 5}" for i in range(30)]  # 6 lots of 5
    rest, held = group_split(data, (0.7, 0.3), seed=1, groups=lots)
    lot_of = dict(zip([s.name for s in data], lots))
    assert not {lot_of[s.name] for s in rest} & {lot_of[s.name] for s in held}
    assert len(held) in (5, 10) and len(rest) + len(held) == 30
    again = group_split(data, (0.7, 0.3), seed=1, groups=lots)[1]
    assert [s.name for s in again] == [s.name for s in held]
    folds = group_kfold(data, 3, seed=0, groups=lots)
    assert [len(fold) for _, fold in folds] == [10, 10, 10]
    assert sorted(s.name for _, fold in folds for s in fold) == sorted(s.name for s in data)
    grouped = with_groups(data, r"texture_00(\d)\d")  # a file-name pattern: its first group (tens)
    assert grouped[3].group == "0" and grouped[13].group == "1"
    with pytest.raises(DataError, match="does not match the file name"):
        with_groups(data, r"lot(\d+)")
    with pytest.raises(DataError, match="has no group"):
        group_split(data, (0.5, 0.5))
    with pytest.raises(DataError, match="needs as many"):
        group_split(data, (0.5, 0.5), groups=["one"] * 30)


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
