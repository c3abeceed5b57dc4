"""Volumes of a restore point: partitions, LVM logical volumes, and the file systems on them.

Every disk is opened as a partition table (GPT, MBR with logical partitions), or as one bare
volume where it has none. LVM2 physical volumes are gathered from all disks of the restore point
and assembled into their volume groups, so a logical volume may span disks. Each volume then
either opens as a file system or is named, with the reason, in the list of skipped volumes.

References:
    - LVM2 on-disk format (label, PV header, metadata text) as read by ``dissect.volume.lvm``.
    - UEFI specification, GPT partition entries: a partition spans ``first_lba`` to ``last_lba``
      inclusive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from openflr.engine.backup import Disk
from openflr.engine.fat import GuestFatFilesystem

log = logging.getLogger(__name__)

__all__ = ["Volume", "find_volumes"]

# Windows dynamic disks (LDM): the MBR type of the one partition that covers such a disk, and
# the GPT type of its data partition; its metadata partition holds no files.
_LDM_MBR = 0x42
_LDM_DATA_GPT = "af9b60a0-1431-4f62-bc68-3311714a69ad"
_LDM_METADATA_GPT = "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3"
# GPT partition types that hold no guest files a user restores.
_EFI_SYSTEM = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
_NO_FILES_GPT = frozenset(
    {
        "21686148-6449-6e6f-744e-656564454649",  # BIOS boot (GRUB's core image)
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",  # Linux swap
        "e3c9e316-0b5c-4db8-817d-f92df00215ae",  # Microsoft reserved
        _LDM_METADATA_GPT,
    }
)
_NO_FILES_MBR = frozenset({0x82})  # Linux swap
_LDM_REASON = (
    "Windows dynamic disk (LDM); openflr does not read dynamic volumes (dissect.volume's LDM "
    "support has no reader yet)"
)

# How far into a volume to look for data before calling it empty rather than unreadable.
_EMPTY_PROBE = 1 << 20


@dataclass
class Volume:
    """A file system found on a disk of the restore point.

    Attributes:
        name: Where it was found, for messages: ``disk0.img partition 2``, ``vg0/root``.
        fs: The opened ``dissect.target`` file system.
        fs_type: ``ext``, ``xfs``, ``btrfs``, ``ntfs``, ``fat``, ``exfat`` ...
        uuid: The file system's UUID (ext, XFS, Btrfs) or serial (FAT, ``ABCD-1234``).
        label: The file system's label.
        devices: Guest device paths that name it, as ``/etc/fstab`` may (LVM's
            ``/dev/mapper/vg0-root`` and ``/dev/vg0/root``).
        is_efi: An EFI system partition.
        offset: Where the partition starts on its disk, in bytes (None: no partition).
        disk_signature: The MBR disk signature of its disk (None on GPT or no partition table).
        partition_guid: The GPT partition's unique GUID, lower case (None on MBR).
    """

    name: str
    fs: Any
    fs_type: str
    uuid: str | None = None
    label: str | None = None
    devices: tuple[str, ...] = field(default_factory=tuple)
    is_efi: bool = False
    offset: int | None = None
    disk_signature: int | None = None
    partition_guid: str | None = None


def find_volumes(disks: list[Disk]) -> tuple[list[Volume], list[str]]:
    """Find the file systems on the disks, LVM logical volumes included.

    Returns:
        The volumes that open, and one message per volume that was skipped and why.
    """
    volumes: list[Volume] = []
    skipped: list[str] = []
    physical_volumes: list[tuple[str, BinaryIO]] = []
    for disk in disks:
        for name, stream, part, signature in _candidates(disk):
            if _holds_no_files(part):
                log.debug("%s: partition type holds no files", name)
                continue
            fs, reason = _open_filesystem(stream)
            if fs is not None:
                volumes.append(_describe(name, fs, part, signature))
            elif _is_lvm_physical_volume(stream):
                physical_volumes.append((name, stream))
            elif _is_ldm(part):
                # TODO: read the LDM database and its simple, spanned and striped volumes.
                skipped.append(f"{name}: {_LDM_REASON}")
            elif reason is not None:
                skipped.append(f"{name}: {reason}")

    if physical_volumes:
        lvm_volumes, lvm_skipped = _assemble_lvm(physical_volumes)
        volumes += lvm_volumes
        skipped += lvm_skipped
    return volumes, skipped


def _candidates(disk: Disk) -> list[tuple[str, BinaryIO, Any, int | None]]:
    """The partitions of a disk, or the whole disk where it has no partition table, each with
    its disk's MBR signature (None on GPT disks and bare volumes)."""
    from dissect.target import volume

    try:
        system = volume.open(disk.stream)
        parts = list(system.volumes)
    except Exception:
        log.debug("%s: no volume system; trying the whole disk as a file system", disk.name)
        parts = []
    if not parts:
        return [(disk.name, disk.stream, None, None)]
    # dissect gives an MBR disk's signature as the volume system's serial; a GPT disk has
    # partition GUIDs instead, which Windows records in place of the signature.
    serial = getattr(system, "serial", None)
    signature = serial if isinstance(serial, int) and not any(p.guid for p in parts) else None
    return [
        (f"{disk.name} partition {i + 1}", _partition_stream(disk, p), p, signature)
        for i, p in enumerate(parts)
    ]


