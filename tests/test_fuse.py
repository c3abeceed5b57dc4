"""The FLR folder: every mount is also a read-only folder on the server, read with plain tools.

Each test drives a real server over HTTP, then reads the folder with ``cat`` and ``find`` the way
a backup operator would, and compares bytes and listings with the source tree and with the API.
These tests need a kernel FUSE mount (``/dev/fuse``, root or ``fusermount3``); elsewhere they skip
and say why, except the one that checks what the server says when it cannot make folders.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from openflr.fuse import folder_name
from tests.conftest import PASSWORD, USER, Server, sha256, sha256_file
from tests.emclient import EmClient, link
from tests.fixtures import images
from tests.test_flow import FILES


def _fuse_missing() -> str | None:
    """Say why a FUSE folder cannot be mounted here, or None when it can."""
    try:
        import mfusepy  # noqa: F401
    except ImportError as exc:
        reason = f"the Python library mfusepy is missing ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must install it (scripts/setup)")
        return reason
    except OSError as exc:
        return f"no libfuse ({exc})"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"no FUSE in this kernel (/dev/fuse: {exc.strerror})"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian package fuse3)"
    return None


@pytest.fixture(scope="module")
def fuse_ok() -> None:
    reason = _fuse_missing()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "tree"
    images.make_small_tree(root)
    return root


@pytest.fixture()
def flr_server(fuse_ok: None, tmp_path: Path, repository: Path) -> Iterator[Server]:
    """A server of its own whose FLR root is ``<tmp>/flr``."""
    srv = Server(tmp_path / "data", [repository], "--flr-root", str(tmp_path / "flr")).start()
    yield srv
    srv.stop()


def mount_point(client: EmClient, name: str) -> tuple[dict[str, Any], str]:
    """Mount a restore point; return the mount and its task's result message."""
    point = client.restore_point(name)
    create = link(point, "Create", "AgentRestorePointMount")
    task = client.parse(client.request("POST", create, 202))
    task = client.wait(task)
    assert str(task["Result"]["Success"]).lower() == "true", task
    mount = client.get(link(task, "Related", "AgentRestorePointMount"))
    return mount, task["Result"]["Message"]


def folder_of(message: str) -> Path:
    """The folder a mount task names: ``Ok; folder: /path`` (then maybe skipped volumes)."""
    assert message.startswith("Ok; folder: "), message
    return Path(message.removeprefix("Ok; folder: ").split("; volumes not mounted: ")[0])


