"""Batch scoring on Ray (flawscope.fleet, ``flawscope predict --ray``): the same rows as a plain predict, Parquet
with typed columns, and on a two-node cluster started here on loopback, a worker killed mid-run and a driver
killed mid-run lose nothing and duplicate nothing."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flawscope as fs
from flawscope.data.synthetic import make_texture_set
from flawscope.folders import predict_to_folder

ray = pytest.importorskip("ray")
pyarrow_parquet = pytest.importorskip("pyarrow.parquet")

from flawscope.fleet import predict_on_ray, read_parts  # noqa: E402

N_IMAGES = 160


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path]:
    """A calibrated PatchCore and a folder of N_IMAGES images (a few defective, one unreadable): 10 batches of 16,
    so that a run killed after its first parts has most of its work left."""
    root = tmp_path_factory.mktemp("archive")
    images = root / "images"
    images.mkdir()
    for sample in make_texture_set(N_IMAGES - 10, 9, size=(96, 96), seed=3):
        Image.fromarray(sample.image).save(images / f"{sample.name}.png")
    (images / "broken.png").write_bytes(b"not a png")
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.25, device="cpu")
    model.fit(make_texture_set(8, size=(96, 96)), progress=False)
    model.calibrate(make_texture_set(20, size=(96, 96), seed=9), progress=False)
    return model.save(root / "model"), images


def rows_of(csv_path: Path) -> list[list[str]]:
    with open(csv_path, newline="") as handle:
        return list(csv.reader(handle))[1:]


def test_ray_writes_the_rows_a_plain_predict_writes_and_typed_parquet(archive, tmp_path):
    model_dir, images = archive
    written = predict_on_ray(model_dir, [images], tmp_path / "ray", workers=2, batch_size=8, progress=False)
    plain = predict_to_folder(fs.load(model_dir), [images], tmp_path / "plain", progress=False)
    ray_rows, plain_rows = rows_of(written.csv_path), rows_of(plain.csv_path)
    assert [row[0] for row in ray_rows] == [row[0] for row in plain_rows]  # every input once, in input order
    for ours, theirs in zip(ray_rows, plain_rows):
        assert ours[2] == theirs[2] and ours[6] == theirs[6]  # label, error
        if theirs[1]:  # one thread against two: sums in another order, equal to float precision
            assert float(ours[1]) == pytest.approx(float(theirs[1]), rel=1e-4)
            our_boxes, their_boxes = json.loads(ours[3]), json.loads(theirs[3])
            # a pixel that equals the threshold to float precision may fall either side: an edge moves by one
            assert len(our_boxes) == len(their_boxes)
            for our_box, their_box in zip(our_boxes, their_boxes):
                assert np.abs(np.subtract(our_box[:4], their_box[:4])).max() <= 1, (our_box, their_box)
            assert [box[4] for box in our_boxes] == pytest.approx([box[4] for box in their_boxes], rel=1e-4)
            assert (tmp_path / "ray" / ours[4]).is_file() and (tmp_path / "ray" / ours[5]).is_file()
    assert written.n_scored == N_IMAGES - 1 and list(written.failed) == [str(images / "broken.png")]
    table = pyarrow_parquet.read_table(tmp_path / "ray" / "predictions.parquet")
    assert str(table.schema.field("score").type) == "double" and table.num_rows == N_IMAGES
    assert table.column("score").null_count == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# the test cluster and its drivers: no token (a cluster of this machine's own processes, for the test's length)
CLUSTER_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


@pytest.fixture
def two_node_cluster():
    """A Ray head and a second node, one CPU each, joined through 127.0.0.1; stopped afterwards."""
    port = _free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory", str(200 * 2**20)]
    common += ["--disable-usage-stats"]
    head = ["--head", "--port", str(port), "--include-dashboard", "false"]
    for role in (head, ["--address", f"127.0.0.1:{port}"]):
        started = subprocess.run([ray_cli, "start", *role, *common], capture_output=True, text=True, env=CLUSTER_ENV)
        assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=CLUSTER_ENV)


def _start_cli(model_dir: Path, images: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "flawscope.cli", "predict", str(model_dir), str(images), "--out", str(out)]
    return subprocess.Popen([*command, "--ray", address, "--workers", "2", "--no-images", "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLUSTER_ENV)  # fmt: skip


def _wait_for_parts(out: Path, count: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "parts").glob("part-*.parquet"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no part files appeared"
        time.sleep(0.2)


def _scoring_actor_pids() -> list[int]:
    listing = subprocess.run(["pgrep", "-f", "MapBatches"], capture_output=True, text=True).stdout
    return [int(pid) for pid in listing.split()]


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(archive, tmp_path, two_node_cluster):
    model_dir, images = archive
    out = tmp_path / "out"
    run = _start_cli(model_dir, images, out, two_node_cluster)
    _wait_for_parts(out, 1, run)
    victims = _scoring_actor_pids()
    assert victims, "no scoring actor found to kill"
    os.kill(victims[0], signal.SIGKILL)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    rows = rows_of(out / "predictions.csv")
    assert sorted(row[0] for row in rows) == sorted(str(path) for path in images.iterdir())
    assert len({row[0] for row in rows}) == len(rows) == N_IMAGES
    assert sum(1 for row in rows if row[1]) == N_IMAGES - 1


@pytest.mark.slow
def test_a_run_killed_midway_resumes_scoring_only_the_rest(archive, tmp_path, two_node_cluster):
    model_dir, images = archive
    out = tmp_path / "out"
    first = _start_cli(model_dir, images, out, two_node_cluster)
    _wait_for_parts(out, 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    scored_before = {path for path, row in read_parts(out / "parts").items() if row["score"] is not None}
    assert 0 < len(scored_before) < N_IMAGES - 1
    again = _start_cli(model_dir, images, out, two_node_cluster, "--resume")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    resumed = re.search(r"(\d+) of them in an earlier run", " ".join(stdout.split()))
    assert resumed is not None, stdout
    # at least what the killed run had written (its actors may finish a batch before the cluster stops them)
    assert len(scored_before) <= int(resumed.group(1)) < N_IMAGES - 1
    rows = rows_of(out / "predictions.csv")
    assert len({row[0] for row in rows}) == len(rows) == N_IMAGES
    np.testing.assert_array_equal(sorted(row[0] for row in rows if row[1]), sorted(
        str(path) for path in images.iterdir() if path.name != "broken.png"))  # fmt: skip
