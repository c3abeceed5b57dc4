"""NTFS features and Windows drive letters, each proven over HTTP on an image built by real tools.

The points come from ``tests/fixtures/images.py`` (``build_ntfs_points``): two disks whose guest
registry swaps D: and E: against disk order, an NTFS volume with alternate data streams, hard
links, a sparse file and symbolic links, and an NTFS volume made with 4096-byte sectors. The
``V`` numbers name the field reports each test answers.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import (
    Server,
    download,
    logged_on,
    mount_point,
    openflr,
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


@pytest.mark.parametrize(
    "name", ["streams.txt:nostream", "plain.txt:hidden", "streams.txt:", "streams.txt:a:b"]
)
def test_a_stream_the_file_does_not_have_is_404(client: EmClient, name: str) -> None:
    """V8: ``file.txt:nostream`` is a 404, and so are malformed stream names."""
    ntfs = mount_point(client, "ntfsfeatures")
    url = f"{ntfs['Href']}/C:/withstreams/{quote(name)}?action=download"
    with pytest.raises(ApiFailure) as missing:
        client.request("GET", url)
    assert missing.value.response.status_code == 404


@pytest.mark.parametrize(
    "name", ["$mft", "$Mft", "$logfile", "$secure:$SDS", "$extend", "$upcase", "$MFT::$DATA"]
)
def test_ntfs_metadata_files_are_404_in_any_case(client: EmClient, name: str) -> None:
    """NTFS finds names regardless of case: so must the refusal (``C:/$mft`` served the whole
    MFT, deleted files' names included, until a review found it)."""
    ntfs = mount_point(client, "ntfsfeatures")
    with pytest.raises(ApiFailure) as missing:
        client.request("GET", f"{ntfs['Href']}/C:/{quote(name)}?action=download")
    assert missing.value.response.status_code == 404


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("streams.txt:hidden:$DATA", images.NTFS_ADS_TEXT),
        ("streams.txt:HIDDEN", images.NTFS_ADS_TEXT),
        ("streams.txt::$DATA", images.NTFS_STREAM_TEXT),
    ],
)
def test_stream_names_as_dir_r_prints_them(client: EmClient, name: str, expected: str) -> None:
    ntfs = mount_point(client, "ntfsfeatures")
    url = f"{ntfs['Href']}/C:/withstreams/{quote(name)}?action=download"
    response = client.request("GET", url)
    assert response.content == expected.encode()
    if name != "streams.txt::$DATA":
        # No colon in the name a browser saves the stream under: Windows allows none.
        assert 'filename="streams.txt_hidden"' in response.headers["content-disposition"].replace(
            "HIDDEN", "hidden"
        )


def test_an_alternate_stream_downloads_by_its_name(client: EmClient) -> None:
    """``file.txt:stream`` serves that stream's bytes, as Windows names it; folders list none."""
    ntfs = mount_point(client, "ntfsfeatures")
    url = f"{ntfs['Href']}/C:/withstreams/streams.txt:hidden?action=download"
    assert client.request("GET", url).content == images.NTFS_ADS_TEXT.encode()
    listed = client.list_all(walk_to(client, ntfs, "C:/withstreams"))
    assert sorted(e["Name"] for e in listed) == ["plain.txt", "streams.txt"]


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


# ---------------------------------------------------------------------------------------------
# The ntfsrich point: written through ntfs-3g (owners, LZNT1, junctions, deduplication)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def rich(client: EmClient) -> dict[str, object]:
    missing = images.ntfs3g_missing()
    if missing is not None:
        pytest.skip(f"the ntfsrich point needs ntfs-3g through FUSE: {missing}")
    return mount_point(client, "ntfsrich")


def test_owners_are_the_account_names_of_the_guest(client: EmClient, rich: dict) -> None:
    """Local accounts and groups from the guest's SAM, well-known SIDs by name, and a SID the
    guest cannot name (a domain account) as itself."""
    listed = {e["Name"]: e["Owner"] for e in client.list_all(walk_to(client, rich, "C:/owners"))}
    assert listed == {
        "alice.txt": "alice",
        "team.txt": "Backup Team",
        "system.txt": "SYSTEM",
        "installer.txt": "TrustedInstaller",
        "domain.txt": "S-1-5-21-1004336348-1177238915-682003330-1105",
    }
    one = client.get(f"{rich['Href']}/C:/owners/alice.txt")
    assert one["Owner"] == "alice"


def test_lznt1_compressed_files_download_byte_exact(client: EmClient, rich: dict) -> None:
    """V17: files ntfs-3g wrote into a folder with the compressed attribute."""
    random_part = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        images._write_random(Path(tmp) / "r", images.MIB, images.RICH_COMPRESSED_SEED)
        random_part.update((Path(tmp) / "r").read_bytes())
    mixed = download(client, rich, "C:/compressed/mixed.bin")
    assert len(mixed) == 2 * images.MIB
    assert hashlib.sha256(mixed[: images.MIB]).digest() == random_part.digest()
    assert mixed[images.MIB :] == bytes(images.MIB)
    text = download(client, rich, "C:/compressed/text.txt")
    assert text == images.RICH_COMPRESSED_TEXT.encode()


