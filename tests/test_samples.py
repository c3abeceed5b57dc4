"""The real Veeam agent backups from ../shared/samples: names, times and bytes as documented."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD, USER, Server, sha256
from tests.emclient import EmClient, link


def names(client: EmClient) -> list[str]:
    return sorted(ref["Name"] for ref in client.restore_points())


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
def test_samples_are_listed_with_machine_name_and_utc_time(
    sample_server: Server, as_json: bool
) -> None:
    client = EmClient(sample_server.base, as_json=as_json)
    client.logon(USER, PASSWORD)
    assert names(client) == [
        "debian BackupJob1@2024-02-27 11:40:46",
        "localhost@2024-02-27 14:56:58",
        "z-lair@2024-09-16 13:49:08",
    ]
    increment = client.restore_point("z-lair@")
    assert increment["PointType"] == "Increment"
    assert increment["Algorithm"] == "Incremental"
    assert increment["CreationTimeUTC"] == "2024-09-16T13:49:08Z"
    client.logoff()


def test_linux_agent_volume_backup_restores_file_txt(sample_server: Server) -> None:
    client = EmClient(sample_server.base)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("debian BackupJob1@"))
    assert [r["Path"] for r in mount["FSRoots"]] == ["/"]

    listing = client.list_pages(mount["FSRoots"][0]["Href"])
    entry = next(e for e in listing if e["Name"] == "file.txt")
    assert entry["Path"] == "/file.txt"
    assert entry["Size"] == "78"
    assert entry["ModifiedDateUTC"] == "2024-02-27T11:36:27Z"  # mtime 1709033787
    data = client.restore_for_download(entry).content
    assert sha256(data) == "568f752826d47285aba097b3b70a956e77b8925ed7954af15c44d4853f6981d5"
    client.logoff()


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
def test_windows_agent_disk_backup_restores_both_files(
    sample_server: Server, as_json: bool
) -> None:
    client = EmClient(sample_server.base, as_json=as_json)
    client.logon(USER, PASSWORD)
    mount = client.mount(client.restore_point("localhost@"))
    assert [r["Path"] for r in mount["FSRoots"]] == ["C:"]

    listing = {e["Name"]: e for e in client.list_pages(mount["FSRoots"][0]["Href"])}
    assert "$MFT" not in listing  # NTFS metadata files are not guest files
    expected = {
        "henk.png": (267553, "139df58ea548918cd7783cee4c9834aa66ffb91ce8bcc489c1e82b95881957d5"),
        "testfile.txt": (118, "14eca084a0a5aeaede333ec897981da1cd341297af7e56d0c9e424fa5e19dcdc"),
    }
    for name, (size, digest) in expected.items():
        assert int(listing[name]["Size"]) == size
        assert sha256(client.restore_for_download(listing[name]).content) == digest
        # The owner SID S-1-5-21-1313081678-2233198605-520467585-1001 is the account
        # "DESKTOP-4V7D3ET\user" in the backup's GuestMembers.xml: a local account, by name.
        assert listing[name]["Owner"] == "user"
    client.logoff()


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
def test_incremental_without_its_chain_fails_to_mount_with_the_reason(
    sample_server: Server, as_json: bool
) -> None:
    client = EmClient(sample_server.base, as_json=as_json)
    client.logon(USER, PASSWORD)
    point = client.restore_point("z-lair@")
    task = client.parse(
        client.request("POST", link(point, "Create", "AgentRestorePointMount"), 202)
    )
    task = client.wait(task)
    assert task["State"] == "Finished"
    assert str(task["Result"]["Success"]).lower() == "false"
    message = task["Result"]["Message"]
    assert "incremental backup file" in message
    assert "windows-agent-increment.vib" in message
    assert "chain" in message
    assert client.get(link(point, "Down", "AgentRestorePointMountList")) == []
    client.logoff()


def test_restore_point_ids_are_stable_across_restarts(sample_server: Server) -> None:
    client = EmClient(sample_server.base)
    client.logon(USER, PASSWORD)
    before = {r["Name"]: r["UID"] for r in client.restore_points()}
    client.logoff()

    sample_server.stop()
    sample_server.start()
    client = EmClient(sample_server.base)
    client.logon(USER, PASSWORD)
    assert {r["Name"]: r["UID"] for r in client.restore_points()} == before
    client.logoff()
