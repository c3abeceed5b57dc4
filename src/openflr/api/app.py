"""The HTTP API: Enterprise Manager's routes for agent guest-file restore.

Routes read the request, ask a service, and pick the response; nothing else. Errors are raised as
:class:`ApiError` where the fact is known and rendered once, by :func:`_render_error`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import itertools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from openflr import __version__
from openflr.access import Access
from openflr.api.common import (
    entity_format,
    make_view,
    respond,
    restore_points_tree,
    task_tree,
    urls_of,
)
from openflr.api.download import ClosingStreamingResponse, file_response, folder_response
from openflr.api.errors import ApiError
from openflr.api.inventory import Inventory
from openflr.api.negotiation import parse_body, query, read_body
from openflr.api.zerocopy import ZERO_COPY
from openflr.catalog import RestorePoint
from openflr.engine import GuestEntry
from openflr.engine.errors import EngineError, GuestPathInvalid, GuestPathNotFound, NotAFolder
from openflr.mounts import Mount, MountGone
from openflr.representation import Node, encode
from openflr.representation import resources as rep
from openflr.services import Services
from openflr.sessions import LogonSession, SessionService, normalise_user_name
from openflr.tasks import Task, TaskOutcome, parse_task_id

log = logging.getLogger(__name__)

__all__ = ["create_app"]

SESSION_HEADER = "X-RestSvcSessionId"
MAX_PAGE_SIZE = 10_000
MAX_HEADER_BYTES = 16 * 1024
_MAX_INT32 = 2**31 - 1
_VERSION = re.compile(r"^(latest|v?\d+([._]\d+)*)$", re.I)
_ACTIONS = {"listall": "listAll", "listdirs": "listDirs", "listfiles": "listFiles"}
_request_ids = itertools.count(1)
# A task that ends this soon after it starts is answered Finished in its 202, so that its client
# needs no poll; longer work is answered Running, as the API describes.
_SETTLE_SECONDS = 0.05

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class _GuestPathConvertor(Convertor[str]):
    """Like ``path``, but also across newlines: a Linux file name may hold one."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("guestpath", _GuestPathConvertor())


