"""A client that knows only the Enterprise Manager API docs: it follows links by ``Rel``.

It speaks XML (the default) or JSON (``Accept: application/json``) and turns either answer into
the same plain data, so one test drives both formats:

- a collection becomes a list of items;
- an item becomes a dict of its attributes and child elements, with ``Links`` as a list of link
  dicts and list elements (``Files``, ``Directories``, ``FSRoots``) as lists of items.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from lxml import etree

NS = "{http://www.veeam.com/ent/v1.0}"
_ENTITY_LISTS = {
    "AgentRestorePoints", "VmRestorePoints", "Tasks", "AgentRestorePointMounts",
    "VmRestorePointMounts", "LogonSessions", "BackupServers", "Backups", "BackupFiles",
    "RestorePoints", "DiscoveredComputers", "HierarchyItems",
}  # fmt: skip
_COLLECTIONS = {"EntityReferences", *_ENTITY_LISTS}
_LISTS = {"Files", "Directories", "FSRoots", "SupportedVersions", "Refs", *_ENTITY_LISTS}


class ApiFailure(AssertionError):
    """An answer other than the one the flow expects."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            f"{response.request.method} {response.request.url} -> "
            f"{response.status_code}: {response.text[:500]}"
        )
        self.response = response


def _xml_item(element: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"_tag": etree.QName(element).localname, **element.attrib}
    for child in element:
        tag = etree.QName(child).localname
        if tag == "Links":
            item["Links"] = [dict(link.attrib) for link in child]
        elif tag in _LISTS:
            item[tag] = [_xml_item(c) for c in child]
        elif len(child) or child.attrib:
            item[tag] = _xml_item(child)
        else:
            item[tag] = child.text or ""
    return item


