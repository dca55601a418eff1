"""The inspection station through FastAPI's test client: a real model fitted here, a real SQLite log."""

from __future__ import annotations

import csv
import io
import sqlite3

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
from fastapi.testclient import TestClient

from flawscope.errors import ConfigError, DataError, ModelFileError
from flawscope.serialization import content_hash
from flawscope.service import InspectionLog, open_station
from flawscope.service.app import create_app
from flawscope.service.log import MIGRATIONS
from service_helpers import png_bytes

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def station(station_model, tmp_path):
    return open_station([station_model], tmp_path / "log.sqlite", tmp_path / "store")


@pytest.fixture
def client(station):
    return TestClient(create_app(station, token=TOKEN, max_upload_bytes=200_000))


def inspect(client, data: bytes, name: str = "part.png", **fields) -> object:
    return client.post("/v1/inspect", files={"image": (name, data, "image/png")}, data=fields, headers=AUTH)


def test_inspect_answers_and_logs_every_field(client, station, station_model, part_images):
    defective = part_images[1]
    answer = inspect(client, defective[0], part_id="A-17", station="line 2")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "tiles" and body["model_version"] == content_hash(station_model)
    assert body["part_id"] == "A-17" and body["station"] == "line 2" and body["filename"] == "part.png"
    assert body["label"] in ("OK", "NOT OK") and body["score"] > 0 and body["latency_ms"] > 0
    assert body["threshold"] == pytest.approx(station.models["tiles"].detector.threshold_)
    assert (body["width"], body["height"]) == (96, 96)
    expected = station.models["tiles"].detector.predict(
        [np.asarray(Image.open(io.BytesIO(defective[0])))], progress=False
    )
    assert body["score"] == pytest.approx(float(expected.scores[0]), rel=1e-5)
    logged = client.get(f"/v1/inspections/{body['id']}").json()
    assert logged["score"] == body["score"] and logged["image_sha256"] == body["image_sha256"]
    image = client.get(body["image_url"])
    assert image.status_code == 200 and image.content == defective[0] and image.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(client.get(body["overlay_url"]).content))
    mask = Image.open(io.BytesIO(client.get(body["mask_url"]).content))
    assert overlay.size == (96, 96) and mask.size == (96, 96)


def test_defects_score_above_good_parts(client, part_images):
    good, defective = part_images
    good_scores = [inspect(client, data).json()["score"] for data in good]
    defect_answers = [inspect(client, data).json() for data in defective]
    assert min(a["score"] for a in defect_answers) > np.median(good_scores)
    assert sum(a["label"] == "NOT OK" for a in defect_answers) >= 4
    assert any(a["boxes"] for a in defect_answers if a["label"] == "NOT OK")


def test_unreadable_upload_is_422_and_still_logged(client, station):
    answer = inspect(client, b"this is not an image", name="broken.png")
    assert answer.status_code == 422
    assert "not in a format Pillow reads" in answer.json()["detail"]
    row = station.log.get(answer.json()["id"])
    assert row.error and row.label is None and row.filename == "broken.png" and row.image_bytes == 20
    assert client.get(f"/v1/inspections/{row.id}/image").content == b"this is not an image"
    failed = client.get("/v1/inspections", params={"label": "failed"}).json()["inspections"]
    assert [r["id"] for r in failed] == [row.id]


def test_unknown_model_is_422_and_logged(client, station, part_images):
    answer = inspect(client, part_images[0][0], model="nope")
    assert answer.status_code == 422 and "served: tiles" in answer.json()["detail"]
    assert station.log.count() == 1


def test_oversized_upload_is_413(client, station):
    answer = inspect(client, b"\0" * 300_000)
    assert answer.status_code == 413
    assert station.log.count() == 0


def test_truncated_image_is_a_clear_422(client, part_images):
    answer = inspect(client, part_images[0][0][:200])
    assert answer.status_code == 422 and "cannot be decoded" in answer.json()["detail"]


