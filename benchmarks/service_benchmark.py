"""The inspection station under load: served throughput and latency against in-process ``predict``, and the
server's memory after many inspections.

PatchCore with default settings is fitted on ELPV mono (module split) and saved; the test cells are sent as
their PNG files. In the same run: in-process ``predict`` on the same images (batched as by default, and one
image per call), then ``flawscope serve`` on 127.0.0.1 (images, overlays and masks stored, as a user runs it)
at concurrency 1, 4 and 8: images/s, and p50 / p95 / p99 of the latency each client saw; each speed figure is
the middle one of ``--repeats`` passes. Then ``--pairs`` times an in-process batched pass and a served pass at
concurrency 4 one right after the other, against the shared machine's drifting speed (a whole run's ratio
moved 0.61-0.92 for the same code); their in-process passes run with the server started. CPU milliseconds per
image of the in-process runs, of the server and of the benchmark's own client (they share the two cores, so
the client's share is what a client on another machine would give back to the server). Memory: the server's
resident set after 100 inspections (the first, a warm-up), then every 1,000 up to ``--memory-requests``
(default 10,000). The client runs on the same machine as the server, as the in-process runs do.

    .venv/bin/python benchmarks/service_benchmark.py [--model SAVED_MODEL_DIR]   # --model: skip the fit

Writes ``benchmarks/results/service.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from flawscope.data.io import read_image  # noqa: E402
from flawscope.workflow import evaluation_data, fit_and_calibrate  # noqa: E402

CONCURRENCY = (1, 4, 8)


def test_files(count: int) -> list[bytes]:
    """The PNG files of the first ``count`` ELPV mono test cells (module split), as a camera would send them."""
    samples = evaluation_data("elpv:mono", supervised=False).samples[:count]
    return [Path(sample.image).read_bytes() for sample in samples]


def in_process_passes(model_dir: Path, files: list[bytes]) -> Callable[[int | None], tuple[float, float]]:
    """A pass of in-process ``predict`` over the decoded ``files``: ``one_pass(batch_size)`` -> (images/s, CPU ms
    per image); None: the model's default batch size."""
    import io

    from PIL import Image

    import flawscope as fs

    detector = fs.load(model_dir, device="cpu")
    pixels = [read_image(Image.open(io.BytesIO(data))) for data in files]
    detector.predict(pixels[:8], progress=False)  # warm-up

    def one_pass(batch_size: int | None) -> tuple[float, float]:
        started, cpu_started = time.perf_counter(), time.process_time()
        detector.predict(pixels, batch_size=batch_size, progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        return round(len(pixels) / seconds, 2), 1000 * cpu / len(pixels)

    return one_pass


def in_process(one_pass: Callable[[int | None], tuple[float, float]], repeats: int) -> dict:
    out: dict = {}
    for name, batch_size in (("batched", None), ("one_per_call", 1)):
        passes, cpu_ms = zip(*(one_pass(batch_size) for _ in range(repeats)))
        out[f"images_per_second_{name}"] = sorted(passes)[len(passes) // 2]
        out[f"images_per_second_{name}_passes"] = list(passes)
        out[f"cpu_ms_per_image_{name}"] = round(float(np.median(cpu_ms)), 1)
    return out


def paired_at_four(
    one_pass: Callable[[int | None], tuple[float, float]],
    url: str,
    files: list[bytes],
    requests: int,
    pairs: int,
    pid: int,
) -> dict:
    """In-process batched and served-at-concurrency-4 passes one after the other, ``pairs`` times: each ratio from
    two passes seconds apart, so a drift of the shared machine's speed moves both."""
    runs = []
    for _ in range(pairs):
        in_process_speed = one_pass(None)[0]
        served = load(url, files, 4, requests, pid)["images_per_second"]
        runs.append(
            {"in_process_batched": in_process_speed, "served_c4": served, "ratio": round(served / in_process_speed, 3)}
        )
        print(json.dumps(runs[-1]), flush=True)
    return {"pairs": runs, "median_ratio": round(float(np.median([run["ratio"] for run in runs])), 3)}


def start_server(model_dir: Path, work: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``flawscope serve model_dir`` on a free loopback port, its log and store in ``work``, with ``env`` added to
    its environment; returns once ``/health`` answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "flawscope.cli", "serve", str(model_dir), "--port", str(port)]
    process = subprocess.Popen([*command, "--db", str(work / "log.sqlite")], env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def load(url: str, files: list[bytes], concurrency: int, count: int, server_pid: int) -> dict:
    local = threading.local()
    latencies: list[float] = []
    statuses: list[int] = []

    def send(index: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=120)
        started = time.perf_counter()
        response = local.client.post(f"{url}/v1/inspect", files={"image": ("cell.png", files[index % len(files)])})
        latencies.append(1000 * (time.perf_counter() - started))
        statuses.append(response.status_code)

    started, client_started, server_started = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(count)))
    wall = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client_started, cpu_seconds(server_pid) - server_started
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {
        "concurrency": concurrency,
        "requests": count,
        "non_200": sum(status != 200 for status in statuses),
        "images_per_second": round(count / wall, 2),
        "latency_ms_p50": round(float(p50), 1),
        "latency_ms_p95": round(float(p95), 1),
        "latency_ms_p99": round(float(p99), 1),
        "p99_over_p50": round(float(p99 / p50), 2),
        "server_cpu_ms_per_image": round(1000 * server_cpu / count, 1),
        "client_cpu_ms_per_image": round(1000 * client_cpu / count, 1),
    }


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="Distinct test cells sent (and scored in-process).")
    parser.add_argument("--requests", type=int, default=200, help="Requests per concurrency level.")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--model", type=Path, help="A saved calibrated model to serve instead of fitting one.")
    parser.add_argument("--repeats", type=int, default=3, help="Passes of each speed figure; the median is reported.")
    parser.add_argument("--pairs", type=int, default=5, help="Paired in-process / concurrency-4 passes.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "service.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.model:
            shutil.copytree(args.model, work / "patchcore")
        else:
            fitted = fit_and_calibrate("patchcore", "elpv:mono", {"device": "cpu", "seed": 0}, progress=False)
            fitted.model.save(work / "patchcore")
        files = test_files(args.images)
        result: dict = {"model": "patchcore (defaults)", "data": "elpv:mono test cells (module split)"}
        one_pass = in_process_passes(work / "patchcore", files)
        result["in_process"] = in_process(one_pass, args.repeats)
        print(json.dumps(result["in_process"]), flush=True)
        process, url = start_server(work / "patchcore", work)
        try:
            load(url, files, 4, 100, process.pid)  # warm-up, and the first memory reading
            memory = {"after_requests": [100], "resident_mib": [resident_mib(process.pid)]}
            result["served"] = []
            for concurrency in CONCURRENCY:
                passes = [load(url, files, concurrency, args.requests, process.pid) for _ in range(args.repeats)]
                middle = sorted(passes, key=lambda run: run["images_per_second"])[len(passes) // 2]
                speeds = [run["images_per_second"] for run in passes]
                result["served"].append({**middle, "images_per_second_passes": speeds})
                print(json.dumps(result["served"][-1]), flush=True)
            result["paired_at_4"] = paired_at_four(one_pass, url, files, args.requests, args.pairs, process.pid)
            done = 100 + (len(CONCURRENCY) * args.repeats + args.pairs) * args.requests
            while done < args.memory_requests:  # a reading every 1,000 inspections: growth or a plateau
                step = min(1000 - done % 1000, args.memory_requests - done)
                load(url, files, 4, step, process.pid)
                done += step
                memory["after_requests"].append(done)
                memory["resident_mib"].append(resident_mib(process.pid))
            print(json.dumps(memory), flush=True)
            result["server_memory"] = memory
        finally:
            process.terminate()
            process.wait(timeout=60)
    at_four = next(run for run in result["served"] if run["concurrency"] == 4)
    result["served_over_in_process_at_4"] = round(
        at_four["images_per_second"] / result["in_process"]["images_per_second_batched"], 3
    )
    # the server's own efficiency, whatever the client costs the shared cores: in-process CPU / server CPU per image
    result["in_process_cpu_over_server_cpu_at_4"] = round(
        result["in_process"]["cpu_ms_per_image_batched"] / at_four["server_cpu_ms_per_image"], 3
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
