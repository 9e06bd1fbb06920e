"""The metadata filter language of search and chat: validated strictly, compiled to parameterised SQL.

A filter is a JSON object over a document's ``metadata`` (the object given at upload or by ``PATCH``). Each
top-level key names a metadata field (a top-level key of the metadata); all of them must hold (AND):

- ``{"field": value}``: the field equals ``value`` (a string, number, boolean or ``null``);
- ``{"field": {"$eq": value}}``: the same; ``{"field": {"$in": [v1, v2, …]}}``: it equals one of them (1-100);
- ``{"field": {"$gt" | "$gte" | "$lt" | "$lte": bound}}``: a range, on numbers (``bound`` a number) or on
  dates (``bound`` an ISO 8601 date or date-time string, the field's value too); several in one object AND;
- ``{"field": {"$exists": true | false}}``: the field is (or is not) present.

Anything else is refused with ``ValueError`` and a message that says what and where: an unknown operator, a
value of the wrong type, an object or array where a value belongs (too deep), more than :data:`MAX_CLAUSES`
conditions. A field that holds an array matches equality and ``$in`` when the array contains the value.

:func:`compile_filter` turns a checked filter into an SQL condition on ``d.metadata`` (``d`` the documents
table) whose every value, field names included, is a bound parameter: no user text is ever part of the SQL.
Equality and ``$in`` compile to ``@>`` and ``$exists`` to ``?``, which the GIN index ``ix_documents_metadata``
answers; ranges go through ``jsonb_path_exists`` with the bound as a variable (a value of another type, or a
string that is no date, simply does not match: never an error).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

MAX_CLAUSES = 20
MAX_IN = 100
MAX_FIELD = 128
RANGE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = ("$eq", "$in", "$exists", *RANGE_OPS)

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Clause:
    field: str
    op: str  # $eq, $in, $exists, $gt, $gte, $lt, $lte
    value: Any  # a scalar, a list of scalars ($in), a bool ($exists), a number or ISO string (ranges)


def parse_filter(raw: object) -> list[Clause]:
    """The clauses of ``raw``, or ``ValueError`` saying what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError("a filter is a JSON object of metadata fields")
    clauses: list[Clause] = []
    for field, condition in raw.items():
        _check_field(field)
        if isinstance(condition, dict):
            if not condition:
                raise ValueError(f"filter field {field!r}: an empty object; give a value or an operator")
            for op, value in condition.items():
                clauses.append(_clause(field, op, value))
        else:
            clauses.append(_clause(field, "$eq", condition))
        if len(clauses) > MAX_CLAUSES:
            raise ValueError(f"a filter has at most {MAX_CLAUSES} conditions")
    return clauses


def check_filter(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` if it is a valid filter (for pydantic validators); raises ``ValueError``."""
    parse_filter(raw)
    return raw


def _check_field(field: object) -> None:
    if not isinstance(field, str) or not field or len(field) > MAX_FIELD:
        raise ValueError(f"filter field names are 1 to {MAX_FIELD} characters")
    if field.startswith("$"):
        raise ValueError(
            f'filter field {field!r}: operators go inside a field\'s object, e.g. {{"year": {{{field!r}: …}}}}'
        )
    if "\x00" in field:
        raise ValueError("filter field names may not contain NUL characters")


def _clause(field: str, op: object, value: object) -> Clause:
    where = f"filter field {field!r}"
    if op not in OPERATORS:
        raise ValueError(f"{where}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
    assert isinstance(op, str)
    if op == "$eq":
        return Clause(field, op, _scalar(value, where))
    if op == "$in":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN:
            raise ValueError(f"{where}: $in takes a list of 1 to {MAX_IN} values")
        return Clause(field, op, [_scalar(v, f"{where}: $in") for v in value])
    if op == "$exists":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: $exists takes true or false")
        return Clause(field, op, value)
    return Clause(field, op, _bound(value, f"{where}: {op}"))


def _scalar(value: object, where: str) -> Scalar:
    if isinstance(value, dict | list):
        raise ValueError(f"{where}: compares with a string, number, boolean or null, not an object or array")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where}: text may not contain NUL characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: numbers must be finite")
    assert value is None or isinstance(value, str | int | float | bool)
    return value


def _bound(value: object, where: str) -> int | float | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'{where}: takes a number or an ISO 8601 date ("2024-05-01", "2024-05-01T12:00:00Z")')
    if isinstance(value, str):
        return _iso(value, where)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: numbers must be finite")
    return value


def _iso(value: str, where: str) -> str:
    """The date or date-time in a form PostgreSQL's jsonpath ``datetime()`` reads (``Z`` as ``+00:00``)."""
    try:
        if len(value) == 10:
            return date.fromisoformat(value).isoformat()
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where}: {value[:40]!r} is neither a number nor an ISO 8601 date") from None
    return parsed.isoformat()


@dataclass(frozen=True)
class Compiled:
    """An SQL condition (``%(name)s`` placeholders, for ``exec_driver_sql``) and its parameters."""

    sql: str
    params: dict[str, Any]


def compile_filter(clauses: list[Clause], *, prefix: str = "f") -> Compiled:
    """The AND of ``clauses`` as a condition on ``d.metadata``; ``TRUE`` when there are none."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for i, clause in enumerate(clauses):
        key, val = f"{prefix}{i}k", f"{prefix}{i}v"
        params[key] = clause.field
        if clause.op in ("$eq", "$in"):
            # {"f": v} matches the value, {"f": [v]} an array holding it (@> never looks into a nested array).
            values = clause.value if clause.op == "$in" else [clause.value]
            params[val] = [json.dumps({clause.field: shape}) for v in values for shape in (v, [v])]
            parts.append(f"d.metadata @> ANY(%({val})s::jsonb[])")
        elif clause.op == "$exists":
            test = f"d.metadata ? %({key})s"
            parts.append(test if clause.value else f"NOT ({test})")
        else:
            parts.append(_range(clause, key, val, params))
    if not parts:
        return Compiled("TRUE", {})
    return Compiled(" AND ".join(f"({p})" for p in parts), params)


def _range(clause: Clause, key: str, val: str, params: dict[str, Any]) -> str:
    """A range test through jsonpath: the path is fixed text of ours; the field and the bound are parameters.
    ``strict`` mode, so an array is not unwrapped; ``silent``, so a string that is no date does not match."""
    op = RANGE_OPS[clause.op]
    params[val] = json.dumps({"b": clause.value})
    if isinstance(clause.value, str):
        path = f'strict $ ? (@.type() == "string" && @.datetime() {op} $b.datetime())'
        function = "jsonb_path_exists_tz"  # a date and a date-time with a zone compare at the session's zone
    else:
        path = f'strict $ ? (@.type() == "number" && @ {op} $b)'
        function = "jsonb_path_exists"
    return f"{function}(d.metadata -> %({key})s, '{path}', %({val})s::jsonb, true)"
