"""Benchmark openflr side by side with its baselines, in one run, on this machine.

Builds its restore points with the test fixture script (``tests/fixtures/images.py``), starts
``openflr serve --http`` and a bare ``sendfile`` HTTP server on loopback, measures every figure
against its baseline, prints a table of ratios with the raw figures, and writes the same as JSON
to ``bench/results/``. See ``bench/README.md`` for each figure and its goal.

Usage: ``.venv/bin/python bench/run.py [--quick] [--only FIGURE ...] [--rebuild]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tests.fixtures import images  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
PYTHON = sys.executable
TARGET_FS = str(Path(PYTHON).with_name("target-fs"))
USER, PASSWORD = "bench", "bench password, loopback only"
WHEN = "2026-11-30T220000Z"
MIB = 1 << 20
# Every wait on a server is bounded: no request loop runs longer than this.
DEADLINE = 300.0

SIZES = {
    "full": {"big_mib": 1024, "many": 100_000, "small": 10_000, "clients": 8, "reps": 3},
    "quick": {"big_mib": 128, "many": 10_000, "small": 1_000, "clients": 8, "reps": 3},
}
FIGURES = ("download", "peer", "mount", "paging", "listing", "concurrency", "memory", "zip")


@dataclass
class Figure:
    """One line of the table: openflr's figure, its baseline's, and their ratio."""

    figure: str
    case: str
    openflr: float
    baseline: float
    unit: str
    baseline_name: str
    ratio: float
    goal: str
    met: bool
    raw: dict[str, Any] = field(default_factory=dict)


# -- images --------------------------------------------------------------------------------------


@dataclass
class Work:
    """The built inputs: source trees on the host and the repository of restore points."""

    root: Path
    big_file: Path
    folders: Path
    repo: Path

    @property
    def win_image(self) -> Path:
        return self.repo / "benchwin" / WHEN / "disk0.vhdx"

    @property
    def lin_image(self) -> Path:
        return self.repo / "benchlin" / WHEN / "disk0.qcow2"


def build(root: Path, sizes: dict[str, int], rebuild: bool) -> Work:
    """Build the source trees and restore points, or reuse those a previous run built."""
    work = Work(root, root / "big" / images.BENCH_BIG_NAME, root / "folders", root / "repo")
    stamp = root / "built.json"
    wanted = {k: sizes[k] for k in ("big_mib", "many", "small")}
    if not rebuild and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        print(f"reusing images in {root}")
        return work
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    started = time.monotonic()
    images.make_bench_big_tree(root / "big", size_mib=sizes["big_mib"])
    images.make_bench_folders_tree(work.folders, many=sizes["many"], small=sizes["small"])
    images.build_windows_point(work.repo, root / "big", machine="benchwin", when=WHEN, fmt="vhdx")
    images.build_linux_point(work.repo, root / "big", machine="benchlin", when=WHEN, fmt="qcow2")
    images.build_bench_folders_point(work.repo, work.folders, machine="benchdirs", when=WHEN)
    stamp.write_text(json.dumps(wanted))
    print(f"built images in {time.monotonic() - started:.1f} s into {root}")
    return work


# -- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def openflr_server(work: Work, name: str = "data") -> Iterator[tuple[str, int]]:
    """``openflr serve --http`` on a free loopback port; yields its API URL and process id."""
    data = work.root / name
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    subprocess.run(
        [PYTHON, "-m", "openflr", "user", "add", USER, "--data-dir", data, "--password-stdin"],
        input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    command = [
        PYTHON, "-m", "openflr", "serve", "--http", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data), "--repository", str(work.repo), "--flr-root", str(data / "flr"),
    ]  # fmt: skip
    log = (data / "server.log").open("ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    try:
        _wait_until_up(api + "/", process)
        yield api, process.pid
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@contextmanager
def sendfile_server(path: Path) -> Iterator[str]:
    """The bare sendfile server of ``bench/sendfile_server.py``, serving ``path``."""
    port = free_port()
    script = PROJECT / "bench" / "sendfile_server.py"
    process = subprocess.Popen(
        [PYTHON, str(script), str(path), str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}/file"
    finally:
        process.terminate()
        process.wait(10)


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"openflr serve ended with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("openflr serve did not answer within 60 s")


# -- the API, as a client uses it ----------------------------------------------------------------


class Client:
    """One logon session: restore points by machine, mounts, listings."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.http = httpx.Client(timeout=DEADLINE, headers={"Accept": "application/json"})
        reply = self.http.post(f"{api}/sessionMngr/?v=latest", auth=(USER, PASSWORD))
        reply.raise_for_status()
        self.token = reply.headers["X-RestSvcSessionId"]
        self.session_id = str(reply.json().get("SessionId", ""))
        self.http.headers["X-RestSvcSessionId"] = self.token

    def point_id(self, machine: str) -> str:
        refs = self.http.get(f"{self.api}/agents/agentRestorePoints").json()["Refs"]
        href = next(r["Href"] for r in refs if r["Name"].startswith(machine + "@"))
        return str(href.rsplit("/", 1)[1])

    def mount(self, point: str) -> str:
        """Mount a restore point and wait for its task; return the mount's URL."""
        task = self.http.post(f"{self.api}/agents/agentRestorePoints/{point}/mounts").json()
        deadline = time.monotonic() + DEADLINE
        while task["State"] != "Finished":
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount task {task['TaskId']} did not finish")
            time.sleep(0.005)
            task = self.http.get(task["Href"]).json()
        if not task["Result"]["Success"]:
            raise RuntimeError(f"mount failed: {task['Result']['Message']}")
        return str(next(link["Href"] for link in task["Links"] if link["Rel"] == "Related"))

    def unmount(self, mount_url: str) -> None:
        self.http.delete(mount_url).raise_for_status()

    def logoff(self) -> None:
        if self.session_id:
            self.http.delete(f"{self.api}/logonSessions/{self.session_id}")
        self.http.close()


