"""The station as a user runs it: `flawscope serve` started on loopback, driven over real HTTP, by a real
headless browser, under load and through a SIGKILL; the folder watcher on a real folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
import httpx

from flawscope.service import open_station
from flawscope.service.watch import FolderWatcher


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(station_model: Path, db: Path, *extra: str):
    """Run `flawscope serve` in its own process on a free loopback port until the block ends (or it is killed)."""
    port = free_port()
    command = [sys.executable, "-m", "flawscope.cli", "serve", str(station_model), "--port", str(port), "--db", str(db)]
    process = subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.stdout.read().decode() if process.stdout else ''}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not answer /health within 120 s")
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def logged_ids(db: Path) -> list[int]:
    connection = sqlite3.connect(db)
    try:
        return [row[0] for row in connection.execute("SELECT id FROM inspections ORDER BY id")]
    finally:
        connection.close()


def load_run(
    url: str, payloads: list[bytes], concurrency: int, kill_after: tuple[int, int] | None = None
) -> list[tuple]:
    """POST every payload at ``concurrency``; ``(index, status, id)`` per answer that reached the client.
    ``kill_after=(answers, pid)``: SIGKILL the server once that many answers have arrived."""
    local = threading.local()
    answers: list[tuple] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
        try:
            response = local.client.post(f"{url}/v1/inspect", files={"image": (f"part{index}.png", payloads[index])})
        except httpx.TransportError:
            return
        with lock:
            answers.append((index, response.status_code, response.json().get("id")))
            if kill_after is not None and len(answers) == kill_after[0]:
                os.kill(kill_after[1], signal.SIGKILL)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(len(payloads))))
    return answers


def payloads(part_images, count: int, unreadable_share: float = 0.05) -> list[bytes]:
    good, defective = part_images
    pool = good + defective
    every = round(1 / unreadable_share)
    return [b"not an image %d" % i if i % every == every - 1 else pool[i % len(pool)] for i in range(count)]


def check_load(url: str, db: Path, part_images, count: int) -> None:
    sent = payloads(part_images, count)
    answers = load_run(url, sent, concurrency=8)
    assert len(answers) == count
    assert not [a for a in answers if a[1] >= 500]
    assert sum(a[1] == 422 for a in answers) == sum(p.startswith(b"not an image") for p in sent)
    assert {a[1] for a in answers} == {200, 422}
    ids = [a[2] for a in answers]
    assert len(set(ids)) == count and sorted(ids) == logged_ids(db)


def test_load_on_loopback_logs_every_request(station_model, part_images, tmp_path):
    db = tmp_path / "log.sqlite"
    with serving(station_model, db) as (url, _):
        check_load(url, db, part_images, 200)


@pytest.mark.slow
def test_load_2000_requests_at_concurrency_8(station_model, part_images, tmp_path):
    db = tmp_path / "log.sqlite"
    with serving(station_model, db) as (url, _):
        check_load(url, db, part_images, 2000)


def test_sigkill_loses_no_answered_inspection(station_model, part_images, tmp_path):
    db = tmp_path / "log.sqlite"
    sent = payloads(part_images, 400)
    with serving(station_model, db) as (url, process):
        answers = load_run(url, sent, concurrency=8, kill_after=(100, process.pid))
    assert 100 <= len(answers) < len(sent), "the kill should land in the middle of the run"
    with serving(station_model, db) as (url, _):
        for _, _, inspection_id in answers:
            assert httpx.get(f"{url}/v1/inspections/{inspection_id}").status_code == 200
        assert httpx.post(f"{url}/v1/inspect", files={"image": ("a.png", part_images[0][0])}).status_code == 200


def test_token_from_the_environment(station_model, part_images, tmp_path, monkeypatch):
    monkeypatch.setenv("FLAWSCOPE_TOKEN", "from-env")
    with serving(station_model, tmp_path / "log.sqlite") as (url, _):
        files = {"image": ("a.png", part_images[0][0])}
        assert httpx.post(f"{url}/v1/inspect", files=files).status_code == 401
        headers = {"Authorization": "Bearer from-env"}
        assert httpx.post(f"{url}/v1/inspect", files=files, headers=headers).status_code == 200


def browser():
    """A headless Chromium through Selenium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no chromium + chromedriver on this machine (.ci/run installs Debian's chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(driver_path))


def test_review_page_in_a_real_browser(station_model, part_images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    image_file = tmp_path / "scratched_part.png"
    image_file.write_bytes(part_images[1][0])
    db = tmp_path / "log.sqlite"
    with serving(station_model, db) as (url, _):
        driver = browser()
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(url)
            wait.until(until.presence_of_element_located((By.ID, "empty")))
            driver.find_element(By.ID, "upload-input").send_keys(str(image_file))
            driver.find_element(By.ID, "upload-button").click()
            card = wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, ".card")))
            assert "scratched_part.png" in card.text
            httpx.post(f"{url}/v1/inspect", files={"image": ("from_camera.png", part_images[0][1])})
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 2)  # appears by itself
            driver.find_elements(By.CSS_SELECTOR, ".card")[0].click()  # newest first: the camera's good part
            wait.until(until.visibility_of_element_located((By.ID, "detail")))
            wait.until(lambda d: d.execute_script("return document.getElementById('detail-overlay').naturalWidth") > 0)
            driver.find_element(By.ID, "verdict-teach").click()
            wait.until(until.text_to_be_present_in_element((By.ID, "verdict-now"), "queued to teach"))
            driver.find_element(By.ID, "detail-close").click()
            update = wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, ".update-model")))
            assert "1 queued" in update.text
            update.click()
            wait.until(until.text_to_be_present_in_element((By.CSS_SELECTOR, ".teach-status"), "Taught 1 images"))
            driver.save_screenshot(str(tmp_path / "review.png"))
            assert driver.find_element(By.ID, "stats").text.count("inspections") >= 1
            assert "made from" in driver.find_element(By.ID, "stats").text
        finally:
            driver.quit()
    connection = sqlite3.connect(db)
    verdicts = connection.execute(
        "SELECT i.filename, v.verdict FROM verdicts AS v JOIN inspections AS i ON i.id = v.inspection_id"
    ).fetchall()
    assert verdicts == [("from_camera.png", "ok")]
    assert [row[0] for row in connection.execute("SELECT reason FROM model_swaps ORDER BY id")] == ["start", "update"]


