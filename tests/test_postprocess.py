"""Masks and boxes from an anomaly map (flawscope.postprocess): known answers."""

import numpy as np

from flawscope.postprocess import boxes_from_mask, segment


def test_boxes_are_the_8_connected_regions_with_their_peak_highest_first():
    """Two regions -- a diagonal pair (one region, 8-connected) and a region taller than the bands its peak is
    gathered in, with its peak in the last band -- give their bounding boxes (x1, y1 exclusive) and peaks."""
    anomaly_map = np.zeros((1300, 40), dtype=np.float32)
    mask = np.zeros(anomaly_map.shape, dtype=bool)
    mask[10, 5] = mask[11, 6] = True
    anomaly_map[10, 5], anomaly_map[11, 6] = 0.5, 0.7
    mask[20:1290, 20:23] = True
    anomaly_map[20:1290, 20:23] = 0.2
    anomaly_map[1288, 21] = 0.9
    anomaly_map[5, 30] = 5.0  # outside every region: not any box's peak
    boxes = boxes_from_mask(mask, anomaly_map)
    assert [box[:4] for box in boxes] == [(20, 20, 23, 1290), (5, 10, 7, 12)]
    assert [box[4] for box in boxes] == [np.float32(0.9), np.float32(0.7)]


def test_segment_thresholds_and_opening_removes_specks_smaller_than_the_element():
    anomaly_map = np.zeros((30, 30), dtype=np.float32)
    anomaly_map[5, 5] = 1.0
    anomaly_map[10:20, 10:20] = 1.0
    assert segment(anomaly_map, 0.5, opening=0).sum() == 101
    opened = segment(anomaly_map, 0.5, opening=3)
    assert opened.sum() == 100 and not opened[5, 5]
    assert not segment(anomaly_map, 1.0, opening=3).any()