def curl(url: str, token: str | None = None, out: str = "/dev/null") -> tuple[int, float]:
    """Fetch a URL with curl; return the bytes received and curl's own total time."""
    command = ["curl", "-sS", "--fail", "-o", out, "-w", "%{size_download} %{time_total}", url]
    if token:
        command[1:1] = ["-H", f"X-RestSvcSessionId: {token}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, check=True)
    size, seconds = done.stdout.split()
    return int(size), float(seconds)


def timed(command: list[str], **kwargs: Any) -> float:
    """Wall time of a command, start of the process to its end."""
    started = time.perf_counter()
    subprocess.run(command, check=True, timeout=DEADLINE, **kwargs)
    return time.perf_counter() - started


# -- server memory -------------------------------------------------------------------------------


class PeakRss:
    """The server's peak resident memory above where it stood when the measurement began.

    The kernel keeps the peak (``VmHWM``); writing 5 to ``clear_refs`` resets it to the current
    resident size, so the peak read afterwards belongs to this measurement alone.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _field(self, name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {name} for process {self.pid}")

    def __enter__(self) -> PeakRss:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.before = self._field("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = self._field("VmHWM") - self.before


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MachineBusy:
    """How many of the machine's cores were busy (not idle) while the block ran, from /proc/stat.

    Counts everything: the server, the clients, and the kernel's work for both (on loopback the
    receiving side of TCP runs in the sender's softirq, charged to no process's own time).
    """

    cores = 0.0

    @staticmethod
    def _ticks() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return sum(fields) - idle, sum(fields)

    def __enter__(self) -> MachineBusy:
        self._before = self._ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = self._ticks()
        share = (busy - self._before[0]) / max(1, total - self._before[1])
        self.cores = share * (os.cpu_count() or 1)


def children_cpu_seconds() -> float:
    """User plus system CPU time of the finished child processes (the curl clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- figures -------------------------------------------------------------------------------------


def ratio_figure(
    figure: str, case: str, ours: float, base: float, unit: str, base_name: str, goal: str,
    ratio: float, **raw: Any,
) -> Figure:  # fmt: skip
    bound = float(goal.split()[-1])
    met = ratio >= bound if goal.startswith(">=") else ratio <= bound
    return Figure(figure, case, ours, base, unit, base_name, ratio, goal, met, raw)


def measure_downloads(
    work: Work, api: str, pid: int, reps: int, results: list[Figure], memory: list[float]
) -> dict[str, float]:
    """Download ratio against sendfile and cat; returns openflr's speed per image (MB/s)."""
    size = work.big_file.stat().st_size
    cat = statistics.median(
        size / timed(["cat", str(work.big_file)], stdout=subprocess.DEVNULL) / 1e6
        for _ in range(reps)
    )
    client = Client(api)
    speeds: dict[str, float] = {}
    try:
        for machine, path in (
            ("benchwin", "C:/bench/big.bin"),
            ("benchlin", "/home/user/bench/big.bin"),
        ):
            mount = client.mount(client.point_id(machine))
            url = f"{mount}/{path}?action=download"
            runs: list[float] = []
            baseline_runs: list[float] = []
            server_cpu = client_cpu = 0.0
            with sendfile_server(work.big_file) as baseline_url:
                for rep in range(reps):
                    # Each openflr download right after a sendfile one: this machine's speed
                    # drifts within minutes, and the ratio is taken pair by pair.
                    baseline_runs.append(size / curl(baseline_url)[1] / 1e6)
                    cpu_before, children_before = cpu_seconds(pid), children_cpu_seconds()
                    with PeakRss(pid) as rss:
                        got, seconds = curl(url, client.token)
                    server_cpu += cpu_seconds(pid) - cpu_before
                    client_cpu += children_cpu_seconds() - children_before
                    if got != size:
                        raise RuntimeError(f"{machine}: downloaded {got} bytes, not {size}")
                    runs.append(size / seconds / 1e6)
                    if rep == 0:
                        memory.append(rss.growth)
            # CPU time per wall second: how many of the cores one download keeps busy.
            wall = sum(size / (r * 1e6) for r in runs)
            speed = statistics.median(runs)
            speeds[machine] = speed
            sendfile = statistics.median(baseline_runs)
            ratio = statistics.median(o / b for o, b in zip(runs, baseline_runs, strict=True))
            case = "NTFS in VHDX" if machine == "benchwin" else "ext4 in QCOW2"
            results.append(ratio_figure(
                "download ratio", case, speed, sendfile, "MB/s", "bare sendfile HTTP server",
                ">= 0.5", ratio, runs_mb_s=runs, sendfile_runs_mb_s=baseline_runs, cat_mb_s=cat,
                ratio_to_cat=speed / cat, file_bytes=size,
                server_cores=server_cpu / wall, curl_cores=client_cpu / wall,
            ))  # fmt: skip
            client.unmount(mount)
    finally:
        client.logoff()
    return speeds


def measure_peer(work: Work, api: str, reps: int, results: list[Figure]) -> None:
    """Logon + mount + download to a file, against ``target-fs cp`` of the same file.

    Each side starts alike, untimed: the other side's output written out to disk (``sync``),
    and the image in the page cache (read once; the kernel here reclaims pages not used for a
    while). Otherwise whichever side ran first would read the image from disk for the other,
    and the other would share the disk with the first one's writeback. Writing 1 GiB to this
    disk takes 1.2 to 3.5 s from one run to the next, so each side runs ``reps`` times and the
    ratio is of the medians.
    """
    out = work.root / "peer"
    cases = (
        ("NTFS in VHDX", "benchwin", "C:/bench/big.bin", work.win_image, "/fs0/bench/big.bin"),
        ("ext4 in QCOW2", "benchlin", "/home/user/bench/big.bin", work.lin_image,
         "/fs1/home/user/bench/big.bin"),
    )  # fmt: skip
    for case, machine, path, image, peer_path in cases:
        runs: list[float] = []
        peer_runs: list[float] = []
        steps: dict[str, list[float]] = {"logon_s": [], "mount_s": [], "download_s": []}
        for _ in range(reps):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            _start_alike(image)
            started = time.perf_counter()
            client = Client(api)
            logged_on = time.perf_counter()
            mount = client.mount(client.point_id(machine))
            mounted = time.perf_counter()
            curl(f"{mount}/{path}?action=download", client.token, str(out / "openflr.bin"))
            ended = time.perf_counter()
            runs.append(ended - started)
            steps["logon_s"].append(logged_on - started)
            steps["mount_s"].append(mounted - logged_on)
            steps["download_s"].append(ended - mounted)
            client.unmount(mount)
            client.logoff()
            _same_bytes(out / "openflr.bin", work.big_file)

            _start_alike(image)
            peer_runs.append(timed(
                [TARGET_FS, "-q", str(image), "cp", peer_path, "-o", str(out / "peer")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            _same_bytes(out / "peer" / "big.bin", work.big_file)
        ours, peer = statistics.median(runs), statistics.median(peer_runs)
        results.append(ratio_figure(
            "peer ratio", case, ours, peer, "s", "target-fs IMAGE cp PATH (dissect.target)",
            "<= 0.5", ours / peer, runs_s=runs, target_fs_runs_s=peer_runs, **steps,
        ))  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)


def _start_alike(image: Path) -> None:
    """Write every dirty page out, then read the image once into the page cache."""
    os.sync()
    with image.open("rb", buffering=0) as fh:
        while fh.read(4 * MIB):
            pass


def _same_bytes(got: Path, want: Path) -> None:
    if _sha256(got) != _sha256(want):
        raise RuntimeError(f"{got} differs from {want}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


_TARGET_OPEN = """
import sys, time, logging
logging.disable(logging.CRITICAL)
from dissect.target import Target
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    Target.open(sys.argv[1])
    times.append(time.perf_counter() - started)
print(" ".join(map(str, times)))
"""


def measure_mount(work: Work, reps: int, results: list[Figure]) -> None:
    """POST mounts to task Finished, against dissect's ``Target.open`` of the same image.

    Cold: the first mount of a server just started, against the first ``Target.open`` in a
    process that has imported dissect.target (both load the readers they need on first use).
    Warm: the median of the mounts and opens that follow in the same process.
    """
    for case, machine, image in (
        ("NTFS+FAT32 in VHDX", "benchwin", work.win_image),
        ("ext2+ext4 in QCOW2", "benchlin", work.lin_image),
    ):
        with openflr_server(work, "data-mount") as (api, _pid):
            client = Client(api)
            point = client.point_id(machine)
            runs = []
            for _ in range(reps + 1):
                started = time.perf_counter()
                mount = client.mount(point)
                runs.append(time.perf_counter() - started)
                client.unmount(mount)
            client.logoff()
        done = subprocess.run(
            [PYTHON, "-c", _TARGET_OPEN, str(image), str(reps + 1)],
            capture_output=True, text=True, check=True, timeout=DEADLINE,
        )  # fmt: skip
        peer_runs = [float(t) for t in done.stdout.split()]
        for kind, ours, peer in (
            ("cold", runs[0], peer_runs[0]),
            ("warm", statistics.median(runs[1:]), statistics.median(peer_runs[1:])),
        ):
            results.append(ratio_figure(
                f"mount ratio ({kind})", case, ours, peer, "s",
                f"dissect Target.open, {kind}", "<= 0.3", ours / peer,
                runs_s=runs, target_open_runs_s=peer_runs,
            ))  # fmt: skip


def measure_folders(
    work: Work, api: str, pid: int, sizes: dict[str, int], results: list[Figure],
    memory: list[float], wanted: set[str],
) -> None:  # fmt: skip
    """First listing, paging and zip on the folders point."""
    client = Client(api)
    try:
        mount = client.mount(client.point_id("benchdirs"))
        many = f"{mount}//{images.BENCH_MANY_DIR}?action=listAll&pageSize=1000"
        pages = -(-sizes["many"] // 1000)
        if "listing" in wanted or "paging" in wanted:
            started = time.perf_counter()
            first = client.http.get(f"{many}&page=1")
            first_listing = time.perf_counter() - started
            first.raise_for_status()
            if "listing" in wanted:
                ls = statistics.median(
                    timed(["ls", "-f", str(work.folders / images.BENCH_MANY_DIR)],
                          stdout=subprocess.DEVNULL)
                    for _ in range(5)
                )  # fmt: skip
                results.append(ratio_figure(
                    "first listing", f"{sizes['many']:,} files, ext4", first_listing, ls, "s",
                    "ls -f of the same folder on the host", "<= 10", first_listing / ls,
                    page_size=1000,
                ))  # fmt: skip
            if "paging" in wanted:
                last = min(100, pages)
                times = {1: [], last: []}  # type: dict[int, list[float]]
                for _ in range(7):
                    for page in (1, last):
                        started = time.perf_counter()
                        reply = client.http.get(f"{many}&page={page}")
                        times[page].append(time.perf_counter() - started)
                        reply.raise_for_status()
                one, hundred = statistics.median(times[1]), statistics.median(times[last])
                results.append(ratio_figure(
                    "paging", f"page {last} vs page 1 of {sizes['many']:,}", hundred, one, "s",
                    "page 1 of the same listing", "<= 1.5", hundred / one,
                    page_1_runs_s=times[1], page_n_runs_s=times[last],
                ))  # fmt: skip

        if "zip" in wanted or "memory" in wanted:
            measure_zip(work, client, mount, pid, sizes, results, memory)
        client.unmount(mount)
    finally:
        client.logoff()


def measure_zip(
    work: Work, client: Client, mount: str, pid: int, sizes: dict[str, int],
    results: list[Figure], memory: list[float],
) -> None:  # fmt: skip
    count = sizes["small"]
    url = f"{mount}//{images.BENCH_SMALL_DIR}?action=download"
    with tempfile.TemporaryDirectory(dir=work.root) as tmp:
        archive = Path(tmp) / "openflr.zip"
        with PeakRss(pid) as rss:
            _, first = curl(url, client.token, str(archive))
        memory.append(rss.growth)
        with zipfile.ZipFile(archive) as check:
            names = [n for n in check.namelist() if not n.endswith("/")]
            if len(names) != count or check.testzip() is not None:
                raise RuntimeError(f"zip holds {len(names)} files, not {count}, or is damaged")
        runs = [first] + [curl(url, client.token)[1] for _ in range(2)]
        zips = []
        for i in range(3):
            zips.append(timed(
                ["zip", "-q", "-r", "-0", str(Path(tmp) / f"host{i}.zip"), images.BENCH_SMALL_DIR],
                cwd=work.folders,
            ))  # fmt: skip
    ours, host = count / statistics.median(runs), count / statistics.median(zips)
    results.append(ratio_figure(
        "zip", f"{count:,} small files, ext4", ours, host, "files/s", "zip -r -0 on the host",
        ">= 0.5", ours / host, openflr_runs_s=runs, zip_runs_s=zips,
    ))  # fmt: skip


def parallel_downloads(url: str, token: str | None, clients: int, size: int) -> float:
    """Seconds ``clients`` curls at once take to download ``url``, each checked whole."""
    got: list[int] = []

    def one() -> None:
        got.append(curl(url, token)[0])

    threads = [threading.Thread(target=one) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    seconds = time.perf_counter() - started
    if got != [size] * clients:
        raise RuntimeError(f"parallel downloads of {url} got {got}, not {clients} x {size}")
    return seconds


def sendfile_concurrency(work: Work, clients: int) -> dict[str, float]:
    """The same measure on the bare sendfile server: what the machine itself allows.

    The clients (curl) run on the same cores as the server, so this ratio is the ceiling any
    server reaches here; openflr's is set beside it.
    """
    size = work.big_file.stat().st_size
    with sendfile_server(work.big_file) as url:
        with MachineBusy() as one_busy:
            one = size / curl(url)[1] / 1e6
        with MachineBusy() as parallel_busy:
            total = clients * size / parallel_downloads(url, None, clients, size) / 1e6
    return {
        "sendfile_one_mb_s": one,
        "sendfile_parallel_mb_s": total,
        "sendfile_ratio": total / one,
        "sendfile_one_busy_cores": one_busy.cores,
        "sendfile_parallel_busy_cores": parallel_busy.cores,
    }


def measure_concurrency(
    work: Work, api: str, pid: int, clients: int, single: float, results: list[Figure]
) -> None:
    """Total throughput of parallel downloads of the big file from one mount.

    Also how busy the machine is during one download and during the parallel ones: where one
    download already keeps most cores busy, ``cores / one_busy_cores`` bounds what any number
    of downloads can add (``cpu_ceiling``), whatever the server.
    """
    client = Client(api)
    try:
        mount = client.mount(client.point_id("benchlin"))
        url = f"{mount}//home/user/bench/big.bin?action=download"
        size = work.big_file.stat().st_size
        with MachineBusy() as one_busy:
            one = size / curl(url, client.token)[1] / 1e6
        cpu_before, children_before = cpu_seconds(pid), children_cpu_seconds()
        with MachineBusy() as parallel_busy:
            seconds = parallel_downloads(url, client.token, clients, size)
        server_cores = (cpu_seconds(pid) - cpu_before) / seconds
        curl_cores = (children_cpu_seconds() - children_before) / seconds
        total = clients * size / seconds / 1e6
        transport = sendfile_concurrency(work, clients)
        results.append(ratio_figure(
            "concurrency", f"{clients} downloads, ext4 in QCOW2", total, single, "MB/s",
            "one download of the same file (download ratio)", ">= 1.5", total / single,
            seconds=seconds, server_cores=server_cores, curl_cores=curl_cores,
            cores=os.cpu_count(), one_mb_s=one, one_busy_cores=one_busy.cores,
            parallel_busy_cores=parallel_busy.cores,
            cpu_ceiling=(os.cpu_count() or 1) / max(one_busy.cores, 1e-9),
            of_sendfile_parallel=total / transport["sendfile_parallel_mb_s"], **transport,
        ))  # fmt: skip
        client.unmount(mount)
    finally:
        client.logoff()


# -- report --------------------------------------------------------------------------------------


def print_table(results: list[Figure]) -> None:
    rows = [("figure", "case", "openflr", "baseline", "ratio", "goal", "met", "baseline is")]
    for f in results:
        rows.append((
            f.figure, f.case, _num(f.openflr, f.unit), _num(f.baseline, f.unit),
            f"{f.ratio:.3g}", f.goal, "yes" if f.met else "NO", f.baseline_name,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for f in results:
        if f.raw:
            extra = ", ".join(f"{k}={_short(v)}" for k, v in f.raw.items())
            print(f"  {f.figure} / {f.case}: {extra}")


def _num(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s" if value >= 0.01 else f"{value * 1000:.2f} ms"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:,.0f} {unit}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return done.stdout.strip() + ("-dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, for a first look")
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="measure only these figures")
    parser.add_argument("--rebuild", action="store_true", help="build the images again")
    parser.add_argument("--work", type=Path, help="where images are built (kept for reuse)")
    args = parser.parse_args(argv)

    missing = [t for t in ("curl", "zip", "ls", "cat") if shutil.which(t) is None]
    missing += images.missing_tools()
    if missing:
        print(f"missing tools: {', '.join(missing)} (scripts/setup installs them)", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    wanted = set(args.only or FIGURES)
    started = time.monotonic()
    work = build(args.work or RESULTS / f"work-{mode}", sizes, args.rebuild)

    results: list[Figure] = []
    memory: list[float] = []
    with openflr_server(work) as (api, pid):
        single: dict[str, float] = {}
        if wanted & {"download", "memory", "concurrency"}:
            single = measure_downloads(work, api, pid, sizes["reps"], results, memory)
        if "peer" in wanted:
            measure_peer(work, api, sizes["reps"], results)
        if wanted & {"listing", "paging", "zip", "memory"}:
            measure_folders(work, api, pid, sizes, results, memory, wanted)
        if "concurrency" in wanted:
            measure_concurrency(work, api, pid, sizes["clients"], single["benchlin"], results)
    if "mount" in wanted:
        measure_mount(work, sizes["reps"], results)
    if "memory" in wanted and memory:
        cases = ("1 GiB-file download", "zip of the small-files folder")
        for case, growth in zip(cases, (max(memory[:-1] or [0.0]), memory[-1]), strict=True):
            results.append(ratio_figure(
                "memory", case, growth / MIB, 64.0, "MiB", "the 64 MiB budget",
                "<= 1", growth / MIB / 64.0, peak_growth_bytes=growth,
            ))  # fmt: skip
    if "download" not in wanted:
        results = [r for r in results if r.figure != "download ratio"]

    report = {
        "commit": commit(),
        "mode": mode,
        "sizes": sizes,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": round(time.monotonic() - started, 1),
        "figures": [asdict(r) for r in results],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}-{mode}-{report['commit']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"openflr benchmark, {mode} run, commit {report['commit']}, {report['seconds']} s")
    print_table(results)
    print(f"\nwritten to {out.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
