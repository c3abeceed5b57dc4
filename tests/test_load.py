"""Fifty clients at once, on loopback: every byte right, no request failing, memory bounded.

Bounded in count (50 clients, a fixed list of requests each) and in time (each request has a
timeout). Prints its figures: requests, bytes, errors, peak memory of the server.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import PASSWORD, USER, Server, sha256, sha256_file
from tests.emclient import EmClient
from tests.fixtures import images

CLIENTS = 50
PEAK_RSS_LIMIT_MIB = 512


def peak_rss_mib(server: Server) -> float:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_fifty_clients_at_once(tmp_path: Path, repository: Path, source_tree: Path) -> None:
    server = Server(tmp_path / "data", [repository]).start()
    expected = {
        name: sha256_file(source_tree / name)
        for name in (images.BIG_NAME, images.HELLO_NAME, images.DEEP_LEAF, "many/f01234.txt")
    }
    counted = {"requests": 0, "bytes": 0}
    lock = threading.Lock()

    def one_client(number: int) -> list[str]:
        client = EmClient(server.base, as_json=number % 2 == 1)
        client.http = httpx.Client(timeout=120)
        problems: list[str] = []
        requests = 0
        received = 0
        try:
            client.logon(USER, PASSWORD)
            mount = client.mount(client.restore_point("volbox@"))
            root = mount["FSRoots"][0]["Href"]
            requests += 5
            listing = client.list_pages(f"{root}many?action=listFiles&pageSize=1000")
            requests += 3
            if len(listing) != 2500:
                problems.append(f"client {number}: listed {len(listing)} files")
            for name, digest in expected.items():
                response = client.http.get(
                    f"{root}{name}?action=download", headers=client._headers()
                )
                requests += 1
                received += len(response.content)
                if response.status_code != 200 or sha256(response.content) != digest:
                    problems.append(f"client {number}: {name} -> {response.status_code}")
            client.logoff()
            requests += 1
        except Exception as exc:  # every failure is counted, none is allowed
            problems.append(f"client {number}: {type(exc).__name__}: {exc}")
        finally:
            client.close()
            with lock:
                counted["requests"] += requests
                counted["bytes"] += received
        return problems

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            problems = [p for result in pool.map(one_client, range(CLIENTS)) for p in result]
        elapsed = time.monotonic() - started
        peak = peak_rss_mib(server)
    finally:
        server.stop()
    print(
        f"\nload: {CLIENTS} clients, {counted['requests']} requests, "
        f"{counted['bytes'] / 2**20:.0f} MiB received, {len(problems)} errors, "
        f"{elapsed:.1f} s, server peak RSS {peak:.0f} MiB"
    )
    assert problems == []
    assert peak < PEAK_RSS_LIMIT_MIB
