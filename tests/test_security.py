"""Trust: roles and restore scopes, extension rules, the audit log, failed-logon throttling,
size limits, read-only backups, and a fuzz of the published API description."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import PASSWORD, USER, Server, openflr, sha256_file
from tests.emclient import ApiFailure, EmClient, link
from tests.fixtures import images

OPERATOR = "operator-web"
OPERATOR_PASSWORD = "scoped and sound"


def message(response: httpx.Response) -> str:
    return str(etree.fromstring(response.content).get("Message"))


def add_user(server: Server, name: str, password: str, *options: str) -> None:
    result = openflr(
        "user",
        "add",
        name,
        "--data-dir",
        str(server.data_dir),
        "--password-stdin",
        *options,
        stdin=password + "\n",
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, repository: Path) -> Iterator[Server]:
    """A server of its own (its audit log is read whole) with a fast logon back-off."""
    server = Server(
        tmp_path_factory.mktemp("guarded"), [repository], "--logon-backoff-cap", "2"
    ).start()
    add_user(
        server,
        OPERATOR,
        OPERATOR_PASSWORD,
        "--role",
        "RestoreOperator",
        "--scope",
        "win*",
        "--scope",
        "LINBOX",
    )
    add_user(server, "no-binaries", "rules apply", "--deny-ext", ".bin")
    add_user(server, "text-only", "rules apply", "--allow-ext", "txt")
    yield server
    server.stop()


def test_restore_operator_sees_only_the_machines_of_the_scope(guarded: Server) -> None:
    client = EmClient(guarded.base)
    client.logon(OPERATOR, OPERATOR_PASSWORD)
    names = sorted(r["Name"].split("@")[0] for r in client.restore_points())
    assert names == ["linbox", "winbox"]

    computers = client.get(f"{client.base}agents/discoveredComputers")
    assert sorted(c["Name"] for c in computers) == ["linbox", "winbox"]
    backups = client.get(f"{client.base}backups")
    assert sorted(b["Name"] for b in backups) == ["linbox", "winbox"]
    found = client.parse(
        client.http.get(f"{client.base}query?type=AgentRestorePoint", headers=client._headers())
    )
    assert sorted(r["Name"].split("@")[0] for r in found["Refs"]) == ["linbox", "winbox"]


def test_restore_operator_gets_403_outside_the_scope(guarded: Server) -> None:
    admin = EmClient(guarded.base)
    admin.logon(USER, PASSWORD)
    volbox = admin.restore_point("volbox@")

    client = EmClient(guarded.base)
    client.logon(OPERATOR, OPERATOR_PASSWORD)
    for url, method in (
        (volbox["Href"], "GET"),
        (link(volbox, "Create", "AgentRestorePointMount"), "POST"),
    ):
        response = client.http.request(method, url, headers=client._headers())
        assert response.status_code == 403
        assert message(response) == (
            f"Access denied: volbox is outside the restore scope of {OPERATOR}."
        )
    client.mount(client.restore_point("winbox@"))  # inside the scope it works


def test_extension_rules_refuse_and_leave_out_files(guarded: Server, source_tree: Path) -> None:
    client = EmClient(guarded.base)
    client.logon("no-binaries", "rules apply")
    mount = client.mount(client.restore_point("winbox@"))
    refused = client.http.get(
        f"{mount['Href']}/C:/big/big.bin?action=download", headers=client._headers()
    )
    assert refused.status_code == 403
    assert message(refused) == (
        "Access denied: no-binaries may not download files like 'big.bin' (file extension rules)."
    )
    hello = client.http.get(
        f"{mount['Href']}/C:/hello.txt?action=download", headers=client._headers()
    )
    assert hello.content == (source_tree / images.HELLO_NAME).read_bytes()

    zipped = client.http.get(f"{mount['Href']}/C:/big?action=download", headers=client._headers())
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    assert archive.namelist() == ["openflr-errors.txt"]
    assert archive.read("openflr-errors.txt") == (
        b"big.bin: left out: its file extension is not allowed\n"
    )

    only_text = EmClient(guarded.base)
    only_text.logon("text-only", "rules apply")
    mount = only_text.mount(only_text.restore_point("winbox@"))
    empty = only_text.http.get(
        f"{mount['Href']}/C:/empty.bin?action=download", headers=only_text._headers()
    )
    assert empty.status_code == 403


def audit_events(server: Server) -> list[dict[str, object]]:
    result = openflr("audit", "--data-dir", str(server.data_dir), "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_step_is_audited_with_user_address_and_bytes(
    guarded: Server, source_tree: Path
) -> None:
    client = EmClient(guarded.base)
    with pytest.raises(ApiFailure):
        client.logon(USER, "not the password")
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("linbox@"))
    entry = client.get(f"{mount['Href']}//home/user/{images.BIG_NAME}")
    client.restore_for_download(entry)
    client.request("DELETE", link(mount, "Delete"), 204)
    client.logoff()
    session_id = client.logon_session["SessionId"]  # type: ignore[index]

    events = [e for e in audit_events(guarded) if e["session"] == session_id]
    assert [e["event"] for e in events] == [
        "logon",
        "mount",
        "restore",
        "download",
        "unmount",
        "logoff",
    ]
    assert all(e["user"] == USER and e["address"] == "127.0.0.1" for e in events)
    download = events[3]
    assert download["guest_path"] == f"/home/user/{images.BIG_NAME}"
    assert download["bytes_sent"] == (source_tree / images.BIG_NAME).stat().st_size
    assert download["outcome"] == "complete"
    assert str(events[1]["outcome"]).startswith("ok: Ok")

    failed = [e for e in audit_events(guarded) if e["event"] == "logon-failed"]
    assert failed and failed[-1]["user"] == USER

    lines = (guarded.data_dir / "audit.jsonl").read_text().splitlines()
    assert len(lines) == len(audit_events(guarded))
    assert (guarded.data_dir / "audit.jsonl").stat().st_mode & 0o077 == 0


def test_audit_prints_readable_lines(guarded: Server) -> None:
    result = openflr("audit", "--data-dir", str(guarded.data_dir), "--limit", "3")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 3
    assert all(" user=" in line and " address=" in line for line in result.stdout.splitlines())


def test_a_burst_of_wrong_passwords_slows_down_but_does_not_lock_out(guarded: Server) -> None:
    add_user(guarded, "victim", "the right one")
    url = f"{guarded.base}sessionMngr/?v=latest"
    codes = [httpx.post(url, auth=("victim", "wrong")).status_code for _ in range(20)]
    assert codes[:5] == [401] * 5  # mistakes cost nothing at first
    assert 429 in codes  # then the guesser has to wait
    refused = httpx.post(url, auth=("victim", "the right one"))
    if refused.status_code == 429:
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        assert message(refused).startswith("Too many failed logons; try again in ")
        time.sleep(int(refused.headers["retry-after"]) + 0.2)
    assert httpx.post(url, auth=("victim", "the right one")).status_code == 201


def test_oversized_bodies_and_headers_get_413_and_431(guarded: Server) -> None:
    client = EmClient(guarded.base)
    client.logon(USER, PASSWORD)
    point = client.restore_point("volbox@")
    url = link(point, "Create", "AgentRestorePointMount")
    big = client.http.post(
        url, content=b"<x>" + b" " * (2 << 20) + b"</x>", headers=client._headers()
    )
    assert big.status_code == 413
    assert message(big) == "The request body is larger than 1 MiB."

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    streamed = client.http.post(url, content=chunks(), headers=client._headers())
    assert streamed.status_code == 413

    huge = httpx.get(guarded.base, headers={"X-Padding": "a" * 20000})
    assert huge.status_code == 431
    assert message(huge) == "The request headers are larger than 16 KiB."


def test_backups_are_opened_read_only_and_survive_a_kill(tmp_path: Path, repository: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "linbox", repo / "linbox")
    images_before = {p: sha256_file(p) for p in repo.rglob("*.qcow2")}
    server = Server(tmp_path / "data", [repo]).start()
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("linbox@"))
    assert server.process is not None
    fd_dir = Path(f"/proc/{server.process.pid}/fd")
    opened = [fd for fd in os.listdir(fd_dir) if os.readlink(fd_dir / fd).startswith(str(repo))]
    assert opened
    for fd in opened:
        flags = int(
            (Path(f"/proc/{server.process.pid}/fdinfo") / fd)
            .read_text()
            .split("flags:")[1]
            .split()[0],
            8,
        )
        assert flags & os.O_ACCMODE == os.O_RDONLY

    url = f"{mount['Href']}//home/user/{images.BIG_NAME}?action=download"
    with client.http.stream("GET", url, headers=client._headers()) as response:
        next(response.iter_bytes(1 << 20))
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    assert {p: sha256_file(p) for p in repo.rglob("*.qcow2")} == images_before
    server.start()  # a restart cleans up what the killed server left mounted
    server.stop()


def test_a_backup_truncated_while_mounted_gives_errors_not_hangs(
    tmp_path: Path, repository: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "volbox", repo / "volbox")
    server = Server(tmp_path / "data", [repo]).start()
    try:
        client = EmClient(server.base)
        client.logon(USER, PASSWORD)
        mount = client.mount(client.restore_point("volbox@"))
        with (next(repo.rglob("volume0.img"))).open("r+b") as fh:
            fh.truncate(1 << 20)  # the backup storage lost almost everything under the mount
        root = mount["FSRoots"][0]["Href"]
        for path in (
            f"{images.BIG_NAME}?action=download",
            "deep?action=listAll",
            "many?action=download",
        ):
            started = time.monotonic()
            try:
                response = client.http.get(f"{root}{path}", headers=client._headers(), timeout=30)
                if response.status_code != 200:
                    assert response.status_code in (404, 500)
                    assert etree.fromstring(response.content).get("StatusCode")
            except httpx.RemoteProtocolError:
                pass  # a download broken off mid-way is how HTTP says "this file is damaged"
            assert time.monotonic() - started < 30
        assert httpx.get(server.base).status_code == 200  # still serving
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_fuzzing_the_published_api_finds_no_server_error(guarded: Server) -> None:
    pytest.importorskip("schemathesis", reason="schemathesis is a test dependency")
    token = httpx.post(f"{guarded.base}sessionMngr/?v=latest", auth=(USER, PASSWORD)).headers[
        "X-RestSvcSessionId"
    ]
    schema = guarded.base.replace("/api/", "/openapi.json")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        schema,
        "-H",
        f"X-RestSvcSessionId: {token}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "20261204",
        "--phases",
        "examples,fuzzing",
        "--workers",
        "2",
    ]
    # Its own working folder: schemathesis keeps a cache of what it found where it runs.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, cwd=guarded.data_dir
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("Test cases:")[-1]
    assert "Traceback" not in guarded.log()


@pytest.mark.parametrize(
    "trick",
    [
        "C:/..%2F..%2Fetc/passwd",
        "C:/%2e%2e/%2e%2e/etc/passwd",
        "C:\\..\\..\\Windows",
        "C:/hello.txt%00.png",
        "C:/%C0%AE%C0%AE/%C0%AE%C0%AE/etc",
        "C:/../D:/fatdata/../../C:/hello.txt/..",
        "D:/../../",
        "//etc/passwd",
        "%2Fetc%2Fpasswd",
        "C:C:/hello.txt",
        "\\\\server\\share\\file",
    ],
)
def test_a_guest_path_never_leaves_its_mount(server: Server, trick: str) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("winbox@"))
    # http.client sends the path exactly as written: HTTP libraries would resolve the dot
    # segments themselves and never send the trick.
    target = httpx.URL(mount["Href"])
    connection = http.client.HTTPConnection(target.host, target.port, timeout=30)
    connection.request(
        "GET", f"{target.raw_path.decode()}/{trick}?action=download", headers=client._headers()
    )
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status in (400, 404), (trick, response.status)
    assert etree.fromstring(body).get("StatusCode") in ("400", "404")
    client.logoff()


@pytest.mark.parametrize("depth", [40, 5000])
def test_deeply_nested_bodies_get_400(server: Server, depth: int) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("volbox@"))
    url = f"{mount['FSRoots'][0]['Href']}hello.txt?action=restore"
    headers = {**client._headers(), "Accept": "application/xml"}
    deep_xml = b"<FileRestoreSpec>" + b"<a>" * depth + b"</a>" * depth + b"</FileRestoreSpec>"
    deep_json = b'{"a":' * depth + b"{}" + b"}" * depth
    for body in (deep_xml, deep_json):
        response = client.http.post(url, content=body, headers=headers)
        assert response.status_code == 400, body[:40]
        assert etree.fromstring(response.content).get("StatusCode") == "400"
    client.logoff()


def test_a_corrupt_backup_file_is_listed_and_its_mount_fails_saying_why(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "broken.vbk").write_bytes(b"not a Veeam backup at all" * 1000)
    server = Server(tmp_path / "data", [repo]).start()
    try:
        client = EmClient(server.base)
        client.logon(USER, PASSWORD)
        point = client.restore_point("broken@")
        task = client.wait(
            client.parse(
                client.request("POST", link(point, "Create", "AgentRestorePointMount"), 202)
            )
        )
        assert task["State"] == "Finished"
        assert task["Result"]["Success"] == "false"
        assert (
            task["Result"]["Message"].startswith("Cannot mount broken@")
            and "broken.vbk: not a readable Veeam backup file" in task["Result"]["Message"]
        )
    finally:
        server.stop()


def test_the_audit_log_survives_a_restart(tmp_path: Path, repository: Path) -> None:
    server = Server(tmp_path / "data", [repository]).start()
    try:
        client = EmClient(server.base)
        client.logon(USER, PASSWORD)
        client.logoff()
        before = audit_events(server)
        server.stop()
        server.start()
        assert audit_events(server)[: len(before)] == before
        assert [e["event"] for e in before] == ["logon", "logoff"]
    finally:
        server.stop()