def test_decompression_bomb_is_a_clear_422(station_model, tmp_path):
    small_limit = open_station([station_model], tmp_path / "log.sqlite", tmp_path / "store", max_pixels=10_000)
    client = TestClient(create_app(small_limit))
    huge = png_bytes(np.zeros((2000, 2000), dtype=np.uint8))
    answer = inspect(client, huge)
    assert answer.status_code == 422
    assert "2000 x 2000 = 4,000,000 pixels" in answer.json()["detail"]


def test_write_routes_need_the_token(client, part_images):
    assert client.post("/v1/inspect", files={"image": ("a.png", part_images[0][0])}).status_code == 401
    wrong = client.post(
        "/v1/inspect", files={"image": ("a.png", part_images[0][0])}, headers={"Authorization": "Bearer x"}
    )
    assert wrong.status_code == 401
    row = inspect(client, part_images[0][0]).json()
    assert client.post(f"/v1/inspections/{row['id']}/verdict", json={"verdict": "ok"}).status_code == 401
    assert client.get("/v1/inspections").status_code == 200


def test_verdicts_filters_and_paging(client, part_images):
    good, defective = part_images
    ids = [inspect(client, data).json()["id"] for data in good[:3] + defective[:3]]
    assert client.post(f"/v1/inspections/{ids[0]}/verdict", json={"verdict": "wrong"}, headers=AUTH).status_code == 422
    assert client.post("/v1/inspections/9999/verdict", json={"verdict": "ok"}, headers=AUTH).status_code == 404
    answer = client.post(
        f"/v1/inspections/{ids[0]}/verdict",
        json={"verdict": "defect", "operator": "ana", "note": "scratch"},
        headers=AUTH,
    )
    assert answer.status_code == 200 and answer.json()["verdict"] == "defect"
    client.post(f"/v1/inspections/{ids[0]}/verdict", json={"verdict": "ok", "operator": "bo"}, headers=AUTH)
    latest = client.get(f"/v1/inspections/{ids[0]}").json()
    assert (latest["verdict"], latest["verdict_operator"]) == ("ok", "bo")
    unreviewed = client.get("/v1/inspections", params={"verdict": "none"}).json()["inspections"]
    assert sorted(r["id"] for r in unreviewed) == sorted(ids[1:])
    first = client.get("/v1/inspections", params={"limit": 4}).json()
    assert [r["id"] for r in first["inspections"]] == sorted(ids, reverse=True)[:4]
    second = client.get("/v1/inspections", params={"limit": 4, "before_id": first["next_before_id"]}).json()
    assert [r["id"] for r in second["inspections"]] == sorted(ids, reverse=True)[4:]
    by_offset = client.get("/v1/inspections", params={"limit": 4, "offset": 4}).json()["inspections"]
    assert [r["id"] for r in by_offset] == sorted(ids, reverse=True)[4:]
    not_ok = client.get("/v1/inspections", params={"label": "NOT OK"}).json()["inspections"]
    assert all(r["label"] == "NOT OK" for r in not_ok)
    assert client.get("/v1/inspections", params={"label": "maybe"}).status_code == 422
    assert client.get("/v1/inspections/12345").status_code == 404


def test_stats_count_agreement_and_drift(client, part_images):
    good, defective = part_images
    rows = [inspect(client, data).json() for data in good + defective]
    alarm = next(r for r in rows if r["label"] == "NOT OK")
    client.post(f"/v1/inspections/{alarm['id']}/verdict", json={"verdict": "ok"}, headers=AUTH)
    quiet = next(r for r in rows if r["label"] == "OK")
    client.post(f"/v1/inspections/{quiet['id']}/verdict", json={"verdict": "defect"}, headers=AUTH)
    inspect(client, b"junk")
    figures = client.get("/v1/stats").json()
    model = figures["models"]["tiles"]
    assert model["inspections"] == 13 and model["failed"] == 1
    assert model["ok"] + model["not_ok"] == 12
    assert model["not_ok_rate"] == pytest.approx(model["not_ok"] / 12)
    assert sum(model["histogram"]["counts"]) == 12 and model["histogram"]["threshold"] == pytest.approx(
        rows[0]["threshold"]
    )
    assert (
        model["verdicts"]["false_alarms"] == 1
        and model["verdicts"]["misses"] == 1
        and model["verdicts"]["reviewed"] == 2
    )
    assert model["drift"]["status"] == "unknown" and "needs 30" in model["drift"]["reason"]
    assert figures["total"]["inspections"] == 13


