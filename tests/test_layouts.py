"""Disk, volume and file-system layouts, each proven over HTTP on an image built by real tools.

Every restore point here comes from ``tests/fixtures/images.py`` (``build_layout_points``): XFS v5,
Btrfs, FAT12, FAT16, exFAT, ext2/3/4, MBR logical partitions, LVM2 on one and two disks, LUKS and
damaged volumes. The ``V`` numbers name the field reports each test answers.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import (
    PASSWORD,
    USER,
    Server,
    download,
    logged_on,
    mount_point,
    require_tools,
    sha256,
)
from tests.emclient import ApiFailure, EmClient, walk_to
from tests.fixtures import images
from tests.runs import check_points

HELLO = b"Hello from a layout restore point.\n"
NESTED = b"A nested file of a layout restore point.\n"
# SHA-256 of big.bin: 3 MiB from the fixture's seeded generator (seed 0x1A70).
BIG_SHA256 = "1cc7f1fb80132cf40db81a9fed7521bbb3a0bc36b93d4390fe6856387d6ea03a"
# SHA-256 of span.bin: 20 MiB from the fixture's seeded generator (seed 0x5BA2).
SPAN_SHA256 = "f3994e155889879246748bf753470991ed78c2bfd44b521c483b45d566da5b2f"


@pytest.fixture(scope="module")
def layout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server over a repository holding every layout restore point."""
    require_tools(images.LAYOUT_TOOLS)
    repo = tmp_path_factory.mktemp("layouts")
    images.build_layout_points(repo)
    srv = Server(tmp_path_factory.mktemp("layout-data"), [repo]).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(layout_server: Server) -> Iterator[EmClient]:
    yield from logged_on(layout_server)


def names(client: EmClient, mount_: dict[str, Any], guest_path: str) -> list[str]:
    """The names listed in a folder, files first, as the API pages them."""
    root = next((r for r in mount_["FSRoots"] if r["Path"] == guest_path), None)
    url = root["Href"] if root else None
    if url is None:
        url = next(
            lk["Href"]
            for lk in walk_to(client, mount_, guest_path)["Links"]
            if lk["Rel"] == "Down" and "action=listAll" in lk["Href"]
        )
    return [e["Name"] for e in client.list_pages(url)]


def test_xfs_volume_lists_its_root_and_downloads_byte_exact(client: EmClient) -> None:
    xfs = mount_point(client, "xfsbox")
    assert [r["Path"] for r in xfs["FSRoots"]] == ["/"]
    assert names(client, xfs, "/") == [
        "big.bin", "hello.txt", "docs", "links", "many", "xattrs",
    ]  # fmt: skip
    assert download(client, xfs, "/hello.txt") == HELLO
    assert download(client, xfs, "/docs/readme.txt") == NESTED
    assert sha256(download(client, xfs, "/big.bin")) == BIG_SHA256


def test_xfs_folder_of_5000_files_pages_exact(client: EmClient) -> None:
    """V5: an XFS v5 folder of 5,000 entries (a B+tree directory) lists whole, page by page."""
    xfs = mount_point(client, "xfsbox")
    base = f"{xfs['Href']}//many?action=listFiles&pageSize=1000"
    pages = [client.get(f"{base}&page={n}") for n in range(1, 7)]

    assert [int(p["PagingInfo"]["PagesCount"]) for p in pages] == [5] * 6
    assert [len(p["Files"] or []) for p in pages] == [1000, 1000, 1000, 1000, 1000, 0]
    listed = [f["Name"] for p in pages for f in p["Files"] or []]
    assert listed == [f"f{i:05d}.txt" for i in range(5000)]
    assert download(client, xfs, "/many/f04999.txt") == b"f04999.txt\n"


def test_xfs_files_with_extended_attributes_list_and_download(client: EmClient) -> None:
    """V6: user.* attributes kept in the inode, a 3,000-byte one in blocks of its own and a
    security.selinux label do not break listing or reading."""
    xfs = mount_point(client, "xfsbox")
    folder = walk_to(client, xfs, "/xattrs")
    listed = {e["Name"]: int(e["Size"]) for e in client.list_all(folder)}
    assert listed == {"big-attr.txt": 42, "tagged.txt": 28}
    assert download(client, xfs, "/xattrs/tagged.txt") == b"a file with user attributes\n"
    assert download(client, xfs, "/xattrs/big-attr.txt") == (
        b"a file with a large attribute and a label\n"
    )


