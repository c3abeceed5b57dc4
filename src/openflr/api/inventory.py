"""Routes around the restore points: backup server, backups, backup files, points in time,
discovered computers, and the query and lookup services."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from openflr.api.common import entity_format, make_view, respond, task_tree
from openflr.api.errors import ApiError
from openflr.api.negotiation import query
from openflr.catalog import RestorePoint, parse_restore_point_id
from openflr.query import Field, QueryError, run_query
from openflr.representation import resources as rep
from openflr.representation.inventory import View
from openflr.representation.tree import Node
from openflr.services import Services
from openflr.sessions import LogonSession

log = logging.getLogger(__name__)

__all__ = ["QUERY_FIELDS", "Inventory"]

_POINT_TYPES = ("Full", "Increment", "ReverseIncrement")
_ALGORITHMS = ("Full", "ReversedIncremental", "Incremental", "SyntheticFull")

# Filter and sort fields per query type, as the API reference lists them.
QUERY_FIELDS: dict[str, tuple[Field, ...]] = {
    "AgentRestorePoint": (
        Field("UID"), Field("Name"), Field("CreationTime", "time"), Field("ComputerName"),
        Field("Type", "enum", _POINT_TYPES), Field("Algorithm", "enum", _ALGORITHMS),
        Field("RestorePointId"), Field("RestorePointName"), Field("BackupUid"),
        Field("BackupName"), Field("BackupFileUid"), Field("BackupFileName"),
        Field("BackupServerUid"), Field("BackupServerName"),
    ),
    "VmRestorePoint": (
        Field("UID"), Field("Name"), Field("CreationTime", "time"),
        Field("Type", "enum", _POINT_TYPES), Field("Algorithm", "enum", _ALGORITHMS),
        Field("RestorePointId"), Field("RestorePointName"), Field("VmDisplayName"),
        Field("BackupServerUid"), Field("BackupServerName"),
    ),
    "Task": (Field("TaskId"), Field("State"), Field("Operation")),
    "BackupServer": (Field("UID"), Field("Name")),
    "Backup": (Field("UID"), Field("Name"), Field("BackupServerUid"), Field("BackupServerName")),
    "BackupFile": (Field("UID"), Field("Name"), Field("BackupUid"), Field("BackupName"),
                   Field("CreationTime", "time")),
    "RestorePoint": (Field("UID"), Field("Name"), Field("CreationTime", "time"),
                     Field("Type", "enum", _POINT_TYPES), Field("BackupUid"),
                     Field("BackupName")),
    "DiscoveredComputer": (Field("UID"), Field("Name")),
}  # fmt: skip

_ENTITY_ROOTS = {
    "AgentRestorePoint": "AgentRestorePoints",
    "VmRestorePoint": "VmRestorePoints",
    "Task": "Tasks",
    "BackupServer": "BackupServers",
    "Backup": "Backups",
    "BackupFile": "BackupFiles",
    "RestorePoint": "RestorePoints",
    "DiscoveredComputer": "DiscoveredComputers",
}

Authenticate = Callable[[Request], Awaitable[LogonSession]]
Record = dict[str, Any]


class Inventory:
    """The read-only resources that lead clients to restore points."""

    def __init__(self, services: Services, authenticate: Authenticate) -> None:
        self.services = services
        self.authenticate = authenticate

    def register(self, app: FastAPI) -> None:
        add = app.add_api_route
        add("/api/backupServers", self.list_servers, methods=["GET"])
        add("/api/backupServers/{item_id}", self.get_server, methods=["GET"])
        for prefix in ("/api", "/api/agents"):
            add(f"{prefix}/backups", self.list_backups, methods=["GET"])
            add(f"{prefix}/backupFiles", self.list_files, methods=["GET"])
            add(f"{prefix}/restorePoints", self.list_moments, methods=["GET"])
        add("/api/backups/{item_id}", self.get_backup, methods=["GET"])
        add("/api/backups/{item_id}/restorePoints", self.backup_moments, methods=["GET"])
        add("/api/backups/{item_id}/backupFiles", self.backup_files, methods=["GET"])
        add("/api/backupFiles/{item_id}", self.get_file, methods=["GET"])
        add("/api/restorePoints/{item_id}", self.get_moment, methods=["GET"])
        add("/api/restorePoints/{item_id}/agentRestorePoints", self.moment_points, methods=["GET"])
        add("/api/restorePoints/{item_id}/vmRestorePoints", self.moment_points, methods=["GET"])
        add("/api/agents/discoveredComputers", self.list_computers, methods=["GET"])
        add("/api/agents/discoveredComputers/{item_id}", self.get_computer, methods=["GET"])
        add("/api/querySvc", self.query_service, methods=["GET"])
        add("/api/query", self.run_query, methods=["GET"], openapi_extra=_QUERY_PARAMETERS)
        add("/api/lookupSvc", self.lookup_service, methods=["GET"])
        add("/api/lookup", self.lookup, methods=["GET"])

    async def _view(self, request: Request) -> View:
        return (await self._session_view(request))[1]

    async def _session_view(self, request: Request) -> tuple[LogonSession, View]:
        """The logon session, and the view of the catalog its user may see."""
        session = await self.authenticate(request)
        access = await run_in_threadpool(self.services.users.access, session.user_name)
        return session, await run_in_threadpool(make_view, request, self.services, access)

    # -- backup server -------------------------------------------------------------------------

    async def list_servers(self, request: Request) -> Response:
        view = await self._view(request)
        if entity_format(request):
            return respond(request, view.entities("BackupServers", [view.server_node(True)]))
        return respond(request, view.references([view.server_node(False)]))

    async def get_server(self, request: Request, item_id: str) -> Response:
        view = await self._view(request)
        if parse_restore_point_id(item_id) != view.server.id:
            raise ApiError(404, f"No backup server {item_id}.")
        return respond(request, view.server_node(entity_format(request), tag="EntityRef"))

    # -- backups -------------------------------------------------------------------------------

    async def list_backups(self, request: Request) -> Response:
        view = await self._view(request)
        agents_only = request.scope["path"].startswith("/api/agents/")
        backups = [b for b in view.index.backups.values() if not agents_only or b.kind == "agent"]
        backups.sort(key=lambda b: (b.name.lower(), b.id))
        entity = entity_format(request)
        nodes = [view.backup_node(b, entity) for b in backups]
        return respond(
            request, view.entities("Backups", nodes) if entity else view.references(nodes)
        )

    async def get_backup(self, request: Request, item_id: str) -> Response:
        view = await self._view(request)
        backup = _find(view.index.backups, item_id, "backup")
        return respond(request, view.backup_node(backup, entity_format(request), "EntityRef"))

    async def backup_moments(self, request: Request, item_id: str) -> Response:
        view = await self._view(request)
        backup = _find(view.index.backups, item_id, "backup")
        moments = [m for m in view.index.moments.values() if m.backup_id == backup.id]
        return self._moments(request, view, moments)

    async def backup_files(self, request: Request, item_id: str) -> Response:
        view = await self._view(request)
        backup = _find(view.index.backups, item_id, "backup")
        files = [f for f in view.index.files.values() if f.backup_id == backup.id]
        return self._files(request, view, files)

    # -- backup files --------------------------------------------------------------------------

    async def list_files(self, request: Request) -> Response:
        view = await self._view(request)
        agents_only = request.scope["path"].startswith("/api/agents/")
        files = [
            f
            for f in view.index.files.values()
            if not agents_only or view.index.points[f.point_ids[0]].kind == "agent"
        ]
        return self._files(request, view, files)

    async def get_file(self, request: Request, item_id: str) -> Response:
        view = await self._view(request)
        item = _find(view.index.files, item_id, "backup file")
        return respond(request, view.file_node(item, entity_format(request), "EntityRef"))

    def _files(self, request: Request, view: View, files: list[Any]) -> Response:
        files.sort(key=lambda f: (f.created, f.name, f.id))
        entity = entity_format(request)
        nodes = [view.file_node(f, entity) for f in files]
        return respond(
            request, view.entities("BackupFiles", nodes) if entity else view.references(nodes)
        )

    # -- points in time ------------------------------------------------------------------------

    async def list_moments(self, request: Request) -> Response:
        view = await self._view(request)
        agents_only = request.scope["path"].startswith("/api/agents/")
        moments = [
            m
            for m in view.index.moments.values()
            if not agents_only or any(view.index.points[p].kind == "agent" for p in m.point_ids)
        ]
        return self._moments(request, view, moments)

    async def get_moment(self, request: Request, item_id: str) -> Response:
        view = await self._view(request)
        moment = _find(view.index.moments, item_id, "restore point")
        return respond(request, view.moment_node(moment, entity_format(request), "EntityRef"))

    async def moment_points(self, request: Request, item_id: str) -> Response:
        view = await self._view(request)
        moment = _find(view.index.moments, item_id, "restore point")
        kind = "vm" if request.scope["path"].endswith("/vmRestorePoints") else "agent"
        points = [
            view.index.points[p] for p in moment.point_ids if view.index.points[p].kind == kind
        ]
        from openflr.api.common import restore_points_tree

        return respond(request, restore_points_tree(view, points, entity_format(request), kind))

    def _moments(self, request: Request, view: View, moments: list[Any]) -> Response:
        moments.sort(key=lambda m: (m.created, m.id))
        entity = entity_format(request)
        nodes = [view.moment_node(m, entity) for m in moments]
        return respond(
            request, view.entities("RestorePoints", nodes) if entity else view.references(nodes)
        )

    # -- discovered computers ------------------------------------------------------------------

    async def list_computers(self, request: Request) -> Response:
        view = await self._view(request)
        computers = sorted(view.index.computers.values(), key=lambda c: (c.name.lower(), c.id))
        entity = entity_format(request)
        nodes = [view.computer_node(c, entity) for c in computers]
        return respond(
            request,
            view.entities("DiscoveredComputers", nodes) if entity else view.references(nodes),
        )

    async def get_computer(self, request: Request, item_id: str) -> Response:
        view = await self._view(request)
        computer = _find(view.index.computers, item_id, "discovered computer")
        return respond(request, view.computer_node(computer, entity_format(request), "EntityRef"))

    # -- query service -------------------------------------------------------------------------

    async def query_service(self, request: Request) -> Response:
        session, view = await self._session_view(request)
        return respond(request, view.query_service(f"{view.api}/logonSessions/{session.id}"))

    async def run_query(self, request: Request) -> Response:
        """``GET /api/query?type=...``: filter, sort and page one type of resource."""
        await self.authenticate(request)
        params = query(request)
        wanted = (params.get("type") or "").strip().lower()
        type_name = next((t for t in QUERY_FIELDS if t.lower() == wanted), None)
        if type_name is None:
            raise ApiError(
                400,
                f"Unknown query type {params.get('type')!r}: use one of {', '.join(QUERY_FIELDS)}.",
            )
        session, view = await self._session_view(request)
        records = await run_in_threadpool(self._records, request, view, type_name, session)
        try:
            page_records, number, size, count = run_query(records, QUERY_FIELDS[type_name], params)
        except QueryError as exc:
            raise ApiError(400, str(exc)) from exc

        entity = params.get("format", "").strip().lower() in ("entity", "entities")
        nodes = [r["_node"](entity) for r in page_records]

        def page_href(page: int) -> str:
            kept = {k: v for k, v in params.items() if k not in ("page", "pagesize")}
            parts = [f"{_QUERY_KEYS.get(k, k)}={quote(v, safe='')}" for k, v in kept.items()]
            parts += [f"pageSize={size}", f"page={page}"]
            return f"{view.api}/query?" + "&".join(parts)

        href = str(request.url)
        tree = view.query_result(
            nodes,
            _ENTITY_ROOTS[type_name] if entity else None,
            href,
            number,
            size,
            count,
            page_href,
        )
        return respond(request, tree)

    def _records(
        self, request: Request, view: View, type_name: str, session: LogonSession
    ) -> list[Record]:
        index = view.index
        server = {
            "BackupServerUid": f"urn:veeam:BackupServer:{view.server.id}",
            "BackupServerName": view.server.name,
        }
        if type_name in ("AgentRestorePoint", "VmRestorePoint"):
            kind = "vm" if type_name == "VmRestorePoint" else "agent"
            return [
                self._point_record(view, p, server)
                for p in sorted(index.points.values(), key=lambda p: (p.created, p.id))
                if p.kind == kind
            ]
        if type_name == "Task":
            tasks = self.services.tasks.list(session.id)
            return [
                {
                    "TaskId": t.task_id,
                    "State": t.state,
                    "Operation": t.operation,
                    "_node": lambda _e, t=t: task_tree(request, self.services, t),
                }
                for t in tasks
            ]
        if type_name == "BackupServer":
            return [
                {
                    "UID": f"urn:veeam:BackupServer:{view.server.id}",
                    "Name": view.server.name,
                    "_node": lambda e: view.server_node(e),
                }
            ]
        if type_name == "Backup":
            return [
                {
                    "UID": f"urn:veeam:Backup:{b.id}",
                    "Name": b.name,
                    **server,
                    "_node": lambda e, b=b: view.backup_node(b, e),
                }
                for b in index.backups.values()
            ]
        if type_name == "BackupFile":
            return [
                {
                    "UID": f"urn:veeam:BackupFile:{f.id}",
                    "Name": f.name,
                    "BackupUid": f"urn:veeam:Backup:{f.backup_id}",
                    "BackupName": index.backups[f.backup_id].name,
                    "CreationTime": f.created,
                    "_node": lambda e, f=f: view.file_node(f, e),
                }
                for f in index.files.values()
            ]
        if type_name == "RestorePoint":
            return [
                {
                    "UID": f"urn:veeam:RestorePoint:{m.id}",
                    "Name": m.name,
                    "CreationTime": m.created,
                    "Type": m.point_type,
                    "BackupUid": f"urn:veeam:Backup:{m.backup_id}",
                    "BackupName": index.backups[m.backup_id].name,
                    "_node": lambda e, m=m: view.moment_node(m, e),
                }
                for m in sorted(index.moments.values(), key=lambda m: (m.created, m.id))
            ]
        return [
            {
                "UID": f"urn:veeam:DiscoveredComputer:{c.id}",
                "Name": c.name,
                "_node": lambda e, c=c: view.computer_node(c, e),
            }
            for c in index.computers.values()
        ]

    def _point_record(self, view: View, point: RestorePoint, server: Record) -> Record:
        kind = rep.point_type_name(point)
        moment = view.index.moments.get(view.index.moment_of.get(point.id, ""))
        backup = view.index.backups.get(moment.backup_id) if moment else None
        record: Record = {
            "UID": f"urn:veeam:{kind}:{point.id}",
            "Name": point.name,
            "CreationTime": point.created,
            "ComputerName": point.machine,
            "VmDisplayName": point.machine,
            "Type": point.point_type,
            "Algorithm": point.algorithm,
            "RestorePointId": f"urn:veeam:RestorePoint:{moment.id}" if moment else None,
            "RestorePointName": moment.name if moment else None,
            "BackupUid": f"urn:veeam:Backup:{backup.id}" if backup else None,
            "BackupName": backup.name if backup else None,
            "BackupFileName": point.file_name,
            **server,
        }

        def node(entity: bool) -> Node:
            up = view.point_up_links(point)
            if entity:
                return rep.restore_point_entity(view.urls, point, up)
            return rep.restore_point_reference(view.urls, point, up)

        record["_node"] = node
        return record

    # -- lookup service ------------------------------------------------------------------------

    async def lookup_service(self, request: Request) -> Response:
        session, view = await self._session_view(request)
        return respond(request, view.lookup_service(f"{view.api}/logonSessions/{session.id}"))

    async def lookup(self, request: Request) -> Response:
        """``GET /api/lookup?host=...&type=Vm&name=...``: VMs of the repositories by name."""
        view = await self._view(request)
        params = query(request)
        kind = (params.get("type") or "Vm").strip().lower()
        if kind != "vm":
            raise ApiError(
                400, f"Lookup of type {params.get('type')!r} is not supported: use type=Vm."
            )
        wanted = (params.get("name") or "").strip().lower()
        names = sorted(
            {
                p.machine
                for p in view.index.points.values()
                if p.kind == "vm" and (not wanted or p.machine.lower() == wanted)
            },
            key=str.lower,
        )
        return respond(request, view.hierarchy_items(names))


_QUERY_PARAMETERS: dict[str, Any] = {
    "parameters": [
        {
            "name": "type",
            "in": "query",
            "required": True,
            "schema": {"type": "string", "enum": list(QUERY_FIELDS)},
        },
        *(
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in ("format", "filter", "sortAsc", "sortDesc")
        ),
        *(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
            }
            for name in ("pageSize", "page")
        ),
    ]
}

# The query string's canonical key spellings, for the paging links built from lower-cased keys.
_QUERY_KEYS = {
    "type": "type",
    "format": "format",
    "filter": "filter",
    "sortasc": "sortAsc",
    "sortdesc": "sortDesc",
}


def _find(collection: dict[str, Any], item_id: str, what: str) -> Any:
    canonical = parse_restore_point_id(item_id)
    item = collection.get(canonical) if canonical else None
    if item is None:
        raise ApiError(404, f"No {what} {item_id}.")
    return item
