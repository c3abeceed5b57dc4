"""Resource representations: one neutral tree per resource, encoded as XML or JSON."""

from __future__ import annotations

from openflr.representation.tree import Collection, Node, to_json, to_xml

__all__ = ["Collection", "Node", "encode"]


def encode(tree: Node | Collection, as_json: bool) -> tuple[bytes, str]:
    """Encode a tree; returns the body and its media type."""
    if as_json:
        return to_json(tree), "application/json; charset=utf-8"
    return to_xml(tree), "application/xml; charset=utf-8"
