"""One function per resource type: the neutral tree the encoders turn into XML or JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from openflr.catalog import RestorePoint, derived_id
from openflr.engine import GuestEntry
from openflr.representation.tree import (
    Collection,
    Field,
    Link,
    LinkList,
    ListOf,
    Node,
    Scalar,
)
from openflr.sessions import LogonSession
from openflr.tasks import Task

__all__ = [
    "SUPPORTED_VERSIONS",
    "Page",
    "Urls",
    "enterprise_manager",
    "error",
    "file_system_entries",
    "file_system_entry",
    "logon_session",
    "logon_sessions",
    "mount",
    "mounts",
    "restore_point_entities",
    "restore_point_entity",
    "restore_point_reference",
    "restore_point_references",
    "task",
    "tasks",
]

SUPPORTED_VERSIONS = ("v1_5", "v1_6", "v1_7")

# .NET's names for the status codes, as the real server puts them into Error.Status.
_STATUS_NAMES = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 411: "LengthRequired",
    413: "RequestEntityTooLarge", 415: "UnsupportedMediaType",
    416: "RequestedRangeNotSatisfiable", 422: "UnprocessableEntity",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalServerError", 501: "NotImplemented", 503: "ServiceUnavailable",
}  # fmt: skip


@dataclass(frozen=True)
class Urls:
    """Absolute URLs of the API, built on the address the client used (``https://host:9398/api``)."""

    api: str

    def restore_point(self, point: RestorePoint) -> str:
        if point.kind == "vm":
            return f"{self.api}/vmRestorePoints/{point.id}"
        return f"{self.api}/agents/agentRestorePoints/{point.id}"

    def mounts(self, point: RestorePoint) -> str:
        return f"{self.restore_point(point)}/mounts"

    def mount(self, point: RestorePoint, number: int) -> str:
        return f"{self.mounts(point)}/{number}"

    def guest(self, point: RestorePoint, number: int, guest_path: str) -> str:
        """The URL of a guest path; Linux paths keep their leading slash (``/mounts/1//etc``)."""
        encoded = quote(guest_path.encode("utf-8", "surrogateescape"), safe="/:")
        return f"{self.mount(point, number)}/{encoded}"

    def task(self, task: Task) -> str:
        return f"{self.api}/tasks/{task.task_id}"

    def logon_session(self, session: LogonSession) -> str:
        return f"{self.api}/logonSessions/{session.id}"


@dataclass(frozen=True)
class Page:
    """One page of a listing."""

    action: str
    size: int
    number: int
    count: int


def enterprise_manager(urls: Urls) -> Node:
    """The API entry point: where to log on, and which versions are spoken."""
    versions = [
        Node(
            "SupportedVersion",
            {"Name": v},
            [LinkList([Link("Create", f"{urls.api}/sessionMngr/?v={v}", "LogonSession")])],
        )
        for v in SUPPORTED_VERSIONS
    ]
    return Node(
        "EnterpriseManager",
        {"Href": f"{urls.api}/"},
        [
            LinkList(
                [
                    Link("Down", f"{urls.api}/logonSessions", "LogonSessionList"),
                    Link("Create", f"{urls.api}/sessionMngr/?v=latest", "LogonSession"),
                ]
            ),
            ListOf("SupportedVersions", "SupportedVersions", versions),
        ],
    )


def logon_session(urls: Urls, session: LogonSession) -> Node:
    """A logon session, with the catalogue of what the API offers (only what openflr serves)."""
    href = urls.logon_session(session)
    api = urls.api
    links = [
        Link("Up", f"{api}/", "EnterpriseManager"),
        Link("Down", f"{api}/backupServers", "BackupServerReferenceList"),
        Link("Down", f"{api}/backupServers?format=Entity", "BackupServerList"),
        Link("Down", f"{api}/backups", "BackupReferenceList"),
        Link("Down", f"{api}/backups?format=Entity", "BackupList"),
        Link("Down", f"{api}/restorePoints", "RestorePointReferenceList"),
        Link("Down", f"{api}/restorePoints?format=Entity", "RestorePointList"),
        Link("Down", f"{api}/vmRestorePoints", "VmRestorePointReferenceList"),
        Link("Down", f"{api}/vmRestorePoints?format=Entity", "VmRestorePointList"),
        Link("Down", f"{api}/backupFiles", "BackupFileReferenceList"),
        Link("Down", f"{api}/backupFiles?format=Entity", "BackupFileList"),
        Link("Down", f"{api}/tasks", "TaskList"),
        Link("Down", f"{api}/querySvc", "QueryService"),
        Link("Down", f"{api}/lookupSvc", "LookupService"),
        Link("Down", f"{api}/agents", "AgentsService"),
        Link("Down", f"{api}/agents/agentRestorePoints", "AgentRestorePointReferenceList"),
        Link("Down", f"{api}/agents/agentRestorePoints?format=Entity", "AgentRestorePointList"),
        Link("Delete", href, "LogonSession"),
    ]
    return Node(
        "LogonSession",
        {"Href": href, "Type": "LogonSession"},
        [LinkList(links), Field("UserName", session.user_name), Field("SessionId", session.id)],
    )


def logon_sessions(urls: Urls, sessions: list[LogonSession]) -> Collection:
    return Collection("LogonSessions", "LogonSessions", [logon_session(urls, s) for s in sessions])


def point_type_name(point: RestorePoint) -> str:
    """``AgentRestorePoint`` or ``VmRestorePoint``: the type a point's names derive from."""
    return "VmRestorePoint" if point.kind == "vm" else "AgentRestorePoint"


def restore_point_reference(
    urls: Urls, point: RestorePoint, up: Sequence[Link] = (), tag: str = "Ref"
) -> Node:
    """A restore point as a reference (``<Ref>`` in a list, ``<EntityRef>`` alone)."""
    href = urls.restore_point(point)
    kind = point_type_name(point)
    return Node(
        tag,
        {
            "UID": f"urn:veeam:{kind}:{point.id}",
            "Name": point.name,
            "Href": href,
            "Type": f"{kind}Reference",
        },
        [LinkList([*up, Link("Alternate", f"{href}?format=Entity", kind, point.name)])],
    )


def restore_point_references(
    urls: Urls, points: Sequence[RestorePoint], up: Callable[[RestorePoint], list[Link]]
) -> Collection:
    return Collection(
        "EntityReferences", "Refs", [restore_point_reference(urls, p, up(p)) for p in points]
    )


def restore_point_entity(urls: Urls, point: RestorePoint, up: Sequence[Link] = ()) -> Node:
    """A restore point in full: its time, kind, and the links to mount it."""
    href = urls.restore_point(point)
    kind = point_type_name(point)
    attrs: dict[str, Scalar] = {
        "Href": f"{href}?format=Entity",
        "Type": kind,
        "Name": point.name,
        "UID": f"urn:veeam:{kind}:{point.id}",
    }
    children: list[Node | Field | LinkList | ListOf] = [
        LinkList(
            [
                *up,
                Link("Alternate", href, f"{kind}Reference", point.name),
                Link("Down", urls.mounts(point), f"{kind}MountList"),
                Link("Create", urls.mounts(point), f"{kind}Mount"),
            ]
        ),
        Field("CreationTimeUTC", point.created),
    ]
    if point.kind == "vm":
        attrs["VmDisplayName"] = point.machine
        children.append(Field("VmName", point.machine))
    children += [Field("Algorithm", point.algorithm), Field("PointType", point.point_type)]
    if point.kind == "vm":
        vm_id = derived_id("vm", point.machine.lower())
        children.append(Field("HierarchyObjRef", f"urn:openflr:Vm:{vm_id}"))
    return Node(kind, attrs, children)


def restore_point_entities(
    urls: Urls,
    points: Sequence[RestorePoint],
    up: Callable[[RestorePoint], list[Link]],
    root: str = "AgentRestorePoints",
) -> Collection:
    return Collection(root, root, [restore_point_entity(urls, p, up(p)) for p in points])


def mount(urls: Urls, point: RestorePoint, number: int, roots: list[GuestEntry]) -> Node:
    """A mount: its delete link and one FSRoot per volume root."""
    href = urls.mount(point, number)
    kind = f"{point_type_name(point)}Mount"
    entries = [
        Node(
            "DirectoryEntry",
            {"Href": urls.guest(point, number, r.path), "Type": "DirectoryEntry"},
            [LinkList(None), Field("Path", r.path), Field("Name", r.name)],
        )
        for r in roots
    ]
    delete = Link("Delete", href, kind if point.kind == "vm" else None)
    return Node(
        kind,
        {"Href": href, "Type": kind},
        [LinkList([delete]), ListOf("FSRoots", "DirectoryEntries", entries)],
    )


def mounts(point_kind: str, items: list[Node]) -> Collection:
    root = "VmRestorePointMounts" if point_kind == "vm" else "AgentRestorePointMounts"
    return Collection(root, root, items)


def _listing_href(
    urls: Urls, point: RestorePoint, number: int, path: str, action: str, size: int, page: int
) -> str:
    return f"{urls.guest(point, number, path)}?action={action}&pageSize={size}&page={page}"


def _parent(path: str) -> str | None:
    if path in ("/", "") or ("/" not in path.rstrip("/")):
        return None
    parent = path.rstrip("/").rsplit("/", 1)[0]
    return parent or "/"


def _up_link(urls: Urls, point: RestorePoint, number: int, path: str) -> Link:
    parent = _parent(path)
    if parent is None:
        return Link("Up", urls.mount(point, number), f"{point_type_name(point)}Mount")
    return Link("Up", _listing_href(urls, point, number, parent, "listAll", 100, 1))


def file_system_entry(urls: Urls, point: RestorePoint, number: int, entry: GuestEntry) -> Node:
    """A ``FileEntry`` or ``DirectoryEntry`` with its links."""
    href = urls.guest(point, number, entry.path)
    up = _up_link(urls, point, number, entry.path)
    if entry.kind == "dir":
        return Node(
            "DirectoryEntry",
            {"Href": href, "Type": "DirectoryEntry"},
            [
                LinkList(
                    [
                        up,
                        Link("Down", f"{href}?action=listAll&pageSize=100&page=1"),
                        Link("Down", f"{href}?action=listDirs&pageSize=10&page=1"),
                        Link("Down", f"{href}?action=listFiles&pageSize=10&page=1"),
                        Link("Restore", f"{href}?action=restore"),
                    ]
                ),
                Field("Path", entry.path),
                Field("Name", entry.name),
            ],
        )
    modified = datetime.fromtimestamp(entry.mtime, UTC) if entry.mtime is not None else None
    return Node(
        "FileEntry",
        {"Href": href, "Type": "FileEntry"},
        [
            LinkList([up, Link("Restore", f"{href}?action=restore")]),
            Field("Path", entry.path),
            Field("Name", entry.name),
            Field("Size", entry.size),
            Field("Owner", entry.owner),
            Field("ModifiedDateUTC", modified),
        ],
    )


def file_system_entries(
    urls: Urls, point: RestorePoint, number: int, path: str, entries: list[GuestEntry], page: Page
) -> Node:
    """One page of a folder listing, with paging links."""

    def href(page_number: int) -> str:
        return _listing_href(urls, point, number, path, page.action, page.size, page_number)

    paging = [Link("First", href(1))]
    if page.number > 1:
        paging.append(Link("Previous", href(min(page.number - 1, page.count))))
    if page.number < page.count:
        paging.append(Link("Next", href(page.number + 1)))
    paging.append(Link("Last", href(page.count)))

    files = [file_system_entry(urls, point, number, e) for e in entries if e.kind != "dir"]
    folders = [file_system_entry(urls, point, number, e) for e in entries if e.kind == "dir"]
    children: list[Node | Field | LinkList | ListOf] = [
        LinkList([_up_link(urls, point, number, path)])
    ]
    if page.action in ("listAll", "listFiles"):
        children.append(ListOf("Files", "FileEntries", files))
    if page.action in ("listAll", "listDirs"):
        children.append(ListOf("Directories", "DirectoryEntries", folders))
    children.append(
        Node(
            "PagingInfo",
            {"PageNum": page.number, "PageSize": page.size, "PagesCount": page.count},
            [LinkList(paging)],
        )
    )
    return Node("FileSystemEntries", {"Href": href(page.number)}, children)


def task(urls: Urls, item: Task, related: list[Link]) -> Node:
    """A task; ``Result`` appears once it finished."""
    href = urls.task(item)
    result: Node | None = None
    if item.state == "Finished":
        result = Node(
            "Result",
            {"Success": bool(item.success)},
            [Field("Message", item.message or ("Ok" if item.success else "Failed"))],
        )
    children: list[Node | Field | LinkList | ListOf] = [
        LinkList([Link("Delete", href, "Task"), *related]),
        Field("TaskId", item.task_id),
        Field("State", item.state),
        Field("Operation", item.operation),
    ]
    if result is not None:
        children.append(result)
    return Node("Task", {"Href": href, "Type": "Task"}, children)


def tasks(items: list[Node]) -> Collection:
    return Collection("Tasks", "Tasks", items)


def error(status: int, message: str) -> Node:
    """The API's ``Error`` shape."""
    return Node(
        "Error",
        {"Message": message, "StatusCode": status, "Status": _STATUS_NAMES.get(status)},
        [Field("FirstChanceExceptionMessage", None), Field("StackTrace", None)],
    )