def create_app(services: Services, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """Build the ASGI application over a set of services.

    Args:
        services: What the routes ask.
        on_shutdown: Called once when the server shuts down gracefully, before it exits.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            # Here, not after the server returns: after a SIGTERM, uvicorn raises the signal
            # again once it has shut down, and the process ends before any code after it runs.
            await run_in_threadpool(on_shutdown)

    app = FastAPI(
        lifespan=lifespan,
        title="openflr",
        version=__version__,
        description="Veeam Backup Enterprise Manager REST API for guest file-level restore.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redirect_slashes=False,
    )
    app.state.public_url = services.settings.public_url
    api = _Api(services)
    api.register(app)
    app.add_exception_handler(ApiError, _render_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _render_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _render_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _render_unexpected)
    app.add_middleware(_RequestLog, sessions=services.sessions)
    app.add_middleware(_CanonicalPath)
    return app


async def _render_error(request: Request, exc: ApiError) -> Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", "Basic Realm=RestSvc")
    tree = rep.error(exc.status, exc.message)
    return respond(request, tree, exc.status, body_kind=exc.body_kind, headers=headers)


async def _render_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    method = request.scope.get("openflr.method", request.method)
    messages = {
        404: "No resource at this URL.",
        405: f"The {method} method is not supported on this resource.",
    }
    message = messages.get(exc.status_code, str(exc.detail))
    headers = dict(exc.headers or {})
    return await _render_error(request, ApiError(exc.status_code, message, headers))


async def _render_validation_error(request: Request, exc: RequestValidationError) -> Response:
    return await _render_error(request, ApiError(400, f"Invalid request: {exc.errors()}"))


async def _render_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return await _render_error(
        request, ApiError(500, f"Internal error ({type(exc).__name__}); see the server log.")
    )


class _Api:
    """The route handlers, holding the services they ask."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def register(self, app: FastAPI) -> None:
        add = app.add_api_route
        add("/api", self.entry_point, methods=["GET"], include_in_schema=False)
        add("/api/", self.entry_point, methods=["GET"])
        add("/api/sessionMngr", self.logon, methods=["POST"], include_in_schema=False)
        add("/api/sessionMngr/", self.logon, methods=["POST"], status_code=201)
        add("/api/logonSessions", self.list_logon_sessions, methods=["GET"])
        add("/api/logonSessions/{session_id}", self.get_logon_session, methods=["GET"])
        add("/api/logonSessions/{session_id}", self.logoff, methods=["DELETE"], status_code=204)
        add("/api/agents", self.agents, methods=["GET"])
        for family in ("/api/agents/agentRestorePoints", "/api/vmRestorePoints"):
            add(family, self.list_restore_points, methods=["GET"])
            add(family + "/{point_id}", self.get_restore_point, methods=["GET"])
            mounts = family + "/{point_id}/mounts"
            add(mounts, self.list_mounts, methods=["GET"])
            add(mounts, self.create_mount, methods=["POST"], status_code=202)
            add(mounts + "/{number}", self.get_mount, methods=["GET"])
            add(mounts + "/{number}", self.delete_mount, methods=["DELETE"], status_code=204)
            guest = mounts + "/{number}/{guest_path:guestpath}"
            add(guest, self.browse, methods=["GET"], openapi_extra=_BROWSE_PARAMETERS)
            add(guest, self.post_guest_path, methods=["POST"], openapi_extra=_RESTORE_PARAMETERS)
        Inventory(self.services, self._session).register(app)
        add("/api/tasks", self.list_tasks, methods=["GET"])
        add("/api/tasks/{task_id}", self.get_task, methods=["GET"])
        add("/api/tasks/{task_id}", self.delete_task, methods=["DELETE"], status_code=204)

    # -- entry point and logon -----------------------------------------------------------------

    async def entry_point(self, request: Request) -> Response:
        """``GET /api/``: where to log on, without authentication."""
        return respond(request, rep.enterprise_manager(urls_of(request)))

    async def logon(self, request: Request) -> Response:
        """``POST /api/sessionMngr/?v=latest``: Basic credentials in, session token out."""
        version = query(request).get("v")
        if version is not None and not _VERSION.match(version.strip()):
            raise ApiError(400, f"Unknown API version {version!r}: use v=latest or v1_5..v1_7.")

        name, password = _basic_credentials(request)
        address = _client(request)
        keys = (f"user:{normalise_user_name(name).lower()}", f"address:{address}")
        throttle = self.services.throttle
        wait = throttle.wait_needed(*keys)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise ApiError(
                429, f"Too many failed logons; try again in {retry} s.", {"Retry-After": retry}
            )

        account = await run_in_threadpool(self.services.users.verify, name, password)
        if account is None:
            throttle.failed(*keys)
            log.info("logon refused for user %r from %s", name, address)
            await run_in_threadpool(
                self.services.audit.record, "logon-failed", user=name[:256], address=address
            )
            raise ApiError(401, "The user name or password is incorrect.")

        throttle.succeeded(*keys)
        session, token = await run_in_threadpool(self.services.sessions.create, account)
        await run_in_threadpool(
            self.services.audit.record, "logon", user=account, address=address, session=session.id
        )
        request.scope.setdefault("state", {})["session_id"] = session.id
        urls = urls_of(request)
        cookie = f"{SESSION_HEADER}={token}; Path=/api; HttpOnly"
        if request.url.scheme == "https":
            cookie += "; Secure"
        headers = {
            SESSION_HEADER: token,
            "Set-Cookie": cookie,
            "Location": urls.logon_session(session),
        }
        return respond(request, rep.logon_session(urls, session), 201, headers=headers)

    async def list_logon_sessions(self, request: Request) -> Response:
        session = await self._session(request)
        return respond(request, rep.logon_sessions(urls_of(request), [session]))

    async def get_logon_session(self, request: Request, session_id: str) -> Response:
        session = await self._session(request)
        if session_id.strip("{}").lower() != session.id:
            raise ApiError(404, f"No logon session {session_id} is visible to this session.")
        return respond(request, rep.logon_session(urls_of(request), session))

    async def logoff(self, request: Request, session_id: str) -> Response:
        """``DELETE /api/logonSessions/{id}``: end the session and release its mounts."""
        session = await self._session(request)
        if session_id.strip("{}").lower() != session.id:
            raise ApiError(404, f"No logon session {session_id} is visible to this session.")
        await run_in_threadpool(self.services.sessions.end, session.id, "logoff", _client(request))
        return Response(status_code=204)

    # -- restore points ------------------------------------------------------------------------

    async def agents(self, request: Request) -> Response:
        await self._session(request)
        view = await run_in_threadpool(
            make_view, request, self.services, await self._access(request)
        )
        return respond(request, view.agents_service())

    async def list_restore_points(self, request: Request) -> Response:
        await self._session(request)
        kind = _family(request)
        view = await run_in_threadpool(
            make_view, request, self.services, await self._access(request)
        )
        points = [p for p in view.index.points.values() if p.kind == kind]
        points.sort(key=lambda p: (p.created, p.machine, p.id))
        return respond(request, restore_points_tree(view, points, entity_format(request), kind))

    async def get_restore_point(self, request: Request, point_id: str) -> Response:
        await self._session(request)
        point = await self._restore_point(request, point_id)
        view = await run_in_threadpool(
            make_view, request, self.services, await self._access(request)
        )
        up = view.point_up_links(point)
        if entity_format(request):
            return respond(request, rep.restore_point_entity(view.urls, point, up))
        return respond(request, rep.restore_point_reference(view.urls, point, up, tag="EntityRef"))

    # -- mounts --------------------------------------------------------------------------------

    async def create_mount(self, request: Request, point_id: str) -> Response:
        """``POST …/mounts``: 202 with the task; Finished if the mount took only moments."""
        session = await self._session(request)
        point = await self._restore_point(request, point_id)
        kind, _ = parse_body(await read_body(request))
        address = _client(request)

        def start() -> Node:
            task = self.services.mounts.start_mount(session.id, point, session.user_name, address)
            task = self.services.tasks.settle(task, _SETTLE_SECONDS)
            return task_tree(request, self.services, task)

        return respond(request, await run_in_threadpool(start), 202, body_kind=kind)

    async def list_mounts(self, request: Request, point_id: str) -> Response:
        session = await self._session(request)
        point = await self._restore_point(request, point_id)
        found = await run_in_threadpool(self.services.mounts.list, session.id, point)
        urls = urls_of(request)
        items = [self._mount_tree(urls, m) for m in found]
        return respond(request, rep.mounts(point.kind, items))

    async def get_mount(self, request: Request, point_id: str, number: str) -> Response:
        mount = await self._mount(request, point_id, number)
        return respond(request, self._mount_tree(urls_of(request), mount))

    async def delete_mount(self, request: Request, point_id: str, number: str) -> Response:
        """``DELETE …/mounts/{n}``: unmount at once."""
        session = await self._session(request)
        point = await self._restore_point(request, point_id)
        mount_number = _mount_number(number)
        done = await run_in_threadpool(
            self.services.mounts.unmount, session.id, point, mount_number
        )
        if not done:
            raise ApiError(404, f"No mount {number} of restore point {point.id} in this session.")
        await run_in_threadpool(
            self.services.audit.record,
            "unmount",
            user=session.user_name,
            address=_client(request),
            session=session.id,
            restore_point=point.id,
            restore_point_name=point.name,
            outcome=f"mount {mount_number}",
        )
        return Response(status_code=204)

    # -- guest files ---------------------------------------------------------------------------

    async def browse(
        self, request: Request, point_id: str, number: str, guest_path: str
    ) -> Response:
        """``GET …/mounts/{n}/{path}``: a listing page, an entry, or (``action=download``) data."""
        mount = await self._mount(request, point_id, number)
        params = query(request)
        action = (params.get("action") or "").strip()
        if not guest_path and "/" not in mount.opened.files.roots:
            if action:
                raise ApiError(
                    400,
                    f"Name a folder or file after the mount for action={action}: "
                    "…/mounts/{n}/C:/path.",
                )
            return respond(request, self._mount_tree(urls_of(request), mount))

        entry = await run_in_threadpool(_stat, mount, guest_path or "/")
        if action.lower() == "download":
            return await self._download(request, mount, entry)
        if action and action.lower() not in _ACTIONS:
            raise ApiError(
                400, f"Unknown action {action!r}: use listAll, listDirs, listFiles or download."
            )
        if entry.kind != "dir":
            if action:
                raise ApiError(400, f"{entry.path} is a file; it has no listing.")
            return respond(
                request,
                rep.file_system_entry(urls_of(request), mount.restore_point, mount.number, entry),
            )
        return await self._listing(
            request, mount, entry, _ACTIONS.get(action.lower(), "listAll"), params
        )

    async def post_guest_path(
        self, request: Request, point_id: str, number: str, guest_path: str
    ) -> Response:
        """``POST …/{path}?action=restore``: prepare a file or folder for download (a task)."""
        mount = await self._mount(request, point_id, number)
        action = (query(request).get("action") or "").strip().lower()
        if action == "download":
            entry = await run_in_threadpool(_stat, mount, guest_path or "/")
            return await self._download(request, mount, entry)
        if action != "restore":
            raise ApiError(400, "POST on a guest path needs ?action=restore.")

        kind, body = parse_body(await read_body(request))
        spec = _restore_spec(body)
        if "tooriginallocation" in spec:
            # TODO: restore to the original location needs a channel to the protected machine.
            raise ApiError(
                400,
                "Restore to the original location is not supported: openflr cannot reach the "
                "protected machine. Use ForDirectDownload and copy the files from the download.",
            )
        if "fordirectdownload" not in spec:
            raise ApiError(400, "FileRestoreSpec needs ForDirectDownload.")

        entry = await run_in_threadpool(_stat, mount, guest_path or "/")
        access = await self._access(request)
        if entry.kind != "dir" and not access.may_download(entry.file_name):
            raise ApiError(
                403,
                f"Access denied: {access.user} may not restore files like "
                f"{entry.file_name!r} (file extension rules).",
            )
        if entry.kind == "symlink":
            raise ApiError(400, f"{entry.path} is a symbolic link; download its target instead.")
        task = await run_in_threadpool(self._start_restore, request, mount, entry)
        await self._audit("restore", request, access, mount, entry, outcome=task.task_id)
        task = await run_in_threadpool(self.services.tasks.settle, task, _SETTLE_SECONDS)
        return respond(request, await self._task_node(request, task), 202, body_kind=kind)

    def _start_restore(self, request: Request, mount: Mount, entry: GuestEntry) -> Task:
        files = mount.opened.files

        def work(_task_number: int) -> TaskOutcome:
            try:
                files.check_readable(entry.path)
            except EngineError as exc:
                return TaskOutcome(False, str(exc))
            return TaskOutcome(True, "Ok")

        session_id = mount.session_id
        return self.services.tasks.start(
            session_id,
            "FileRestoreFromMountPoint",
            work,
            restore_point_id=mount.restore_point.id,
            mount_number=mount.number,
            guest_path=entry.path,
        )

    async def _download(self, request: Request, mount: Mount, entry: GuestEntry) -> Response:
        files = mount.opened.files
        head = request.scope.get("openflr.method") == "HEAD"
        access = await self._access(request)
        live, stopping = self.services.mounts.is_live, self.services.stopping

        def stopped() -> bool:
            """The download ends where it has got to when its mount or the server goes."""
            return stopping.is_set() or not live(mount.row_id)

        if entry.kind == "dir":
            zip_name = (entry.name.rstrip(":/") or "root") + ".zip"
            log.info(
                "download of folder %r from mount %s@%d",
                entry.path,
                mount.restore_point.id,
                mount.number,
            )
            response = await run_in_threadpool(
                folder_response, files, entry, zip_name, head, access.may_download, stopped
            )
        else:
            if entry.kind == "symlink":
                raise ApiError(
                    400, f"{entry.path} is a symbolic link; download its target instead."
                )
            if not access.may_download(entry.file_name):
                raise ApiError(
                    403,
                    f"Access denied: {access.user} may not download files "
                    f"like {entry.file_name!r} (file extension rules).",
                )
            log.info(
                "download of %r (%d bytes) from mount %s@%d",
                entry.path,
                entry.size,
                mount.restore_point.id,
                mount.number,
            )
            response = await run_in_threadpool(
                file_response, files, entry, request.headers.get("range"), head, stopped
            )
        if not head and isinstance(response, ClosingStreamingResponse):

            async def audit(sent: int, outcome: str) -> None:
                await self._audit(
                    "download", request, access, mount, entry, bytes_sent=sent, outcome=outcome
                )

            response.on_end = audit
        return response

    async def _audit(
        self,
        event: str,
        request: Request,
        access: Access,
        mount: Mount,
        entry: GuestEntry,
        **fields: Any,
    ) -> None:
        """Audit an event on a guest path of a mount."""
        record = functools.partial(
            self.services.audit.record,
            event,
            user=access.user,
            address=_client(request),
            session=mount.session_id,
            restore_point=mount.restore_point.id,
            restore_point_name=mount.restore_point.name,
            guest_path=entry.path,
            **fields,
        )
        await run_in_threadpool(record)

    async def _listing(
        self,
        request: Request,
        mount: Mount,
        folder: GuestEntry,
        action: str,
        params: dict[str, str],
    ) -> Response:
        size = _positive_int(params, "pagesize", 100 if action == "listAll" else 10)
        size = min(size, MAX_PAGE_SIZE)
        number = _positive_int(params, "page", 1)
        try:
            entries = await run_in_threadpool(mount.opened.files.list_folder, folder.path)
        except NotAFolder as exc:
            raise ApiError(400, str(exc)) from exc
        except EngineError as exc:
            raise ApiError(404, str(exc)) from exc
        if action == "listFiles":
            entries = [e for e in entries if e.kind != "dir"]
        elif action == "listDirs":
            entries = [e for e in entries if e.kind == "dir"]
        count = max(1, math.ceil(len(entries) / size))
        page_entries = entries[(number - 1) * size : number * size]
        page = rep.Page(action=action, size=size, number=number, count=count)
        tree = rep.file_system_entries(
            urls_of(request), mount.restore_point, mount.number, folder.path, page_entries, page
        )
        return respond(request, tree)

    # -- tasks ---------------------------------------------------------------------------------

    async def list_tasks(self, request: Request) -> Response:
        session = await self._session(request)
        found = await run_in_threadpool(self.services.tasks.list, session.id)
        return respond(request, rep.tasks([await self._task_node(request, t) for t in found]))

    async def get_task(self, request: Request, task_id: str) -> Response:
        session = await self._session(request)
        number = parse_task_id(task_id)
        task = None
        if number is not None:
            task = await run_in_threadpool(self.services.tasks.get, session.id, number)
        if task is None:
            raise ApiError(404, f"No task {task_id} in this logon session.")
        return respond(request, await self._task_node(request, task))

    async def delete_task(self, request: Request, task_id: str) -> Response:
        session = await self._session(request)
        number = parse_task_id(task_id)
        done = number is not None and await run_in_threadpool(
            self.services.tasks.delete, session.id, number
        )
        if not done:
            raise ApiError(404, f"No task {task_id} in this logon session.")
        return Response(status_code=204)

    # -- helpers -------------------------------------------------------------------------------

    async def _session(self, request: Request) -> LogonSession:
        """The logon session of the request's token; the cookie is tried first, then the header.

        What its user may do is looked up in the same trip, into the request's ``access`` state.
        """
        state = request.scope.setdefault("state", {})
        known: LogonSession | None = state.get("session")
        if known is not None:
            return known  # looked up once per request
        candidates = [request.cookies.get(SESSION_HEADER), request.headers.get(SESSION_HEADER)]
        tokens = [t.strip() for t in candidates if t and t.strip()]
        if not tokens:
            raise ApiError(
                401,
                "No logon session: log on at /api/sessionMngr/?v=latest and "
                f"send the token in the {SESSION_HEADER} header.",
            )
        for token in dict.fromkeys(tokens):
            found = await run_in_threadpool(self._authenticate, token)
            if found is not None:
                session, state["access"] = found
                state["session"] = session
                state["session_id"] = session.id
                if not state.get("session_held"):
                    self.services.sessions.hold(session.id)
                    state["session_held"] = True
                return session
        raise ApiError(401, "The logon session has expired or does not exist; log on again.")

    def _authenticate(self, token: str) -> tuple[LogonSession, Access] | None:
        """The session of a token and what its user may do: one trip to a worker thread."""
        session = self.services.sessions.authenticate(token)
        if session is None:
            return None
        return session, self.services.users.access(session.user_name)

    async def _restore_point(self, request: Request, point_id: str) -> RestorePoint:
        kind = _family(request)
        access = await self._access(request)
        point = self.services.catalog.peek(point_id)
        if point is None:  # the catalog may have to read the repositories
            point = await run_in_threadpool(self.services.catalog.get, point_id)
        if point is None or point.kind != kind:
            family = "VM" if kind == "vm" else "agent"
            raise ApiError(404, f"No {family} restore point {point_id}.")
        if not access.sees(point.machine):
            raise ApiError(
                403,
                f"Access denied: {point.machine} is outside the restore scope of {access.user}.",
            )
        return point

    async def _access(self, request: Request) -> Access:
        """What the request's user may do (looked up with the session, once per request)."""
        await self._session(request)
        access: Access = request.scope["state"]["access"]
        return access

    async def _mount(self, request: Request, point_id: str, number: str) -> Mount:
        session = await self._session(request)
        point = await self._restore_point(request, point_id)
        mount_number = _mount_number(number)
        try:
            mount = await run_in_threadpool(
                self.services.mounts.get, session.id, point, mount_number
            )
        except MountGone as exc:
            raise ApiError(410, str(exc)) from exc
        if mount is None:
            raise ApiError(404, f"No mount {number} of restore point {point.id} in this session.")
        return mount

    def _mount_tree(self, urls: rep.Urls, mount: Mount) -> Node:
        roots = mount.opened.files.root_entries()
        return rep.mount(urls, mount.restore_point, mount.number, roots)

    async def _task_node(self, request: Request, task: Task) -> Node:
        # Off the event loop: finding the task's restore point may rescan the repositories.
        return await run_in_threadpool(task_tree, request, self.services, task)


def _stat(mount: Mount, guest_path: str) -> GuestEntry:
    try:
        return mount.opened.files.stat(guest_path)
    except GuestPathInvalid as exc:
        raise ApiError(404, f"{exc}.") from exc
    except GuestPathNotFound as exc:
        raise ApiError(404, f"No file or folder {exc.path!r} in this mount.") from exc
    except EngineError as exc:
        raise ApiError(500, str(exc)) from exc


def _query_parameter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


# Query parameters and bodies for the published OpenAPI description: the handlers read them
# from the request themselves (to forgive case, amp; prefixes and odd content types), so
# FastAPI cannot see them.
_BROWSE_PARAMETERS: dict[str, Any] = {
    "parameters": [
        _query_parameter(
            "action", {"type": "string", "enum": ["listAll", "listDirs", "listFiles", "download"]}
        ),
        _query_parameter("pageSize", {"type": "integer", "minimum": 1}),
        _query_parameter("page", {"type": "integer", "minimum": 1}),
    ]
}
_RESTORE_PARAMETERS: dict[str, Any] = {
    "parameters": [_query_parameter("action", {"type": "string", "enum": ["restore"]})],
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "ForDirectDownload": {"type": "object"},
                        "ToOriginalLocation": {"type": "object"},
                    },
                }
            },
            "application/xml": {"schema": {"type": "string"}},
        }
    },
}


