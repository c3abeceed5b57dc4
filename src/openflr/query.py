"""The query service's filter language, sorting and paging, over plain records.

Grammar (Enterprise Manager's query syntax)::

    expression := and-group ("," and-group)*        "," is OR
    and-group  := term (";" term)*                  ";" is AND (binds tighter)
    term       := "(" expression ")" | comparison
    comparison := field operator value
    operator   := "==" | "!=" | ">=" | "<=" | ">" | "<"
    value      := '"' chars with "" for a quote '"' | bare chars up to ; , ) or the end

Field names are matched without regard to case. Strings compare without regard to case; times
compare as UTC instants; enumerations compare by their declared order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Field", "FilterError", "Query", "QueryError", "parse_filter", "run_query"]

_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")


class QueryError(ValueError):
    """A query the client got wrong; the message says what and where."""


class FilterError(QueryError):
    """A filter that does not parse; the message names the position where it broke."""


@dataclass(frozen=True)
class Field:
    """A field records can be filtered and sorted on.

    Args:
        name: The field's API name (``ComputerName``).
        kind: ``str``, ``time``, ``int`` or ``enum``.
        order: For ``enum``, the values in their declared order.
    """

    name: str
    kind: str = "str"
    order: tuple[str, ...] = ()


Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Query:
    """A parsed query: filter, sort order and page."""

    predicate: Predicate | None
    sort_field: str | None
    descending: bool
    page_size: int | None
    page: int


class _Parser:
    def __init__(self, text: str, fields: dict[str, Field]) -> None:
        self.text = text
        self.pos = 0
        self.fields = fields

    def fail(self, what: str) -> FilterError:
        shown = self.text[self.pos : self.pos + 20] or "the end"
        return FilterError(f"filter: {what} at position {self.pos + 1} (at {shown!r})")

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def parse(self) -> Predicate:
        predicate = self.expression()
        self.skip_spaces()
        if self.pos != len(self.text):
            raise self.fail("unexpected character")
        return predicate

    def expression(self) -> Predicate:
        alternatives = [self.and_group()]
        while self.peek(","):
            self.pos += 1
            alternatives.append(self.and_group())
        if len(alternatives) == 1:
            return alternatives[0]
        return lambda record: any(p(record) for p in alternatives)

    def and_group(self) -> Predicate:
        terms = [self.term()]
        while self.peek(";"):
            self.pos += 1
            terms.append(self.term())
        if len(terms) == 1:
            return terms[0]
        return lambda record: all(p(record) for p in terms)

    def peek(self, char: str) -> bool:
        self.skip_spaces()
        return self.text.startswith(char, self.pos)

    def term(self) -> Predicate:
        if self.peek("("):
            self.pos += 1
            inner = self.expression()
            if not self.peek(")"):
                raise self.fail("missing ')'")
            self.pos += 1
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        self.skip_spaces()
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] == "_"
        ):
            self.pos += 1
        name = self.text[start : self.pos]
        if not name:
            raise self.fail("expected a field name")
        field = self.fields.get(name.lower())
        if field is None:
            self.pos = start
            known = ", ".join(f.name for f in self.fields.values())
            raise self.fail(f"unknown field {name!r} (fields: {known})")

        self.skip_spaces()
        operator = next((op for op in _OPERATORS if self.text.startswith(op, self.pos)), None)
        if operator is None:
            raise self.fail("expected one of == != >= <= > <")
        self.pos += len(operator)
        value = self.value()
        wanted = _coerce(field, value, self)
        return _compare(field, operator, wanted)

    def value(self) -> str:
        self.skip_spaces()
        if self.peek('"'):
            self.pos += 1
            out = []
            while True:
                if self.pos >= len(self.text):
                    raise self.fail("unterminated quoted value")
                char = self.text[self.pos]
                if char == '"':
                    if self.text.startswith('""', self.pos):
                        out.append('"')
                        self.pos += 2
                        continue
                    self.pos += 1
                    return "".join(out)
                out.append(char)
                self.pos += 1
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ";,)":
            self.pos += 1
        value = self.text[start : self.pos].strip()
        if not value:
            raise self.fail("expected a value")
        return value


def _parse_time(text: str) -> datetime | None:
    cleaned = text.strip().replace("Z", "").replace("z", "")
    for pattern in (
        "%Y-%m-%dT%H:%M:%S.%f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d",
        "%m/%d/%Y %H:%M:%S",
        "%m/%d/%Y",
    ):
        try:
            return datetime.strptime(cleaned, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _coerce(field: Field, value: str, parser: _Parser) -> Any:
    if field.kind == "time":
        moment = _parse_time(value)
        if moment is None:
            raise parser.fail(f"{field.name} needs a UTC time like 2026-11-30T22:00:00Z")
        return moment
    if field.kind == "int":
        try:
            return int(value)
        except ValueError:
            raise parser.fail(f"{field.name} needs a whole number") from None
    if field.kind == "enum":
        lowered = [o.lower() for o in field.order]
        if value.lower() not in lowered:
            raise parser.fail(f"{field.name} is one of {', '.join(field.order)}")
        return lowered.index(value.lower())
    return value.lower()


def _key(field: Field, raw: Any) -> Any:
    if raw is None:
        return None
    if field.kind == "enum":
        lowered = [o.lower() for o in field.order]
        text = str(raw).lower()
        return lowered.index(text) if text in lowered else -1
    if field.kind == "str":
        return str(raw).lower()
    return raw


def _compare(field: Field, operator: str, wanted: Any) -> Predicate:
    def predicate(record: dict[str, Any]) -> bool:
        have = _key(field, record.get(field.name))
        if have is None:
            return operator == "!="
        if operator == "==":
            return bool(have == wanted)
        if operator == "!=":
            return bool(have != wanted)
        if operator == ">":
            return bool(have > wanted)
        if operator == "<":
            return bool(have < wanted)
        if operator == ">=":
            return bool(have >= wanted)
        return bool(have <= wanted)

    return predicate


def parse_filter(text: str, fields: Sequence[Field]) -> Predicate:
    """Parse a filter expression into a predicate over records.

    Raises:
        FilterError: the filter does not parse; the message says where.
    """
    return _Parser(text, {f.name.lower(): f for f in fields}).parse()


def run_query(
    records: list[dict[str, Any]], fields: Sequence[Field], params: dict[str, str]
) -> tuple[list[dict[str, Any]], int, int, int]:
    """Filter, sort and page records by the query string's ``filter``, ``sortAsc``/``sortDesc``,
    ``pageSize`` and ``page`` (keys already lower-cased).

    Returns:
        The page's records, the page number, the page size and the page count. Without
        ``pageSize`` every record is on one page.

    Raises:
        QueryError: a malformed filter, an unknown sort field or a bad page value.
    """
    by_name = {f.name.lower(): f for f in fields}
    selected = records
    if params.get("filter"):
        predicate = parse_filter(params["filter"], fields)
        selected = [r for r in records if predicate(r)]

    for key, descending in (("sortasc", False), ("sortdesc", True)):
        if params.get(key):
            field = by_name.get(params[key].strip().lower())
            if field is None:
                raise QueryError(f"cannot sort by unknown field {params[key]!r}")
            present = [r for r in selected if r.get(field.name) is not None]
            absent = [r for r in selected if r.get(field.name) is None]
            chosen = field
            present.sort(key=lambda r: _key(chosen, r.get(chosen.name)), reverse=descending)
            selected = present + absent

    size = _page_number(params, "pagesize")
    number = _page_number(params, "page") or 1
    if size is None:
        return selected, 1, len(selected), 1
    count = max(1, math.ceil(len(selected) / size))
    return selected[(number - 1) * size : number * size], number, size, count


def _page_number(params: dict[str, str], key: str) -> int | None:
    raw = params.get(key)
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{key} must be a whole number, not {raw!r}") from None
    if value < 1:
        raise QueryError(f"{key} must be 1 or more, not {value}")
    return value