def _json_item(data: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for key, value in data.items():
        if key in _LISTS and isinstance(value, dict):
            (inner,) = value.values()
            item[key] = [_json_item(v) for v in inner]
        elif isinstance(value, dict):
            item[key] = _json_item(value)
        else:
            item[key] = value
    return item


def link(item: dict[str, Any], rel: str, type_: str | None = None) -> str:
    """The Href of the first link with this Rel (and Type, if given)."""
    for candidate in item.get("Links") or []:
        if candidate["Rel"] == rel and (type_ is None or candidate.get("Type") == type_):
            return str(candidate["Href"])
    raise AssertionError(f"no link Rel={rel} Type={type_} in {item.get('Links')}")


class EmClient:
    """One logged-on (or not yet) client of an Enterprise Manager compatible server.

    Args:
        base: The API entry point, ``http://127.0.0.1:9399/api/``.
        as_json: Ask for JSON instead of XML.
    """

    def __init__(self, base: str, as_json: bool = False) -> None:
        self.base = base
        self.as_json = as_json
        self.http = httpx.Client(timeout=120)
        self.token: str | None = None
        self.logon_session: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"} if self.as_json else {}
        if self.token:
            headers["X-RestSvcSessionId"] = self.token
        return headers

    def parse(self, response: httpx.Response) -> Any:
        if self.as_json:
            assert response.headers["content-type"].startswith("application/json"), response.text
            data = response.json()
            if len(data) == 1:
                ((key, value),) = data.items()
                if isinstance(value, list):
                    return [_json_item(v) for v in value]
            return _json_item(data)
        assert response.headers["content-type"].startswith("application/xml"), response.text
        root = etree.fromstring(response.content)
        if etree.QName(root).localname in _COLLECTIONS:
            return [_xml_item(c) for c in root]
        return _xml_item(root)

    def request(self, method: str, url: str, expect: int = 200, **kwargs: Any) -> Any:
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        response = self.http.request(method, url, headers=headers, **kwargs)
        if response.status_code != expect:
            raise ApiFailure(response)
        return response

    def get(self, url: str, expect: int = 200) -> Any:
        return self.parse(self.request("GET", url, expect))

    def logon(self, user: str, password: str) -> dict[str, Any]:
        entry = self.get(self.base)
        logon_url = link(entry, "Create", "LogonSession")
        response = self.request("POST", logon_url, 201, auth=(user, password))
        self.token = response.headers["X-RestSvcSessionId"]
        self.logon_session = self.parse(response)
        return self.logon_session

    def restore_points(self, kind: str = "Agent") -> list[dict[str, Any]]:
        """References to the agent (``kind="Agent"``) or VM (``"Vm"``) restore points."""
        assert self.logon_session is not None
        if kind == "Vm":
            return self.get(link(self.logon_session, "Down", "VmRestorePointReferenceList"))
        agents = self.get(link(self.logon_session, "Down", "AgentsService"))
        return self.get(link(agents, "Down", "AgentRestorePointReferenceList"))

    def restore_point(self, name_prefix: str, kind: str = "Agent") -> dict[str, Any]:
        for ref in self.restore_points(kind):
            if ref["Name"].startswith(name_prefix):
                return self.get(link(ref, "Alternate", f"{kind}RestorePoint"))
        raise AssertionError(f"no restore point named {name_prefix}*")

    def wait(self, task: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while task["State"] != "Finished":
            assert time.monotonic() < deadline, f"task still {task['State']}"
            time.sleep(0.05)
            task = self.get(task["Href"])
        return task

    def mount(self, point: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        mount_type = f"{point['Type']}Mount"
        task = self.parse(self.request("POST", link(point, "Create", mount_type), 202, **kwargs))
        assert task["Operation"] == "MountRestorePoint"
        task = self.wait(task)
        result = task["Result"]
        assert str(result["Success"]).lower() == "true", result
        return self.get(link(task, "Related", mount_type))

    def list_all(self, directory: dict[str, Any]) -> list[dict[str, Any]]:
        """Every entry of a folder, following the Next links page by page."""
        url = next(
            link_["Href"]
            for link_ in directory["Links"]
            if link_["Rel"] == "Down" and "action=listAll" in link_["Href"]
        )
        return self.list_pages(url)

    def list_pages(self, url: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        while True:
            page = self.get(url)
            entries.extend(page.get("Files", []))
            entries.extend(page.get("Directories", []))
            try:
                url = link(page["PagingInfo"], "Next")
            except AssertionError:
                return entries

    def restore_for_download(self, entry: dict[str, Any]) -> httpx.Response:
        """Restore with ForDirectDownload, wait for the task, follow its Download link."""
        if self.as_json:
            body = b'{"ForDirectDownload": {}}'
            content_type = "application/json"
        else:
            body = (
                b'<FileRestoreSpec xmlns="http://www.veeam.com/ent/v1.0">'
                b"<ForDirectDownload/></FileRestoreSpec>"
            )
            content_type = "application/xml"
        task = self.parse(
            self.request(
                "POST",
                link(entry, "Restore"),
                202,
                content=body,
                headers={"Content-Type": content_type},
            )
        )
        assert task["Operation"] == "FileRestoreFromMountPoint"
        task = self.wait(task)
        assert str(task["Result"]["Success"]).lower() == "true", task
        return self.request("GET", link(task, "Download"))

    def logoff(self) -> None:
        assert self.logon_session is not None
        self.request("DELETE", link(self.logon_session, "Delete"), 204)


def walk_to(client: EmClient, mount: dict[str, Any], guest_path: str) -> dict[str, Any]:
    """Find an entry by following links only: FSRoot, then each folder's listAll pages."""
    roots = mount["FSRoots"]
    root = next((r for r in roots if guest_path.startswith(r["Path"]) and r["Path"] != "/"), None)
    if root is None:
        root = next(r for r in roots if r["Path"] == "/")
        rest = guest_path.lstrip("/")
    else:
        rest = guest_path[len(root["Path"]) :].lstrip("/")

    entries = client.list_pages(root["Href"])
    current: dict[str, Any] = root
    for name in [p for p in rest.split("/") if p]:
        current = next((e for e in entries if e["Name"] == name), None)  # type: ignore[assignment]
        assert current is not None, f"{name!r} not listed on the way to {guest_path!r}"
        if current["_tag" if "_tag" in current else "Type"] == "DirectoryEntry":
            entries = client.list_all(current)
    return current