def _family(request: Request) -> str:
    """Which restore point family a URL is under: ``vm`` for /vmRestorePoints, else ``agent``."""
    return "vm" if request.scope["path"].startswith("/api/vmRestorePoints") else "agent"


def _mount_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ApiError(404, f"No mount {text!r}: mount ids are numbers.")
    return int(text)


def _positive_int(params: dict[str, str], key: str, default: int) -> int:
    raw = params.get(key)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(400, f"{key} must be a whole number, not {raw!r}.") from None
    if not 1 <= value <= _MAX_INT32:
        raise ApiError(400, f"{key} must be from 1 to {_MAX_INT32}, not {value}.")
    return value


def _restore_spec(body: dict[str, Any]) -> dict[str, Any]:
    """Return the FileRestoreSpec's content with lower-case keys, whatever its wrapping."""
    lowered = {k.lower(): v for k, v in body.items()}
    spec = lowered.get("filerestorespec", lowered)
    if not isinstance(spec, dict):
        raise ApiError(400, "FileRestoreSpec must hold ForDirectDownload.")
    return {k.lower(): v for k, v in spec.items()}


def _basic_credentials(request: Request) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        raise ApiError(401, "Log on with HTTP Basic authentication.")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(401, "The Basic authorization header cannot be decoded.") from None
    name, sep, password = decoded.partition(":")
    if not sep:
        raise ApiError(401, "The Basic authorization header holds no password.")
    return name, password


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


