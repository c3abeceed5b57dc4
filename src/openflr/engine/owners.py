"""Windows owners: the owner SID of an NTFS file's security descriptor, named as the guest did.

An NTFS file names its security descriptor by a number (``security_id`` in its
``$STANDARD_INFORMATION``); the descriptors live once per volume in ``$Secure``. The owner is a
SID, which becomes an account name from, in order:

1. the guest's accounts Veeam recorded beside the disks (``GuestMembers.xml`` in a ``.vbk``);
2. the local accounts and groups in the guest's ``SAM`` hive, on its system volume;
3. the SIDs every Windows has (``SYSTEM``, ``Administrators``, ``TrustedInstaller`` ...).

A SID none of them names is shown as itself (``S-1-5-21-...-1105``): a domain account, most
likely, whose name only its domain controller knows.

Local accounts and well-known SIDs are shown by name alone, as Enterprise Manager shows owners
(``Administrators``); an account of another domain keeps its domain (``CORP\\alice``).
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterable
from typing import Any

from lxml import etree

log = logging.getLogger(__name__)

__all__ = ["WindowsAccounts", "ntfs_security_ids", "read_guest_members"]

#: Where a Windows volume keeps its SAM hive (local accounts).
SAM_HIVE = "/Windows/System32/config/SAM"
# A SAM hive is a few MiB at most; a bigger file is no hive to read.
_MAX_HIVE = 64 << 20

# SIDs with the same meaning on every Windows machine (Microsoft's "well-known SIDs" list).
WELL_KNOWN_SIDS = {
    "S-1-0-0": "NULL SID",
    "S-1-1-0": "Everyone",
    "S-1-3-0": "CREATOR OWNER",
    "S-1-3-1": "CREATOR GROUP",
    "S-1-3-4": "OWNER RIGHTS",
    "S-1-5-2": "NETWORK",
    "S-1-5-4": "INTERACTIVE",
    "S-1-5-6": "SERVICE",
    "S-1-5-7": "ANONYMOUS LOGON",
    "S-1-5-11": "Authenticated Users",
    "S-1-5-18": "SYSTEM",
    "S-1-5-19": "LOCAL SERVICE",
    "S-1-5-20": "NETWORK SERVICE",
    "S-1-5-32-544": "Administrators",
    "S-1-5-32-545": "Users",
    "S-1-5-32-546": "Guests",
    "S-1-5-32-547": "Power Users",
    "S-1-5-32-551": "Backup Operators",
    "S-1-5-32-555": "Remote Desktop Users",
    "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464": "TrustedInstaller",
    "S-1-15-2-1": "ALL APPLICATION PACKAGES",
}

# A machine's (or domain's) own SID: S-1-5-21 and three numbers; its accounts append a RID.
_DOMAIN_SID = re.compile(r"^(S-1-5-21-\d+-\d+-\d+)-(\d+)$")
_SID_PREFIX = bytes([1, 4, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0])

_FILE_RECORD = b"FILE"
_STANDARD_INFORMATION = 0x10
_END_OF_ATTRIBUTES = 0xFFFFFFFF
# $STANDARD_INFORMATION of NTFS 3.0 and later: 72 bytes, the security id at byte 52.
_SECURITY_ID_AT = 0x34
# Records read at once when their numbers are close: one read instead of one per record.
_RECORDS_PER_READ = 64


def read_guest_members(data: bytes) -> dict[str, str]:
    """The accounts of a Veeam ``GuestMembers.xml``: ``DOMAIN\\name`` by SID."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        log.warning("GuestMembers.xml is unreadable: %s", exc)
        return {}
    members: dict[str, str] = {}
    for member in root.iter("Member"):
        sid, name = member.get("Sid"), member.get("DomainAndName")
        if sid and name:
            members[sid.strip().upper()] = name.strip()
    return members


class WindowsAccounts:
    """Account names by SID for one restore point.

    Args:
        members: ``DOMAIN\\name`` by SID, as Veeam recorded the guest's accounts.
    """

    def __init__(self, members: dict[str, str] | None = None) -> None:
        self._qualified: dict[str, str] = dict(members or {})
        self._local_domains: set[str] = set()
        for sid in self._qualified:
            match = _DOMAIN_SID.match(sid)
            if match is not None and match.group(2) == "500":
                # The built-in Administrator (RID 500) belongs to the machine's own domain.
                self._local_domains.add(match.group(1))

    def add_sam(self, volume: Any) -> None:
        """Add the local accounts and groups of the SAM hive on a system volume, if it has one."""
        domain, names = _sam_accounts(volume)
        if domain is None:
            return
        self._local_domains.add(domain)
        for rid, name in names.items():
            self._qualified.setdefault(f"{domain}-{rid}", name)

    def name(self, sid: str) -> str:
        """The account name for a SID, or the SID itself where the guest does not name it."""
        well_known = WELL_KNOWN_SIDS.get(sid)
        if well_known is not None:
            return well_known
        qualified = self._qualified.get(sid)
        if qualified is None:
            return sid
        domain, _, name = qualified.rpartition("\\")
        match = _DOMAIN_SID.match(sid)
        if not domain or (match is not None and match.group(1) in self._local_domains):
            return name
        return qualified


