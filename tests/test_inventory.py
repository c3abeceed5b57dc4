"""The surface around restore points: every emitted link answers, the query service, VM points."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from lxml import etree

from tests.conftest import PASSWORD, USER, Server, sha256, sha256_file
from tests.emclient import NS, EmClient, link, walk_to
from tests.fixtures import images

FOLLOWED = {"Up", "Down", "Alternate", "Related", "First", "Last", "Next", "Previous"}
IMAGE_POINTS = ["hugebox", "linbox", "mbrbox", "oddbox", "volbox", "winbox"]


def emitted_links(response: httpx.Response) -> list[tuple[str, str]]:
    """Every (Rel, Href) anywhere in an answer, XML or JSON."""
    if response.headers["content-type"].startswith("application/json"):
        found: list[tuple[str, str]] = []

        def visit(value: Any) -> None:
            if isinstance(value, dict):
                if "Rel" in value and "Href" in value:
                    found.append((value["Rel"], value["Href"]))
                for inner in value.values():
                    visit(inner)
            elif isinstance(value, list):
                for inner in value:
                    visit(inner)

        visit(response.json())
        return found
    root = etree.fromstring(response.content)
    return [(e.get("Rel"), e.get("Href")) for e in root.iter(f"{NS}Link")]


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
def test_every_link_the_server_emits_answers(server: Server, as_json: bool) -> None:
    client = EmClient(server.base, as_json=as_json)
    session = client.logon(USER, PASSWORD)
    client.mount(client.restore_point("volbox@"))  # so that tasks lead to a mount and listings

    headers = client._headers()
    start = link(session, "Up", "EnterpriseManager")
    queue = deque([(start, 0), (session["Href"], 0)])
    seen = {start, session["Href"]}
    checked = 0
    while queue and checked < 600:
        url, depth = queue.popleft()
        response = client.http.get(url, headers=headers)
        checked += 1
        assert response.status_code == 200, f"{url} -> {response.status_code}: {response.text}"
        if depth >= 5:
            continue
        for rel, href in emitted_links(response):
            if rel in FOLLOWED and href not in seen and "action=download" not in href:
                seen.add(href)
                queue.append((href, depth + 1))
    assert checked > 60, f"only {checked} links reached"
    client.logoff()


def query(client: EmClient, **params: str) -> httpx.Response:
    url = f"{client.base}query?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return client.http.get(url, headers=client._headers())


def names_of(client: EmClient, **params: str) -> list[str]:
    response = query(client, **params)
    assert response.status_code == 200, response.text
    result = client.parse(response)
    return [item["Name"] for item in result.get("Refs", [])]


@pytest.fixture()
def client(server: Server) -> EmClient:
    em = EmClient(server.base)
    em.logon(USER, PASSWORD)
    return em


def test_query_service_lists_the_queries(client: EmClient) -> None:
    service = client.get(f"{client.base}querySvc")
    assert service["Type"] == "QueryService"
    assert link(service, "Up", "LogonSession") == client.logon_session["Href"]  # type: ignore[index]
    assert "type=AgentRestorePoint" in link(service, "Down", "AgentRestorePointList")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("ComputerName==winbox", ["winbox"]),
        ('ComputerName=="winbox"', ["winbox"]),
        ("computername==WINBOX", ["winbox"]),
        (
            "ComputerName!=winbox;ComputerName!=linbox;ComputerName!=oddbox",
            ["hugebox", "mbrbox", "volbox"],
        ),
        ("ComputerName==winbox,ComputerName==linbox", ["linbox", "winbox"]),
        ("(ComputerName==winbox,ComputerName==linbox);Type==Full", ["linbox", "winbox"]),
        ("Type==Increment", []),
        ("Type>=Full", IMAGE_POINTS),
        ("CreationTime>=2026-11-30T22:00:00Z", IMAGE_POINTS),
        ("CreationTime<2026-11-30T22:00:00Z", []),
        ('Name=="winbox@2026-11-30 22:00:00"', ["winbox"]),
        ("BackupName==mbrbox", ["mbrbox"]),
    ],
)
def test_agent_restore_point_filters(
    client: EmClient, expression: str, expected: list[str]
) -> None:
    names = names_of(client, type="AgentRestorePoint", filter=expression, sortAsc="Name")
    assert [n.split("@")[0] for n in names] == expected


def test_quoted_values_double_their_quotes(client: EmClient) -> None:
    names = names_of(client, type="AgentRestorePoint", filter='ComputerName=="win""box"')
    assert names == []  # parses (no 400): a name with a quote in it matches nothing here


def test_sort_and_page(client: EmClient) -> None:
    response = query(client, type="AgentRestorePoint", sortDesc="name", pageSize="2", page="2")
    result = client.parse(response)
    assert [r["Name"].split("@")[0] for r in result["Refs"]] == ["oddbox", "mbrbox"]
    paging = result["PagingInfo"]
    assert (paging["PageNum"], paging["PageSize"], paging["PagesCount"]) == ("2", "2", "3")
    follow = client.parse(client.http.get(link(paging, "Next"), headers=client._headers()))
    assert [r["Name"].split("@")[0] for r in follow["Refs"]] == ["linbox", "hugebox"]


def test_query_entities_in_json(server: Server) -> None:
    client = EmClient(server.base, as_json=True)
    client.logon(USER, PASSWORD)
    response = query(
        client, type="AgentRestorePoint", format="Entities", filter="ComputerName==linbox"
    )
    data = response.json()
    (point,) = data["Entities"]["AgentRestorePoints"]["AgentRestorePoints"]
    assert point["Name"] == "linbox@2026-11-30 22:00:00"
    assert point["CreationTimeUTC"] == "2026-11-30T22:00:00Z"
    assert data["PagingInfo"]["PagesCount"] == 1


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "ComputerName=winbox",
            "filter: expected one of == != >= <= > < at position 13 (at '=winbox')",
        ),
        ("(ComputerName==winbox", "filter: missing ')' at position 22 (at 'the end')"),
        (
            'ComputerName=="winbox',
            "filter: unterminated quoted value at position 22 (at 'the end')",
        ),
        (
            "Colour==red",
            "filter: unknown field 'Colour' (fields: UID, Name, CreationTime, "
            "ComputerName, Type, Algorithm, RestorePointId, RestorePointName, "
            "BackupUid, BackupName, BackupFileUid, BackupFileName, BackupServerUid, "
            "BackupServerName) at position 1 (at 'Colour==red')",
        ),
        (
            "CreationTime>yesterday",
            "filter: CreationTime needs a UTC time like "
            "2026-11-30T22:00:00Z at position 23 (at 'the end')",
        ),
    ],
)
def test_malformed_filter_is_a_400_saying_where(
    client: EmClient, expression: str, message: str
) -> None:
    response = query(client, type="AgentRestorePoint", filter=expression)
    assert response.status_code == 400
    assert etree.fromstring(response.content).get("Message") == message


def test_unknown_query_type_is_a_400(client: EmClient) -> None:
    response = query(client, type="Spaceship")
    assert response.status_code == 400
    assert "Unknown query type 'Spaceship'" in etree.fromstring(response.content).get("Message")


def test_task_query_filters_this_sessions_tasks(client: EmClient) -> None:
    client.mount(client.restore_point("volbox@"))
    response = query(
        client,
        type="Task",
        format="Entities",
        filter="Operation==MountRestorePoint;State==Finished",
    )
    tasks = client.parse(response)["Entities"]["Tasks"]
    assert len(tasks) == 1 and tasks[0]["Operation"] == "MountRestorePoint"


def test_navigation_from_backup_to_restore_point(client: EmClient) -> None:
    agents = client.get(link(client.logon_session, "Down", "AgentsService"))  # type: ignore[arg-type]
    backups = client.get(link(agents, "Down", "BackupReferenceList"))
    winbox = next(b for b in backups if b["Name"] == "winbox")
    moments = client.get(link(winbox, "Down", "RestorePointReferenceList"))
    assert [m["Name"] for m in moments] == ["Nov 30 2026 10:00PM"]
    points = client.get(link(moments[0], "Down", "AgentRestorePointReferenceList"))
    assert [p["Name"] for p in points] == ["winbox@2026-11-30 22:00:00"]
    files = client.get(link(winbox, "Down", "BackupFileReferenceList"))
    entity = client.get(link(files[0], "Alternate", "BackupFile"))
    assert entity["FilePath"] == "winbox/2026-11-30T220000Z"


def test_discovered_computers_are_the_agent_machines(client: EmClient) -> None:
    computers = client.get(f"{client.base}agents/discoveredComputers?format=Entity")
    assert sorted(c["Name"] for c in computers) == IMAGE_POINTS
    one = client.get(computers[0]["Href"])
    assert one["Type"] == "DiscoveredComputer" and one["HostStatus"] == "Offline"


def test_backup_server_is_this_server(client: EmClient) -> None:
    (ref,) = client.get(f"{client.base}backupServers")
    entity = client.get(link(ref, "Alternate", "BackupServer"))
    assert entity["UID"] == ref["UID"] and entity["Version"].startswith("openflr ")


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
def test_vm_restore_point_flow_is_byte_exact(
    server: Server, source_tree: Path, as_json: bool
) -> None:
    client = EmClient(server.base, as_json=as_json)
    client.logon(USER, PASSWORD)
    assert [r["Name"] for r in client.restore_points("Vm")] == ["vmbox@2026-11-30 22:00:00"]
    assert "vmbox" not in [r["Name"].split("@")[0] for r in client.restore_points()]
    point = client.restore_point("vmbox@", kind="Vm")
    assert point["Type"] == "VmRestorePoint" and point["VmName"] == "vmbox"

    body = (
        json.dumps({"OsKind": "Linux"})
        if as_json
        else (
            '<VmRestorePointMountSpec xmlns="http://www.veeam.com/ent/v1.0">'
            "<OsKind>Linux</OsKind></VmRestorePointMountSpec>"
        )
    )
    content_type = "application/json" if as_json else "application/xml"
    mount = client.mount(point, content=body, headers={"Content-Type": content_type})
    assert mount["Type"] == "VmRestorePointMount"
    assert "/vmRestorePoints/" in mount["Href"]

    for name in (images.BIG_NAME, images.NFC_NAME, images.DEEP_LEAF):
        entry = walk_to(client, mount, f"/{name}")
        data = client.restore_for_download(entry).content
        assert sha256(data) == sha256_file(source_tree / name)

    client.request("DELETE", link(mount, "Delete"), 204)
    client.logoff()


def test_vm_and_agent_ids_do_not_cross(client: EmClient) -> None:
    vm = client.restore_points("Vm")[0]
    guid = vm["UID"].rsplit(":", 1)[1]
    response = client.http.get(
        f"{client.base}agents/agentRestorePoints/{guid}", headers=client._headers()
    )
    assert response.status_code == 404
    assert etree.fromstring(response.content).get("Message") == (f"No agent restore point {guid}.")


def test_lookup_finds_vms_by_name(client: EmClient) -> None:
    items = client.get(f"{client.base}lookup?type=Vm&name=VMBOX")
    assert [i["ObjectName"] for i in items] == ["vmbox"]
    assert client.get(f"{client.base}lookup?type=Vm&name=nothing") == []