def test_drift_signal_tells_shifted_good_parts(station, part_images):
    from flawscope.service.log import Inspection
    from flawscope.service.stats import log_stats

    served = station.models["tiles"].describe()
    calibration = np.asarray(served.calibration_scores)
    low = calibration[calibration <= served.threshold]
    rng = np.random.default_rng(0)
    for score in rng.choice(low, 60):
        station.log.record(Inspection("tiles", served.version, "0" * 64, 1, 1.0, score=float(score), label="OK"))
    assert log_stats(station.log)["models"]["tiles"]["drift"]["status"] == "stable"
    shifted = 0.5 * (low.max() + served.threshold)
    for _ in range(200):
        station.log.record(Inspection("tiles", served.version, "0" * 64, 1, 1.0, score=float(shifted), label="OK"))
    drift = log_stats(station.log)["models"]["tiles"]["drift"]
    assert drift["status"] == "drift" and drift["p_value"] < 0.01 and drift["n_recent"] == 200


def test_health_metrics_openapi_and_page(client, part_images):
    assert client.get("/health").json() == {"status": "ok", "models": ["tiles"], "database_writable": True}
    inspect(client, part_images[0][0])
    inspect(client, b"junk")
    metrics = client.get("/metrics").text
    assert 'flawscope_requests_total{route="/v1/inspect",status="200"} 1.0' in metrics
    assert 'flawscope_requests_total{route="/v1/inspect",status="422"} 1.0' in metrics
    assert "flawscope_inspection_latency_seconds_bucket" in metrics
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/inspect", "/v1/inspections", "/v1/inspections/{inspection_id}/verdict", "/v1/stats", "/health"):
        assert route in paths
    page = client.get("/")
    assert page.status_code == 200 and "Confirm defect" in page.text and "False alarm (good)" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../log.py").status_code == 404


def test_pictures_cannot_name_a_path(client, station, part_images):
    row = inspect(client, part_images[0][0]).json()
    assert client.get(f"/v1/inspections/{row['id']}/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    with pytest.raises(Exception, match="not a stored file's key"):
        station.store.path("../../etc/passwd")


def test_no_store_images_keeps_the_log_only(station_model, tmp_path, part_images):
    station = open_station([station_model], tmp_path / "log.sqlite", tmp_path / "store", store_images=False)
    client = TestClient(create_app(station))
    body = inspect(client, part_images[0][0]).json()
    assert body["image_url"] is None and body["overlay_url"] is None and body["label"] in ("OK", "NOT OK")
    assert client.get(f"/v1/inspections/{body['id']}/image").status_code == 404
    assert not (tmp_path / "store").exists()


def test_several_models_need_a_name(station_model, tmp_path, part_images):
    import shutil

    twin = shutil.copytree(station_model, tmp_path / "twin")
    client = TestClient(create_app(open_station([station_model, twin], tmp_path / "log.sqlite")))
    assert "say which" in inspect(client, part_images[0][0]).json()["detail"]
    assert inspect(client, part_images[0][0], model="twin").json()["model"] == "twin"
    assert [m["name"] for m in client.get("/v1/models").json()] == ["tiles", "twin"]


def test_uncalibrated_model_is_refused(tmp_path):
    import flawscope as fs
    from flawscope.data.synthetic import make_texture_set

    model = fs.create("patchcore", image_size=64, coreset_ratio=0.5, device="cpu").fit(
        make_texture_set(4, 0, size=(64, 64)), progress=False
    )
    model.save(tmp_path / "raw")
    with pytest.raises(ConfigError, match="no threshold"):
        open_station([tmp_path / "raw"], tmp_path / "log.sqlite")


def test_log_migrates_and_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "log.sqlite"
    assert InspectionLog(path).schema_version == len(MIGRATIONS)
    journal = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    connection.close()
    with pytest.raises(ModelFileError, match="schema version"):
        InspectionLog(path)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ModelFileError, match="cannot be opened"):
        InspectionLog(tmp_path / "junk.sqlite")