def _partition_stream(disk: Disk, part: Any) -> BinaryIO:
    """A partition's bytes, whole.

    dissect.volume 3.18 sizes GPT partitions as ``last_lba - first_lba`` sectors, one short of
    the entry's inclusive range; an LVM extent or a file system block in the last sector would
    read short. Such partitions are read as a range of the disk with the size the entry says.
    """
    entry = getattr(getattr(part, "raw", None), "raw", None)
    first, last = getattr(entry, "first_lba", None), getattr(entry, "last_lba", None)
    if not isinstance(first, int) or not isinstance(last, int) or last < first:
        return part  # type: ignore[no-any-return]
    from dissect.util.stream import RangeStream

    sector_size = int(getattr(part.raw.disk, "sector_size", 512))
    size = (last - first + 1) * sector_size
    return RangeStream(disk.stream, first * sector_size, size)  # type: ignore[no-any-return]


def _is_ldm(part: Any) -> bool:
    kind = getattr(part, "type", None) if part is not None else None
    if isinstance(kind, int):
        return kind == _LDM_MBR
    return str(kind or "").lower() == _LDM_DATA_GPT


def _holds_no_files(part: Any) -> bool:
    if part is None:
        return False
    kind = getattr(part, "type", None)
    if isinstance(kind, int):
        return kind in _NO_FILES_MBR
    return str(kind or "").lower() in _NO_FILES_GPT


def _open_filesystem(stream: BinaryIO) -> tuple[Any, str | None]:
    """Open the file system on a volume; on failure, say why (None: nothing there to report)."""
    from dissect.target import filesystem

    try:
        fs = filesystem.open(stream)
    except Exception as exc:
        log.debug("%r: no file system (%s)", stream, exc)
        return None, _why_unopenable(stream, exc)
    if getattr(fs, "__type__", None) == "fat":
        fs = GuestFatFilesystem(stream)
    return fs, None


def _why_unopenable(stream: BinaryIO, exc: Exception) -> str | None:
    """Say why a volume cannot be opened, or None for volumes that hold nothing at all."""
    try:
        stream.seek(0)
        head = stream.read(4096)
    except Exception:
        return f"unreadable ({exc})"
    if head[3:11] == b"-FVE-FS-":
        # TODO: unlock BitLocker volumes with configured recovery passwords (dissect.fve).
        return "BitLocker-encrypted volume; openflr cannot decrypt it"
    if head[:6] == b"LUKS\xba\xbe":
        # TODO: unlock LUKS volumes with configured passphrases (dissect.fve).
        return "LUKS-encrypted volume; openflr cannot decrypt it"
    if head[3:11] == b"ReFS\x00\x00\x00\x00":
        # TODO: read ReFS; no open reader exists in the dissect libraries yet.
        return "ReFS volume; openflr cannot read ReFS"
    if len(head) >= 4096 and head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return None

    kind = _detected_type(stream)
    if kind is not None:
        cause = exc.__cause__ or exc
        return f"damaged {kind} file system ({cause or type(cause).__name__})"
    if _is_empty(stream):
        return None
    return "no file system openflr can read (damaged, or of a kind openflr does not know)"


def _detected_type(stream: BinaryIO) -> str | None:
    """The file system type whose signature a volume carries, even if it does not open."""
    from dissect.target import filesystem

    for candidate in filesystem.FILESYSTEMS:
        try:
            if candidate.detect(stream):
                return str(candidate.__type__)
        except Exception:  # a reader that cannot even probe: not this type
            continue
    return None


def _is_empty(stream: BinaryIO) -> bool:
    try:
        stream.seek(0)
        left = _EMPTY_PROBE
        while left > 0:
            chunk = stream.read(min(left, 1 << 16))
            if not chunk:
                return True
            if chunk.strip(b"\x00"):
                return False
            left -= len(chunk)
    except Exception:
        return False
    return True


