"""Resources around the restore points: backup server, backups, backup files, points in time,
discovered computers, and the query and lookup services."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openflr import __version__
from openflr.catalog import (
    Backup,
    BackupFile,
    Computer,
    PointInTime,
    RestorePoint,
    _Index,
    derived_id,
)
from openflr.representation.resources import Urls, point_type_name
from openflr.representation.tree import Collection, Field, Link, LinkList, ListOf, Node

__all__ = ["Server", "View", "this_server"]


@dataclass(frozen=True)
class Server:
    """This openflr server, shown as the one backup server behind every restore point."""

    id: str
    name: str


def this_server() -> Server:
    """The backup server resource for this machine; its id is stable for the host name."""
    name = socket.gethostname() or "openflr"
    return Server(derived_id("server", name.lower()), name)


@dataclass(frozen=True)
class View:
    """What builders need to link resources to each other: URLs, the catalog index, the server."""

    urls: Urls
    index: _Index
    server: Server

    @property
    def api(self) -> str:
        return self.urls.api

    # -- links ---------------------------------------------------------------------------------

    def server_link(self, rel: str = "Up") -> Link:
        return Link(
            rel,
            f"{self.api}/backupServers/{self.server.id}",
            "BackupServerReference",
            self.server.name,
        )

    def moment_link(self, moment: PointInTime, rel: str = "Up") -> Link:
        return Link(
            rel, f"{self.api}/restorePoints/{moment.id}", "RestorePointReference", moment.name
        )

    def file_link(self, item: BackupFile, rel: str = "Up") -> Link:
        return Link(rel, f"{self.api}/backupFiles/{item.id}", "BackupFileReference", item.name)

    def backup_link(self, backup: Backup, rel: str = "Up") -> Link:
        return Link(rel, f"{self.api}/backups/{backup.id}", "BackupReference", backup.name)

    def point_up_links(self, point: RestorePoint) -> list[Link]:
        """The ``Up`` links of an agent or VM restore point."""
        links = [self.server_link()]
        moment = self.index.moments.get(self.index.moment_of.get(point.id, ""))
        if moment is not None:
            links.append(self.moment_link(moment))
        item = self.index.files.get(derived_id("file", point.file_key))
        if item is not None:
            links.append(self.file_link(item))
        return links

    # -- backup server -------------------------------------------------------------------------

    def server_node(self, entity: bool, tag: str = "Ref") -> Node:
        href = f"{self.api}/backupServers/{self.server.id}"
        uid = f"urn:veeam:BackupServer:{self.server.id}"
        if not entity:
            return Node(
                tag,
                {
                    "UID": uid,
                    "Name": self.server.name,
                    "Href": href,
                    "Type": "BackupServerReference",
                },
                [
                    LinkList(
                        [
                            Link(
                                "Alternate",
                                f"{href}?format=Entity",
                                "BackupServer",
                                self.server.name,
                            )
                        ]
                    )
                ],
            )
        return Node(
            "BackupServer",
            {
                "Href": f"{href}?format=Entity",
                "Type": "BackupServer",
                "Name": self.server.name,
                "UID": uid,
            },
            [
                LinkList(
                    [
                        Link("Alternate", href, "BackupServerReference", self.server.name),
                        Link("Down", f"{self.api}/backups", "BackupReferenceList"),
                    ]
                ),
                Field("Description", "openflr: restore points read from backup repositories"),
                Field("Port", 9392),
                Field("Version", f"openflr {__version__}"),
            ],
        )

    # -- backups -------------------------------------------------------------------------------

    def backup_node(self, backup: Backup, entity: bool, tag: str = "Ref") -> Node:
        href = f"{self.api}/backups/{backup.id}"
        uid = f"urn:veeam:Backup:{backup.id}"
        links = [
            self.server_link(),
            Link("Down", f"{href}/restorePoints", "RestorePointReferenceList"),
            Link("Down", f"{href}/backupFiles", "BackupFileReferenceList"),
        ]
        if not entity:
            return Node(
                tag,
                {"UID": uid, "Name": backup.name, "Href": href, "Type": "BackupReference"},
                [
                    LinkList(
                        [*links, Link("Alternate", f"{href}?format=Entity", "Backup", backup.name)]
                    )
                ],
            )
        return Node(
            "Backup",
            {"Href": f"{href}?format=Entity", "Type": "Backup", "Name": backup.name, "UID": uid},
            [
                LinkList([*links, Link("Alternate", href, "BackupReference", backup.name)]),
                Field("Platform", "VMware" if backup.kind == "vm" else "EndPoint"),
                Field("BackupType", "VmBackup" if backup.kind == "vm" else "EndpointBackup"),
            ],
        )

    # -- backup files --------------------------------------------------------------------------

    def file_node(self, item: BackupFile, entity: bool, tag: str = "Ref") -> Node:
        href = f"{self.api}/backupFiles/{item.id}"
        uid = f"urn:veeam:BackupFile:{item.id}"
        backup = self.index.backups.get(item.backup_id)
        links = [self.backup_link(backup)] if backup is not None else []
        if not entity:
            return Node(
                tag,
                {"UID": uid, "Name": item.name, "Href": href, "Type": "BackupFileReference"},
                [
                    LinkList(
                        [
                            *links,
                            Link("Alternate", f"{href}?format=Entity", "BackupFile", item.name),
                        ]
                    )
                ],
            )
        suffix = item.name.rsplit(".", 1)[-1].lower() if "." in item.name else ""
        return Node(
            "BackupFile",
            {"Href": f"{href}?format=Entity", "Type": "BackupFile", "Name": item.name, "UID": uid},
            [
                LinkList([*links, Link("Alternate", href, "BackupFileReference", item.name)]),
                Field("FilePath", item.path),
                Field("BackupSize", item.size),
                Field("DataSize", item.size),
                Field("CreationTimeUtc", item.created),
                Field("FileType", suffix if suffix in ("vbk", "vib", "vrb") else "image"),
            ],
        )

    # -- points in time ------------------------------------------------------------------------

    def moment_node(self, moment: PointInTime, entity: bool, tag: str = "Ref") -> Node:
        href = f"{self.api}/restorePoints/{moment.id}"
        uid = f"urn:veeam:RestorePoint:{moment.id}"
        backup = self.index.backups.get(moment.backup_id)
        links = [self.server_link()]
        if backup is not None:
            links.append(self.backup_link(backup))
        kinds = {self.index.points[p].kind for p in moment.point_ids if p in self.index.points}
        if "agent" in kinds:
            links.append(
                Link("Down", f"{href}/agentRestorePoints", "AgentRestorePointReferenceList")
            )
        if "vm" in kinds:
            links.append(Link("Down", f"{href}/vmRestorePoints", "VmRestorePointReferenceList"))
        if not entity:
            return Node(
                tag,
                {"UID": uid, "Name": moment.name, "Href": href, "Type": "RestorePointReference"},
                [
                    LinkList(
                        [
                            *links,
                            Link("Alternate", f"{href}?format=Entity", "RestorePoint", moment.name),
                        ]
                    )
                ],
            )
        return Node(
            "RestorePoint",
            {
                "Href": f"{href}?format=Entity",
                "Type": "RestorePoint",
                "Name": moment.name,
                "UID": uid,
            },
            [
                LinkList([*links, Link("Alternate", href, "RestorePointReference", moment.name)]),
                Field("CreationTimeUTC", moment.created),
                Field("Type", moment.point_type),
            ],
        )

    # -- discovered computers ------------------------------------------------------------------

    def computer_node(self, computer: Computer, entity: bool, tag: str = "Ref") -> Node:
        href = f"{self.api}/agents/discoveredComputers/{computer.id}"
        uid = f"urn:veeam:DiscoveredComputer:{computer.id}"
        if not entity:
            return Node(
                tag,
                {
                    "UID": uid,
                    "Name": computer.name,
                    "Href": href,
                    "Type": "DiscoveredComputerReference",
                },
                [
                    LinkList(
                        [
                            self.server_link(),
                            Link(
                                "Alternate",
                                f"{href}?format=Entity",
                                "DiscoveredComputer",
                                computer.name,
                            ),
                        ]
                    )
                ],
            )
        return Node(
            "DiscoveredComputer",
            {
                "Href": f"{href}?format=Entity",
                "Type": "DiscoveredComputer",
                "Name": computer.name,
                "UID": uid,
            },
            [
                LinkList(
                    [
                        self.server_link(),
                        Link("Alternate", href, "DiscoveredComputerReference", computer.name),
                    ]
                ),
                Field("HostStatus", "Offline"),
                Field("AgentVersion", ""),
                Field("AgentStatus", "NotInstalled"),
                Field("OsVersion", ""),
                Field("IpAddress", ""),
                Field("HierarchyObjRef", uid),
            ],
        )

    # -- collections ---------------------------------------------------------------------------

    def references(self, nodes: Sequence[Node]) -> Collection:
        return Collection("EntityReferences", "Refs", list(nodes))

    def entities(self, root: str, nodes: Sequence[Node]) -> Collection:
        return Collection(root, root, list(nodes))

    # -- services ------------------------------------------------------------------------------

    def agents_service(self) -> Node:
        base = f"{self.api}/agents"
        links = []
        for path, kind, plural in (
            ("agentRestorePoints", "AgentRestorePoint", "AgentRestorePoint"),
            ("backups", "Backup", "Backup"),
            ("restorePoints", "RestorePoint", "RestorePoint"),
            ("backupFiles", "BackupFile", "BackupFile"),
            ("discoveredComputers", "DiscoveredComputer", "DiscoveredComputer"),
        ):
            links.append(Link("Down", f"{base}/{path}", f"{kind}ReferenceList"))
            links.append(Link("Down", f"{base}/{path}?format=Entity", f"{plural}List"))
        return Node("Agents", {"Href": base, "Type": "AgentsService"}, [LinkList(links)])

    def query_service(self, session_href: str) -> Node:
        q = f"{self.api}/query?type="
        by_name = "&format=Entities&sortAsc=name&pageSize=15&page=1"
        return Node(
            "QuerySvc",
            {"Href": f"{self.api}/querySvc", "Type": "QueryService"},
            [
                LinkList(
                    [
                        Link("Up", session_href, "LogonSession"),
                        Link("Down", f"{q}AgentRestorePoint{by_name}", "AgentRestorePointList"),
                        Link("Down", f"{q}VmRestorePoint{by_name}", "VmRestorePointList"),
                        Link("Down", f"{q}Task&format=Entities&pageSize=15&page=1", "TaskList"),
                        Link("Down", f"{q}BackupServer&format=Entities", "BackupServerList"),
                        Link("Down", f"{q}Backup{by_name}", "BackupList"),
                        Link(
                            "Down",
                            f"{q}RestorePoint&format=Entities&pageSize=15&page=1",
                            "RestorePointList",
                        ),
                        Link(
                            "Down",
                            f"{q}DiscoveredComputer&format=Entities&sortAsc=name",
                            "DiscoveredComputerList",
                        ),
                    ]
                )
            ],
        )

    def lookup_service(self, session_href: str) -> Node:
        return Node(
            "LookupSvc",
            {"Href": f"{self.api}/lookupSvc", "Type": "LookupService"},
            [
                LinkList(
                    [
                        Link("Up", session_href, "LogonSession"),
                        Link(
                            "Down",
                            f"{self.api}/lookup?host=urn:veeam:BackupServer:{self.server.id}"
                            "&type=Vm",
                            "HierarchyItemList",
                        ),
                    ]
                )
            ],
        )

    def hierarchy_items(self, names: Sequence[str]) -> Collection:
        items = [
            Node(
                "HierarchyItem",
                {"Type": "HierarchyItem"},
                [
                    Field("ObjectRef", f"urn:openflr:Vm:{derived_id('vm', name.lower())}"),
                    Field("ObjectType", "Vm"),
                    Field("ObjectName", name),
                ],
            )
            for name in names
        ]
        return Collection("HierarchyItems", "HierarchyItems", items)

    def query_result(
        self,
        nodes: Sequence[Node],
        entity_root: str | None,
        href: str,
        page: int,
        size: int,
        count: int,
        page_href: Any,
    ) -> Node:
        """``QueryResult``: ``Refs`` or ``Entities``, then paging (links built by ``page_href``)."""
        if entity_root is None:
            body: Node | ListOf = ListOf("Refs", "Refs", list(nodes))
        else:
            body = Node("Entities", {}, [ListOf(entity_root, entity_root, list(nodes))])
        paging = [Link("First", page_href(1))]
        if page > 1:
            paging.append(Link("Previous", page_href(min(page - 1, count))))
        if page < count:
            paging.append(Link("Next", page_href(page + 1)))
        paging.append(Link("Last", page_href(count)))
        return Node(
            "QueryResult",
            {"Href": href},
            [
                body,
                Node(
                    "PagingInfo",
                    {"PageNum": page, "PageSize": size, "PagesCount": count},
                    [LinkList(paging)],
                ),
            ],
        )


def kind_root(point: RestorePoint) -> str:
    """The plural root element of a point's entity collection."""
    return f"{point_type_name(point)}s"