def test_junctions_are_links_never_followed(client: EmClient, rich: dict) -> None:
    """A junction to a folder and one to its own volume's root (a loop) are listed as links,
    not folders; a download of one is refused and the root's zip completes without them."""
    folder = walk_to(client, rich, "C:/links")
    root = {e["Name"]: e for e in client.list_all(folder)}
    assert sorted(root) == ["junction", "loop", "plain.txt"]
    for name in ("junction", "loop"):
        assert root[name]["_tag" if "_tag" in root[name] else "Type"] == "FileEntry"
        with pytest.raises(ApiFailure) as refused:
            client.restore_for_download(root[name])
        assert refused.value.response.status_code == 400
    assert download(client, rich, "C:/target/inside.txt") == b"Inside the junction's target.\n"
    archive = zipfile.ZipFile(io.BytesIO(client.restore_for_download(folder).content))
    assert sorted(archive.namelist()) == ["openflr-errors.txt", "plain.txt"]
    errors = archive.read("openflr-errors.txt").decode()
    assert errors.splitlines() == [
        "junction: symbolic link, not followed",
        "loop: symbolic link, not followed",
    ]


def test_deduplicated_file_without_its_chunk_store_is_a_clear_error(
    client: EmClient, rich: dict
) -> None:
    """V9: the size shows, the download is refused with the reason, never zeros; a zip around
    it completes and names it in its error list."""
    entry = walk_to(client, rich, "C:/dedup/dedup.bin")
    assert int(entry["Size"]) == images.RICH_DEDUP_SIZE
    url = f"{rich['Href']}/C:/dedup/dedup.bin?action=download"
    with pytest.raises(ApiFailure) as refused:
        client.request("GET", url)
    assert refused.value.response.status_code == 500
    assert "deduplication" in refused.value.response.json()["Message"]
    folder = walk_to(client, rich, "C:/dedup")
    archive = zipfile.ZipFile(io.BytesIO(client.restore_for_download(folder).content))
    assert sorted(archive.namelist()) == ["openflr-errors.txt", "plain.txt"]
    (error,) = archive.read("openflr-errors.txt").decode().splitlines()
    assert error.startswith("dedup.bin: ") and "deduplication" in error


def test_every_alternate_stream_downloads_by_name(client: EmClient, rich: dict) -> None:
    for stream, text in (("hidden", images.NTFS_ADS_TEXT), images.RICH_STREAM):
        url = f"{rich['Href']}/C:/streams.txt:{stream}?action=download"
        assert client.request("GET", url).content == text.encode()
    assert download(client, rich, "C:/streams.txt") == images.NTFS_STREAM_TEXT.encode()


def test_every_file_of_a_volume_whose_mft_is_in_pieces_lists_and_reads(client: EmClient) -> None:
    """V16: the ``$MFT`` needs an attribute list; all files list, and the folder's zip holds
    each one's bytes."""
    missing = images.ntfs3g_missing()
    if missing is not None:
        pytest.skip(f"the ntfsfragmft point needs ntfs-3g through FUSE: {missing}")
    frag = mount_point(client, "ntfsfragmft")
    folder = walk_to(client, frag, "C:/many")
    expected = {
        f"f{n}.txt": images.fragmented_mft_text(n) for n in range(images.FRAGMENTED_MFT_FILES)
    }
    assert {e["Name"] for e in client.list_all(folder)} == set(expected)
    archive = zipfile.ZipFile(io.BytesIO(client.restore_for_download(folder).content))
    assert {name: archive.read(name).decode() for name in archive.namelist()} == expected


@pytest.mark.parametrize("name", sorted(images.RICH_WOF))
def test_wof_compressed_file_downloads_byte_exact(client: EmClient, rich: dict, name: str) -> None:
    """V10: XPRESS4K, 8K, 16K and LZX (``compact /exe:<algorithm>``), compressed by wimlib:
    whole, and a range across chunks."""
    content = images.rich_wof_content()
    entry = walk_to(client, rich, f"C:/wof/{name}")
    assert int(entry["Size"]) == len(content)
    assert client.restore_for_download(entry).content == content
    url = f"{rich['Href']}/C:/wof/{name}?action=download"
    part = client.http.get(url, headers={**client._headers(), "Range": "bytes=70000-110000"})
    assert part.status_code == 206
    assert part.content == content[70000:110001]