def ntfs_security_ids(ntfs: Any, segments: Iterable[int]) -> dict[int, int]:
    """The ``security_id`` of each MFT record, read from the records' raw bytes.

    A listing asks for one per entry; parsing whole records through dissect.ntfs costs about
    0.15 ms each, while this reads neighbouring records in one read and looks at 4 bytes of
    each. Records that are not in use or carry no NTFS 3.0 ``$STANDARD_INFORMATION`` are left
    out.

    Args:
        ntfs: A ``dissect.ntfs.NTFS``.
        segments: MFT record numbers.
    """
    size = int(ntfs._record_size)
    mft = ntfs.mft.fh
    wanted = sorted(set(segments))
    found: dict[int, int] = {}
    at = 0
    while at < len(wanted):
        first = wanted[at]
        last = at
        while last + 1 < len(wanted) and wanted[last + 1] < first + _RECORDS_PER_READ:
            last += 1
        count = wanted[last] - first + 1
        mft.seek(first * size)
        block = mft.read(count * size)
        for segment in wanted[at : last + 1]:
            start = (segment - first) * size
            security_id = _record_security_id(block[start : start + size])
            if security_id is not None:
                found[segment] = security_id
        at = last + 1
    return found


def _record_security_id(record: bytes) -> int | None:
    """The security id in one raw MFT record, or None."""
    if len(record) < 0x30 or record[:4] != _FILE_RECORD:
        return None
    (flags,) = struct.unpack_from("<H", record, 0x16)
    if not flags & 1:
        return None  # not in use
    (at,) = struct.unpack_from("<H", record, 0x14)
    while at + 0x18 <= len(record):
        kind, length = struct.unpack_from("<II", record, at)
        if kind == _END_OF_ATTRIBUTES or length < 0x18:
            return None
        if kind == _STANDARD_INFORMATION:
            if record[at + 8] != 0:
                return None  # non-resident: never so in a sound volume
            content_length, content_at = struct.unpack_from("<IH", record, at + 0x10)
            position = at + content_at + _SECURITY_ID_AT
            if content_length < _SECURITY_ID_AT + 4 or position + 4 > len(record):
                return None  # NTFS 1.x: no security id
            if position % 512 > 506:
                return None  # it would overlap a sector's fixup slot (its last two bytes)
            return int(struct.unpack_from("<I", record, position)[0])
        if kind > _STANDARD_INFORMATION:
            return None  # attributes are sorted by type
        at += length
    return None


def _sam_accounts(volume: Any) -> tuple[str | None, dict[int, str]]:
    """The machine's domain SID and its local account and group names by RID, from SAM."""
    from dissect.regf import RegistryHive

    try:
        entry = volume.fs.get(SAM_HIVE)
        if entry.stat().st_size > _MAX_HIVE:
            log.warning("%s: %s is too large for a hive; owners stay SIDs", volume.name, SAM_HIVE)
            return None, {}
        hive = RegistryHive(entry.open())
        account = hive.open("SAM\\Domains\\Account")
        v = account.value("V").value
        at = v.find(_SID_PREFIX) if isinstance(v, bytes) else -1
        if at < 0 or at + len(_SID_PREFIX) + 12 > len(v):
            log.warning("%s: SAM holds no machine SID; owners stay SIDs", volume.name)
            return None, {}
        numbers = struct.unpack_from("<III", v, at + len(_SID_PREFIX))
        domain = "S-1-5-21-" + "-".join(str(n) for n in numbers)
        names: dict[int, str] = {}
        for folder in ("Users\\Names", "Aliases\\Names", "Groups\\Names"):
            try:
                key = account.subkey(folder.split("\\")[0]).subkey("Names")
            except Exception:
                continue
            for named in key.subkeys():
                # The RID is the type of the key's default value, not its data.
                default = next(iter(named.values()), None)
                if default is not None and named.name:
                    names.setdefault(int(default.type), named.name)
        return domain, names
    except FileNotFoundError:
        return None, {}
    except Exception as exc:
        # A damaged or foreign hive must not stop the mount: owners then stay SIDs.
        log.warning("%s: cannot read accounts from %s: %s", volume.name, SAM_HIVE, exc)
        return None, {}
