"""What broke when someone tried hard: ids, races, leaks, damaged images, odd requests."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sqlite3
import struct
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from lxml import etree

from tests.conftest import PASSWORD, USER, Server, openflr, sha256, sha256_file
from tests.emclient import NS, EmClient, link, walk_to
from tests.fixtures import images

MIB = 1 << 20


def message(response: httpx.Response) -> str:
    return str(etree.fromstring(response.content).get("Message"))


def open_files(server: Server) -> list[str]:
    """The files (not sockets or pipes) the server process holds open."""
    assert server.process is not None
    folder = f"/proc/{server.process.pid}/fd"
    targets = []
    for fd in os.listdir(folder):
        try:
            targets.append(os.readlink(f"{folder}/{fd}"))
        except FileNotFoundError:
            continue
    return sorted(t for t in targets if t.startswith("/"))


def mount_task(client: EmClient, point: dict[str, object]) -> dict[str, object]:
    return client.parse(
        client.request("POST", link(point, "Create", "AgentRestorePointMount"), 202)
    )


def test_a_removed_task_number_is_never_reused_nor_cancels_another(server: Server) -> None:
    first = EmClient(server.base)
    first.logon(USER, PASSWORD)
    task = mount_task(first, first.restore_point("volbox@"))
    first.request("DELETE", task["Href"], 204)

    second = EmClient(server.base)
    second.logon(USER, PASSWORD)
    other = second.wait(mount_task(second, second.restore_point("volbox@")))
    assert other["TaskId"] != task["TaskId"]
    assert other["Result"]["Success"] == "true"
    assert other["Result"]["Message"].startswith("Ok")


def backup_files(server: Server, repository: Path) -> list[str]:
    """The files of the repository the server process holds open."""
    return [f for f in open_files(server) if f.startswith(str(repository) + "/")]


def mount_cycle(server: Server, log_off: bool) -> None:
    """Mount a VHDX, a QCOW2 and a VMDK point, then unmount each, or log off holding them."""
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    for machine in ("winbox@", "linbox@", "mbrbox@"):
        mount = client.mount(client.restore_point(machine))
        if not log_off:
            client.request("DELETE", link(mount, "Delete"), 204)
    client.logoff()
    client.close()


def test_logoff_and_unmount_close_every_backup_file(tmp_path: Path, repository: Path) -> None:
    server = Server(tmp_path / "data", [repository], "--keep-open", "0").start()
    try:
        for _ in range(3):
            mount_cycle(server, log_off=True)
            assert backup_files(server, repository) == []
            mount_cycle(server, log_off=False)
            assert backup_files(server, repository) == []
    finally:
        server.stop()


def test_a_remount_within_the_grace_period_reuses_the_open_backup_files(
    tmp_path: Path, repository: Path
) -> None:
    # 5 s: the unmount, the look at the open files and the remount fit in it on a busy machine.
    server = Server(tmp_path / "data", [repository], "--keep-open", "5").start()
    try:
        client = EmClient(server.base)
        client.logon(USER, PASSWORD)
        point = client.restore_point("linbox@")
        client.request("DELETE", link(client.mount(point), "Delete"), 204)
        held = backup_files(server, repository)
        assert held, "an unmounted point stays open for the grace period"
        mount = client.mount(point)
        assert backup_files(server, repository) == held
        assert f"restore point {point['UID'].rsplit(':', 1)[1]} mounted again while kept open" in (
            server.log()
        )
        client.request("DELETE", link(mount, "Delete"), 204)
        client.logoff()

        deadline = time.monotonic() + 15
        while backup_files(server, repository) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backup_files(server, repository) == []
        assert "closed: idle" in server.log()
    finally:
        server.stop()


def test_logoff_closes_every_backup_file_after_the_grace_period(
    tmp_path: Path, repository: Path
) -> None:
    server = Server(tmp_path / "data", [repository], "--keep-open", "1").start()
    try:
        for log_off in (True, False):
            mount_cycle(server, log_off)
            deadline = time.monotonic() + 15
            while backup_files(server, repository) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert backup_files(server, repository) == []
    finally:
        server.stop()


def test_concurrent_mounts_of_one_point_all_succeed_with_their_own_numbers(
    server: Server,
) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    point = client.restore_point("volbox@")
    with ThreadPoolExecutor(8) as pool:
        tasks = list(pool.map(lambda _: client.wait(mount_task(client, point)), range(8)))
    assert all(t["Result"]["Success"] == "true" for t in tasks), tasks
    mounts = {link(t, "Related") for t in tasks}
    assert len(mounts) == 8
    client.logoff()


def test_concurrent_deletes_of_one_mount_succeed_once(server: Server) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("volbox@"))
    with ThreadPoolExecutor(5) as pool:
        codes = sorted(
            pool.map(
                lambda _: client.http.delete(mount["Href"], headers=client._headers()).status_code,
                range(5),
            )
        )
    assert codes == [204, 404, 404, 404, 404]
    client.logoff()


@pytest.mark.parametrize("number", ["%C2%B9", "%D9%A1", "1.0", "-1"])
def test_mount_ids_are_plain_ascii_numbers(server: Server, number: str) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    point = client.restore_point("volbox@")
    client.mount(point)
    response = client.http.get(
        f"{link(point, 'Down', 'AgentRestorePointMountList')}/{number}", headers=client._headers()
    )
    assert response.status_code == 404
    task = client.http.get(f"{client.base}tasks/task-{number}", headers=client._headers())
    assert task.status_code == 404
    client.logoff()


@pytest.mark.parametrize("path", ["C:/hello.txt:stream", "C:/big:x", "C:/$MFT", "C:/$Boot"])
def test_ntfs_streams_and_metadata_files_are_not_guest_files(server: Server, path: str) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("winbox@"))
    for query in ("action=download", "action=listAll"):
        response = client.http.get(f"{mount['Href']}/{path}?{query}", headers=client._headers())
        assert response.status_code == 404, (path, query)
    client.logoff()


def test_a_backup_file_gone_since_the_scan_fails_the_mount_with_a_reason_and_no_host_path(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "tree"
    images.make_small_tree(tree)
    repo = tmp_path / "repo"
    folder = images.build_volume_point(repo, tree, machine="gonebox")
    server = Server(tmp_path / "data", [repo]).start()
    try:
        client = EmClient(server.base, as_json=True)
        client.logon(USER, PASSWORD)
        point = client.restore_point("gonebox@")  # scanned while the file was there
        (folder / "volume0.img").unlink()
        task = client.parse(
            client.request("POST", link(point, "Create", "AgentRestorePointMount"), 202)
        )
        task = client.wait(task)
        message = task["Result"]["Message"]
        assert str(task["Result"]["Success"]).lower() == "false"
        assert "cannot be read (No such file or directory)" in message, message
        assert str(tmp_path) not in message

        # A mount that outlived a restart, its file gone meanwhile: the same, on the reopen.
        images.build_volume_point(repo, tree, machine="gonebox")
        mount = client.mount(point)
        server.stop()
        restarted = Server(tmp_path / "data", [repo])
        restarted.port, restarted.base = server.port, server.base
        server = restarted.start()
        (folder / "volume0.img").unlink()  # after the new server's scan, before the mount's use
        gone = client.request("GET", mount["Href"], 410)
        message = client.parse(gone)["Message"]
        assert "cannot be read (No such file or directory)" in message, message
        assert str(tmp_path) not in message
        assert "Traceback" not in server.log()
        client.logoff()
    finally:
        server.stop()


def test_a_name_that_is_no_utf8_is_audited(tmp_path: Path, repository: Path) -> None:
    """A download of ``latin1-\xe9.txt`` (a Linux name whose byte 0xE9 is no UTF-8) is in the
    audit table too: the database cannot store the surrogate the name is kept with, and the
    row was lost with a traceback (found by a test that read the log)."""
    server = Server(tmp_path / "data", [repository]).start()
    try:
        client = EmClient(server.base)
        client.logon(USER, PASSWORD)
        mount = client.mount(client.restore_point("oddbox@"))
        url = f"{mount['FSRoots'][0]['Href']}/latin1-%E9.txt?action=download"
        assert client.request("GET", url).content == images.ODD_NAMES["latin1-\udce9.txt"]
        client.logoff()
        listed = openflr("audit", "--data-dir", str(server.data_dir), "--json")
        events = [json.loads(line) for line in listed.stdout.splitlines()]
        downloads = [e for e in events if e["event"] == "download"]
        assert [e["guest_path"] for e in downloads] == ["/latin1-\\xe9.txt"]
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_folder_download_survives_names_no_zip_can_carry(server: Server) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("oddbox@"))
    response = client.http.get(
        f"{mount['FSRoots'][0]['Href']}?action=download", headers=client._headers()
    )
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert "latin1-\ufffd.txt" in names  # the byte 0xE9 is no UTF-8
    assert "back_slash.txt" in names  # a backslash would be a folder separator to unzip tools
    assert archive.read("latin1-\ufffd.txt") == images.ODD_NAMES["latin1-\udce9.txt"]
    notes = archive.read("openflr-errors.txt").decode()
    assert (
        'latin1-\ufffd.txt: stored under this name; the guest\'s name is "latin1-\\xe9.txt"'
        in notes
    )
    client.logoff()


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("from-1950.txt", "1950-01-01T00:00:00Z"),
        ("from-2100.txt", "2100-01-01T00:00:00Z"),
    ],
)
def test_ext4_times_before_1970_and_after_2038(server: Server, name: str, shown: str) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("oddbox@"))
    entry = walk_to(client, mount, f"/{name}")
    assert entry["ModifiedDateUTC"] == shown
    client.logoff()


def test_damaged_image_gives_errors_not_broken_downloads(
    tmp_path: Path, repository: Path, source_tree: Path
) -> None:
    image = next((repository / "volbox").rglob("volume0.img"))
    damaged = tmp_path / "repo" / "cutbox" / "2026-11-30T220000Z" / "volume0.img"
    damaged.parent.mkdir(parents=True)
    with image.open("rb") as src, damaged.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.truncate(image.stat().st_size * 6 // 10)  # the end of the volume is gone
    server = Server(tmp_path / "data", [tmp_path / "repo"]).start()
    try:
        client = EmClient(server.base)
        client.logon(USER, PASSWORD)
        mount = client.mount(client.restore_point("cutbox@"))
        root = mount["FSRoots"][0]["Href"]
        response = client.http.get(f"{root}?action=download", headers=client._headers())
        assert response.status_code == 200
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        assert archive.testzip() is None
        notes = archive.read("openflr-errors.txt").decode()
        assert notes.strip(), "a cut volume must report what it could not read"
        reported = notes

        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or name == "openflr-errors.txt" or name.startswith("lost+found"):
                continue
            if name.split("/")[0] in reported or name in reported:
                continue
            assert (
                sha256_file(source_tree / name)
                == __import__("hashlib").sha256(archive.read(name)).hexdigest()
            ), name

        big = walk_to(client, mount, f"/{images.BIG_NAME}")
        task = client.wait(
            client.parse(
                client.request(
                    "POST",
                    link(big, "Restore"),
                    202,
                    content=b"<FileRestoreSpec><ForDirectDownload/></FileRestoreSpec>",
                )
            )
        )
        if task["Result"]["Success"] == "false":
            assert (
                "truncated or damaged" in task["Result"]["Message"]
                or "damaged or unreadable" in task["Result"]["Message"]
            )
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_log_lines_cannot_be_forged_through_the_path(server: Server) -> None:
    forged = "FORGED openflr.sessions: logon session X started for user admin"
    request_id = httpx.get(f"{server.base}nothing%0A{forged.replace(' ', '%20')}").headers[
        "x-request-id"
    ]
    deadline = time.monotonic() + 5
    while f"request {request_id} " not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = server.log().splitlines()
    assert not any(line.startswith("FORGED") for line in lines)
    assert any("nothing%0AFORGED" in line for line in lines)


def test_head_works_wherever_get_does_and_405_says_what_is_allowed(server: Server) -> None:
    head = httpx.head(server.base)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0
    wrong = httpx.put(server.base)
    assert wrong.status_code == 405
    assert "GET" in wrong.headers["allow"]
    assert message(wrong) == "The PUT method is not supported on this resource."


def test_head_keeps_the_connection_for_the_next_request(server: Server) -> None:
    """HEAD on one keep-alive connection, then GET on it: the server must not wait for the
    body Content-Length announced, drop the connection, or log an error (found in review)."""
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            head = client.head(server.base)
            assert head.status_code == 200 and int(head.headers["content-length"]) > 0
        follow = client.get(server.base)
        assert follow.status_code == 200 and follow.content
    time.sleep(0.3)
    assert "Response content shorter than Content-Length" not in server.log()


def test_public_url_replaces_the_host_header_in_hrefs(tmp_path: Path, repository: Path) -> None:
    server = Server(
        tmp_path / "data", [repository], "--public-url", "https://flr.example.test:9398"
    ).start()
    try:
        response = httpx.get(server.base, headers={"Host": "evil.example:443"})
        root = etree.fromstring(response.content)
        hrefs = [e.get("Href") for e in root.iter(f"{NS}Link")]
        assert hrefs and all(h.startswith("https://flr.example.test:9398/api/") for h in hrefs)
    finally:
        server.stop()


def test_malformed_json_body_gets_a_json_error_without_accept(server: Server) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("volbox@"))
    response = httpx.post(
        f"{mount['FSRoots'][0]['Href']}hello.txt?action=restore",
        content=b'{"ForDirectDownload": ',
        headers={"X-RestSvcSessionId": client.token or ""},
    )
    assert response.status_code == 400
    assert response.json()["Message"].startswith("The JSON body is malformed")
    client.logoff()


def test_page_numbers_past_int32_are_refused(server: Server) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("volbox@"))
    response = client.http.get(
        f"{mount['FSRoots'][0]['Href']}?page=9223372036854775808", headers=client._headers()
    )
    assert response.status_code == 400
    assert message(response) == "page must be from 1 to 2147483647, not 9223372036854775808."
    client.logoff()


def _big_file_download(server: Server) -> tuple[EmClient, dict[str, Any], str]:
    """A client logged on to ``server`` with winbox mounted, the mount, and the download URL
    of the 48 MiB big file in it."""
    client = EmClient(server.base)
    client.http = httpx.Client(timeout=120, verify=False)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("winbox@"))
    return client, mount, f"{mount['Href']}/C:/{images.BIG_NAME}?action=download"


def _leave_after(url: str, token: str, count: int) -> int:
    """GET ``url``, take ``count`` bytes of the answer, then drop the connection with a reset,
    as a client that is killed does; returns the bytes taken."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        request = (
            f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"X-RestSvcSessionId: {token}\r\n\r\n"
        )
        sock.sendall(request.encode())
        got = 0
        while got < count:
            data = sock.recv(1 << 16)
            if not data:
                break
            got += len(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return got


def test_clients_that_leave_mid_download_leave_nothing_open(
    tmp_path: Path, repository: Path, source_tree: Path
) -> None:
    """Plain-HTTP downloads go out with sendfile from the image file, on descriptors of their
    own: clients that drop the connection a MiB into the 48 MiB file leave the server holding
    no more descriptors than before, the next download is byte-exact, and each is audited as
    interrupted."""
    server = Server(tmp_path / "data", [repository]).start()
    try:
        assert server.process is not None
        client, mount, url = _big_file_download(server)
        want = sha256_file(source_tree / images.BIG_NAME)
        assert sha256(client.request("GET", url).content) == want
        assert _leave_after(url, client.token or "", MIB) >= MIB
        time.sleep(1)
        before = len(os.listdir(f"/proc/{server.process.pid}/fd"))

        for _ in range(5):
            assert _leave_after(url, client.token or "", MIB) >= MIB
        deadline = time.monotonic() + 15
        while len(os.listdir(f"/proc/{server.process.pid}/fd")) > before:
            assert time.monotonic() < deadline, os.listdir(f"/proc/{server.process.pid}/fd")
            time.sleep(0.2)
        assert sha256(client.request("GET", url).content) == want
        client.logoff()

        deadline = time.monotonic() + 15  # rows are written as the server ends each response
        while len(downloads := _audited_downloads(server)) < 8:
            assert time.monotonic() < deadline, downloads
            time.sleep(0.2)
        assert [e["outcome"] for e in downloads] == ["complete"] + ["interrupted"] * 6 + [
            "complete"
        ]
        # Only bytes that reached the socket count: never the whole file for a client that left.
        size = (source_tree / images.BIG_NAME).stat().st_size
        assert all(e["bytes_sent"] < size for e in downloads[1:-1]), downloads
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def _audited_downloads(server: Server) -> list[dict[str, object]]:
    listed = openflr("audit", "--data-dir", str(server.data_dir), "--json")
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    return [e for e in events if e["event"] == "download"]


def _stalled_download(url: str, token: str, small_window: bool = True) -> socket.socket:
    """A connection that asks for ``url`` and then reads nothing: a client that hangs."""
    parts = urlsplit(url)
    sock = socket.socket()
    if small_window:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"X-RestSvcSessionId: {token}\r\n\r\n".encode()
    )
    return sock


