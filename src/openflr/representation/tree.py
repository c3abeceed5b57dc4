"""One neutral tree per resource, and the two encoders that walk it: XML and JSON.

The tree follows the API's XML schema (element order matters there); the JSON encoder applies the
API's JSON rules to the same tree:

- attributes and child elements both become properties, named as in XML;
- ``Links`` becomes an array of ``{"Rel", "Href", "Name", "Type"}`` objects without absent keys;
- a nested list element becomes an object holding one array (``"Files": {"FileEntries": [...]}``);
- a collection root becomes an object holding one array (``{"Refs": [...]}``);
- absent optional values are ``null``; the base properties ``Name``, ``UID``, ``Links``, ``Href``
  and ``Type`` come last.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "NAMESPACE",
    "Collection",
    "Field",
    "Link",
    "LinkList",
    "ListOf",
    "Node",
    "to_json",
    "to_xml",
]

NAMESPACE = "http://www.veeam.com/ent/v1.0"

Scalar = str | int | bool | datetime | None

_BASE_PROPERTIES = ("Name", "UID", "Links", "Href", "Type")

# Characters XML 1.0 cannot carry at all, even escaped. Guest names may hold them (ext4 allows any
# byte but '/' and NUL); they are replaced in XML text, and JSON carries them exactly.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Link:
    """A ``<Link>``: where a client can go next, and what it finds there."""

    rel: str
    href: str
    type: str | None = None
    name: str | None = None


@dataclass
class LinkList:
    """The ``<Links>`` element; ``None`` links means an absent element (JSON ``null``)."""

    links: list[Link] | None


@dataclass
class Field:
    """A simple child element holding one value."""

    tag: str
    value: Scalar


@dataclass
class ListOf:
    """A child element holding repeated items: ``<Files><FileEntry/>...</Files>``."""

    tag: str
    json_key: str
    items: list[Node]


@dataclass
class Node:
    """An element with attributes and children."""

    tag: str
    attrs: dict[str, Scalar] = field(default_factory=dict)
    children: list[Node | Field | LinkList | ListOf] = field(default_factory=list)


@dataclass
class Collection:
    """A collection root: ``<EntityReferences><Ref/>…</EntityReferences>``, ``{"Refs": […]}``."""

    tag: str
    json_key: str
    items: list[Node]


def _scalar_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return _XML_INVALID.sub("\ufffd", str(value))


def _escape(text: str, quote: bool) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if quote:
        text = text.replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;")
        text = text.replace("\t", "&#9;")
    else:
        text = text.replace("\r", "&#13;")
    return text


def _attrs_xml(attrs: dict[str, Scalar]) -> str:
    return "".join(
        f' {k}="{_escape(_scalar_text(v), True)}"' for k, v in attrs.items() if v is not None
    )


def _link_xml(link: Link, out: list[str]) -> None:
    attrs: dict[str, Scalar] = {
        "Rel": link.rel,
        "Type": link.type,
        "Name": link.name,
        "Href": link.href,
    }
    out.append(f"<Link{_attrs_xml(attrs)} />")


def _node_xml(node: Node | Field | LinkList | ListOf, out: list[str], root: bool = False) -> None:
    if isinstance(node, Field):
        if node.value is not None:
            out.append(f"<{node.tag}>{_escape(_scalar_text(node.value), False)}</{node.tag}>")
        return
    if isinstance(node, LinkList):
        if node.links is not None:
            out.append("<Links>")
            for link in node.links:
                _link_xml(link, out)
            out.append("</Links>")
        return
    if isinstance(node, ListOf):
        if not node.items:
            out.append(f"<{node.tag} />")
            return
        out.append(f"<{node.tag}>")
        for item in node.items:
            _node_xml(item, out)
        out.append(f"</{node.tag}>")
        return

    ns = f' xmlns="{NAMESPACE}"' if root else ""
    attrs = _attrs_xml(node.attrs)
    if not node.children:
        out.append(f"<{node.tag}{ns}{attrs} />")
        return
    out.append(f"<{node.tag}{ns}{attrs}>")
    for child in node.children:
        _node_xml(child, out)
    out.append(f"</{node.tag}>")


def to_xml(tree: Node | Collection) -> bytes:
    """Encode a tree as an XML document in the API's namespace."""
    out = ['<?xml version="1.0" encoding="utf-8"?>\n']
    if isinstance(tree, Collection):
        out.append(f'<{tree.tag} xmlns="{NAMESPACE}">')
        for item in tree.items:
            _node_xml(item, out)
        out.append(f"</{tree.tag}>")
    else:
        _node_xml(tree, out, root=True)
    return "".join(out).encode("utf-8")


_SURROGATES = re.compile("[\ud800-\udfff]")


def _scalar_json(value: Scalar) -> object:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str):
        # A name that is no valid UTF-8 on the guest reaches here with lone surrogates, which
        # strict JSON parsers refuse; the entry's Href still names the file byte for byte.
        return _SURROGATES.sub("\ufffd", value)
    return value


def _link_json(link: Link) -> dict[str, str]:
    out = {"Rel": link.rel, "Href": link.href}
    if link.name is not None:
        out["Name"] = link.name
    if link.type is not None:
        out["Type"] = link.type
    return out


def _node_json(node: Node) -> dict[str, object]:
    derived: dict[str, object] = {}
    base: dict[str, object] = {}
    for child in node.children:
        if isinstance(child, Field):
            derived[child.tag] = _scalar_json(child.value)
        elif isinstance(child, LinkList):
            base["Links"] = (
                [_link_json(link) for link in child.links] if child.links is not None else None
            )
        elif isinstance(child, ListOf):
            derived[child.tag] = {child.json_key: [_node_json(i) for i in child.items]}
        else:
            derived[child.tag] = _node_json(child)
    for key, value in node.attrs.items():
        (base if key in _BASE_PROPERTIES else derived)[key] = _scalar_json(value)
    ordered = {k: base[k] for k in _BASE_PROPERTIES if k in base}
    return {**derived, **ordered}


def to_json(tree: Node | Collection) -> bytes:
    """Encode a tree by the API's JSON rules."""
    if isinstance(tree, Collection):
        data: dict[str, object] = {tree.json_key: [_node_json(i) for i in tree.items]}
    else:
        data = _node_json(tree)
    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii")
