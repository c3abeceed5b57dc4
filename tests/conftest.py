"""Shared fixtures: real disk images built by real tools, real samples, a real server over HTTP."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.emclient import EmClient, walk_to
from tests.fixtures import images

PROJECT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OPENFLR_SHARED", PROJECT.parent / "shared"))
SAMPLES = SHARED / "samples"
SAMPLE_FILES = ("linux-agent-volume.vbk", "windows-agent-disk.vbk", "windows-agent-increment.vib")

USER = "operator"
PASSWORD = "correct horse battery staple"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def openflr(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``openflr`` command the way a user does."""
    return subprocess.run(
        [sys.executable, "-m", "openflr", *args],
        input=stdin,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


class Server:
    """``openflr serve --http`` in a child process, on a free loopback port."""

    def __init__(
        self, data_dir: Path, repositories: list[Path], *extra: str, tls: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.repositories = repositories
        self.extra = extra
        self.tls = tls  # HTTPS on a self-signed certificate instead of plain HTTP
        self.port = free_port()
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/api/"
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        added = openflr(
            "user",
            "add",
            USER,
            "--data-dir",
            str(self.data_dir),
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        assert added.returncode == 0, added.stderr
        command = [
            sys.executable,
            "-m",
            "openflr",
            "serve",
            *([] if self.tls else ["--http"]),
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            *self.extra,
        ]
        for repository in self.repositories:
            command += ["--repository", str(repository)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(self.base, timeout=1, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def require_tools(tools: tuple[str, ...] | None = None) -> None:
    """Skip (or, in CI, fail) when a tool the images need is missing."""
    missing = images.missing_tools(tools) if tools is not None else images.missing_tools()
    if missing:
        message = f"image tools missing: {', '.join(missing)} (scripts/setup installs them)"
        if os.environ.get("OPENFLR_REQUIRE_IMAGE_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)


def logged_on(server: Server) -> Iterator[EmClient]:
    """A JSON client logged on to a server, logged off afterwards (for fixtures to yield from)."""
    client = EmClient(server.base, as_json=True)
    client.logon(USER, PASSWORD)
    yield client
    client.logoff()
    client.close()


def mount_point(client: EmClient, machine: str) -> dict[str, Any]:
    """Mount the fixtures' restore point of a machine (all are at 2026-11-30 22:00:00)."""
    return client.mount(client.restore_point(f"{machine}@2026-11-30 22:00:00"))


def download(client: EmClient, mount: dict[str, Any], guest_path: str) -> bytes:
    """Restore a guest file for download, following links only, and return its bytes."""
    return bytes(client.restore_for_download(walk_to(client, mount, guest_path)).content)


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files that go into every image: 2,500 small files, a 48 MiB file, awkward names."""
    require_tools()
    root = tmp_path_factory.mktemp("source") / "tree"
    images.make_source_tree(root)
    return root


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory, source_tree: Path) -> Path:
    """A repository of disk-image restore points made by mkfs, mkntfs, sgdisk and qemu-img."""
    repo = tmp_path_factory.mktemp("repository")
    images.build_windows_point(repo, source_tree, fmt="vhdx")
    images.build_linux_point(repo, source_tree, fmt="qcow2")
    images.build_volume_point(repo, source_tree, fmt="raw")
    images.build_mbr_point(repo, source_tree, fmt="vmdk")
    images.build_odd_names_point(repo, fmt="raw")
    images.build_huge_file_point(repo)
    # The same kind of volume, marked as a virtual machine's: it is served under /vmRestorePoints.
    images.build_volume_point(repo, source_tree, machine="vmbox", fmt="vmdk")
    (repo / "vmbox" / "machine.json").write_text('{"type": "vm"}\n')
    return repo


@pytest.fixture(scope="session")
def sample_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Veeam agent backups from ../shared/samples, unpacked (read-only)."""
    if not all((SAMPLES / f"{name}.gz").is_file() for name in SAMPLE_FILES):
        pytest.skip(f"the real Veeam samples are not at {SAMPLES} (../shared is absent)")
    repo = tmp_path_factory.mktemp("samples")
    for name in SAMPLE_FILES:
        with gzip.open(SAMPLES / f"{name}.gz") as src, (repo / name).open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        (repo / name).chmod(0o444)
    return repo


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, repository: Path) -> Iterator[Server]:
    """One server over the image repository, shared by the tests that only read."""
    srv = Server(tmp_path_factory.mktemp("data"), [repository]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def sample_server(
    tmp_path_factory: pytest.TempPathFactory, sample_repository: Path
) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("sample-data"), [sample_repository]).start()
    yield srv
    srv.stop()