def find(folder: Path) -> set[str]:
    """Every path below a folder as ``find`` prints it, relative; folders end with ``/``."""
    listed = subprocess.run(
        ["find", ".", "-mindepth", "1", "-printf", "%y %P\\0"],
        cwd=folder,
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    found = set()
    for item in listed.split(b"\0"):
        if item:
            kind, _, name = item.partition(b" ")
            found.add(os.fsdecode(name) + ("/" if kind == b"d" else ""))
    return found


def cat(path: Path) -> bytes:
    return subprocess.run(["cat", str(path)], capture_output=True, check=True, timeout=300).stdout


def mounted(path: Path) -> bool:
    """Whether a mount (live or stale) sits at this path, from the kernel's mount table."""
    text = os.fsencode(path).replace(b" ", b"\\040")
    with open("/proc/self/mountinfo", "rb") as fh:
        return any(line.split(b" ")[4] == text for line in fh)


def wait_gone(path: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (path.exists() or mounted(path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not mounted(path), f"{path} is still mounted"
    assert not path.exists(), f"{path} still exists"


def test_linux_tree_reads_byte_exact_with_cat_and_find(
    flr_server: Server, tmp_path: Path, source_tree: Path
) -> None:
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    _, message = mount_point(client, "linbox@")
    folder = folder_of(message)

    assert folder == tmp_path / "flr" / "linbox"
    assert sorted(os.listdir(folder)) == ["boot", "etc", "home", "lost+found", "root"]
    assert find(folder / images.LINUX_HOME) == images.tree_entries(source_tree)
    for relative in FILES:
        data = cat(folder / images.LINUX_HOME / relative)
        assert sha256(data) == sha256_file(source_tree / relative), relative
    assert cat(folder / "etc/fstab") == images.linux_fstab().encode()
    assert cat(folder / "boot/vmlinuz-test") == b"not a real kernel: openflr test fixture\n"
    client.logoff()


def test_windows_drives_are_folders_c_and_d(
    flr_server: Server, source_tree: Path, small_tree: Path
) -> None:
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    _, message = mount_point(client, "winbox@")
    folder = folder_of(message)

    assert sorted(os.listdir(folder)) == ["C", "D"]
    assert find(folder / "C") == images.tree_entries(source_tree)
    assert find(folder / "D") == images.tree_entries(small_tree)
    assert cat(folder / "C" / images.BIG_NAME) == (source_tree / images.BIG_NAME).read_bytes()
    assert (
        cat(folder / "D" / images.SMALL_NON_ASCII)
        == (small_tree / images.SMALL_NON_ASCII).read_bytes()
    )
    client.logoff()


def test_folder_shows_the_names_sizes_and_times_the_api_lists(flr_server: Server) -> None:
    client = EmClient(flr_server.base, as_json=True)
    client.logon(USER, PASSWORD)
    mount, message = mount_point(client, "linbox@")
    folder = folder_of(message)
    root = next(r for r in mount["FSRoots"] if r["Path"] == "/")
    url = root["Href"] + "home/user/many?action=listAll&pageSize=10000"

    listed = client.get(url)
    from_api = {f["Name"]: (int(f["Size"]), f["ModifiedDateUTC"]) for f in listed["Files"] or []}
    from_folder = {}
    with os.scandir(folder / "home/user/many") as entries:
        for item in entries:
            st = item.stat(follow_symlinks=False)
            when = datetime.fromtimestamp(st.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            from_folder[item.name] = (st.st_size, when)

    assert len(from_api) == 2500
    assert from_folder == from_api
    client.logoff()


def test_folder_is_read_only_and_only_for_the_servers_user(flr_server: Server) -> None:
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    _, message = mount_point(client, "linbox@")
    folder = folder_of(message)
    hello = folder / images.LINUX_HOME / images.HELLO_NAME

    attempts = [
        lambda: open(hello, "ab"),
        lambda: open(hello, "r+b"),
        lambda: open(folder / "new.txt", "wb"),
        lambda: os.mkdir(folder / "new"),
        lambda: os.unlink(hello),
        lambda: os.rename(hello, hello.with_name("moved.txt")),
        lambda: os.chmod(hello, 0o666),
        lambda: os.utime(hello, (0, 0)),
        lambda: os.truncate(hello, 0),
        lambda: os.symlink("x", folder / "link"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as refused:
            attempt()
        assert refused.value.errno == errno.EROFS
    assert hello.read_text() == images.HELLO_TEXT

    assert os.stat(folder).st_mode & 0o7777 == 0o500
    assert os.stat(hello).st_mode & 0o7777 == 0o400
    assert os.stat(hello).st_uid == os.getuid()
    client.logoff()


def test_second_mount_of_the_same_machine_gets_its_own_folder(
    flr_server: Server, tmp_path: Path
) -> None:
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    first, first_message = mount_point(client, "volbox@")
    second, second_message = mount_point(client, "volbox@")

    assert folder_of(first_message) == tmp_path / "flr" / "volbox"
    assert folder_of(second_message) == tmp_path / "flr" / "volbox_2"
    assert (tmp_path / "flr/volbox_2" / images.HELLO_NAME).read_text() == images.HELLO_TEXT

    client.request("DELETE", link(first, "Delete"), 204)
    wait_gone(tmp_path / "flr" / "volbox")
    assert (tmp_path / "flr/volbox_2" / images.HELLO_NAME).read_text() == images.HELLO_TEXT
    client.logoff()


def test_folder_is_gone_after_delete_of_the_mount(flr_server: Server) -> None:
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    mount, message = mount_point(client, "volbox@")
    folder = folder_of(message)
    assert (folder / images.HELLO_NAME).is_file()

    client.request("DELETE", link(mount, "Delete"), 204)

    wait_gone(folder)
    client.logoff()


def test_mounting_again_and_again_serves_each_folder_and_leaves_no_threads(
    flr_server: Server,
) -> None:
    # The threads that run FUSE loops are kept for the next mount: each new folder must serve
    # its own files, each old one must go, and the threads must not pile up.
    assert flr_server.process is not None
    tasks = Path(f"/proc/{flr_server.process.pid}/task")
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    counts = []
    for machine in ["volbox@", "linbox@"] * 6:
        mount, message = mount_point(client, machine)
        folder = folder_of(message)
        if machine == "volbox@":
            assert cat(folder / images.HELLO_NAME) == images.HELLO_TEXT.encode()
        else:
            assert cat(folder / "etc/fstab") == images.linux_fstab().encode()
        client.request("DELETE", link(mount, "Delete"), 204)
        wait_gone(folder)
        counts.append(len(os.listdir(tasks)))
    client.logoff()
    # The first mounts start the threads the server keeps; later ones add none of their own (a
    # thread per mount would add eight; the API's thread pool may still grow by one or two).
    assert counts[-1] <= counts[3] + 3, counts


def test_requests_racing_a_mount_and_its_unmount_leave_no_folder_behind(
    flr_server: Server, tmp_path: Path
) -> None:
    # Readers ask for the mount being made (its number guessed) and for the one being deleted.
    # Neither may take it for a mount of an earlier run and give it a second folder, which no
    # unmount would ever remove.
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    mount, _ = mount_point(client, "volbox@")
    base = str(mount["Href"]).rsplit("/", 1)[0]
    number = int(str(mount["Href"]).rsplit("/", 1)[1])
    client.request("DELETE", link(mount, "Delete"), 204)
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                for guess in (number, number + 1):
                    http.get(f"{base}/{guess}", headers=client._headers())

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        for _ in range(30):
            mount, _ = mount_point(client, "volbox@")
            number = int(str(mount["Href"]).rsplit("/", 1)[1])
            client.request("DELETE", link(mount, "Delete"), 204)
    finally:
        stop.set()
        for reader in readers:
            reader.join(60)
    client.logoff()

    flr = tmp_path / "flr"
    deadline = time.monotonic() + 15
    while os.listdir(flr) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.listdir(flr) == []


def test_files_held_open_neither_hold_up_an_unmount_nor_keep_folders_after_a_stop(
    flr_server: Server,
) -> None:
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    held = []
    mounts = []
    for machine, inside, want in [
        ("volbox@", images.HELLO_NAME, images.HELLO_TEXT.encode()),
        ("linbox@", "etc/fstab", images.linux_fstab().encode()),
    ] * 2:
        mount, message = mount_point(client, machine)
        folder = folder_of(message)
        mounts.append((mount, folder))
        held.append((open(folder / inside, "rb"), want))  # noqa: SIM115 (closed below)

    # Unmounting leaves the folder at once; the file still open in it reads on.
    mount, folder = mounts[0]
    fh, want = held[0]
    client.request("DELETE", link(mount, "Delete"), 204)
    assert not mounted(folder)
    assert fh.read() == want
    fh.close()
    wait_gone(folder)

    # Stopping with files open in three folders: the server ends, and takes them all down.
    flr_server.stop()
    assert flr_server.process is not None
    assert flr_server.process.returncode == -signal.SIGTERM  # ended by itself, not killed
    for fh, _ in held[1:]:
        with pytest.raises(OSError) as gone:  # the file system it was open in went with the server
            fh.close()
        assert gone.value.errno == errno.ENOTCONN
    for _, folder in mounts[1:]:
        assert not mounted(folder), folder


def test_folder_is_gone_after_logoff(flr_server: Server) -> None:
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    _, message = mount_point(client, "volbox@")
    folder = folder_of(message)
    assert (folder / images.HELLO_NAME).is_file()

    client.logoff()

    wait_gone(folder)


def test_folder_is_gone_after_idle_expiry(fuse_ok: None, tmp_path: Path, repository: Path) -> None:
    flr = tmp_path / "flr"
    srv = Server(
        tmp_path / "data", [repository], "--flr-root", str(flr), "--session-timeout", "2"
    ).start()
    try:
        client = EmClient(srv.base)
        client.logon(USER, PASSWORD)
        _, message = mount_point(client, "volbox@")
        folder = folder_of(message)
        assert (folder / images.HELLO_NAME).is_file()

        wait_gone(folder, timeout=20)
    finally:
        srv.stop()


def test_reading_the_folder_keeps_the_session_alive(
    fuse_ok: None, tmp_path: Path, repository: Path, source_tree: Path
) -> None:
    """A slow copy through the folder with no API call, longer than the idle timeout (2 s):
    the session and its folder last, because reading is using them."""
    srv = Server(
        tmp_path / "data", [repository], "--flr-root", str(tmp_path / "flr"),
        "--session-timeout", "2",
    ).start()  # fmt: skip
    try:
        client = EmClient(srv.base)
        client.logon(USER, PASSWORD)
        _, message = mount_point(client, "volbox@")
        big = folder_of(message) / images.BIG_NAME
        expected = (source_tree / images.BIG_NAME).read_bytes()
        step = 1 << 20  # a fresh MiB each time: the kernel's cache cannot answer for FUSE
        with big.open("rb", buffering=0) as fh:
            for i in range(10):  # 10 reads, 0.5 s apart: 5 s, over twice the timeout
                fh.seek(i * step)
                assert fh.read(4096) == expected[i * step : i * step + 4096]
                time.sleep(0.5)
        assert client.http.get(srv.base + "tasks", headers=client._headers()).status_code == 200
        client.logoff()
    finally:
        srv.stop()


def test_parallel_readers_get_exact_bytes_and_the_api_stays_responsive(
    flr_server: Server, source_tree: Path
) -> None:
    client = EmClient(flr_server.base)
    client.logon(USER, PASSWORD)
    _, message = mount_point(client, "winbox@")
    big = folder_of(message) / "C" / images.BIG_NAME
    expected = sha256_file(source_tree / images.BIG_NAME)
    results: list[str] = []

    def read() -> None:
        results.append(sha256(cat(big)))

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    slowest = 0.0
    for _ in range(50):
        if not any(r.is_alive() for r in readers):
            break
        started = time.monotonic()
        assert httpx.get(flr_server.base, timeout=30).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    for reader in readers:
        reader.join(300)

    assert results == [expected] * 4
    # Not a timing assertion: only that the API answered while the folder was being read.
    assert slowest < 30
    client.logoff()


def test_stale_folder_of_a_killed_server_is_cleaned_up_at_restart(
    fuse_ok: None, tmp_path: Path, repository: Path
) -> None:
    flr = tmp_path / "flr"
    args = ("--flr-root", str(flr))
    srv = Server(tmp_path / "data", [repository], *args).start()
    client = EmClient(srv.base)
    client.logon(USER, PASSWORD)
    mount, message = mount_point(client, "volbox@")
    folder = folder_of(message)
    # Folders openflr did not make: one empty, one holding a file; neither may be touched.
    (flr / "someone-else").mkdir()
    (flr / "someone-else/keep.txt").write_text("not openflr's\n")
    (flr / "empty-but-not-ours").mkdir()
    # Names this server used and gave up before the crash: one now a folder of someone else's,
    # one the live folder of another server sharing the FLR root.
    for machine in ("winbox@", "linbox@"):
        used, _ = mount_point(client, machine)
        client.request("DELETE", link(used, "Delete"), 204)
    (flr / "winbox").mkdir()
    other = Server(tmp_path / "other", [repository], *args).start()
    other_client = EmClient(other.base)
    other_client.logon(USER, PASSWORD)
    _, other_message = mount_point(other_client, "linbox@")
    assert folder_of(other_message) == flr / "linbox"
    mount_point(client, "mbrbox@")  # still mounted at the crash; cleaned up by someone after it

    assert srv.process is not None
    srv.process.send_signal(signal.SIGKILL)
    srv.process.wait(10)
    assert mounted(folder)
    with pytest.raises(OSError) as stale:
        os.listdir(folder)
    assert stale.value.errno == errno.ENOTCONN

    subprocess.run(["umount", "-l", str(flr / "mbrbox")], check=True, timeout=30)
    (flr / "mbrbox").rmdir()
    _, taken = mount_point(other_client, "mbrbox@")  # the other server takes the name
    assert folder_of(taken) == flr / "mbrbox"

    restarted = Server(tmp_path / "data", [repository], *args)
    restarted.port = srv.port
    restarted.base = srv.base
    restarted.start()
    try:
        assert not mounted(folder)
        assert not folder.exists()
        assert (flr / "someone-else/keep.txt").read_text() == "not openflr's\n"
        assert (flr / "empty-but-not-ours").is_dir()
        assert (flr / "winbox").is_dir()
        assert cat(flr / "linbox/etc/fstab") == images.linux_fstab().encode()
        assert mounted(flr / "mbrbox") and os.listdir(flr / "mbrbox")

        # The mount record survived the restart: using it again brings its folder back.
        again = EmClient(restarted.base)
        again.token = client.token
        again.get(mount["Href"])
        assert (folder / images.HELLO_NAME).read_text() == images.HELLO_TEXT
    finally:
        restarted.stop()
        other.stop()
    wait_gone(folder)
    wait_gone(flr / "linbox")
    wait_gone(flr / "mbrbox")


@pytest.mark.parametrize("kind", ["json-list", "journal-cut-short", "garbage-and-strangers"])
def test_the_state_file_of_an_older_openflr_a_crash_or_garbage_is_read_at_start(
    fuse_ok: None, tmp_path: Path, repository: Path, kind: str
) -> None:
    flr, data = tmp_path / "flr", tmp_path / "data"
    for name in ("left", "kept"):
        (flr / name).mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    data.mkdir()
    left, kept = str(flr / "left"), str(flr / "kept")
    if kind == "json-list":  # openflr before the journal wrote the folders it had as one list
        state = json.dumps([left]).encode()
    else:
        state = "".join(
            json.dumps(entry) + "\n"
            for entry in (
                {"made": left},
                {"made": str(flr / "gone-meanwhile")},
                {"made": kept},
                {"removed": kept},
                {"made": str(tmp_path / "outside")},  # not in the FLR root: never touched
            )
        ).encode()
        if kind == "journal-cut-short":
            state += b'{"made": "' + str(flr / "gone-meanwhile")[:5].encode()  # a crash cut it
        else:
            state = b"\xff\xfe garbage\n" + state + b"[1, 2\n"
    (data / "flr-folders.json").write_bytes(state)

    srv = Server(data, [repository], "--flr-root", str(flr)).start()
    try:
        assert sorted(os.listdir(flr)) == ["kept"]
        assert (tmp_path / "outside").is_dir()
        assert "cannot read" not in srv.log()
        # Written anew: what this run makes is what the file lists.
        client = EmClient(srv.base)
        client.logon(USER, PASSWORD)
        _, message = mount_point(client, "volbox@")
        lines = (data / "flr-folders.json").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [{"made": str(folder_of(message))}]
        client.logoff()
    finally:
        srv.stop()


def test_without_fuse_the_api_works_and_the_task_says_no_folder(
    tmp_path: Path, repository: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the FLR root would go\n")
    srv = Server(tmp_path / "data", [repository], "--flr-root", str(blocker / "flr")).start()
    try:
        client = EmClient(srv.base)
        client.logon(USER, PASSWORD)
        mount, message = mount_point(client, "volbox@")

        assert message.startswith("Ok; no FUSE folder: "), message
        assert [r["Path"] for r in mount["FSRoots"]] == ["/"]
        assert sum("no FLR folders" in line for line in srv.log().splitlines()) == 1
        client.logoff()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("machine", "folder"),
    [
        ("web01", "web01"),
        ("dc/primary", "dc_primary"),
        ("nul\x00byte", "nul_byte"),
        ("..", "_.."),
        (".", "_."),
        ("", "_"),
        ("ü" * 150, "ü" * 100),
    ],
)
def test_machine_names_become_safe_folder_names(machine: str, folder: str) -> None:
    assert folder_name(machine) == folder


def test_links_in_the_folder_never_lead_out_of_it(fuse_ok: None, tmp_path: Path) -> None:
    """Absolute link targets (a junction's ``C:\\target``, an NTFS symbolic link's
    ``/Windows/System32``) point into the mount's own folder, as the guest resolved them, never
    at the server's own files; a junction is followed by the kernel like any symbolic link."""
    missing = images.ntfs3g_missing()
    if missing is not None:
        pytest.skip(f"the ntfsrich point needs ntfs-3g through FUSE: {missing}")
    repo = tmp_path / "repo"
    images.build_ntfs_rich_point(repo)
    images.build_ntfs_features_point(repo)
    srv = Server(tmp_path / "data", [repo], "--flr-root", str(tmp_path / "flr")).start()
    try:
        client = EmClient(srv.base)
        client.logon(USER, PASSWORD)
        rich = folder_of(mount_point(client, "ntfsrich@")[1])
        assert os.readlink(rich / "C/links/junction") == "../target"
        assert os.readlink(rich / "C/links/loop") == "."
        assert cat(rich / "C/links/junction/inside.txt") == b"Inside the junction's target.\n"
        features = folder_of(mount_point(client, "ntfsfeatures@")[1])
        assert os.readlink(features / "C/links/to-hello") == "../hello.txt"
        assert os.readlink(features / "C/links/absolute") == "../Windows/System32"
        for folder in (rich, features):
            for link_path in folder.glob("C/links/*"):
                assert Path(os.path.realpath(link_path)).is_relative_to(folder), link_path
        client.logoff()
    finally:
        srv.stop()


def test_linux_link_targets_keep_backslashes_and_colons(fuse_ok: None, tmp_path: Path) -> None:
    """On a Linux file system ``\\`` and ``c:`` are plain name characters: ``bs -> dir\\file``
    names a file whose name holds a backslash, ``drv -> c:/x`` a folder named ``c:``. Read with
    Windows rules (as a review found) they led to another file and to nothing. A link's size
    is the length of the target the folder shows."""
    tree = tmp_path / "tree"
    (tree / "c:").mkdir(parents=True)
    (tree / "c:" / "x").write_text("x in the folder c:\n")
    (tree / "dir").mkdir()
    (tree / "dir" / "file").write_text("the other file\n")
    (tree / "dir\\file").write_text("the file with a backslash\n")
    os.symlink("dir\\file", tree / "bs")
    os.symlink("c:/x", tree / "drv")
    os.symlink("/dir/file", tree / "abs")
    repo = tmp_path / "repo"
    image = images.point_dir(repo, "linkbox", "2026-11-30T220000Z") / "volume0.img"
    images.make_ext4(tree, image, 8, "links")
    srv = Server(tmp_path / "data", [repo], "--flr-root", str(tmp_path / "flr")).start()
    try:
        client = EmClient(srv.base)
        client.logon(USER, PASSWORD)
        folder = folder_of(mount_point(client, "linkbox@")[1])
        assert os.readlink(folder / "bs") == "dir\\file"
        assert cat(folder / "bs") == b"the file with a backslash\n"
        assert os.readlink(folder / "drv") == "c:/x"
        assert cat(folder / "drv") == b"x in the folder c:\n"
        assert os.readlink(folder / "abs") == "dir/file"  # absolute: into this folder
        for name in ("bs", "drv", "abs"):
            assert os.lstat(folder / name).st_size == len(os.fsencode(os.readlink(folder / name)))
        client.logoff()
    finally:
        srv.stop()


def test_a_relative_data_folder_stays_where_the_server_started(
    fuse_ok: None, tmp_path: Path, repository: Path
) -> None:
    """Found by a fresh user of scripts/serve (``--data-dir ./openflr-data``): libfuse moves the
    process to / when it mounts the first FLR folder, and every later write under a relative
    data folder (the audit lines, the list of FLR folders) went to /openflr-data instead."""
    from tests.conftest import free_port, openflr

    name = f"openflr-data-{os.getpid()}-{time.monotonic_ns()}"  # nothing under / may share it
    started_in = tmp_path / "here"
    started_in.mkdir()
    added = openflr(
        "user", "add", USER, "--data-dir", str(started_in / name), "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "openflr", "serve", "--http", "--port", str(port),
         "--data-dir", name, "--repository", str(repository)],
        cwd=started_in, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(base, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = EmClient(base)
        client.logon(USER, PASSWORD)
        mount, message = mount_point(client, "linbox@")
        folder = folder_of(message)
        assert folder.is_relative_to(started_in / name) and mounted(folder)
        client.request("DELETE", link(mount, "Delete"), 204)
        client.logoff()
    finally:
        process.terminate()
        process.wait(30)
    events = [
        line for line in (started_in / name / "audit.jsonl").read_text().splitlines()
        if '"event": "mount"' in line
    ]  # fmt: skip
    assert len(events) == 1
    assert not Path("/", name).exists()
    assert "Traceback" not in log.read_text()
