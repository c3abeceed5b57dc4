"""What clients send and want: response format, request bodies, and forgiving query strings."""

from __future__ import annotations

import json
from typing import Any

from lxml import etree
from starlette.requests import Request

from openflr.api.errors import ApiError

__all__ = ["body_kind", "parse_body", "query", "read_body", "wants_json"]

MAX_BODY = 1 << 20


def wants_json(request: Request, body: str | None = None) -> bool:
    """Whether to answer in JSON.

    JSON whenever ``application/json`` is listed in ``Accept`` at all, whatever its quality (the
    real server ignores preference order too); XML for every other ``Accept``. With no ``Accept``,
    or only wildcards (HTTP libraries send ``*/*`` by themselves), the request body's own format
    wins, so a script that posts JSON reads JSON back.
    """
    types = [
        part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")
    ]
    types = [t for t in types if t]
    if any("json" in t for t in types):
        return True
    if all(t in ("*/*", "application/*") for t in types):
        return body == "json"
    return False


def body_kind(raw: bytes) -> str | None:
    """Detect a body's format from its content: ``"xml"``, ``"json"`` or None when empty.

    The ``Content-Type`` header is not trusted: clients send none, ``text/xml``, or a charset.
    """
    text = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text:
        return None
    if text[:1] == b"<":
        return "xml"
    if text[:1] in (b"{", b"[", b'"') or text[:4] in (b"null", b"true") or text[:5] == b"false":
        return "json"
    raise ApiError(400, "The request body is neither XML nor JSON.")


_XML_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
)


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes 1 MiB (never buffered whole)."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "The request body is larger than 1 MiB.")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "The request body is larger than 1 MiB.")
        parts.append(chunk)
    return b"".join(parts)


def parse_body(raw: bytes) -> tuple[str | None, dict[str, Any]]:
    """Parse a request body into plain data: ``{"RootName": {child: value-or-dict}}``.

    XML elements become keys without their namespace prefix; attributes become keys too (the API
    writes ``Overwrite`` as an attribute in XML and as a property in JSON).

    Raises:
        ApiError: 400 for a malformed body, a DTD or entity, or nesting deeper than 32 levels;
            413 for a body over 1 MiB.
    """
    if len(raw) > MAX_BODY:
        raise ApiError(413, "The request body is larger than 1 MiB.")
    kind = body_kind(raw)
    if kind is None:
        return None, {}
    if kind == "json":
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"The JSON body is malformed: {exc}", body_kind="json") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "The JSON body must be an object.", body_kind="json")
        return kind, data

    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        raise ApiError(400, "XML bodies with a DOCTYPE or entity declarations are not accepted.")
    try:
        root = etree.fromstring(raw, _XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ApiError(400, f"The XML body is malformed: {exc}") from exc
    return kind, {etree.QName(root).localname: _element_data(root, 0)}


def _element_data(element: Any, depth: int) -> Any:
    if depth > 32:
        raise ApiError(400, "The XML body is nested too deeply.")
    data: dict[str, Any] = {etree.QName(k).localname: v for k, v in element.attrib.items()}
    for child in element:
        if not isinstance(child.tag, str):
            continue
        data[etree.QName(child).localname] = _element_data(child, depth + 1)
    if not data:
        return (element.text or "").strip() or {}
    return data


def query(request: Request) -> dict[str, str]:
    """The query string with lower-case keys, first value winning.

    Keys that reach us as ``amp;pageSize`` (from a client that did not unescape ``&amp;`` in an
    Href) count as ``pagesize``.
    """
    result: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        name = key.lower()
        while name.startswith("amp;"):
            name = name[4:]
        result.setdefault(name, value)
    return result
