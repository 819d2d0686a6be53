"""What every HTTP handler shares: the application's context and plain responses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ..config import Config
from ..images.catalog import Catalog
from ..inventory.service import Service
from ..inventory.store import Store
from ..namespace import Namespace
from ..policy import Booter
from ..tpm_gate import TpmGate
from .cluster import Cluster
from .events import EventLog
from .seeding import Seeds


@dataclass
class Ctx:
    """Everything a handler needs; one per application."""

    config: Config
    namespace: Namespace
    booter: Booter
    store: Store
    events: EventLog
    cluster: Cluster | None = None  # this server among the others on the database (`serve` makes one)
    tpm: TpmGate | None = None  # the TPM rule after the access rule (tpm_gate.py)
    seeds: Seeds | None = None  # booted nodes seeding their root (`[scale] seed`), None: off
    service: Service = field(init=False)  # the operators' reads and writes, shared with the CLI

    def __post_init__(self) -> None:
        self.service = Service(self.config, self.store, self.booter)

    @property
    def catalog(self) -> Catalog:
        """The images and their manifests: the catalog the policy decides with."""
        return self.booter.catalog


CTX = web.AppKey("ramboot", Ctx)


def text_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


def json_response(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        body = data.model_dump_json()
    elif isinstance(data, list):
        body = "[" + ",".join(d.model_dump_json() if isinstance(d, BaseModel) else json.dumps(d) for d in data) + "]"
    else:
        body = json.dumps(data)
    return web.Response(text=body, status=status, content_type="application/json")


def error_json(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps({"error": message}), status=status, content_type="application/json", headers=headers
    )
