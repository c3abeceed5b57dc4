"""Helpers every route module shares: URLs of the request, responses in the negotiated format."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response

from openflr.access import Access
from openflr.api.negotiation import query, wants_json
from openflr.catalog import RestorePoint
from openflr.representation import Collection, Node, encode
from openflr.representation import resources as rep
from openflr.representation.inventory import View, this_server
from openflr.representation.tree import Link
from openflr.services import Services
from openflr.tasks import Task

__all__ = [
    "entity_format",
    "make_view",
    "respond",
    "restore_points_tree",
    "task_tree",
    "urls_of",
]

_SERVER = this_server()


def urls_of(request: Request) -> rep.Urls:
    """The API's URLs: on ``--public-url`` when set, else on the scheme and host the client used.

    Behind a proxy, or where clients must not be steered by their own Host header, set the
    public URL; the Host header then plays no part in any Href.
    """
    public = getattr(request.app.state, "public_url", None)
    base = (public or str(request.base_url)).rstrip("/")
    return rep.Urls(api=f"{base}/api")


def make_view(request: Request, services: Services, access: Access | None = None) -> View:
    """URLs, the catalog index and the server, for builders that link resources together.

    With ``access``, the index holds only the restore points the user may see, so every list,
    link and query built from it leaves the others out. Reads the catalog (which may rescan the
    repositories): call it off the event loop.
    """
    index = services.catalog.index()
    if access is not None and not access.unrestricted:
        index = index.restricted(lambda point: access.sees(point.machine))
    return View(urls_of(request), index, _SERVER)


def respond(
    request: Request,
    tree: Node | Collection,
    status: int = 200,
    body_kind: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Encode a tree in the format the client wants."""
    body, media_type = encode(tree, wants_json(request, body_kind))
    return Response(body, status_code=status, media_type=media_type, headers=headers)


def entity_format(request: Request) -> bool:
    """Whether the client asked for entities (``format=Entity`` or ``Entities``, any case)."""
    return query(request).get("format", "").strip().lower() in ("entity", "entities")


def restore_points_tree(
    view: View, points: Sequence[RestorePoint], entities: bool, kind: str
) -> Collection:
    """A collection of agent or VM restore points, as references or entities."""
    if entities:
        root = "VmRestorePoints" if kind == "vm" else "AgentRestorePoints"
        return rep.restore_point_entities(view.urls, points, view.point_up_links, root)
    return rep.restore_point_references(view.urls, points, view.point_up_links)


def task_tree(request: Request, services: Services, task: Task) -> Node:
    """A task with the links its result leads to: the mount, or the download."""
    urls = urls_of(request)
    related: list[Link] = []
    point = services.catalog.get(task.restore_point_id) if task.restore_point_id else None
    if task.state == "Finished" and task.success and point is not None:
        if task.operation == "MountRestorePoint" and task.mount_number is not None:
            related.append(
                Link(
                    "Related",
                    urls.mount(point, task.mount_number),
                    f"{rep.point_type_name(point)}Mount",
                    f"{point.id}@{task.mount_number}",
                )
            )
        if task.operation == "FileRestoreFromMountPoint" and task.guest_path is not None:
            href = urls.guest(point, task.mount_number or 0, task.guest_path)
            related.append(Link("Download", f"{href}?action=download"))
    return rep.task(urls, task, related)
