"""NTFS features and Windows drive letters, each proven over HTTP on an image built by real tools.

The points come from ``tests/fixtures/images.py`` (``build_ntfs_points``): two disks whose guest
registry swaps D: and E: against disk order, an NTFS volume with alternate data streams, hard
links, a sparse file and symbolic links, and an NTFS volume made with 4096-byte sectors. The
``V`` numbers name the field reports each test answers.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator

import pytest

from tests.conftest import (
    Server,
    download,
    logged_on,
    mount_point,
    require_tools,
    sha256,
)
from tests.emclient import ApiFailure, EmClient, walk_to
from tests.fixtures import images

HELLO = b"Hello from a layout restore point.\n"
# SHA-256 of big.bin: 3 MiB from the fixture's seeded generator (seed 0x1A70).
BIG_SHA256 = "1cc7f1fb80132cf40db81a9fed7521bbb3a0bc36b93d4390fe6856387d6ea03a"
# sparse.bin: 16 MiB, "head of a sparse file" at its start, "tail of a sparse file" at its end.
SPARSE = b"head of a sparse file".ljust(16 * 1024 * 1024 - 21, b"\0") + b"tail of a sparse file"
SPARSE_SHA256 = hashlib.sha256(SPARSE).hexdigest()


@pytest.fixture(scope="module")
def ntfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_tools((*images.REQUIRED_TOOLS, "ntfscp", "ntfsinfo", "hivexsh"))
    repo = tmp_path_factory.mktemp("ntfs")
    images.build_ntfs_points(repo)
    srv = Server(tmp_path_factory.mktemp("ntfs-data"), [repo]).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(ntfs_server: Server) -> Iterator[EmClient]:
    yield from logged_on(ntfs_server)


def test_drive_letters_are_those_the_guest_registry_gave(client: EmClient) -> None:
    """MountedDevices names C: and E: by MBR signature and offset (disk0), D: by GPT partition
    GUID (disk1); disk order alone would make disk0's second partition D:."""
    win = mount_point(client, "winletters")
    assert [r["Path"] for r in win["FSRoots"]] == ["C:", "D:", "E:"]
    assert download(client, win, "C:/hello.txt") == HELLO
    assert download(client, win, "D:/d.txt") == b"On the guest's D: drive.\n"
    assert download(client, win, "E:/e.txt") == b"On the guest's E: drive.\n"


def test_both_names_of_a_hard_link_download_the_same_bytes(client: EmClient) -> None:
    ntfs = mount_point(client, "ntfsfeatures")
    listed = {
        e["Name"]: int(e["Size"]) for e in client.list_all(walk_to(client, ntfs, "C:/hardlinks"))
    }
    assert listed == {"one.txt": 25, "two.txt": 25}
    assert download(client, ntfs, "C:/hardlinks/one.txt") == b"One file with two names.\n"
    assert download(client, ntfs, "C:/hardlinks/two.txt") == b"One file with two names.\n"


def test_sparse_file_downloads_whole_with_its_holes_as_zeros(client: EmClient) -> None:
    ntfs = mount_point(client, "ntfsfeatures")
    entry = walk_to(client, ntfs, "C:/sparse.bin")
    assert int(entry["Size"]) == 16 * 1024 * 1024
    assert sha256(client.restore_for_download(entry).content) == SPARSE_SHA256


def test_file_with_an_alternate_stream_downloads_its_main_stream(client: EmClient) -> None:
    ntfs = mount_point(client, "ntfsfeatures")
    entry = walk_to(client, ntfs, "C:/withstreams/streams.txt")
    assert int(entry["Size"]) == len(images.NTFS_STREAM_TEXT)
    assert client.restore_for_download(entry).content == images.NTFS_STREAM_TEXT.encode()


@pytest.mark.parametrize("stream", ["nostream", "hidden"])
def test_a_name_with_a_stream_suffix_is_404(client: EmClient, stream: str) -> None:
    """V8: ``file.txt:nostream`` is a 404; so is an existing stream, which openflr does not
    serve as a file of its own."""
    ntfs = mount_point(client, "ntfsfeatures")
    url = f"{ntfs['Href']}/C:/withstreams/streams.txt:{stream}?action=download"
    with pytest.raises(ApiFailure) as missing:
        client.request("GET", url)
    assert missing.value.response.status_code == 404


def test_folder_download_around_a_file_with_streams_completes(client: EmClient) -> None:
    """V8: the zip holds each file's main stream; the alternate stream breaks nothing."""
    ntfs = mount_point(client, "ntfsfeatures")
    response = client.restore_for_download(walk_to(client, ntfs, "C:/withstreams"))
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == ["plain.txt", "streams.txt"]
    assert archive.read("streams.txt") == images.NTFS_STREAM_TEXT.encode()
    assert archive.read("plain.txt") == b"A file beside one with streams.\n"


def test_ntfs_symbolic_links_are_listed_and_never_followed(client: EmClient) -> None:
    ntfs = mount_point(client, "ntfsfeatures")
    links = client.list_all(walk_to(client, ntfs, "C:/links"))
    assert [(e["Name"], e["_tag" if "_tag" in e else "Type"]) for e in links] == [
        ("absolute", "FileEntry"),
        ("to-hello", "FileEntry"),
    ]
    with pytest.raises(ApiFailure) as refused:
        client.restore_for_download(links[1])
    assert refused.value.response.status_code == 400
    assert refused.value.response.json()["Message"] == (
        "C:/links/to-hello is a symbolic link; download its target instead."
    )


def test_ntfs_made_with_4096_byte_sectors_mounts_and_reads(client: EmClient) -> None:
    """V18: ``mkntfs -s 4096``, as on a 4Kn disk."""
    ntfs = mount_point(client, "ntfs4k")
    assert [r["Path"] for r in ntfs["FSRoots"]] == ["C:"]
    assert download(client, ntfs, "C:/hello.txt") == HELLO
    assert download(client, ntfs, "C:/docs/readme.txt") == (
        b"A nested file of a layout restore point.\n"
    )
    assert sha256(download(client, ntfs, "C:/big.bin")) == BIG_SHA256