def test_symbolic_links_are_listed_as_files_and_never_followed(client: EmClient) -> None:
    xfs = mount_point(client, "xfsbox")
    assert names(client, xfs, "/links") == ["escape", "link-to-hello"]
    link = walk_to(client, xfs, "/links/escape")
    assert link["Name"] == "escape"
    assert int(link["Size"]) == len("../../../../etc/passwd")

    with pytest.raises(ApiFailure) as refused:
        client.restore_for_download(link)
    assert refused.value.response.status_code == 400
    assert refused.value.response.json()["Message"] == (
        "/links/escape is a symbolic link; download its target instead."
    )

    response = client.request("GET", f"{xfs['Href']}//links?action=download")
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.namelist() == ["openflr-errors.txt"]
    assert archive.read("openflr-errors.txt") == (
        b"escape: symbolic link, not followed\nlink-to-hello: symbolic link, not followed\n"
    )


def test_owner_is_the_numeric_id_where_the_guest_has_no_passwd(client: EmClient) -> None:
    xfs = mount_point(client, "xfsbox")
    assert walk_to(client, xfs, "/hello.txt")["Owner"] == "1000"
    assert walk_to(client, xfs, "/big.bin")["Owner"] == "0"


def test_btrfs_partition_lists_and_downloads_byte_exact(client: EmClient) -> None:
    btrfs = mount_point(client, "btrfsbox")
    assert [r["Path"] for r in btrfs["FSRoots"]] == ["/"]
    assert names(client, btrfs, "/") == ["big.bin", "hello.txt", "docs"]
    assert download(client, btrfs, "/hello.txt") == HELLO
    assert download(client, btrfs, "/docs/readme.txt") == NESTED
    assert sha256(download(client, btrfs, "/big.bin")) == BIG_SHA256
    # mkfs.btrfs --rootdir keeps the source's times: 2026-01-02 03:04:05 UTC.
    assert walk_to(client, btrfs, "/hello.txt")["ModifiedDateUTC"] == "2026-01-02T03:04:05Z"


def test_fat12_fat16_and_exfat_volumes_get_drive_letters(client: EmClient) -> None:
    fat = mount_point(client, "fatbox")
    assert [r["Path"] for r in fat["FSRoots"]] == ["C:", "D:", "E:"]
    assert names(client, fat, "C:") == ["fatdata"]
    assert names(client, fat, "D:") == ["big.bin", "hello.txt", "docs"]
    assert names(client, fat, "E:") == []  # exFAT cannot be filled without a kernel mount here
    assert download(client, fat, "C:/fatdata/readme.txt") == (
        b"Second volume of the openflr test fixture.\n"
    )
    assert download(client, fat, "C:/" + images.SMALL_NON_ASCII) == (
        b"Non-ASCII file name on the second volume.\n"
    )
    assert sha256(download(client, fat, "D:/big.bin")) == BIG_SHA256
    assert walk_to(client, fat, "D:/hello.txt")["Owner"] is None  # FAT keeps no owner


def test_mbr_logical_partitions_join_one_tree_by_fstab(client: EmClient) -> None:
    """V7: ext2 /boot (primary), ext4 / and ext4 /home by UUID, ext3 /srv by LABEL (logical
    partitions of an extended one) make one tree."""
    linux = mount_point(client, "mbrlinux")
    assert [r["Path"] for r in linux["FSRoots"]] == ["/"]
    assert names(client, linux, "/") == ["boot", "etc", "home", "lost+found", "srv", "tmp"]
    assert names(client, linux, "/boot") == ["vmlinuz-test", "lost+found"]
    assert names(client, linux, "/home/user") == ["big.bin", "hello.txt", "docs"]
    assert download(client, linux, "/boot/vmlinuz-test") == b"not a real kernel\n"
    assert download(client, linux, "/srv/www/index.html") == b"<h1>served from ext3</h1>\n"
    assert download(client, linux, "/home/user/hello.txt") == HELLO
    assert sha256(download(client, linux, "/home/user/big.bin")) == BIG_SHA256
    assert walk_to(client, linux, "/etc/passwd")["Owner"] == "root"