def test_log_upgrades_a_first_version_database(tmp_path):
    path = tmp_path / "old.sqlite"
    connection = sqlite3.connect(path)
    connection.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    connection.execute(
        "INSERT INTO inspections (created, model, model_version, image_sha256, image_bytes, latency_ms, score, label) "
        "VALUES (1.0, 'm', 'v', 'abc', 3, 1.0, 0.5, 'OK')"
    )
    connection.commit()
    connection.close()
    log = InspectionLog(path)
    assert log.schema_version == len(MIGRATIONS) and log.count() == 1 and log.watched_sources() == {}


def test_log_export_csv(client, station, tmp_path, part_images):
    ids = [inspect(client, data).json()["id"] for data in part_images[0][:2]]
    client.post(f"/v1/inspections/{ids[1]}/verdict", json={"verdict": "defect"}, headers=AUTH)
    out = station.log.export(tmp_path / "log.csv")
    rows = list(csv.DictReader(out.open()))
    assert [int(r["id"]) for r in rows] == ids and rows[1]["verdict"] == "defect" and rows[0]["verdict"] == ""
    with pytest.raises(Exception, match=r"\.csv or \.parquet"):
        station.log.export(tmp_path / "log.xlsx")


def test_log_export_parquet_holds_what_the_csv_holds(client, station, tmp_path, part_images):
    pq = pytest.importorskip("pyarrow.parquet")
    empty = pq.read_table(station.log.export(tmp_path / "empty.parquet"))
    assert empty.num_rows == 0 and "verdict" in empty.column_names
    ids = [inspect(client, data).json()["id"] for data in part_images[1][:3]]
    client.post(f"/v1/inspections/{ids[0]}/verdict", json={"verdict": "ok", "note": "dust"}, headers=AUTH)
    table = pq.read_table(station.log.export(tmp_path / "log.parquet")).to_pylist()
    rows = list(csv.DictReader(station.log.export(tmp_path / "log.csv").open()))
    assert [row["id"] for row in table] == ids == [int(row["id"]) for row in rows]
    assert table[0]["verdict"] == "ok" and table[1]["verdict"] is None
    for parquet_row, csv_row in zip(table, rows):
        assert parquet_row["score"] == pytest.approx(float(csv_row["score"]))
        assert parquet_row["label"] == csv_row["label"] and parquet_row["boxes"] == csv_row["boxes"]