async def _send_error(scope: Scope, send: Any, status: int, message: str) -> None:
    """Answer in the Error shape from below the routing layer."""
    accept = b""
    for key, value in scope.get("headers", []):
        if key == b"accept":
            accept = value
    body, media_type = encode(rep.error(status, message), b"json" in accept.lower())
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _CanonicalPath:
    """Make hand-built URLs route: API names in any case, trailing slashes, the URN form of ids.

    Only the fixed part of the path is touched; a guest path after ``/mounts/{n}/`` is left as
    it came, since Linux names are case-sensitive.
    """

    _NAMES = {
        n.lower(): n
        for n in (
            "api",
            "sessionMngr",
            "logonSessions",
            "agents",
            "agentRestorePoints",
            "mounts",
            "tasks",
        )
    }

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header_bytes = sum(len(k) + len(v) for k, v in scope.get("headers", []))
            if header_bytes > MAX_HEADER_BYTES:
                await _send_error(
                    scope,
                    send,
                    431,
                    f"The request headers are larger than {MAX_HEADER_BYTES // 1024} KiB.",
                )
                return
        if scope["type"] == "http" and scope["method"] == "HEAD":
            # HEAD is GET without the body, on every resource: route it as GET and drop the
            # body on the way out (downloads see the flag and send no data). A copy of the
            # scope: the server's own stays HEAD, or it would wait for the body Content-Length
            # announces and drop the connection.
            scope = {**scope, "method": "GET", "openflr.method": "HEAD"}
            original_send = send

            async def send_headers_only(message: Any) -> None:
                if message["type"] == "http.response.body":
                    message = {**message, "body": b""}
                await original_send(message)

            send = send_headers_only
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            if raw:
                # Names on Linux guests need not be UTF-8: keep undecodable bytes as surrogates
                # (as the engine names them) instead of the server's lossy replacement characters.
                path = unquote(raw.decode("latin-1"), errors="surrogateescape")
            else:
                path = scope["path"]
            scope["path"] = self.canonical(path)
        await self.app(scope, receive, send)

    def canonical(self, path: str) -> str:
        parts = path.split("/")
        fixed_end = len(parts)
        for i, part in enumerate(parts):
            if part.lower() == "mounts" and i + 2 < len(parts):
                fixed_end = i + 2
                break
        head = [self._NAMES.get(p.lower(), p) for p in parts[:fixed_end]]
        canonical = "/".join(head + parts[fixed_end:])
        if fixed_end == len(parts) and len(canonical) > 5:
            keep = canonical.endswith("/sessionMngr/")
            canonical = canonical.rstrip("/") + ("/" if keep else "")
        return canonical


