"""Images/s of the pipeline fetching http:// URLs, beside img2dataset on the same server.

Four loopback hosts (127.0.0.2 to 127.0.0.5) serve the sample photographs, each
response after 50 ms, and log every request's start and end (monotonic), from which
the peak of requests in flight per host is counted. In one run, each in a fresh
process: img2dataset (its own virtualenv under out/benchmark-fetch, made on the first
run; download and write only, no model), the pipeline on the URLs (ResNet50, random
weights), and the pipeline on the same images as local files. See docs/input.md,
"Throughput".
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "data" / "photos"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
ALLOWED = "127.0.0.2/31,127.0.0.4/31"  # exactly the four hosts
DELAY = 0.05  # seconds before each response
VENV = REPO / "out" / "benchmark-fetch" / "venv-img2dataset"
# Neither client may reach anything but the loopback hosts, whatever the shell set.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


# --- the loopback hosts ---------------------------------------------------------------


@dataclass
class Request:
    host: str
    path: str
    start: float
    end: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # img2dataset opens a connection per request

    def __init__(self, address: str, photos: dict[str, bytes]):
        super().__init__((address, 0), _Handler)
        self.photos = photos
        self.log: list[Request] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, for clients that keep connections
    timeout = 10
    server: _Server

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        record = Request(self.server.server_address[0], self.path, time.monotonic())
        with self.server.lock:
            self.server.log.append(record)
        try:
            self._respond()
        finally:
            record.end = time.monotonic()

    def _respond(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        body = self.server.photos.get(name.split("-", 1)[-1])
        if not self.path.startswith("/img/") or body is None:
            self._send(404, b"not here", "text/plain")  # robots.txt too: allows all
            return
        time.sleep(DELAY)
        self._send(200, body, "image/png" if name.endswith(".png") else "image/jpeg")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serving(photos: dict[str, bytes]) -> Iterator[list[_Server]]:
    """A server on each of HOSTS, stopped when the block ends."""
    with ExitStack() as stack:
        servers = []
        for address in HOSTS:
            server = _Server(address, photos)
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            servers.append(server)
        yield servers


def peak_in_flight(requests: list[Request]) -> int:
    """The most requests that overlapped in time."""
    # At equal times an end sorts before a start: back to back is not overlapping.
    events = sorted([(r.start, 1) for r in requests] + [(r.end, -1) for r in requests])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def served_span(servers: list[_Server]) -> tuple[float, float]:
    """Seconds from the first image request's start to the last one's end, and the
    requests in flight per host averaged over them."""
    images = [r for s in servers for r in s.log if r.path.startswith("/img/")]
    span = max(r.end for r in images) - min(r.start for r in images)
    return span, sum(r.end - r.start for r in images) / span / len(servers)


# --- inputs -----------------------------------------------------------------------------


def load_photos() -> dict[str, bytes]:
    """The sample photographs' bytes by file name."""
    return {
        p.name: p.read_bytes() for p in sorted(PHOTOS.iterdir()) if p.suffix in (".png", ".jpg")
    }


def image_names(count: int, photos: dict[str, bytes]) -> list[str]:
    """count distinct names, the photographs in turn: 00007-chelsea.png."""
    names = list(photos)
    return [f"{i:05d}-{names[i % len(names)]}" for i in range(count)]


def urls(names: list[str], servers: list[_Server]) -> list[str]:
    """One URL per name, the hosts in turn."""
    found = []
    for index, name in enumerate(names):
        address, port = servers[index % len(servers)].server_address[:2]
        found.append(f"http://{address}:{port}/img/{name}")
    return found


def local_files(names: list[str], photos: dict[str, bytes], folder: Path) -> list[str]:
    """The same images on disk: a copy of each photograph, a hard link per name."""
    folder.mkdir()
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    paths = []
    for name in names:
        path = folder / name
        os.link(folder / name.split("-", 1)[1], path)
        paths.append(str(path))
    return paths