def test_lvm_root_beside_a_boot_partition(client: EmClient) -> None:
    """V1: BIOS boot, ext4 /boot, and an LVM PV whose vg0/root (ext4) is named
    /dev/mapper/vg0-root in fstab."""
    lvm = mount_point(client, "lvmbox")
    assert [r["Path"] for r in lvm["FSRoots"]] == ["/"]
    assert names(client, lvm, "/") == ["boot", "etc", "home", "lost+found"]
    assert download(client, lvm, "/etc/hostname") == b"lvmbox\n"
    assert download(client, lvm, "/boot/grub/grub.cfg") == b"set root=(lvm/vg0-root)\n"
    assert download(client, lvm, "/home/user/hello.txt") == HELLO
    assert sha256(download(client, lvm, "/home/user/big.bin")) == BIG_SHA256


def test_xfs_root_on_lvm_with_owners_from_passwd(client: EmClient) -> None:
    """V2: as V1 with XFS v5 on the LV, named /dev/vg0/root in fstab, /boot by LABEL."""
    lvm = mount_point(client, "lvmxfs")
    assert names(client, lvm, "/") == ["boot", "etc", "home"]
    assert download(client, lvm, "/boot/grub/grub.cfg") == b"set root=(lvm/vg0-root)\n"
    assert download(client, lvm, "/home/user/docs/readme.txt") == NESTED
    assert sha256(download(client, lvm, "/home/user/big.bin")) == BIG_SHA256
    assert walk_to(client, lvm, "/home/user/hello.txt")["Owner"] == "user"
    assert walk_to(client, lvm, "/etc/passwd")["Owner"] == "root"


def test_logical_volume_spanning_two_disks_reads_whole(client: EmClient) -> None:
    """V3: one linear LV, 16 MiB on each disk; a 20 MiB file must cross between them."""
    span = mount_point(client, "lvmspan")
    assert names(client, span, "/") == ["hello.txt", "span.bin", "lost+found"]
    entry = walk_to(client, span, "/span.bin")
    assert int(entry["Size"]) == 20 * 1024 * 1024
    assert sha256(client.restore_for_download(entry).content) == SPAN_SHA256


def test_two_restore_points_whose_volume_groups_share_a_name_mount_at_once(
    client: EmClient,
) -> None:
    ext4_root = mount_point(client, "lvmbox")
    xfs_root = mount_point(client, "lvmxfs")
    assert names(client, ext4_root, "/") == ["boot", "etc", "home", "lost+found"]
    assert names(client, xfs_root, "/") == ["boot", "etc", "home"]
    assert download(client, ext4_root, "/home/user/hello.txt") == HELLO
    assert download(client, xfs_root, "/home/user/hello.txt") == HELLO


def mount_with_skips(client: EmClient, machine: str) -> tuple[str, dict[str, Any]]:
    """Mount a machine's point; return what its task's message says was not mounted (from
    ``volumes not mounted: ``) and the mount."""
    point = client.restore_point(f"{machine}@")
    create = next(lk["Href"] for lk in point["Links"] if lk["Type"] == "AgentRestorePointMount")
    task = client.wait(client.parse(client.request("POST", create, 202)))
    assert task["Result"]["Success"] is True
    message = task["Result"]["Message"]
    assert message.startswith("Ok; ")  # then where the FLR folder is, or why there is none
    mount = client.get(next(lk["Href"] for lk in task["Links"] if lk["Rel"] == "Related"))
    return message[message.index("volumes not mounted: ") :], mount


