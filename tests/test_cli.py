"""The command line as a user runs it: user management, serving the shipped sample, TLS."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, openflr
from tests.emclient import EmClient


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "openflr", "serve", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, **kwargs: object) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(url, timeout=1, **kwargs)  # type: ignore[arg-type]
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(log.read_text())


def test_user_add_creates_then_updates(tmp_path: Path) -> None:
    first = openflr(
        "user", "add", "alice", "--data-dir", str(tmp_path), "--password-stdin", stdin="s3cret\n"
    )
    assert first.returncode == 0 and first.stdout == "user alice created\n"
    second = openflr(
        "user", "add", "alice", "--data-dir", str(tmp_path), "--password-stdin", stdin="other\n"
    )
    assert second.returncode == 0 and second.stdout == "user alice updated\n"
    database = (tmp_path / "openflr.db").read_bytes()
    assert b"$argon2id$" in database and b"s3cret" not in database and b"other" not in database


def test_user_add_refuses_bad_names_and_empty_passwords(tmp_path: Path) -> None:
    bad = openflr(
        "user", "add", "a\\b", "--data-dir", str(tmp_path), "--password-stdin", stdin="x\n"
    )
    assert bad.returncode == 2 and "invalid user name" in bad.stderr
    empty = openflr(
        "user", "add", "bob", "--data-dir", str(tmp_path), "--password-stdin", stdin="\n"
    )
    assert empty.returncode == 2 and "the password is empty" in empty.stderr


def test_serve_without_repository_serves_the_shipped_sample(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    process = start(["--http", "--port", str(port), "--data-dir", str(tmp_path / "d")], log)
    try:
        base = f"http://127.0.0.1:{port}/api/"
        wait_for(base, process, log)
        output = log.read_text()
        assert f"API:  {base}" in output
        match = re.search(r"User: (\S+)\s+Password: (\S+)", output)
        assert match is not None, output

        client = EmClient(base)
        client.logon(match.group(1), match.group(2))
        names = sorted(r["Name"] for r in client.restore_points())
        assert names == ["demo-linux@2026-11-30 22:00:00", "demo-pc@2026-11-30 22:00:00"]
        mount = client.mount(client.restore_point("demo-pc@"))
        notes = client.http.get(
            f"{mount['Href']}/C:/notes.txt?action=download", headers=client._headers()
        )
        assert notes.content == b"Restored by openflr.\n"
        client.logoff()
    finally:
        process.terminate()
        process.wait(10)


def test_serve_defaults_to_tls_with_a_generated_certificate(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "d"
    log = tmp_path / "serve.log"
    process = start(["--port", str(port), "--data-dir", str(data)], log)
    try:
        base = f"https://127.0.0.1:{port}/api/"
        wait_for(base, process, log, verify=False)
        cert = data / "tls" / "cert.pem"
        assert cert.is_file() and (data / "tls" / "key.pem").stat().st_mode & 0o077 == 0
        context = ssl.create_default_context(cafile=str(cert))
        password = (data / "initial-password").read_text().strip()
        response = httpx.post(
            f"{base}sessionMngr/?v=latest", auth=("restore", password), verify=context
        )
        assert response.status_code == 201
        cookie = response.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
        with pytest.raises(httpx.HTTPError):
            httpx.get(base.replace("https", "http"), timeout=2)
    finally:
        process.terminate()
        process.wait(10)


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    result = openflr(
        "serve", "--http", "--data-dir", str(tmp_path), "--repository", str(tmp_path / "nope")
    )
    assert result.returncode == 2
    assert f"repository {tmp_path / 'nope'} is not a folder" in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.10", False),
        ("backup.example", False),
    ],
)
def test_plain_http_is_called_out_outside_loopback(host: str, loopback: bool) -> None:
    from openflr.cli import is_loopback

    assert is_loopback(host) is loopback