def test_log_commands(client, station, tmp_path, part_images):
    from typer.testing import CliRunner

    from flawscope.cli import app

    runner = CliRunner()
    for data in part_images[0][:3] + part_images[1][:3]:
        inspect(client, data)
    out = tmp_path / "export.csv"
    result = runner.invoke(app, ["log", "export", "--db", str(station.log.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 inspections" in result.output and len(list(csv.DictReader(out.open()))) == 6
    stats = runner.invoke(app, ["log", "stats", "--db", str(station.log.path)])
    assert stats.exit_code == 0 and "model tiles" in stats.output and "not_ok_rate" in stats.output
    missing = runner.invoke(app, ["log", "stats", "--db", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "No inspection log" in missing.output


def test_serve_refuses_a_missing_model_clearly(tmp_path):
    from typer.testing import CliRunner

    from flawscope.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nothing"), "--db", str(tmp_path / "log.sqlite")])
    assert result.exit_code == 2 and "error:" in result.output and "nothing" in result.output


def test_batched_decisions_equal_one_image_predictions(station, part_images):
    from concurrent.futures import ThreadPoolExecutor

    from flawscope.data.io import read_image

    detector = station.models["tiles"].detector
    batcher = station.models["tiles"].batcher
    pixels = [read_image(Image.open(io.BytesIO(data))) for data in part_images[0] + part_images[1]]
    with ThreadPoolExecutor(6) as pool:
        decisions = list(pool.map(batcher.decide, pixels))
    for one, decision in zip(pixels, decisions):
        alone = detector.predict([one], progress=False)
        assert decision.score == pytest.approx(float(alone.scores[0]), rel=1e-4)
        assert decision.not_ok == bool(alone.labels[0])
        np.testing.assert_allclose(decision.anomaly_map, alone.anomaly_maps[0], rtol=1e-4, atol=1e-4)


def test_a_failing_batch_answers_every_waiting_request(station):
    with pytest.raises(DataError, match="is empty"):
        station.models["tiles"].batcher.decide(np.zeros((0, 0, 1), dtype=np.float32))
    assert station.models["tiles"].batcher.decide(np.full((96, 96, 1), 0.5, dtype=np.float32)).score > 0


def test_models_are_loaded_scored_and_updated_on_the_one_model_thread(station_model, tmp_path, monkeypatch):
    import threading

    import flawscope.serialization
    from flawscope.models.patchcore import PatchCore
    from flawscope.service.batching import model_thread

    threads: dict[str, set[str]] = {"load": set(), "predict": set(), "update": set()}
    load, predict, update = flawscope.serialization.load_detector, PatchCore.predict, PatchCore.update

    def recorded(kind, function):
        def call(*args, **kwargs):
            threads[kind].add(threading.current_thread().name)
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(flawscope.serialization, "load_detector", recorded("load", load))
    monkeypatch.setattr(PatchCore, "predict", recorded("predict", predict))
    monkeypatch.setattr(PatchCore, "update", recorded("update", update))
    station = open_station([station_model], tmp_path / "log.sqlite", tmp_path / "store")
    client = TestClient(create_app(station))
    good = png_bytes(np.full((96, 96), 128, dtype=np.uint8))
    answers = [inspect(client, good).json() for _ in range(3)]
    client.post(f"/v1/inspections/{answers[0]['id']}/verdict", json={"verdict": "ok", "teach": True})
    assert client.post("/v1/models/tiles/update").status_code == 200
    name = model_thread()._thread.name
    assert threads == {"load": {name}, "predict": {name}, "update": {name}}, threads
    assert name != threading.main_thread().name


def test_the_model_thread_batches_each_model_apart_and_keeps_the_order():
    import threading
    from types import SimpleNamespace

    from flawscope.service.batching import Batcher, ModelThread

    batches: list[tuple[str, list[float]]] = []

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def predict(self, images, progress=False):
            batches.append((self.name, [float(image[0, 0, 0]) for image in images]))
            count = len(images)
            return SimpleNamespace(
                scores=[float(image[0, 0, 0]) for image in images],
                anomaly_maps=[image[..., 0] for image in images],
                labels=[False] * count,
                masks=[image[..., 0] > 1 for image in images],
                boxes=[[] for _ in images],
            )

    thread = ModelThread()
    started, release = threading.Event(), threading.Event()

    def block() -> str:
        started.set()
        release.wait()
        return "blocked"

    first = Batcher(Recording("a"), max_batch=2, thread=thread)  # type: ignore[arg-type]
    second = Batcher(Recording("b"), max_batch=8, thread=thread)  # type: ignore[arg-type]
    results: dict[str, object] = {}
    blocker = threading.Thread(target=lambda: results.setdefault("call", thread.call(block)))
    blocker.start()
    started.wait()  # the model thread is busy: everything below queues, in this order
    waiting = []
    for value, batcher in ((1.0, first), (2.0, second), (3.0, first), (4.0, first), (5.0, second)):
        image = np.full((2, 2, 1), value, dtype=np.float32)
        waiting.append(threading.Thread(target=lambda b=batcher, i=image, v=value: results.setdefault(v, b.decide(i))))
        waiting[-1].start()
        while len(thread._waiting) < len(waiting):
            threading.Event().wait(0.001)
    release.set()
    for worker in [blocker, *waiting]:
        worker.join(timeout=10)
    assert results["call"] == "blocked"
    assert batches == [("a", [1.0, 3.0]), ("b", [2.0, 5.0]), ("a", [4.0])]
    assert all(results[value].score == value for value in (1.0, 2.0, 3.0, 4.0, 5.0))  # type: ignore[union-attr]
    with pytest.raises(ZeroDivisionError):
        thread.call(lambda: 1 / 0)


def test_serve_names_the_missing_extra_before_loading_models(tmp_path, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from flawscope.cli import app

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real_find_spec(name, *a)
    )
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "not-loaded"), "--db", str(tmp_path / "log.sqlite")])
    assert result.exit_code == 2 and "missing: uvicorn" in result.output and "flawscope[serve]" in result.output


def test_drift_is_unknown_without_calibration_scores_below_the_threshold():
    from flawscope.service.log import ServedModel
    from flawscope.service.stats import _drift

    rows = [{"score": 1.0, "label": "OK", "verdict": None, "model_version": "v"}] * 40
    above = ServedModel("m", "v", "PatchCore", threshold=1.0, calibration_scores=[2.0, 3.0])
    assert _drift(rows, above)["status"] == "unknown"
    assert _drift(rows, None)["status"] == "unknown"


def test_teach_false_alarms_update_swap_and_roll_back(client, station, station_model, part_images):
    good, defective = part_images
    fitted_version = content_hash(station_model)
    ids = [inspect(client, data).json()["id"] for data in good[:3]]
    bad_id = inspect(client, defective[0]).json()["id"]
    nothing = client.post("/v1/models/tiles/update", headers=AUTH)
    assert nothing.status_code == 409 and "No images are queued" in nothing.json()["detail"]
    as_fitted = client.post("/v1/models/tiles/rollback", headers=AUTH)
    assert as_fitted.status_code == 409 and "no earlier version" in as_fitted.json()["detail"]
    refused = client.post(f"/v1/inspections/{bad_id}/verdict", json={"verdict": "defect", "teach": True}, headers=AUTH)
    assert refused.status_code == 422 and "verdict 'ok'" in refused.json()["detail"]
    assert client.get(f"/v1/inspections/{bad_id}").json()["verdict"] is None  # a refused teach stores no verdict
    for inspection_id in ids[:2] + ids[:1]:  # queuing one twice teaches it once
        teach = {"verdict": "ok", "teach": True}
        answer = client.post(f"/v1/inspections/{inspection_id}/verdict", json=teach, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["verdict"] == "ok"
    (served,) = client.get("/v1/models").json()
    assert served["queued_to_teach"] == 2 and served["updatable"] and served["parent"] is None
    before = [row["score"] for row in (client.get(f"/v1/inspections/{i}").json() for i in ids[:2])]

    answer = client.post("/v1/models/tiles/update", headers=AUTH)
    assert answer.status_code == 200, answer.text
    update = answer.json()["update"]
    assert update["images"] == 2 and update["parent"] == fitted_version and update["version"] != fitted_version
    assert answer.json()["model"]["queued_to_teach"] == 0 and answer.json()["model"]["parent"] == fitted_version
    assert (station.versions / "tiles" / update["version"] / "model.safetensors").is_file()
    after = [inspect(client, data).json() for data in good[:2]]
    assert {row["model_version"] for row in after} == {update["version"]}
    assert all(row["score"] <= old for row, old in zip(after, before))  # taught parts look more normal now
    assert client.post("/v1/models/tiles/update", headers=AUTH).status_code == 409  # the queue was used up

    back = client.post("/v1/models/tiles/rollback", headers=AUTH)
    assert back.status_code == 200 and back.json()["version"] == fitted_version
    assert inspect(client, good[0]).json()["model_version"] == fitted_version
    assert client.post("/v1/models/nope/update", headers=AUTH).status_code == 404
    assert client.post("/v1/models/tiles/update").status_code == 401
    swaps = sqlite3.connect(station.log.path).execute("SELECT reason, version FROM model_swaps ORDER BY id").fetchall()
    assert swaps == [("start", fitted_version), ("update", update["version"]), ("rollback", fitted_version)]


def test_a_restarted_station_serves_the_taught_version(station_model, tmp_path, part_images):
    db, store = tmp_path / "log.sqlite", tmp_path / "store"
    first = open_station([station_model], db, store)
    client = TestClient(create_app(first))
    inspection_id = inspect(client, part_images[0][0]).json()["id"]
    client.post(f"/v1/inspections/{inspection_id}/verdict", json={"verdict": "ok", "teach": True})
    taught = client.post("/v1/models/tiles/update").json()["update"]["version"]
    again = open_station([station_model], db, store)
    assert again.models["tiles"].version == taught and again.resumed == {"tiles": (content_hash(station_model), taught)}
    assert again.models["tiles"].parent == content_hash(station_model)
    assert open_station([station_model], db, store, resume=False).models["tiles"].version == content_hash(station_model)
    no_pictures = open_station([station_model], tmp_path / "bare.sqlite", store_images=False)
    bare = TestClient(create_app(no_pictures))
    row = inspect(bare, part_images[0][0]).json()
    answer = bare.post(f"/v1/inspections/{row['id']}/verdict", json={"verdict": "ok", "teach": True})
    assert answer.status_code == 422 and "no stored image" in answer.json()["detail"]


def test_recalibrate_from_the_verdicts_in_the_log(client, station, station_model, part_images):
    good, defective = part_images
    assert client.post("/v1/models/tiles/recalibrate", headers=AUTH).status_code == 409  # no verdicts yet
    judged = [(inspect(client, data).json()["id"], "ok") for data in good[:4]]
    judged += [(inspect(client, data).json()["id"], "defect") for data in defective[:3]]
    for inspection_id, verdict in judged:
        client.post(f"/v1/inspections/{inspection_id}/verdict", json={"verdict": verdict}, headers=AUTH)
    taught = inspect(client, good[4]).json()["id"]
    client.post(f"/v1/inspections/{taught}/verdict", json={"verdict": "ok", "teach": True}, headers=AUTH)
    client.post("/v1/models/tiles/update", headers=AUTH)  # the taught part is a training image now
    answer = client.post("/v1/models/tiles/recalibrate", headers=AUTH)
    assert answer.status_code == 200, answer.text
    recalibration = answer.json()["recalibration"]
    assert (recalibration["good"], recalibration["defective"]) == (4, 3)  # the taught part does not count
    assert answer.json()["model"]["threshold"] == recalibration["threshold"]
    again = [inspect(client, data).json() for data in good[:4] + defective[:3]]  # judged by the new version
    assert {row["threshold"] for row in again} == {recalibration["threshold"]}
    assert [row["label"] for row in again] == ["OK"] * 4 + ["NOT OK"] * 3  # F1 on them: every verdict agrees
    reasons = sqlite3.connect(station.log.path).execute("SELECT reason FROM model_swaps ORDER BY id").fetchall()
    assert [reason for (reason,) in reasons] == ["start", "update", "recalibrate"]