def test_encrypted_and_damaged_volumes_are_named_in_the_mount_message(client: EmClient) -> None:
    skipped, broken = mount_with_skips(client, "brokenbox")
    assert skipped == (
        "volumes not mounted: "
        "disk0.img partition 2: LUKS-encrypted volume; openflr cannot decrypt it; "
        "disk0.img partition 3: no file system openflr can read "
        "(damaged, or of a kind openflr does not know); "
        "disk0.img partition 4: damaged xfs file system "
        "(Not a valid XFS filesystem (invalid block size))"
    )
    assert [r["Path"] for r in broken["FSRoots"]] == ["/"]
    assert download(client, broken, "/hello.txt") == HELLO


def test_ext4_inline_data_files_and_folders_read_byte_exact(client: EmClient) -> None:
    """Files up to 60 bytes live in the inode's ``i_block``, bigger ones go on in the
    ``system.data`` attribute (dissect.extfs read only the first 60 bytes); a folder of two
    entries lives in its inode (dissect.extfs listed it as garbage), reached by path too."""
    point = client.mount(client.restore_point("extinline@"))
    for name, count in images.INLINE_FOLDERS.items():
        # By path first, before any listing of the folder could answer the lookup.
        url = f"{point['Href']}/{name}/entry-01.txt?action=download"
        assert client.request("GET", url).content == f"{name} 1\n".encode()
        listed = names(client, point, f"/{name}")
        assert listed == [f"entry-{i:02d}.txt" for i in range(count)]
    for size in images.INLINE_SIZES:
        assert download(client, point, f"/f{size}.txt") == images.inline_file_bytes(size), size


def test_btrfs_subvolumes_make_the_tree_the_guest_mounted(client: EmClient) -> None:
    """Ubuntu's layout: fstab mounts subvolume ``@`` at ``/``, ``@home`` at ``/home`` (by
    path) and ``@srv`` at ``/srv`` (by id); a nested subvolume shows in place; the file
    system's top level, which nobody mounted, is a root of its own, with the snapshot."""
    missing = images.loop_mount_missing()
    if missing is not None:
        pytest.skip(f"the btrfssubvol point is made through a loop mount: {missing}")
    point = client.mount(client.restore_point("btrfssubvol@"))
    assert [r["Path"] for r in point["FSRoots"]] == ["/", "Volume1:"]
    assert names(client, point, "/") == ["etc", "home", "srv", "var"]
    assert download(client, point, "/etc/hostname") == b"ubuntu-btrfs\n"
    assert download(client, point, "/home/user/notes.txt") == images.BTRFS_NOTES_NOW.encode()
    assert download(client, point, "/srv/site/index.html") == b"<p>served from @srv</p>\n"
    nested = download(client, point, "/var/lib/machines/machine.txt")
    assert nested == b"in a nested subvolume\n"
    assert names(client, point, "Volume1:") == ["@", "@home", "@home-snap", "@srv"]
    before = download(client, point, "Volume1:/@home-snap/user/notes.txt")
    assert before == images.BTRFS_NOTES_BEFORE.encode()


def test_exfat_with_files_reads_byte_exact(client: EmClient) -> None:
    """exFAT with files in place, one of them scattered and chained by the FAT (dissect.target
    read every exFAT file past its first sector back as empty)."""
    missing = images.exfat_fuse_missing()
    if missing is not None:
        pytest.skip(f"the exfatbox point is filled through exfat-fuse: {missing}")
    point = client.mount(client.restore_point("exfatbox@"))
    assert [r["Path"] for r in point["FSRoots"]] == ["C:"]
    for name, (size, seed) in images.EXFAT_RANDOM.items():
        data = download(client, point, f"C:/{name}")
        assert data == random.Random(seed).randbytes(size), name
    for name, text in images.EXFAT_TEXT.items():
        assert download(client, point, f"C:/{name}") == text.encode(), name
    hello = walk_to(client, point, "C:/hello.txt")
    assert hello["ModifiedDateUTC"] == "2019-05-06T07:08:10Z"


