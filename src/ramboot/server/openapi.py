"""The OpenAPI 3.1 document, generated from the API's route table and its pydantic models,
so the document and the router cannot drift."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..inventory import schemas as S

PREFIX = "/api/v1"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    access: str  # read | write | node
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    many: bool = False
    status: int = 200
    query: dict[str, dict[str, Any]] = field(default_factory=dict)  # query parameter -> its JSON schema
    produces: tuple[str, str] | None = None  # (media type, description) of a body no model describes


def document(routes: list[Route]) -> dict[str, Any]:
    """OpenAPI 3.1, its schemas generated from the pydantic models."""
    models: set[type[BaseModel]] = {S.ErrorOut}
    for r in routes:
        models.update(m for m in (r.body, r.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}")
    schemas = top.get("$defs", {})

    def ref(m: type[BaseModel]) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{m.__name__}"}

    error = {"description": "error", "content": {"application/json": {"schema": ref(S.ErrorOut)}}}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__}
        params: list[dict[str, Any]] = []
        for name in ("mac", "name"):
            if "{" + name + "}" in r.path:
                params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
        for name, schema in r.query.items():
            params.append({"name": name, "in": "query", "required": False, "schema": schema})
        if params:
            op["parameters"] = params
        if r.body is not None:
            accepts = ["application/json"] + (["application/merge-patch+json"] if r.method == "PATCH" else [])
            op["requestBody"] = {"required": True, "content": {m: {"schema": ref(r.body)} for m in accepts}}
        ok: dict[str, Any]
        if r.response is not None:
            schema = {"type": "array", "items": ref(r.response)} if r.many else ref(r.response)
            ok = {"description": "ok", "content": {"application/json": {"schema": schema}}}
        elif r.produces is not None:
            media, what = r.produces
            body_schema = {"type": "object"} if media == "application/json" else {"type": "string"}
            ok = {"description": what, "content": {media: {"schema": body_schema}}}
        else:
            ok = {"description": "done"}
        op["responses"] = {str(r.status): ok, "4XX": error}
        if r.access == "write":
            op["security"] = [{"bearer": []}]
            op["description"] = "The admin token (api.token); a body is Content-Type: application/json."
        elif r.access == "read":
            op["security"] = [{"bearer": []}]  # api.token or api.read_token; none if api.read_requires_token = false
            op["description"] = "The admin or the read-only token, unless api.read_requires_token = false."
        else:
            op["security"] = [{}]
            op["description"] = ("No API token: the access rule decides (this boot's credential, or in full "
                                 "mode the address holding the MAC's hardware lease).")
        paths.setdefault(PREFIX + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "ramboot", "version": "1",
                 "description": "Nodes, images, leases, boot events and inventory."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
