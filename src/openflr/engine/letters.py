"""Windows drive letters as the guest had them, read from its SYSTEM registry hive.

Windows keeps the letter of every basic volume in ``HKLM\\SYSTEM\\MountedDevices``: a value
``\\DosDevices\\D:`` whose data names the partition. On an MBR disk the data is 12 bytes, the
disk signature (4 bytes, little endian) then the partition's byte offset (8 bytes, little
endian); on a GPT disk it is ``DMIO:ID:`` followed by the partition's unique GUID (16 bytes, in
the GUID's mixed-endian binary form).

References:
    - Microsoft, "Mount Manager" (``MountedDevices`` values); the UEFI specification, GPT
      partition entry ``UniquePartitionGUID``.
"""

from __future__ import annotations

import logging
import re
import uuid

from openflr.engine.volumes import Volume

log = logging.getLogger(__name__)

__all__ = ["SYSTEM_HIVE", "registry_letters"]

#: Where a Windows volume keeps its SYSTEM hive.
SYSTEM_HIVE = "/Windows/System32/config/SYSTEM"

_DOS_DEVICE = re.compile(r"^\\DosDevices\\([A-Za-z]):$")
_GPT_PREFIX = b"DMIO:ID:"
# A SYSTEM hive is tens of MiB at most; a bigger file is no hive to read into memory.
_MAX_HIVE = 256 << 20


def registry_letters(system: Volume, volumes: list[Volume]) -> dict[int, str]:
    """Read the drive letters the guest gave its volumes from the system volume's hive.

    Args:
        system: The volume holding ``\\Windows``.
        volumes: The Windows volumes found on the restore point's disks.

    Returns:
        Drive letters (``"D:"``) by ``id()`` of the volume they name; empty where the hive is
        missing or unreadable, so the caller falls back to disk order.
    """
    values = _mounted_devices(system)
    letters: dict[int, str] = {}
    for letter, data in sorted(values.items()):
        volume = _volume_named(data, volumes)
        if volume is not None and id(volume) not in letters:
            letters[id(volume)] = f"{letter}:"
    log.debug("%s: drive letters from the registry: %s", system.name, sorted(letters.values()))
    return letters


def _mounted_devices(system: Volume) -> dict[str, bytes]:
    """The ``\\DosDevices\\X:`` values of ``MountedDevices``, by upper-case letter."""
    from dissect.regf import RegistryHive

    try:
        entry = system.fs.get(SYSTEM_HIVE)
        if entry.stat().st_size > _MAX_HIVE:
            log.warning(
                "%s: %s is too large for a hive; letters follow disk order",
                system.name,
                SYSTEM_HIVE,
            )
            return {}
        hive = RegistryHive(entry.open())
        key = hive.open("MountedDevices")
        found: dict[str, bytes] = {}
        for value in key.values():
            match = _DOS_DEVICE.match(value.name or "")
            if match is not None and isinstance(value.value, bytes):
                found[match.group(1).upper()] = value.value
        return found
    except FileNotFoundError:
        return {}
    except Exception as exc:
        # A damaged or foreign hive must not stop the mount: letters then follow disk order.
        log.warning("%s: cannot read MountedDevices from %s: %s", system.name, SYSTEM_HIVE, exc)
        return {}


def _volume_named(data: bytes, volumes: list[Volume]) -> Volume | None:
    """The volume a ``MountedDevices`` value names, if it is one of ``volumes``."""
    if data.startswith(_GPT_PREFIX) and len(data) >= len(_GPT_PREFIX) + 16:
        guid = str(uuid.UUID(bytes_le=data[len(_GPT_PREFIX) : len(_GPT_PREFIX) + 16]))
        return next((v for v in volumes if v.partition_guid == guid), None)
    if len(data) == 12:
        signature = int.from_bytes(data[:4], "little")
        offset = int.from_bytes(data[4:], "little")
        return next(
            (v for v in volumes if v.disk_signature == signature and v.offset == offset), None
        )
    # Other forms name volumes Windows found by other means (removable media, dynamic disks).
    # TODO: read dynamic disks (LDM); their volumes are not found, so have no letter either.
    return None
