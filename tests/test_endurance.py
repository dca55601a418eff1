"""Endless folders: ``predict`` writes each row as soon as its image is scored, goes on after an interruption
(``--resume``) without scoring an image twice, and -- over 100,000 images (``make test-slow``) -- keeps its memory
and its open files flat while a real process is killed half-way and resumed."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flawscope as fs
from flawscope.data.synthetic import make_texture_set
from flawscope.errors import DataError
from flawscope.folders import predict_to_folder

RSS_GROWTH_BOUND_MB = 64  # from 10,000 images on: what predict keeps per image (a row's name) is tiny
OPEN_FILES_SLACK = 2


def rows_of(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A calibrated PatchCore at 32 px, saved: quick enough to score 100,000 small images."""
    model = fs.create("patchcore", image_size=32, coreset_ratio=0.25, device="cpu", seed=0)
    model.fit(make_texture_set(8, 0, size=(32, 32), seed=0), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        model.calibrate(make_texture_set(8, 0, size=(32, 32), seed=1), progress=False)
    return model.save(tmp_path_factory.mktemp("models") / "small")


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 16 x 16 PNGs (64 distinct ones, repeated) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    paths = [folder / f"{index:06d}.png" for index in range(count)]
    for index, path in enumerate(paths):
        path.write_bytes(encoded[index % len(encoded)])
    return paths


def test_resume_goes_on_where_an_interrupted_run_stopped(small_model, tmp_path):
    paths = write_images(tmp_path / "line", 12)
    good_bytes = paths[7].read_bytes()
    paths[7].write_bytes(b"half-written by the camera")
    model, out = fs.load(small_model), tmp_path / "out"
    first = predict_to_folder(model, [tmp_path / "line"], out, progress=False)
    complete = rows_of(first.csv_path)
    assert len(complete) == 12 and "000007.png" in complete[7]["error"]
    # an interruption after 5 rows, in the middle of the sixth
    lines = first.csv_path.read_text().splitlines(keepends=True)
    first.csv_path.write_text("".join(lines[:6]) + lines[6][:15])
    paths[7].write_bytes(good_bytes)  # the camera finished writing it
    resumed = predict_to_folder(model, [tmp_path / "line"], out, progress=False, resume=True)
    rows = rows_of(resumed.csv_path)
    assert resumed.n_resumed == 5 and resumed.n_scored == 12 and not resumed.failed
    assert sorted(row["path"] for row in rows) == sorted(map(str, paths))  # each once
    by_path = {row["path"]: row for row in rows}
    for before in complete:
        if before["score"]:
            # the same score up to float rounding (images are batched differently when some are skipped)
            assert float(by_path[before["path"]]["score"]) == pytest.approx(float(before["score"]), rel=1e-5)
            assert by_path[before["path"]]["overlay"] == before["overlay"]
    assert by_path[str(paths[7])]["score"] and not by_path[str(paths[7])]["error"]
    # without --resume the file starts afresh
    assert len(rows_of(predict_to_folder(model, [paths[0]], out, progress=False).csv_path)) == 1


def test_resume_refuses_a_file_that_is_not_a_predictions_csv(small_model, tmp_path):
    write_images(tmp_path / "line", 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.csv").write_text("name,value\na,1\n")
    with pytest.raises(DataError, match=r"is not a predictions\.csv of this flawscope"):
        predict_to_folder(fs.load(small_model), [tmp_path / "line"], tmp_path / "out", progress=False, resume=True)


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def watch(process: subprocess.Popen, csv_path: Path, stop_after_rows: int | None) -> list[tuple[int, float, int]]:
    """``(rows written, resident MB, open files)`` of ``process`` every half second until it ends -- or, once it
    has written ``stop_after_rows`` rows, until it is killed (SIGKILL: no clean-up of any kind)."""
    samples = []
    while process.poll() is None:
        try:
            rows = csv_path.read_bytes().count(b"\n") - 1 if csv_path.exists() else 0
            samples.append((rows, resident_mb(process.pid), len(os.listdir(f"/proc/{process.pid}/fd"))))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            break  # it ended between poll() and the reads
        if stop_after_rows is not None and rows >= stop_after_rows:
            process.send_signal(signal.SIGKILL)
        time.sleep(0.5)
    process.wait(timeout=60)
    return samples


def assert_flat(samples: list[tuple[int, float, int]], warm_rows: int) -> None:
    """Resident memory and open files from the sample with ``warm_rows`` rows written on stay within the bounds."""
    warm = [sample for sample in samples if sample[0] >= warm_rows]
    assert len(warm) >= 5, f"too few samples to judge: {samples[:3]}..."
    assert max(rss for _, rss, _ in warm) - warm[0][1] < RSS_GROWTH_BOUND_MB, warm
    assert max(files for _, _, files in warm) <= warm[0][2] + OPEN_FILES_SLACK, warm


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory and open files from /proc")
def test_a_hundred_thousand_images_killed_and_resumed(small_model, tmp_path):
    count = 100_000
    paths = write_images(tmp_path / "archive", count)
    out = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "flawscope"), "predict", str(small_model), str(tmp_path / "archive")]
    command += ["--out", str(out), "--quiet"]
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # 16 px images: one thread scores them fastest
    killed = watch(subprocess.Popen(command, env=one_thread), out / "predictions.csv", stop_after_rows=count // 2)
    written = len(rows_of(out / "predictions.csv"))
    assert count // 2 <= written < count, "the kill landed in the middle of the run"
    assert_flat(killed, warm_rows=count // 10)
    resumed = subprocess.Popen([*command, "--resume"], env=one_thread)
    assert_flat(watch(resumed, out / "predictions.csv", stop_after_rows=None), warm_rows=written + count // 20)
    assert resumed.returncode == 0
    rows = rows_of(out / "predictions.csv")
    assert len(rows) == count and len({row["path"] for row in rows}) == count
    assert {row["path"] for row in rows} == set(map(str, paths)) and all(row["score"] for row in rows)
