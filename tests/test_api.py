"""API rules real clients rely on: logon forms, versions, formats, errors, sessions, ranges."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import PASSWORD, USER, Server, sha256_file
from tests.emclient import NS, EmClient, link
from tests.fixtures import images

RESTORE_XML = (
    b'<FileRestoreSpec xmlns="http://www.veeam.com/ent/v1.0"><ForDirectDownload/></FileRestoreSpec>'
)


def logon(
    server: Server, user: str = USER, password: str = PASSWORD, url: str | None = None
) -> httpx.Response:
    return httpx.post(url or f"{server.base}sessionMngr/?v=latest", auth=(user, password))


def error_of(response: httpx.Response) -> dict[str, str]:
    root = etree.fromstring(response.content)
    assert root.tag == f"{NS}Error"
    return dict(root.attrib)


@pytest.fixture()
def client(server: Server) -> EmClient:
    em = EmClient(server.base)
    em.logon(USER, PASSWORD)
    return em


@pytest.fixture()
def mounted(client: EmClient) -> dict[str, object]:
    return client.mount(client.restore_point("winbox@"))


def test_entry_point_needs_no_logon_and_lists_versions(server: Server) -> None:
    response = httpx.get(server.base)
    assert response.status_code == 200
    root = etree.fromstring(response.content)
    assert root.tag == f"{NS}EnterpriseManager"
    create = root.find(f"{NS}Links/{NS}Link[@Rel='Create']")
    assert create is not None and create.get("Type") == "LogonSession"
    assert create.get("Href") == f"{server.base}sessionMngr/?v=latest"
    versions = [v.get("Name") for v in root.iter(f"{NS}SupportedVersion")]
    assert versions == ["v1_5", "v1_6", "v1_7"]


@pytest.mark.parametrize("form", [USER, f".\\{USER}", f"BACKUPSRV\\{USER}", f"{USER}@BACKUPSRV"])
def test_logon_accepts_every_local_account_form(server: Server, form: str) -> None:
    response = logon(server, user=form)
    assert response.status_code == 201
    token = response.headers["X-RestSvcSessionId"]
    assert len(token) >= 22
    assert f"X-RestSvcSessionId={token}" in response.headers["set-cookie"]
    assert "Path=/api" in response.headers["set-cookie"]
    session = etree.fromstring(response.content)
    assert session.findtext(f"{NS}UserName") == USER
    session_id = session.findtext(f"{NS}SessionId")
    assert response.headers["location"] == f"{server.base}logonSessions/{session_id}"
    assert token != session_id


@pytest.mark.parametrize(("user", "password"), [("nobody", PASSWORD), (USER, "wrong")])
def test_bad_credentials_get_401_with_basic_challenge(
    server: Server, user: str, password: str
) -> None:
    response = logon(server, user, password)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Basic Realm=RestSvc"
    assert "X-RestSvcSessionId" not in response.headers
    assert error_of(response) == {
        "Message": "The user name or password is incorrect.",
        "StatusCode": "401",
        "Status": "Unauthorized",
    }


def test_logon_without_credentials_gets_401(server: Server) -> None:
    response = httpx.post(f"{server.base}sessionMngr/?v=latest")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Basic Realm=RestSvc"
    assert error_of(response)["Message"] == "Log on with HTTP Basic authentication."


@pytest.mark.parametrize("query", ["", "?v=latest", "?v=v1_7", "?v=v1_4", "?v=V1_5", "?v=1.7"])
def test_logon_accepts_any_version_string(server: Server, query: str) -> None:
    assert logon(server, url=f"{server.base}sessionMngr/{query}").status_code == 201


def test_logon_refuses_a_version_that_is_no_version(server: Server) -> None:
    response = logon(server, url=f"{server.base}sessionMngr/?v=banana")
    assert response.status_code == 400
    assert error_of(response)["Message"] == (
        "Unknown API version 'banana': use v=latest or v1_5..v1_7."
    )


def test_session_cookie_alone_is_enough(server: Server) -> None:
    token = logon(server).headers["X-RestSvcSessionId"]
    response = httpx.get(f"{server.base}agents", headers={"Cookie": f"X-RestSvcSessionId={token}"})
    assert response.status_code == 200


def test_missing_and_bogus_tokens_get_401(server: Server) -> None:
    assert httpx.get(f"{server.base}agents").status_code == 401
    response = httpx.get(f"{server.base}agents", headers={"X-RestSvcSessionId": "bogus"})
    assert response.status_code == 401
    assert error_of(response)["Message"] == (
        "The logon session has expired or does not exist; log on again."
    )


@pytest.mark.parametrize(
    ("accept", "json_expected"),
    [
        (None, False),
        ("*/*", False),
        ("application/xml", False),
        ("text/xml", False),
        ("application/json", True),
        ("application/json, text/plain, */*", True),
        ("application/xml;q=0.9, application/json;q=0.1", True),
    ],
)
def test_accept_header_picks_the_format(
    client: EmClient, accept: str | None, json_expected: bool
) -> None:
    headers = {"X-RestSvcSessionId": client.token or ""}
    if accept is not None:
        headers["Accept"] = accept
    response = httpx.get(f"{client.base}agents", headers=headers)
    assert response.status_code == 200
    if json_expected:
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.json()["Type"] == "AgentsService"
    else:
        assert response.headers["content-type"] == "application/xml; charset=utf-8"
        assert etree.fromstring(response.content).tag == f"{NS}Agents"


@pytest.mark.parametrize(
    "body",
    [
        RESTORE_XML,
        b'<?xml version="1.0" encoding="utf-8"?>\n' + RESTORE_XML,
        b'<v:FileRestoreSpec xmlns:v="http://www.veeam.com/ent/v1.0">\n  <v:ForDirectDownload />'
        b"\n</v:FileRestoreSpec>\n",
        b"  \r\n<FileRestoreSpec><ForDirectDownload></ForDirectDownload></FileRestoreSpec>",
        b'{"ForDirectDownload": {}}',
        b'{"FileRestoreSpec": {"ForDirectDownload": null}}',
    ],
    ids=["plain", "declaration", "prefix", "whitespace", "json", "json-wrapped"],
)
@pytest.mark.parametrize(
    "content_type", [None, "application/xml", "text/xml; charset=utf-8", "application/json"]
)
def test_restore_body_is_read_whatever_its_declared_type(
    client: EmClient, mounted: dict[str, object], body: bytes, content_type: str | None
) -> None:
    headers = {"X-RestSvcSessionId": client.token or "", "Accept": "application/xml"}
    if content_type:
        headers["Content-Type"] = content_type
    url = f"{mounted['Href']}/C:/hello.txt?action=restore"
    response = httpx.post(url, content=body, headers=headers)
    assert response.status_code == 202, response.text
    task = etree.fromstring(response.content)
    assert task.findtext(f"{NS}Operation") == "FileRestoreFromMountPoint"


def test_json_body_without_accept_gets_a_json_answer(
    client: EmClient, mounted: dict[str, object]
) -> None:
    response = httpx.post(
        f"{mounted['Href']}/C:/hello.txt?action=restore",
        content=b'{"ForDirectDownload": {}}',
        headers={"X-RestSvcSessionId": client.token or ""},
    )
    assert response.status_code == 202
    assert response.json()["Operation"] == "FileRestoreFromMountPoint"


def test_bodyless_mount_post_with_zero_length_is_accepted(client: EmClient) -> None:
    point = client.restore_point("volbox@")
    response = httpx.post(
        link(point, "Create", "AgentRestorePointMount"),
        headers={"X-RestSvcSessionId": client.token or "", "Content-Length": "0"},
    )
    assert response.status_code == 202
    task = etree.fromstring(response.content)
    assert task.findtext(f"{NS}Operation") == "MountRestorePoint"
    assert task.findtext(f"{NS}State") in ("Running", "Finished")  # Finished: it took moments
    finished = client.wait(client.parse(response))
    assert str(finished["Result"]["Success"]).lower() == "true", finished["Result"]


def test_restore_to_original_location_is_refused_with_the_reason(
    client: EmClient, mounted: dict[str, object]
) -> None:
    body = (
        b'<FileRestoreSpec xmlns="http://www.veeam.com/ent/v1.0">'
        b'<ToOriginalLocation Overwrite="false"/></FileRestoreSpec>'
    )
    response = client.http.post(
        f"{mounted['Href']}/C:/hello.txt?action=restore",
        content=body,
        headers={"X-RestSvcSessionId": client.token or ""},
    )
    assert response.status_code == 400
    assert error_of(response)["Message"].startswith(
        "Restore to the original location is not supported: openflr cannot reach the "
        "protected machine."
    )


def test_malformed_restore_bodies_get_400(client: EmClient, mounted: dict[str, object]) -> None:
    url = f"{mounted['Href']}/C:/hello.txt?action=restore"
    headers = {"X-RestSvcSessionId": client.token or "", "Accept": "application/xml"}
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa">]>'
        b"<FileRestoreSpec>&a;</FileRestoreSpec>"
    )
    for body in (b"<FileRestoreSpec>", b'{"ForDirectDownload": ', bomb, b"hello"):
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 400, body
        assert error_of(response)["StatusCode"] == "400"


def test_errors_have_the_error_shape_in_json_too(client: EmClient) -> None:
    headers = {"X-RestSvcSessionId": client.token or "", "Accept": "application/json"}
    response = httpx.get(
        f"{client.base}agents/agentRestorePoints/00000000-0000-0000-0000-000000000000",
        headers=headers,
    )
    assert response.status_code == 404
    assert response.json() == {
        "FirstChanceExceptionMessage": None,
        "StackTrace": None,
        "Message": "No agent restore point 00000000-0000-0000-0000-000000000000.",
        "StatusCode": 404,
        "Status": "NotFound",
    }
    unknown = httpx.get(f"{client.base}no/such/resource", headers=headers)
    assert unknown.status_code == 404 and unknown.json()["Status"] == "NotFound"
    wrong_method = httpx.put(f"{client.base}agents", headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.json()["StatusCode"] == 405


def test_restore_point_id_in_urn_form_and_any_case(client: EmClient) -> None:
    point = client.restore_point("winbox@")
    guid = point["UID"].rsplit(":", 1)[1]
    for form in (guid.upper(), point["UID"], "{" + guid + "}"):
        entity = client.get(f"{client.base}agents/agentRestorePoints/{form}?format=Entity")
        assert entity["UID"] == point["UID"]


def test_api_names_in_any_case_and_with_trailing_slash(client: EmClient) -> None:
    refs = client.get(f"{client.base}Agents/AgentRestorePoints/")
    assert len(refs) == len(client.restore_points())


def test_unknown_query_keys_and_escaped_ampersands_are_forgiven(
    client: EmClient, mounted: dict[str, object]
) -> None:
    url = f"{mounted['Href']}/C:/many?action=listFiles&amp;pageSize=7&amp;page=2&foo=bar"
    page = client.get(url)
    assert page["PagingInfo"]["PageSize"] == "7"
    assert [f["Name"] for f in page["Files"]] == [f"f{i:05d}.txt" for i in range(7, 14)]


def test_page_size_above_the_maximum_is_clamped_and_shown(
    client: EmClient, mounted: dict[str, object]
) -> None:
    page = client.get(f"{mounted['Href']}/C:/many?action=listFiles&pageSize=50000")
    assert page["PagingInfo"]["PageSize"] == "10000"
    assert len(page["Files"]) == 2500


def test_bad_page_numbers_get_400(client: EmClient, mounted: dict[str, object]) -> None:
    for query in ("pageSize=0", "page=-1", "pageSize=ten"):
        response = client.http.get(
            f"{mounted['Href']}/C:/many?action=listAll&{query}", headers=client._headers()
        )
        assert response.status_code == 400, query


def test_range_requests_return_exact_slices(
    client: EmClient, mounted: dict[str, object], source_tree: Path
) -> None:
    url = f"{mounted['Href']}/C:/big/big.bin?action=download"
    data = (source_tree / images.BIG_NAME).read_bytes()
    headers = client._headers()
    middle = httpx.get(url, headers={**headers, "Range": "bytes=1000000-1000099"})
    assert middle.status_code == 206
    assert middle.headers["content-range"] == f"bytes 1000000-1000099/{len(data)}"
    assert middle.content == data[1000000:1000100]
    tail = httpx.get(url, headers={**headers, "Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    outside = httpx.get(url, headers={**headers, "Range": f"bytes={len(data)}-"})
    assert outside.status_code == 416
    # No range of an empty file can be given: it comes whole (found by a review: 206 with
    # "Content-Range: bytes 0--1/0").
    for asked in ("bytes=-5", "bytes=0-", "bytes=0-0"):
        empty = httpx.get(
            f"{mounted['Href']}/C:/empty.bin?action=download", headers={**headers, "Range": asked}
        )
        assert (empty.status_code, empty.content) == (200, b""), asked
        assert "content-range" not in empty.headers
    assert outside.headers["content-range"] == f"bytes */{len(data)}"
    # A range whose end lies before its start is invalid, and ignored (RFC 9110 14.2).
    backwards = httpx.get(url, headers={**headers, "Range": "bytes=5-2"})
    assert backwards.status_code == 200 and backwards.content == data


def test_download_names_the_file_in_content_disposition(
    client: EmClient, mounted: dict[str, object], source_tree: Path
) -> None:
    url = f"{mounted['Href']}/C:/{images.NFC_NAME}?action=download"
    response = client.http.get(url, headers=client._headers())
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="na_ve r_sum_.txt"')
    assert "filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.txt" in disposition
    assert response.content == (source_tree / images.NFC_NAME).read_bytes()


def test_mounts_and_tasks_are_invisible_to_other_sessions(
    server: Server, client: EmClient, mounted: dict[str, object]
) -> None:
    other = EmClient(server.base)
    other.logon(USER, PASSWORD)
    assert other.http.get(str(mounted["Href"]), headers=other._headers()).status_code == 404
    listing = f"{mounted['Href']}/C:?action=listAll"
    assert other.http.get(listing, headers=other._headers()).status_code == 404
    mine = client.get(f"{client.base}tasks")
    assert mine and other.get(f"{client.base}tasks") == []
    task_url = mine[0]["Href"]
    assert other.http.get(task_url, headers=other._headers()).status_code == 404
    assert other.http.delete(task_url, headers=other._headers()).status_code == 404
    assert other.http.delete(str(mounted["Href"]), headers=other._headers()).status_code == 404


def test_task_delete_removes_it(client: EmClient) -> None:
    point = client.restore_point("volbox@")
    task = client.wait(
        client.parse(client.request("POST", link(point, "Create", "AgentRestorePointMount"), 202))
    )
    client.request("DELETE", task["Href"], 204)
    assert client.http.get(task["Href"], headers=client._headers()).status_code == 404


def test_logoff_releases_the_mount_for_good(server: Server) -> None:
    first = EmClient(server.base)
    first.logon(USER, PASSWORD)
    point = first.restore_point("volbox@")
    mount = first.mount(point)
    first.logoff()
    assert first.http.get(str(mount["Href"]), headers=first._headers()).status_code == 401

    second = EmClient(server.base)
    second.logon(USER, PASSWORD)
    assert second.get(link(point, "Down", "AgentRestorePointMountList")) == []
    assert second.http.get(str(mount["Href"]), headers=second._headers()).status_code == 404


def test_idle_session_expires_and_releases_its_mount(tmp_path: Path, repository: Path) -> None:
    server = Server(tmp_path / "data", [repository], "--session-timeout", "2").start()
    try:
        client = EmClient(server.base)
        client.logon(USER, PASSWORD)
        point = client.restore_point("volbox@")
        mount = client.mount(point)
        time.sleep(3.5)
        stale = client.http.get(str(mount["Href"]), headers=client._headers())
        assert stale.status_code == 401
        assert error_of(stale)["Message"] == (
            "The logon session has expired or does not exist; log on again."
        )
        fresh = EmClient(server.base)
        fresh.logon(USER, PASSWORD)
        assert fresh.get(link(point, "Down", "AgentRestorePointMountList")) == []
        assert "ended (idle timeout)" in server.log()
    finally:
        server.stop()


def test_restart_keeps_users_sessions_tasks_and_mounts(
    tmp_path: Path, repository: Path, source_tree: Path
) -> None:
    server = Server(tmp_path / "data", [repository]).start()
    try:
        client = EmClient(server.base, as_json=True)
        client.logon(USER, PASSWORD)
        mount = client.mount(client.restore_point("winbox@"))
        tasks_before = client.get(f"{client.base}tasks")

        server.stop()
        server.start()

        assert client.get(f"{client.base}tasks") == tasks_before
        again = client.get(str(mount["Href"]))
        assert [r["Path"] for r in again["FSRoots"]] == ["C:", "D:"]
        data = client.http.get(
            f"{mount['Href']}/C:/hello.txt?action=download", headers=client._headers()
        ).content
        assert data == (source_tree / images.HELLO_NAME).read_bytes()
        assert "mount" in server.log() and "reopened" in server.log()
    finally:
        server.stop()


def test_every_request_is_logged_once_without_secrets(server: Server) -> None:
    response = logon(server)
    token = response.headers["X-RestSvcSessionId"]
    request_id = response.headers["x-request-id"]
    time.sleep(0.2)
    lines = [line for line in server.log().splitlines() if f"request {request_id} " in line]
    assert len(lines) == 1
    assert "POST /api/sessionMngr/ 201" in lines[0]
    assert token not in server.log() and PASSWORD not in server.log()


def test_openapi_description_is_published(server: Server) -> None:
    response = httpx.get(server.base.replace("/api/", "/openapi.json"))
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    assert "/api/agents/agentRestorePoints/{point_id}/mounts" in paths


def test_mount_download_of_sha_matches_source(
    client: EmClient, mounted: dict[str, object], source_tree: Path
) -> None:
    response = client.http.get(
        f"{mounted['Href']}/c:/BIG/BIG.BIN?action=download", headers=client._headers()
    )
    assert response.status_code == 200  # NTFS names are case-insensitive, as in the guest
    assert len(response.content) == (source_tree / images.BIG_NAME).stat().st_size
    assert (
        sha256_file(source_tree / images.BIG_NAME)
        == __import__("hashlib").sha256(response.content).hexdigest()
    )