def test_folder_watcher_inspects_each_file_once_across_restarts(station_model, part_images, tmp_path):
    good, defective = part_images
    folder = tmp_path / "camera"
    folder.mkdir()
    station = open_station([station_model], tmp_path / "log.sqlite", tmp_path / "store")
    watcher = FolderWatcher(station, folder, settle_seconds=0.0, sort=True)
    (folder / "a.png").write_bytes(good[0])
    (folder / "b.png").write_bytes(defective[0])
    (folder / "c.png").write_bytes(b"half a file")
    (folder / "d.png.part").write_bytes(good[1])
    assert watcher.scan() == 0  # first sight: not yet known to be complete
    assert watcher.scan() == 3
    assert watcher.scan() == 0
    assert (folder / "failed" / "c.png").is_file() and (folder / "d.png.part").is_file()
    labels = {row.filename: row.label for row in station.log.query()}
    assert labels["a.png"] in ("OK", "NOT OK") and labels["c.png"] is None
    assert (folder / ("ok" if labels["a.png"] == "OK" else "not_ok") / "a.png").is_file()

    (folder / "e.png").write_bytes(good[2])  # arrives while the watcher is down
    restarted = FolderWatcher(open_station([station_model], tmp_path / "log.sqlite"), folder, settle_seconds=0.0)
    restarted.scan()
    assert restarted.scan() == 1 and restarted.scan() == 0
    assert sorted(row.filename for row in station.log.query()) == ["a.png", "b.png", "c.png", "e.png"]

    again = FolderWatcher(open_station([station_model], tmp_path / "log.sqlite"), folder, settle_seconds=0.0)
    again.scan()
    assert again.scan() == 0  # e.png stayed (no sorting) and is not inspected twice


def test_folder_watcher_waits_for_a_file_to_be_complete(station_model, part_images, tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    station = open_station([station_model], tmp_path / "log.sqlite")
    watcher = FolderWatcher(station, folder, settle_seconds=0.0)
    data = part_images[0][0]
    target = folder / "growing.png"
    target.write_bytes(data[: len(data) // 2])
    watcher.scan()
    target.write_bytes(data)  # the camera is still writing: size changed since the last look
    assert watcher.scan() == 0
    assert watcher.scan() == 1
    assert station.log.query()[0].error is None


def test_folder_watcher_runs_on_file_events(station_model, part_images, tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    station = open_station([station_model], tmp_path / "log.sqlite")
    watcher = FolderWatcher(station, folder, settle_seconds=0.2, poll_seconds=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        (folder / "new.png").write_bytes(part_images[0][0])
        deadline = time.monotonic() + 30
        while station.log.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [row.filename for row in station.log.query()] == ["new.png"]