def test_each_point_shows_its_own_lvm_layout(client: EmClient) -> None:
    """V4: the LV grew between two points of one machine; mounted at once, each point reads
    through its own metadata."""
    first = client.mount(client.restore_point("lvmgrow@2026-11-29 22:00:00"))
    second = client.mount(client.restore_point("lvmgrow@2026-11-30 22:00:00"))
    assert names(client, first, "/") == ["first.txt", "lost+found"]
    assert names(client, second, "/") == ["first.txt", "grown.bin", "lost+found"]
    grown = download(client, second, "/grown.bin")
    assert grown == random.Random(images.LVM_GROW_SEED).randbytes(images.LVM_GROW_SIZE)
    assert download(client, first, "/first.txt") == b"in both points\n"


def test_refs_and_bitlocker_volumes_are_named_and_the_ntfs_beside_them_mounts(
    client: EmClient,
) -> None:
    """V11 and V12 (without a recovery password): the message names each volume and why."""
    skipped, refs = mount_with_skips(client, "refsbox")
    assert skipped == (
        "volumes not mounted: "
        "disk0.vhdx partition 2: ReFS volume; openflr cannot read ReFS; "
        "disk0.vhdx partition 3: BitLocker-encrypted volume; openflr cannot decrypt it"
    )
    assert [r["Path"] for r in refs["FSRoots"]] == ["C:"]
    assert download(client, refs, "C:/hello.txt") == HELLO


def test_dynamic_disk_partitions_are_named_with_the_reason(client: EmClient) -> None:
    """Windows dynamic disks (LDM): the basic volume beside them mounts; each LDM data
    partition is named in the message; the LDM metadata partition holds no files."""
    skipped, dynamic = mount_with_skips(client, "dynamicbox")
    reason = (
        "Windows dynamic disk (LDM); openflr does not read dynamic volumes "
        "(dissect.volume's LDM support has no reader yet)"
    )
    assert skipped == (
        f"volumes not mounted: disk0.vhdx partition 2: {reason}; disk1.vhdx partition 2: {reason}"
    )
    assert [r["Path"] for r in dynamic["FSRoots"]] == ["C:"]
    assert download(client, dynamic, "C:/hello.txt") == HELLO


def test_ntfs_entry_whose_security_data_names_no_owner_carries_none(server: Server) -> None:
    """wimlib applies these files without security descriptors (``--no-acls``): no owner SID,
    so no Owner, rather than a made-up one (owners by name: test_ntfs)."""
    em = EmClient(server.base, as_json=True)
    em.logon(USER, PASSWORD)
    win = em.mount(em.restore_point("winbox@"))
    assert walk_to(em, win, "C:/hello.txt")["Owner"] is None
    em.logoff()


def test_linux_owner_is_the_user_name_from_the_guest_passwd(server: Server) -> None:
    em = EmClient(server.base)
    em.logon(USER, PASSWORD)
    linux = em.mount(em.restore_point("linbox@"))
    assert walk_to(em, linux, "/etc/passwd")["Owner"] == "root"
    assert walk_to(em, linux, "/home/user/hello.txt")["Owner"] == "root"
    em.logoff()


def test_layout_files_map_to_runs_that_hold_their_bytes(layout_server: Server) -> None:
    """The runs plain-HTTP downloads send with sendfile hold, for the files (up to 40 a root)
    of every layout (NTFS compressed and sparse files, LVM, XFS, Btrfs, FAT, exFAT ...), whole
    and in odd ranges, the bytes a read gives; files on MBR, GPT and LVM volumes of raw images,
    a logical volume spanning two disks included, send straight from the image files."""
    repo = layout_server.repositories[0]
    seen = check_points(repo)
    assert set(seen) == {
        folder.name for folder in repo.iterdir() if folder.is_dir()
    }  # every point opened
    for machine in ("lvmspan", "lvmxfs", "xfsbox", "exfatbox", "fatbox", "dynamicbox"):
        if machine == "exfatbox" and images.exfat_fuse_missing() is not None:
            continue  # built only where exfat-fuse can write it
        assert seen[machine].kinds["FileRun"] > 0, (machine, seen[machine].kinds)
    # The file that crosses from one disk to the other sends from both image files.
    assert len(seen["lvmspan"].images["/span.bin"]) == 2, seen["lvmspan"].images