def _is_lvm_physical_volume(stream: BinaryIO) -> bool:
    try:
        stream.seek(0)
        # LVM2 puts its label in one of the first four sectors.
        return b"LABELONE" in stream.read(4 * 512)
    except Exception:
        return False


def _assemble_lvm(physical_volumes: list[tuple[str, BinaryIO]]) -> tuple[list[Volume], list[str]]:
    """Assemble LVM2 volume groups from physical volumes of all disks; open their LVs.

    Volume groups are told apart by their id, not their name: two disks may each carry a
    ``vg0`` of their own.
    """
    from dissect.volume.lvm import LVM2, LVM2Device

    groups: dict[str, list[Any]] = {}
    names: dict[str, str] = {}
    skipped: list[str] = []
    for name, stream in physical_volumes:
        try:
            device = LVM2Device(stream)
            metadata = device.metadata or {}
            vg_name, vg = next((k, v) for k, v in metadata.items() if isinstance(v, dict))
        except Exception as exc:
            skipped.append(f"{name}: LVM physical volume whose metadata cannot be read ({exc})")
            continue
        groups.setdefault(str(vg.get("id", vg_name)), []).append(device)
        names[str(vg.get("id", vg_name))] = vg_name

    volumes: list[Volume] = []
    for vg_id, devices in groups.items():
        vg_name = names[vg_id]
        try:
            lvm = LVM2(devices)
        except Exception as exc:
            skipped.append(f"volume group {vg_name}: cannot be assembled ({exc})")
            continue
        for lv_name, lv in lvm.volume_group.logical_volumes.items():
            volume, reason = _open_logical_volume(vg_name, lv_name, lv)
            if volume is not None:
                volumes.append(volume)
            elif reason is not None:
                skipped.append(f"{vg_name}/{lv_name}: {reason}")
    return volumes, skipped


def _open_logical_volume(vg_name: str, lv_name: str, lv: Any) -> tuple[Volume | None, str | None]:
    if not lv.is_visible or lv.type in ("thin-pool", "snapshot"):
        # Hidden LVs are parts of others (mirror legs, pool data); a pool holds no file system.
        # TODO: open snapshot LVs as the origin with the snapshot's changes applied.
        return None, None

    missing = [
        pv.name
        for segment in lv.segments
        for pv_name, _ in getattr(segment, "stripes", None) or []
        for pv in [lv.volume_group.physical_volumes[pv_name]]
        if pv.dev is None
    ]
    if missing:
        return None, (
            f"logical volume needs physical volume {', '.join(sorted(set(missing)))}, "
            "which is on no disk of this restore point"
        )
    try:
        stream = lv.open()
    except Exception as exc:
        return None, f"{lv.type} logical volume that openflr cannot read ({exc})"

    name = f"{vg_name}/{lv_name}"
    fs, reason = _open_filesystem(stream)
    if fs is None:
        return None, reason
    mapper = f"{vg_name.replace('-', '--')}-{lv_name.replace('-', '--')}"
    volume = _describe(name, fs, None, None)
    volume.devices = (f"/dev/mapper/{mapper}", f"/dev/{vg_name}/{lv_name}")
    return volume, None


def _describe(name: str, fs: Any, part: Any, signature: int | None) -> Volume:
    fs_type = str(getattr(fs, "__type__", "unknown"))
    uuid: str | None = None
    label: str | None = None
    if fs_type == "ext":
        uuid = str(fs.extfs.uuid)
        label = fs.extfs.volume_name or None
    elif fs_type == "xfs":
        uuid = str(fs.xfs.uuid)
        label = fs.xfs.name or None
    elif fs_type == "btrfs":
        uuid = str(fs.btrfs.uuid)
        label = fs.btrfs.label or None
    elif fs_type == "ntfs":
        label = getattr(fs.ntfs, "volume_name", None)
    elif fs_type == "fat":
        serial = f"{int(fs.fatfs.volume_id, 16):08X}"
        uuid = f"{serial[:4]}-{serial[4:]}"
        label = fs.fatfs.volume_label or None
    elif fs_type == "exfat":
        label = fs.exfat.volume_label or None
    part_type = str(getattr(part, "type", "") or "").lower()
    guid = getattr(part, "guid", None)
    offset = getattr(part, "offset", None)
    return Volume(
        name=name,
        fs=fs,
        fs_type=fs_type,
        uuid=uuid,
        label=label,
        is_efi=part_type == _EFI_SYSTEM,
        offset=offset if isinstance(offset, int) else None,
        disk_signature=signature,
        partition_guid=str(guid).lower() if guid else None,
    )
