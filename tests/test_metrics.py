import numpy as np
import pytest
from sklearn import metrics as sk

from flawscope.errors import DataError
from flawscope.metrics import (
    auroc,
    average_precision,
    balanced_accuracy,
    best_balanced_accuracy,
    confusion_matrix,
    f1_max,
    pixel_metrics,
)


@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels * 0.8
    scores[:40] = np.round(scores[:40])  # ties
    assert auroc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(sk.average_precision_score(labels, scores), abs=1e-12)
    precision, recall, _ = sk.precision_recall_curve(labels, scores)
    best_f1, threshold = f1_max(labels, scores)
    assert best_f1 == pytest.approx(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)), abs=1e-12)
    assert sk.f1_score(labels, scores > threshold) == pytest.approx(best_f1, abs=1e-12)
    predictions = scores > 0.4
    assert confusion_matrix(labels, predictions) == sk.confusion_matrix(labels, predictions).tolist()
    assert balanced_accuracy(labels, predictions) == pytest.approx(sk.balanced_accuracy_score(labels, predictions))


def test_pixel_auroc_matches_scikit_learn():
    rng = np.random.default_rng(0)
    masks = [rng.random((12, 9)) > 0.8 for _ in range(3)]
    maps = [rng.random((12, 9)).astype(np.float32) + m * 0.3 for m in masks]
    result = pixel_metrics(maps, masks)
    flat_labels = np.concatenate([m.ravel() for m in masks])
    flat_scores = np.concatenate([m.ravel() for m in maps])
    assert result["pixel_auroc"] == pytest.approx(sk.roc_auc_score(flat_labels, flat_scores), abs=1e-9)


def test_aupro_by_hand():
    # One image, 2 regions: A (2 px, scores 0.9 and 0.5) and B (1 px, score 0.7); 7 background pixels.
    mask = np.zeros((1, 10), bool)
    mask[0, [0, 1, 5]] = True
    scores = np.array([[0.9, 0.5, 0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.05, 0.0]], np.float32)
    result = pixel_metrics([scores], [mask], max_fpr=0.3)
    # From the highest threshold down (fpr, pro): 0.9 -> (0, 1/4); 0.7 -> (0, 3/4); 0.6 -> (1/7, 3/4);
    # 0.5 -> (1/7, 1); 0.4 -> (2/7, 1); 0.3 -> (3/7, 1). The curve is interpolated at fpr 0.3.
    area = (1 / 7) * 0.75 + (0.3 - 1 / 7) * 1.0
    assert result["aupro"] == pytest.approx(area / 0.3, abs=1e-9)
    assert result["n_regions"] == 2


def test_aupro_perfect_and_region_weighting():
    mask = np.zeros((20, 20), bool)
    mask[2:4, 2:4] = True  # small region
    mask[10:20, 10:20] = True  # large region
    perfect = mask.astype(np.float32)
    assert pixel_metrics([perfect], [mask])["aupro"] == pytest.approx(1.0)
    # Finding only the large region gives PRO 0.5 at fpr 0, whatever its size (regions count
    # equally); the next curve point is (fpr 1, PRO 1), so at fpr 0.3 PRO is 0.65 and the
    # normalised area is (0.3 * 0.5 + 0.5 * 0.3 * 0.15) / 0.3 = 0.575.
    large_only = np.zeros_like(perfect)
    large_only[10:20, 10:20] = 1.0
    assert pixel_metrics([large_only], [mask])["aupro"] == pytest.approx(0.575, abs=1e-12)


def test_bad_inputs():
    with pytest.raises(DataError, match="both good"):
        auroc([1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="shape"):
        pixel_metrics([np.zeros((3, 3))], [np.zeros((3, 4), bool)])
    with pytest.raises(DataError, match="NaN"):
        auroc([0, 1], [np.nan, 1.0])


def test_binned_pixel_metrics_agree_with_exact(monkeypatch):
    import flawscope.metrics as fm

    rng = np.random.default_rng(1)
    masks, maps = [], []
    for _ in range(4):
        mask = np.zeros((120, 150), bool)
        y, x = rng.integers(10, 100, 2)
        mask[y : y + 15, x : x + 25] = True
        masks.append(mask)
        maps.append((rng.normal(size=mask.shape) + 2.5 * mask).astype(np.float32))
    exact = pixel_metrics(maps, masks)
    monkeypatch.setattr(fm, "EXACT_PIXEL_LIMIT", 0)
    monkeypatch.setattr(fm, "PIXEL_BINS", 4096)
    binned = pixel_metrics(maps, masks)
    assert exact["exact"] and not binned["exact"]
    assert binned["pixel_auroc"] == pytest.approx(exact["pixel_auroc"], abs=2e-4)
    assert binned["aupro"] == pytest.approx(exact["aupro"], abs=2e-3)


def test_region_overlap_quantiles_by_hand():
    from flawscope.metrics import region_overlap_quantiles

    # defect-free pixels score 0..9 (ten of them); two regions: 4 pixels scoring 20, 20, 5, 5
    # (half above 4.5) and 2 pixels scoring 20 and 0.
    anomaly_map = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [20, 20, 5, 5, 0, 0, 0, 0, 20, 0]], dtype=np.float32)
    mask = np.zeros_like(anomaly_map, dtype=bool)
    mask[1, 0:4] = True
    mask[1, 8:10] = True
    anomaly_map[1, 4:8] = [0, 1, 2, 3]  # more defect-free pixels: 14 in all, scores 0-9 and 0-3
    result = region_overlap_quantiles([anomaly_map], [mask], fprs=(0.5,), quantiles=(0.0, 1.0))
    normal = np.r_[np.arange(10), np.arange(4)]
    assert result["thresholds"][0] == pytest.approx(np.quantile(normal, 0.5))  # 3.5
    # above 3.5: region one has 20, 20, 5, 5 -> 4/4; region two 20, 0 -> 1/2
    assert result["overlap"] == [[0.5], [1.0]] and result["n_regions"] == 2
    with pytest.raises(DataError, match="defective pixel"):
        region_overlap_quantiles([anomaly_map], [np.zeros_like(mask)])


def test_box_iou_and_mask_box_by_hand():
    from flawscope.metrics import box_iou, mask_box

    assert box_iou((0, 0, 4, 4), (2, 2, 6, 6)) == pytest.approx(4 / 28)
    assert box_iou((0, 0, 2, 2), (5, 5, 6, 6)) == 0.0 and box_iou((1, 1, 3, 4), (1, 1, 3, 4)) == 1.0
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    mask[7, 10] = True
    assert mask_box(mask) == (3, 2, 11, 8) and mask_box(np.zeros((3, 3), bool)) is None


def test_best_balanced_accuracy_is_the_best_threshold_on_the_data():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.8])
    best, threshold = best_balanced_accuracy(labels, scores)
    assert best == pytest.approx(0.875)  # 3 of 4 good below, both defective above
    predicted = scores > threshold
    assert balanced_accuracy(labels, predicted) == pytest.approx(best)
    every = [balanced_accuracy(labels, scores > t) for t in np.r_[scores, -1.0]]
    assert best == pytest.approx(max(every))
