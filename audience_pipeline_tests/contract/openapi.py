"""Hold HTTP exchanges to Amazon's published API definitions (the extracts in `definitions/`).

An exchange is what crossed the wire: the request as `requests` sent it and the response as the
sandbox answered it. Both are checked against the operation Amazon defines for that method and
path: required headers and query parameters, the documented content type, and the body against
the schema. Schemas are closed for the check: a field Amazon does not define is a problem, on
either side, so an invented field name cannot pass.
"""

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator, oas30_format_checker

DEFINITIONS = Path(__file__).parent / "definitions"
_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass
class Exchange:
    """One request and its answer, as they crossed the wire."""

    method: str
    url: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))

    @classmethod
    def of(cls, response: requests.Response) -> "Exchange":
        sent = response.request
        body = sent.body or b""
        return cls(
            method=sent.method,
            url=sent.url,
            request_headers=dict(sent.headers),
            request_body=body.encode() if isinstance(body, str) else body,
            status=response.status_code,
            response_headers=dict(response.headers),
            response_body=response.content,
        )


@dataclass
class Operation:
    """One operation of an extract: where it is, what it takes and what it answers."""

    family: str
    method: str
    path: str
    definition: dict[str, Any]
    pattern: re.Pattern = field(repr=False)

    @property
    def key(self) -> str:
        return f"{self.method.upper()} {self.path}"


def recording_session(exchanges: list[Exchange]) -> requests.Session:
    """A `requests` session that appends every exchange it makes to `exchanges`."""
    session = requests.Session()

    def record(response: requests.Response, *args, **kwargs) -> None:
        exchanges.append(Exchange.of(response))

    session.hooks["response"].append(record)
    return session


@cache
def operations() -> tuple[Operation, ...]:
    """Every operation of every extract, most specific path first (literal segments before params)."""
    found = []
    for file in sorted(DEFINITIONS.glob("*.json")):
        extract = json.loads(file.read_text())
        for path, methods in extract["paths"].items():
            for method, definition in methods.items():
                if method in _METHODS:
                    regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))
                    found.append(Operation(file.stem, method, path, definition, re.compile(regex + "$")))
    return tuple(sorted(found, key=lambda op: (op.path.count("{"), -len(op.path))))


def operation_of(method: str, path: str) -> Operation | None:
    """The operation Amazon defines for this method and concrete path, if any."""
    return next((op for op in operations() if op.method == method.lower() and op.pattern.match(path)), None)


def family_operations(family: str) -> set[str]:
    """`METHOD /path` of every operation in one family's extract."""
    return {op.key for op in operations() if op.family == family}


def problems(exchanges: Iterable[Exchange]) -> list[str]:
    """Everything in these exchanges that Amazon's definitions do not allow, one line each."""
    found = []
    for exchange in exchanges:
        op = operation_of(exchange.method, exchange.path)
        where = f"{exchange.method} {exchange.path}"
        if op is None:
            found.append(f"{where}: no such operation in Amazon's definitions")
            continue
        found += [f"{where} request: {p}" for p in request_problems(op, exchange)]
        found += [f"{where} -> {exchange.status}: {p}" for p in response_problems(op, exchange)]
    return found


def _parameters(op: Operation, where: str) -> list[dict[str, Any]]:
    return [p for p in op.definition.get("parameters", []) if p.get("in") == where]


def request_problems(op: Operation, exchange: Exchange) -> list[str]:
    """What is wrong with the request side of an exchange."""
    found = []
    headers = {name.lower(): value for name, value in exchange.request_headers.items()}
    for parameter in _parameters(op, "header"):
        if parameter.get("required") and parameter["name"].lower() not in headers:
            found.append(f"missing required header {parameter['name']}")
    query = exchange.query
    known = {p["name"] for p in _parameters(op, "query")}
    found += [f"unknown query parameter {name}" for name in query if name not in known]
    for parameter in _parameters(op, "query"):
        if parameter.get("required") and parameter["name"] not in query:
            found.append(f"missing required query parameter {parameter['name']}")
    body_definition = op.definition.get("requestBody")
    if body_definition is None:
        if exchange.request_body:
            found.append("sends a body the operation does not take")
        return found
    if not exchange.request_body:
        if body_definition.get("required"):
            found.append("sends no body; the operation requires one")
        return found
    content = body_definition.get("content", {})
    content_type = headers.get("content-type", "").split(";")[0].strip()
    if content_type not in content:
        return [*found, f"content type {content_type or 'none'!r}; Amazon takes {', '.join(content)}"]
    schema = content[content_type].get("schema")
    if schema is not None:
        body = _decode(exchange.request_body, content_type)
        found += _schema_problems(OAS30WriteValidator, schema, body)
    return found


def response_problems(op: Operation, exchange: Exchange) -> list[str]:
    """What is wrong with the response side of an exchange."""
    responses = op.definition.get("responses", {})
    # A documented answer without a body (a 204) is an empty mapping: still documented.
    answer = responses.get(str(exchange.status), responses.get("default"))
    if answer is None:
        return [f"status {exchange.status} is not one Amazon documents ({', '.join(responses)})"]
    content = answer.get("content")
    if not content:
        return ["answers a body Amazon does not document"] if exchange.response_body.strip() else []
    headers = {name.lower(): value for name, value in exchange.response_headers.items()}
    content_type = headers.get("content-type", "").split(";")[0].strip()
    if content_type not in content:
        return [f"content type {content_type or 'none'!r}; Amazon answers {', '.join(content)}"]
    schema = content[content_type].get("schema")
    if schema is None:
        return []
    return _schema_problems(OAS30ReadValidator, schema, _decode(exchange.response_body, content_type))


def _decode(body: bytes, content_type: str) -> Any:
    if content_type == "application/x-www-form-urlencoded":
        return dict(parse_qsl(body.decode()))
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def _schema_problems(validator_class: type, schema: Mapping[str, Any], instance: Any) -> list[str]:
    validator = validator_class(closed(schema), format_checker=oas30_format_checker)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or 'body'}: {error.message}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    ]


def closed(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with every object that lists its fields closed to fields it does not list.

    Amazon's files leave `additionalProperties` unset; an unset value would let any invented field
    through. A field Amazon lists as required but forgot to describe stays allowed.
    """
    schema = copy.deepcopy(dict(schema))

    def close(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                close(item)
            return
        if not isinstance(node, dict):
            return
        for value in node.values():
            close(value)
        # A schema without `properties` only adds a rule to the object around it (a `oneOf` of
        # `required` lists): closing it would refuse that object's own fields.
        is_object = node.get("type", "object") == "object"
        if "properties" in node and is_object and "additionalProperties" not in node:
            for name in node.get("required", []):
                node["properties"].setdefault(name, {})
            node["additionalProperties"] = False

    close(schema)
    return schema