def test_downloads_whose_clients_stop_reading_never_stall_the_api(server: Server) -> None:
    """Found by a review: each zero-copy send held one of the 40 threads every request needs,
    for as long as its client took; 41 clients that stopped reading froze the whole API."""
    client, mount, url = _big_file_download(server)
    stalled = [_stalled_download(url, client.token or "") for _ in range(48)]
    try:
        for sock in stalled:  # every one is a download under way, not a quick refusal
            sock.settimeout(30)
            assert sock.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"
        for _ in range(3):
            assert client.request("GET", f"{server.base}agents/agentRestorePoints").content
    finally:
        for sock in stalled:
            sock.close()
        client.logoff()


def test_unmount_ends_the_downloads_of_the_mount(server: Server, source_tree: Path) -> None:
    """A released mount gives no more bytes even while its restore point stays open for the
    next mount (--keep-open, 60 s here): the download in flight is cut where it has got to."""
    client, mount, url = _big_file_download(server)
    size = (source_tree / images.BIG_NAME).stat().st_size
    sock = _stalled_download(url, client.token or "")
    try:
        got = sock.recv(1 << 16)
        assert got.startswith(b"HTTP/1.1 200")
        client.request("DELETE", mount["Href"], 204)
        sock.settimeout(30)
        while data := sock.recv(1 << 20):
            got += data
        assert len(got) < size
    finally:
        sock.close()
        client.logoff()
    session = client.logon_session["SessionId"] if client.logon_session else ""
    deadline = time.monotonic() + 15  # the row is written as the server ends the response
    while not (ours := [e for e in _audited_downloads(server) if e["session"] == session]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert [e["outcome"] for e in ours] == ["interrupted"]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_download_cut_by_a_damaged_image_is_a_closed_connection_and_a_failure(
    tmp_path: Path, repository: Path, tls: bool
) -> None:
    """Found by reviews: a VHDX cut short in the middle of a file's data sent the bytes it
    had and then closed, with no word in the log, the audit calling it interrupted; over HTTPS
    the server also logged an ERROR. It is a failure of the image: logged as a warning,
    audited as failed, never an ERROR nor a traceback."""
    image = next((repository / "winbox").rglob("*.vhdx"))
    folder = tmp_path / "repo" / "cutwin" / image.parent.name
    folder.mkdir(parents=True)
    damaged = folder / image.name
    shutil.copyfile(image, damaged)
    server = Server(tmp_path / "data", [tmp_path / "repo"], tls=tls).start()
    try:
        client = EmClient(server.base)
        client.http = httpx.Client(timeout=120, verify=False)
        client.logon(USER, PASSWORD)
        mount = client.mount(client.restore_point("cutwin@"))
        url = f"{mount['Href']}/C:/{images.BIG_NAME}?action=download"
        big = client.request("GET", url).content
        # Cut the image in the middle of the file's data: find where its second half lies.
        with damaged.open("r+b") as fh:
            whole = fh.read()
            at = whole.find(big[len(big) // 2 : len(big) // 2 + 4096])
            assert at > 0
            fh.truncate(at)
        with pytest.raises(httpx.HTTPError):
            client.request("GET", url)
        client.logoff()
        assert [e["outcome"] for e in _audited_downloads(server)] == ["complete", "failed"]
        assert "data ends" in server.log()
        assert "Traceback" not in server.log()
        assert "ERROR" not in server.log()
    finally:
        server.stop()


def test_a_bad_request_sent_during_a_download_waits_until_the_body_is_out(
    server: Server, source_tree: Path
) -> None:
    """Found by a review: bytes a client sent during a download were read and, being no
    request, answered with a 400 that the server wrote in the middle of the body. The
    connection is not read while a download's body goes out: the body arrives whole."""
    client, mount, url = _big_file_download(server)
    want = (source_tree / images.BIG_NAME).read_bytes()
    sock = _stalled_download(url, client.token or "", small_window=False)
    try:
        got = sock.recv(1 << 16)  # 48 MiB are far more than the socket buffers hold
        sock.sendall(b"\x00\x01GARBAGE GARBAGE\r\n\r\n")
        sock.settimeout(30)
        while data := sock.recv(1 << 20):
            got += data
    finally:
        sock.close()
        client.logoff()
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert rest[: len(want)] == want
    assert rest[len(want) :] == b"" or rest[len(want) :].startswith(b"HTTP/1.1 400")


def test_stopping_the_server_ends_stalled_downloads_without_errors(
    tmp_path: Path, repository: Path
) -> None:
    """Found by a review: with downloads whose clients read nothing, a stop waited for them
    until its limit, then cancelled them with ERROR tracebacks. A stop ends them at once."""
    server = Server(tmp_path / "data", [repository]).start()
    client, mount, url = _big_file_download(server)
    stalled = [_stalled_download(url, client.token or "") for _ in range(4)]
    try:
        time.sleep(1)
        assert server.process is not None
        server.process.terminate()
        assert server.process.wait(60) in (0, -15)  # uvicorn ends by raising the signal again
    finally:
        for sock in stalled:
            sock.close()
        server.stop()
    assert [e["outcome"] for e in _audited_downloads(server)] == ["interrupted"] * 4
    # uvicorn's own words when it gives up waiting for requests and cancels them
    assert "timeout graceful shutdown exceeded" not in server.log()
    assert "ERROR" not in server.log()
    assert "Traceback" not in server.log()


def test_the_end_of_a_request_whose_session_just_ended_changes_nothing(tmp_path: Path) -> None:
    """Found by the load test: a client that logged off the moment a long answer reached it
    ended its session before the server, at the end of that request, marked the session used.
    The ORM update of the row that was gone raised; the server logged an ERROR and closed the
    connection the logoff was being answered on. Marking a session used at a request's end
    while the logoff commits must change nothing; marking it (as the FLR folder does) or
    authenticating with its token afterwards neither."""
    from openflr.sessions import SessionService
    from openflr.store import Database

    sessions = SessionService(Database(tmp_path / "openflr.db"), 600, on_end=lambda _id: None)
    session, token = sessions.create(USER)
    sessions.hold(session.id)
    # The logoff holds the database's write lock while the request's end marks the session:
    # the mark waits, and finds the session gone when the logoff commits.
    logoff = sqlite3.connect(tmp_path / "openflr.db", isolation_level=None)
    logoff.execute("BEGIN IMMEDIATE")
    failures: list[BaseException] = []

    def end_of_request() -> None:
        try:
            sessions.release(session.id, touch=True)
        except BaseException as exc:
            failures.append(exc)

    marking = threading.Thread(target=end_of_request)
    marking.start()
    time.sleep(0.5)
    logoff.execute("DELETE FROM logon_sessions WHERE id = ?", (session.id,))
    logoff.execute("COMMIT")
    marking.join(30)
    assert failures == []
    sessions.touch(session.id)
    assert sessions.authenticate(token) is None
    assert sessions.get(session.id) is None


def test_machine_names_that_are_no_utf8_are_audited_too(tmp_path: Path) -> None:
    """Found by a review: only the guest path was made storable; a machine folder whose name
    is no UTF-8 reaches the restore point name and the mount's outcome, and the row was lost."""
    from openflr.audit import AuditLog
    from openflr.store import Database

    audit = AuditLog(Database(tmp_path / "openflr.db"), tmp_path)
    name = "caf\udce9@2026-11-30 22:00:00"
    audit.record("mount", user=USER, restore_point_name=name, outcome=f"ok: folder /flr/{name}")
    [event] = list(audit.events())
    assert event.restore_point_name == "caf\\xe9@2026-11-30 22:00:00"
    assert event.outcome == "ok: folder /flr/caf\\xe9@2026-11-30 22:00:00"