def write_csv(path: Path, column: str, uris: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([column])
        writer.writerows([uri] for uri in uris)
    return path


# --- the runs ---------------------------------------------------------------------------


@dataclass
class Result:
    runner: str
    settings: str
    images: int  # what the run delivered
    seconds: float
    span: float = 0.0  # seconds the servers spent on its image requests (0: none)
    peak: int = 0  # the most requests in flight to one host
    mean: float = 0.0  # requests in flight per host, averaged over the span
    note: str = ""  # why the run delivered fewer images than it was given

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def span_rate(self) -> float:
        return self.images / self.span


def loopback_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    return env | {"no_proxy": "*", "NO_PROXY": "*"}


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of a command, and how it ended."""
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=loopback_env(), capture_output=True, text=True)
    return time.perf_counter() - started, done


def failed(done: subprocess.CompletedProcess) -> RuntimeError:
    return RuntimeError(f"{done.args[:3]} failed:\n{done.stderr[-3000:]}")


def pipeline(uris: list[str], work: Path, name: str, flags: list[str]) -> tuple:
    """Seconds, images embedded and a note ('' if all were) of python -m pipeline."""
    csv_path, output = write_csv(work / f"{name}.csv", "uri", uris), work / name
    argv = [
        sys.executable, "-m", "pipeline", "--input", str(csv_path), "--output", str(output),
        "--weights", "random", *flags,
    ]  # fmt: skip
    seconds, done = timed(argv)
    # A run that fails its own checks keeps its summary under _runs/: still a measurement.
    found = [output / "summary.json"] if done.returncode == 0 else []
    found = found or sorted(output.glob("_runs/*/summary.json"))
    if not found:
        raise failed(done)
    summary = json.loads(found[-1].read_text())
    note = summary.get("failure_reason") or ""
    if not note and summary["embedded"] < len(uris):
        note = f"embedded {summary['embedded']} of {len(uris)}"
    return seconds, summary["embedded"], note


def img2dataset_ready() -> str:
    """'' once img2dataset is installed in its own virtualenv, else why it is not."""
    marker = VENV / ".installed"
    if marker.exists():
        return ""
    shutil.rmtree(VENV, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "img2dataset"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return f"`{' '.join(step[-3:])}` failed: {last}"
    marker.touch()
    return ""


def img2dataset_version() -> str:
    code = "import importlib.metadata as m; print(m.version('img2dataset'))"
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", code], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def img2dataset(urls: list[str], work: Path, threads: int) -> tuple:
    """Seconds, images written and a note ('' if all were) of img2dataset: download and
    write only."""
    name = f"img2dataset-{threads}"
    csv_path, output = write_csv(work / f"{name}.csv", "url", urls), work / name
    argv = [
        str(VENV / "bin" / "img2dataset"), "--url_list", str(csv_path),
        "--input_format", "csv", "--url_col", "url", "--output_folder", str(output),
        "--output_format", "files", "--processes_count", "1", "--thread_count", str(threads),
        "--resize_mode", "no", "--disable_all_reencoding", "True", "--extract_exif", "False",
        "--compute_hash", "None", "--timeout", "10", "--retries", "0",
        "--enable_wandb", "False",
    ]  # fmt: skip
    seconds, done = timed(argv)
    if done.returncode:
        raise failed(done)
    stats = [json.loads(p.read_text()) for p in output.glob("*_stats.json")]
    images = sum(s["successes"] for s in stats)
    return seconds, images, "" if images == len(urls) else f"wrote {images} of {len(urls)}"


def over_http(name: str, settings: str, photos: dict, names: list[str], run) -> Result:
    """run(urls) against fresh servers: its (seconds, images, note), and their logs."""
    with serving(photos) as servers:
        outcome = run(urls(names, servers))
        # A client that stopped reading leaves its handler running for a moment.
        time.sleep(0.2)
        peak = max(peak_in_flight(s.log) for s in servers)
        span, mean = served_span(servers)
    seconds, images, note = outcome
    return Result(name, settings, images, seconds, span, peak, mean, note)


# --- the report -------------------------------------------------------------------------

COLUMNS = (  # heading, width, what a Result shows there
    ("runner", -24, lambda r: r.runner),
    ("images", 7, lambda r: r.images),
    ("seconds", 8, lambda r: f"{r.seconds:.1f}"),
    ("images/s", 9, lambda r: f"{r.rate:.1f}"),
    ("served s", 9, lambda r: f"{r.span:.1f}" if r.span else "-"),
    ("images/s served", 16, lambda r: f"{r.span_rate:.1f}" if r.span else "-"),
    ("peak/host", 10, lambda r: r.peak if r.span else "-"),
    ("mean/host", 10, lambda r: f"{r.mean:.2f}" if r.span else "-"),
)


def row(values) -> str:
    return " ".join(
        f"{value:<{-width}}" if width < 0 else f"{value:>{width}}"
        for value, (_, width, _) in zip(values, COLUMNS, strict=True)
    )


def report(results: list[Result], urls_count: int, missing: str) -> None:
    print(f"\n{urls_count} URLs, {len(HOSTS)} loopback hosts, {DELAY * 1000:.0f} ms a response")
    for result in results:
        print(f"  {result.runner}: {result.settings}")
    if missing:
        print(f"  img2dataset: not measured: {missing}")
    print("\n" + row(heading for heading, _, _ in COLUMNS))
    for result in results:
        print(row(show(result) for _, _, show in COLUMNS))
    for result in results:
        if result.note:
            print(f"note: {result.runner}: {result.note}")
    by = {r.runner: r for r in results}
    web, local = by["pipeline, http"], by["pipeline, local files"]
    print()
    for other in results:
        if other.runner.startswith("img2dataset"):
            print(
                f"pipeline http / {other.runner}: {web.rate / other.rate:.2f} end to end, "
                f"{web.span_rate / other.span_rate:.2f} over the seconds served"
            )
    print(f"pipeline http / pipeline local files: {web.rate / local.rate:.2f} end to end")
    slower = [
        r.runner for r in results if r.runner.startswith("img2dataset") and r.rate > local.rate
    ]
    if slower:
        print(
            f"model-bound: the pipeline on local files ({local.rate:.1f} images/s) is already "
            f"slower than {' and '.join(slower)}, which run no model: the model caps the rate "
            "on this CPU, and what fetching costs is http / local files"
        )
    print(
        "served s: the first image request's start to the last one's end, at the servers "
        "(no start-up); mean/host: requests in flight per host, averaged over those "
        "seconds. img2dataset runs no model."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", type=int, default=2000, help="URLs (and local files)")
    parser.add_argument("--max_connections_per_host", type=int, default=2)
    parser.add_argument(
        "--requests_per_second_per_host", type=float, default=None,
        help="default: twice what the connections can start at 50 ms a response, so that "
        "it never binds (img2dataset has no rate limit)",
    )  # fmt: skip
    parser.add_argument(
        "--img2dataset_threads", type=int, nargs="+", default=None, metavar="N",
        help="its thread_count (across all hosts), a run each; default: connections x "
        "hosts (their mean in flight per host), and half that (their peak)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    connections = args.max_connections_per_host
    rate = args.requests_per_second_per_host or 2 * connections / DELAY
    threads = args.img2dataset_threads or [connections * len(HOSTS) // 2, connections * len(HOSTS)]
    fetch_flags = [
        "--allow_private_addresses", ALLOWED, "--max_connections_per_host", str(connections),
        "--requests_per_second_per_host", f"{rate:g}",
    ]  # fmt: skip
    photos = load_photos()
    names = image_names(args.urls, photos)
    print(f"{len(photos)} photographs, {args.urls} URLs; installing img2dataset if needed")
    missing = img2dataset_ready()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        version = "" if missing else f"img2dataset {img2dataset_version()}"
        for count in [] if missing else threads:
            print(f"img2dataset, {count} threads ...", flush=True)
            run = functools.partial(img2dataset, work=work, threads=count)
            settings = (
                f"{version}: processes_count 1, thread_count {count} (no per-host limit: threads "
                "across all hosts, URLs alternating hosts), no rate limit, resize_mode no, "
                "disable_all_reencoding, output_format files; no model"
            )
            name = f"img2dataset, {count} threads"
            results.append(over_http(name, settings, photos, names, run))
        print("pipeline on the URLs ...", flush=True)
        run = functools.partial(pipeline, work=work, name="http", flags=fetch_flags)
        settings = (
            f"max_connections_per_host {connections}, requests_per_second_per_host {rate:g} "
            "(per process; the local runner's one process), ResNet50, random weights"
        )
        results.append(over_http("pipeline, http", settings, photos, names, run))
        print("pipeline on local files ...", flush=True)
        paths = local_files(names, photos, work / "files")
        seconds, images, note = pipeline(paths, work, "local", [])
        settings = "the same bytes on disk, the same model"
        results.append(Result("pipeline, local files", settings, images, seconds, note=note))
    report(results, args.urls, missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