def test_wof_file_of_an_unknown_algorithm_is_a_clear_error(client: EmClient, rich: dict) -> None:
    url = f"{rich['Href']}/C:/wof/{images.RICH_WOF_UNKNOWN}?action=download"
    for method in ("GET", "HEAD"):  # HEAD fails as GET does, not 200
        response = client.http.request(method, url, headers=client._headers())
        assert response.status_code == 500
    with pytest.raises(ApiFailure) as refused:
        client.request("GET", url)
    assert "algorithm 9" in refused.value.response.json()["Message"]


def test_a_wof_chunk_claiming_a_huge_match_is_refused_at_once() -> None:
    """A hostile guest's chunk: one literal, then a match claiming 64 MiB. It is damaged data
    for a 4 KiB chunk, refused before anything is copied (the decoder once copied it all a
    byte at a time, holding the restore point's lock). Found in review."""
    from openflr.engine.wof import xpress_huffman_decompress

    lengths = [0] * 512
    lengths[ord("A")] = 1
    lengths[256 + 15] = 1  # a match: no offset bits, its length in the long form
    table = bytes(lengths[2 * i] | lengths[2 * i + 1] << 4 for i in range(256))
    chunk = table + struct.pack("<HH", 0x4000, 0) + bytes([255]) + struct.pack("<HI", 0, 64 << 20)
    with pytest.raises(ValueError, match="past the end"):
        xpress_huffman_decompress(chunk + bytes(16), 4096)


def test_extension_rules_apply_to_a_files_streams(ntfs_server: Server, rich: dict) -> None:
    """A user denied ``.bin`` gets no ``x.bin:WofCompressedData`` (its compressed bytes) and no
    restore of it either; a user allowed only ``.txt`` gets ``streams.txt:hidden``."""
    for name, rule in (("nobin", "--deny-ext"), ("onlytxt", "--allow-ext")):
        added = openflr(
            "user", "add", name, "--data-dir", str(ntfs_server.data_dir), "--password-stdin",
            "--role", "RestoreOperator", "--scope", "ntfsrich", rule,
            ".bin" if name == "nobin" else ".txt",
            stdin=f"{name} password 123\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    nobin = EmClient(ntfs_server.base, as_json=True)
    nobin.logon("nobin", "nobin password 123")
    mount = mount_point(nobin, "ntfsrich")
    for path in ("C:/wof/xpress4k.bin", "C:/wof/xpress4k.bin:WofCompressedData"):
        response = nobin.http.get(
            f"{mount['Href']}/{path}?action=download", headers=nobin._headers()
        )
        assert response.status_code == 403, path
    nobin.logoff()
    onlytxt = EmClient(ntfs_server.base, as_json=True)
    onlytxt.logon("onlytxt", "onlytxt password 123")
    mount = mount_point(onlytxt, "ntfsrich")
    url = f"{mount['Href']}/C:/streams.txt:hidden?action=download"
    assert onlytxt.request("GET", url).content == images.NTFS_ADS_TEXT.encode()
    onlytxt.logoff()


def test_restore_of_a_junction_is_refused_like_its_download(client: EmClient, rich: dict) -> None:
    url = f"{rich['Href']}/C:/links/junction?action=restore"
    body = {"ForDirectDownload": {}}
    response = client.http.post(url, json=body, headers=client._headers())
    assert response.status_code == 400
    assert "symbolic link" in response.json()["Message"]


def test_names_deleted_from_a_folder_are_not_listed(client: EmClient) -> None:
    """A folder that shrank from 2,000 files to 3: the index buffers NTFS freed still hold the
    deleted names (dissect.ntfs listed 109 of them); only the three files left are listed."""
    missing = images.ntfs3g_missing()
    if missing is not None:
        pytest.skip(f"the ntfsfragmft point needs ntfs-3g through FUSE: {missing}")
    frag = mount_point(client, "ntfsfragmft")
    listed = client.list_all(walk_to(client, frag, "C:/shrunk"))
    assert sorted(e["Name"] for e in listed) == list(images.SHRUNK_KEPT)


def test_efs_encrypted_file_is_a_clear_error_not_ciphertext(client: EmClient, rich: dict) -> None:
    """An EFS-encrypted file's data stream holds ciphertext: refused with the reason, never
    served as if it were the file; a zip around it completes and names it."""
    url = f"{rich['Href']}/C:/efs/secret.txt?action=download"
    with pytest.raises(ApiFailure) as refused:
        client.request("GET", url)
    assert refused.value.response.status_code == 500
    assert "EFS" in refused.value.response.json()["Message"]
    folder = walk_to(client, rich, "C:/efs")
    archive = zipfile.ZipFile(io.BytesIO(client.restore_for_download(folder).content))
    assert sorted(archive.namelist()) == ["openflr-errors.txt", "plain.txt"]
    (error,) = archive.read("openflr-errors.txt").decode().splitlines()
    assert error.startswith("secret.txt: ") and "EFS" in error
