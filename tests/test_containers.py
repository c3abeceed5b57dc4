"""Disk image containers, each proven over HTTP on an image qemu-img wrote.

Every container point of ``tests/fixtures/images.py`` (``build_container_points``) holds the same
GPT disk: an NTFS partition with the layout tree and a file with a 3 MiB run of zeros, and an ext4
partition past the 2 GiB mark (so split VMDKs need their second extent). The ``V`` numbers name
the field reports each test answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    Server,
    download,
    logged_on,
    mount_point,
    require_tools,
    sha256,
)
from tests.emclient import EmClient, link, walk_to
from tests.fixtures import images
from tests.runs import check_points

HELLO = b"Hello from a layout restore point.\n"
# SHA-256 of big.bin: 3 MiB from the fixture's seeded generator (seed 0x1A70).
BIG_SHA256 = "1cc7f1fb80132cf40db81a9fed7521bbb3a0bc36b93d4390fe6856387d6ea03a"
# SHA-256 of zeros.bin: 1.5 MiB seeded (0x2E50), 3 MiB of zeros, 1.5 MiB seeded.
ZEROS_SHA256 = "1a1923fdaec5e2ed9e4d0177a25f8203104590ba104e905fe72273e9216a6182"
# SHA-256 of fill.bin: 7,000,000 seeded bytes (0x7A11).
FILL_SHA256 = "74fd6d57906338d478ca72e7886f41dc0a2b7b916fca16137428c28d0b4e1cee"
MIB = 1 << 20


@pytest.fixture(scope="module")
def container_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools()
    repo = tmp_path_factory.mktemp("containers")
    images.build_container_points(repo)
    return repo


@pytest.fixture(scope="module")
def container_server(
    tmp_path_factory: pytest.TempPathFactory, container_repo: Path
) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("container-data"), [container_repo]).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(container_server: Server) -> Iterator[EmClient]:
    yield from logged_on(container_server)


@pytest.mark.parametrize("machine", sorted(images.CONTAINER_POINTS))
def test_every_container_format_mounts_and_downloads_byte_exact(
    client: EmClient, machine: str
) -> None:
    disk = mount_point(client, machine)
    assert [r["Path"] for r in disk["FSRoots"]] == ["C:", "/"]
    assert download(client, disk, "C:/hello.txt") == HELLO
    assert sha256(download(client, disk, "C:/big.bin")) == BIG_SHA256
    assert sha256(download(client, disk, "C:/zeros.bin")) == ZEROS_SHA256
    # The ext4 partition starts 2,112 MiB into the disk: the second extent of a split VMDK.
    assert download(client, disk, "/far.txt") == b"Stored past the 2 GiB mark of the disk.\n"


def test_split_vmdk_fixtures_really_have_two_extents(container_repo: Path) -> None:
    folder = container_repo / "vmdksplitflat" / "2026-11-30T220000Z"
    assert sorted(p.name for p in folder.iterdir()) == [
        "disk0-f001.vmdk", "disk0-f002.vmdk", "disk0.vmdk",
    ]  # fmt: skip
    folder = container_repo / "vmdksplitsparse" / "2026-11-30T220000Z"
    assert sorted(p.name for p in folder.iterdir()) == [
        "disk0-s001.vmdk", "disk0-s002.vmdk", "disk0.vmdk",
    ]  # fmt: skip


@pytest.mark.parametrize("machine", ["vhdxdynamic", "vhdxfixed"])
def test_vhdx_ranges_across_zero_state_blocks_are_byte_exact(
    client: EmClient, container_repo: Path, machine: str
) -> None:
    """V13: qemu-img marks the all-zero 1 MiB blocks of zeros.bin as blocks in the zero state;
    ranges that start in them and end in data read the data."""
    from dissect.hypervisor.disk.vhdx import VHDX

    with (container_repo / machine / "2026-11-30T220000Z" / "disk0.vhdx").open("rb") as fh:
        vhdx = VHDX(fh)
        states = {int(vhdx.bat.pb(i).state) for i in range(-(-vhdx.size // vhdx.block_size))}
    assert 2 in states  # PAYLOAD_BLOCK_ZERO

    disk = mount_point(client, machine)
    url = link(walk_to(client, disk, "C:/zeros.bin"), "Restore").replace("restore", "download")
    source = container_repo.parent / "zeros-source.bin"
    images.write_zeros_file(source)
    expected = source.read_bytes()
    for first, last in ((2 * MIB + MIB // 2, 5 * MIB - 1), (4 * MIB - 1000, 6 * MIB - 1)):
        response = client.request("GET", url, 206, headers={"Range": f"bytes={first}-{last}"})
        assert response.content == expected[first : last + 1], (first, last)


def test_vhdx_reads_crossing_a_block_boundary_are_byte_exact(container_repo: Path) -> None:
    """V13 below the file system: dissect.hypervisor 3.21 reads a run of sectors that crosses
    from a zero-state block into a data block as zeros; the engine cuts reads at blocks."""
    from openflr.engine.backup import open_image_disks

    folder = container_repo / "vhdxdynamic" / "2026-11-30T220000Z"
    raw = container_repo.parent / "vhdx-check.raw"
    images._run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", folder / "disk0.vhdx", raw])
    disks, close = open_image_disks([folder / "disk0.vhdx"])
    try:
        with raw.open("rb") as fh:
            for offset in range(MIB // 2, 40 * MIB, 3 * MIB + 4096):
                fh.seek(offset)
                disks[0].stream.seek(offset)
                assert disks[0].stream.read(2 * MIB) == fh.read(2 * MIB), offset
    finally:
        close()
        raw.unlink()


def test_dynamic_vhd_with_a_partial_last_block_reads_it(client: EmClient) -> None:
    """V13: an 11.5 MiB volume in 2 MiB VHD blocks; fill.bin has data in the last 1.5 MiB."""
    volume = mount_point(client, "vhdpartial")
    assert [r["Path"] for r in volume["FSRoots"]] == ["C:"]
    entry = walk_to(client, volume, "C:/fill.bin")
    assert int(entry["Size"]) == 7_000_000
    assert sha256(client.restore_for_download(entry).content) == FILL_SHA256


def test_qcow2_overlay_reads_through_its_backing_file_in_the_same_folder(
    client: EmClient,
) -> None:
    """The overlay names its base /var/lib/libvirt/images/base.qcow2, a path of the host it was
    made on; the base is found by name beside it, and is no disk of its own."""
    point = client.restore_point("qcow2overlay@")
    overlay = client.mount(point)
    assert [r["Path"] for r in overlay["FSRoots"]] == ["C:", "/"]
    assert download(client, overlay, "C:/overlay.txt") == (
        b"Written after the base image was made: only the overlay holds it.\n"
    )
    assert sha256(download(client, overlay, "C:/big.bin")) == BIG_SHA256
    assert download(client, overlay, "/far.txt") == b"Stored past the 2 GiB mark of the disk.\n"


def test_vmdk_whose_parent_is_missing_fails_the_mount_naming_it(client: EmClient) -> None:
    """V14: a snapshot disk0.vmdk whose parent disk0-000001.vmdk is gone."""
    point = client.restore_point("vmdkmissing@")
    task = client.parse(
        client.request("POST", link(point, "Create", "AgentRestorePointMount"), 202)
    )
    task = client.wait(task)
    assert task["State"] == "Finished"
    assert task["Result"]["Success"] is False
    assert task["Result"]["Message"] == (
        "Cannot mount vmdkmissing@2026-11-30 22:00:00: disk0.vmdk: its parent disk "
        "'disk0-000001.vmdk' is missing from the restore point's folder"
    )


def test_container_files_map_to_runs_that_hold_their_bytes(container_repo: Path) -> None:
    """Plain-HTTP downloads send a file's runs that lie as they are in the image file with
    sendfile. The runs of every file, whole and in odd ranges, hold the bytes a read gives; in
    VHDX, QCOW2 and VHD the data of big.bin is such a run, and the 1 MiB blocks of zeros.bin that
    the dynamic formats left unstored are zeros that nothing reads."""
    seen = check_points(container_repo)
    # Every point opened but the one made to fail (its parent disk is gone).
    assert set(seen) == {f.name for f in container_repo.iterdir() if f.is_dir()} - {"vmdkmissing"}
    for machine in ("vhdxfixed", "vhdxdynamic", "qcow2compressed", "vhddynamic"):
        files = seen[machine].files
        big = next(kinds for path, kinds in files.items() if path.endswith("/big.bin"))
        zeros = next(kinds for path, kinds in files.items() if path.endswith("/zeros.bin"))
        assert set(big) == {"FileRun"}, (machine, big)
        assert zeros["FileRun"] >= 1 and zeros["ZeroRun"] >= 1, (machine, zeros)
    for machine in ("vhdfixed", "vhdpartial"):
        assert seen[machine].kinds["FileRun"] >= 1, (machine, seen[machine].kinds)
