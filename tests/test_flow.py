"""The whole restore flow, driven over HTTP by a client that only follows links, in XML and JSON.

Every restore point here is a disk image built by real tools from a known source tree; every
download is compared byte for byte with the file that went in.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, USER, Server, sha256, sha256_file
from tests.emclient import ApiFailure, EmClient, link, walk_to
from tests.fixtures import images

# The files every flow downloads, relative to the source tree.
FILES = [
    images.HELLO_NAME,
    images.EMPTY_NAME,
    images.BIG_NAME,
    images.NFC_NAME,
    images.NFD_NAME,
    images.JAPANESE_NAME,
    images.SPECIAL_NAME,
    images.SPECIAL_DIR_FILE,
    images.DEEP_LEAF,
    f"{images.MANY_DIR}/f02499.txt",
]

# Where the source tree sits in each restore point's guest namespace.
POINTS = {
    "winbox": ("C:", "D:"),
    "linbox": ("/home/user", None),
    "volbox": ("/", None),
    "mbrbox": ("C:", "D:"),
}


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "tree"
    images.make_small_tree(root)
    return root


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
@pytest.mark.parametrize("machine", sorted(POINTS))
def test_every_file_downloads_byte_exact_through_links(
    server: Server, source_tree: Path, small_tree: Path, machine: str, as_json: bool
) -> None:
    client = EmClient(server.base, as_json=as_json)
    client.logon(USER, PASSWORD)
    point = client.restore_point(f"{machine}@2026-11-30 22:00:00")
    assert point["CreationTimeUTC"] == "2026-11-30T22:00:00Z"
    mount = client.mount(point)

    prefix, second = POINTS[machine]
    for relative in FILES:
        guest_path = f"{prefix.rstrip('/')}/{relative}"
        entry = walk_to(client, mount, guest_path)
        assert int(entry["Size"]) == (source_tree / relative).stat().st_size, guest_path
        response = client.restore_for_download(entry)
        assert response.headers["content-type"] == "application/octet-stream"
        assert sha256(response.content) == sha256_file(source_tree / relative), guest_path

    if second is not None:
        entry = walk_to(client, mount, f"{second}/{images.SMALL_NON_ASCII}")
        data = client.restore_for_download(entry).content
        assert data == (small_tree / images.SMALL_NON_ASCII).read_bytes()

    client.request("DELETE", link(mount, "Delete"), 204)
    with pytest.raises(ApiFailure) as gone:
        client.get(mount["Href"])
    assert gone.value.response.status_code == 404
    client.logoff()
    with pytest.raises(ApiFailure) as refused:
        client.restore_points()
    assert refused.value.response.status_code == 401
    client.close()


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
def test_folder_of_2500_files_pages_1000_at_a_time(server: Server, as_json: bool) -> None:
    client = EmClient(server.base, as_json=as_json)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("winbox@"))
    many = walk_to(client, mount, "C:/many")
    first_url = link(many, "Down").split("?")[0] + "?action=listFiles&pageSize=1000&page=1"

    pages = []
    url: str | None = first_url
    while url:
        page = client.get(url)
        pages.append(page)
        info = page["PagingInfo"]
        assert int(info["PageSize"]) == 1000 and int(info["PagesCount"]) == 3
        url = next((lk["Href"] for lk in info["Links"] if lk["Rel"] == "Next"), None)

    assert [len(p["Files"]) for p in pages] == [1000, 1000, 500]
    names = [f["Name"] for p in pages for f in p["Files"]]
    assert names == [f"f{i:05d}.txt" for i in range(2500)]
    client.logoff()


def test_unknown_path_and_escaping_path_are_404(server: Server) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("winbox@"))
    base = mount["Href"]
    for path in ("C:/no-such-file.txt", "C:/../../etc/passwd", "C:/%2e%2e/%2e%2e/x", "Q:/x"):
        response = client.http.get(f"{base}/{path}", headers=client._headers())
        assert response.status_code == 404, path
        assert b"<Error" in response.content and b'StatusCode="404"' in response.content
    client.logoff()


def test_dotdot_inside_the_mount_resolves(server: Server, source_tree: Path) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("winbox@"))
    url = f"{mount['Href']}/C:/big/../hello.txt?action=download"
    response = client.http.get(url, headers=client._headers())
    assert response.status_code == 200
    assert response.content == (source_tree / images.HELLO_NAME).read_bytes()
    client.logoff()


def test_folder_download_is_a_zip_of_the_folder(server: Server, source_tree: Path) -> None:
    client = EmClient(server.base, as_json=True)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("linbox@"))
    folder = walk_to(client, mount, "/home/user/deep")
    response = client.restore_for_download(folder)
    assert response.headers["content-type"] == "application/zip"
    assert "deep.zip" in response.headers["content-disposition"]

    archive = zipfile.ZipFile(io.BytesIO(response.content))
    leaf = images.DEEP_LEAF.split("/", 1)[1]
    assert archive.read(leaf) == (source_tree / images.DEEP_LEAF).read_bytes()
    assert archive.testzip() is None
    client.logoff()


def test_folder_download_of_everything_matches_the_source_tree(
    server: Server, source_tree: Path
) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("volbox@"))
    root = mount["FSRoots"][0]
    response = client.http.get(f"{root['Href']}?action=download", headers=client._headers())
    assert response.status_code == 200

    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = {n for n in archive.namelist() if not n.startswith("lost+found")}
    expected = images.tree_entries(source_tree)
    assert names == expected
    for name in (images.BIG_NAME, images.NFD_NAME, images.SPECIAL_DIR_FILE):
        assert sha256(archive.read(name)) == sha256_file(source_tree / name)
    client.logoff()


def test_linux_tree_is_assembled_from_fstab(server: Server) -> None:
    client = EmClient(server.base, as_json=True)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("linbox@"))
    assert [r["Path"] for r in mount["FSRoots"]] == ["/"]
    grub = walk_to(client, mount, "/boot/grub/grub.cfg")
    assert grub["Path"] == "/boot/grub/grub.cfg"
    data = client.restore_for_download(grub).content
    assert data.startswith(b"#") or len(data) == int(grub["Size"])
    client.logoff()


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
def test_any_name_the_guest_allows_round_trips(server: Server, as_json: bool) -> None:
    client = EmClient(server.base, as_json=as_json)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("oddbox@"))
    listing = client.list_pages(mount["FSRoots"][0]["Href"])
    by_path = {e["Path"]: e for e in listing}

    for name, data in images.ODD_NAMES.items():
        # Lone surrogates (a name that is no UTF-8 on the guest) become U+FFFD in both formats,
        # as strict parsers refuse them; XML 1.0 cannot carry control characters either. The
        # Href still names the file exactly.
        shown = "".join(
            "\ufffd"
            if 0xD800 <= ord(c) <= 0xDFFF or (not as_json and ord(c) < 32 and c not in "\t\n")
            else c
            for c in name
        )
        entry = by_path[f"/{shown}"]
        assert entry["Name"] == shown
        response = client.request("GET", link(entry, "Restore").replace("restore", "download"))
        assert response.content == data, name

    long_entry = walk_to(client, mount, "/" + images.LONG_PATH)
    assert len(long_entry["Path"]) > 300
    assert client.restore_for_download(long_entry).content == b"the end of a long path\n"
    client.logoff()


def test_folder_with_a_file_past_4_gib_downloads_as_valid_zip64(
    server: Server, tmp_path: Path
) -> None:
    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("hugebox@"))
    root = mount["FSRoots"][0]
    target = tmp_path / "huge.zip"
    url = f"{root['Href']}?action=download"
    with client.http.stream("GET", url, headers=client._headers()) as response:
        assert response.status_code == 200
        with target.open("wb") as fh:
            for chunk in response.iter_bytes(1 << 20):
                fh.write(chunk)

    size = 4500 * (1 << 20)
    with zipfile.ZipFile(target) as archive:
        info = archive.getinfo(images.HUGE_NAME)
        assert info.file_size == size
        assert archive.testzip() is None  # every CRC checked over the whole 4.4 GiB
        with archive.open(info) as fh:
            assert fh.read(len(images.HUGE_HEAD)) == images.HUGE_HEAD
            fh.seek(size - len(images.HUGE_TAIL))
            assert fh.read() == images.HUGE_TAIL
        assert archive.read("small.txt") == b"next to a huge file\n"
    target.unlink()
    client.logoff()


def test_concurrent_downloads_from_one_mount_are_byte_exact(
    server: Server, source_tree: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = EmClient(server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("linbox@"))
    names = [
        images.BIG_NAME,
        images.HELLO_NAME,
        images.DEEP_LEAF,
        images.BIG_NAME,
        f"{images.MANY_DIR}/f01234.txt",
        images.BIG_NAME,
    ]

    def fetch(name: str) -> str:
        url = f"{mount['Href']}//home/user/{name}?action=download"
        return sha256(client.http.get(url, headers=client._headers()).content)

    with ThreadPoolExecutor(len(names)) as pool:
        digests = list(pool.map(fetch, names))
    assert digests == [sha256_file(source_tree / name) for name in names]
    client.logoff()