class _RequestLog:
    """One INFO line per request: id, method, path, status, time, logon session."""

    def __init__(self, app: ASGIApp, sessions: SessionService) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next(_request_ids)
        started = time.monotonic()
        status = 0
        sent = 0

        async def send_logged(message: Any) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", str(request_id).encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY:
                try:
                    await send(message)
                finally:
                    sent += message.get("openflr.sent", 0)
                return
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            state = scope.get("state", {})
            session_id = state.get("session_id", "-")
            elapsed = time.monotonic() - started
            try:
                if state.get("session_held") and elapsed > 1.0:
                    await run_in_threadpool(self.sessions.release, session_id, True)
                elif state.get("session_held"):
                    self.sessions.release(session_id, False)  # no database write: no thread
            except Exception as exc:  # the answer is out: this must not break the connection
                log.warning("session %s: marking it used failed: %s", session_id, exc)
            client = scope.get("client") or ("-", 0)
            log.info(
                "request %d %s %s %s %d %d bytes %.1f ms session %s",
                request_id,
                client[0],
                scope.get("openflr.method", scope["method"]),
                _printable(scope.get("raw_path") or scope["path"].encode("utf-8", "replace")),
                status,
                sent,
                elapsed * 1000,
                session_id,
            )


def _printable(raw: bytes) -> str:
    """A request path as it came, percent-encoded: a log line it cannot break or forge."""
    return quote(raw.decode("latin-1"), safe="/:@!$&'()*+,;=-._~%")
