"""The REST API under `/api/v1`: its handlers, access rules and route table.

One route table drives both the router and the OpenAPI document
(`openapi.py`), so the two cannot drift; the live event stream is
`event_stream.py`. Access (docs/api.md):
- `read` and `write` routes answer only when the request's Host, and its
  Origin if it has one, name this server (`check_site`: DNS rebinding, CSRF);
- `write` routes need `Authorization: Bearer <api.token>` (the admin token;
  `serve` makes one in DATA/api-token when none is configured) and a JSON
  body said to be JSON (415 otherwise);
- `read` routes take the admin token or `api.read_token`, and are open only if
  `api.read_requires_token = false`; only the event stream also takes
  `?access_token=` (a browser's EventSource sends no headers);
- a refusal carries `WWW-Authenticate: Bearer ...` (RFC 6750): 401 for a
  missing or wrong token, 403 when no token can help;
- `node` routes (the initramfs's reports) need no token; `check_reporter`
  decides who may report for a MAC; they are rate-limited per source address
  (a token bucket, 429 with Retry-After) and their bodies are small;
- every body has a size limit (413).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .. import metrics
from ..access import discovered as discovered_node
from ..config import Config
from ..inventory import schemas as S
from ..inventory.service import Service, ServiceError
from ..inventory.store import StoreError
from ..inventory.timeline import NOTES, OPERATOR_STAGES, SERVER_STAGES
from ..inventory.views import consume_boot_once
from ..macaddr import BadMac, normalize_mac
from ..proto.pxe import normalize_uuid
from ..tpm_gate import SIGNATURE_HEADER, Measured
from . import openapi as oa
from .event_stream import BROADCAST, event_stream
from .http_context import CTX, error_json, json_response
from .http_files import node_credential, secrets_transport_refused, seed_report
from .openapi import PREFIX, Route

log = logging.getLogger("ramboot.api")

_RESERVED_DETAIL = {"mac", "stage", "source"}  # EventLog.record's own parameters


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                           ) -> web.StreamResponse:
    """API errors are JSON `{"error": ...}` with the right status; other paths are untouched."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as e:
        metrics.dropped("api", API_REASONS.get(e.status, "bad-request"))
        return error_json(e.status, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        metrics.dropped("api", API_REASONS.get(e.status, "bad-request"))
        return error_json(e.status, e.reason.lower(), {k: v for k, v in e.headers.items() if k == "Allow"})
    except Exception:
        log.exception("api handler failed", extra={"path": request.path})
        return error_json(500, "internal error; see the server log")


API_REASONS = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
                405: "bad-method", 409: "conflict", 413: "body-too-large", 415: "bad-content-type",
                429: "rate-limited"}


# -- access -------------------------------------------------------------------
def _challenge(error: str | None = None, description: str | None = None) -> dict[str, str]:
    """RFC 6750 §3: the WWW-Authenticate header of a refusal."""
    value = 'Bearer realm="ramboot"'
    if error:
        value += f', error="{error}"'
    if description:
        value += f', error_description="{description}"'
    return {"WWW-Authenticate": value}


def _name(host: str) -> str:
    """A host name or address as compared: lower case, no brackets, no trailing dot."""
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def _host_of(header: str) -> str:
    """The name in a Host header, without its port."""
    header = header.strip()
    if header.startswith("["):  # [::1]:8080
        return _name(header.partition("]")[0] + "]")
    name, sep, port = header.rpartition(":")
    return _name(name if sep and port.isdigit() and ":" not in name else header)


def server_names(config: Config, server_ip: str) -> frozenset[str]:
    """What a request's Host (and Origin, if any) may name: this server's own addresses and names,
    loopback, and `[api] allowed_hosts`."""
    names = {"localhost", "127.0.0.1", "::1", server_ip, socket.gethostname(), *config.api.allowed_hosts}
    if config.network.address is not None:
        names.add(str(config.network.address))
    if config.network.address6 is not None:
        names.add(str(config.network.address6))
    if config.http.bind not in ("0.0.0.0", "::", ""):
        names.add(config.http.bind)
    return frozenset(_name(n) for n in names if n)


SERVER_NAMES = web.AppKey("server_names", frozenset)


def check_site(request: web.Request) -> None:
    """Refuse a request whose Host or Origin names another site: a DNS-rebound page sends its
    own name as Host, a cross-site form or fetch its own Origin (403, docs/api.md)."""
    names = request.app[SERVER_NAMES]
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    local = _name(str(sock[0])) if sock else ""
    host = request.headers.get("Host")
    if host is not None and _host_of(host) not in names and _host_of(host) != local:
        raise ApiError(403, f"Host {host[:100]!r} is not a name of this server ([api] allowed_hosts adds one)")
    origin = request.headers.get("Origin")
    if origin is not None:
        try:
            o_host = urlsplit(origin).hostname
        except ValueError:
            o_host = None
        if o_host is None or (_name(o_host) not in names and _name(o_host) != local):
            raise ApiError(403, f"Origin {origin[:100]!r} is not this server: cross-site requests are refused")


def _given_token(request: web.Request, query_token: bool) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if query_token and request.method == "GET":  # the event stream: EventSource cannot set headers
        return request.query.get("access_token")
    return None


def _same(given: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(given.encode(), token.encode())


def authorize(request: web.Request, access: str, query_token: bool = False) -> None:
    """Raise ApiError unless `request` may use a route of kind `access` (read, write, node).

    `query_token`: the route also takes `?access_token=` (only the read-only event stream)."""
    if access == "node":  # the access rule decides (check_reporter); firmware sends odd Host headers
        return
    check_site(request)
    api = request.app[CTX].config.api
    if "access_token" in request.query and not (query_token and request.method == "GET"):
        raise ApiError(400, "access_token in the URL is accepted only by GET /events/stream; "
                            "use Authorization: Bearer <api.token>",
                       _challenge("invalid_request", "token in the query"))
    if access == "read" and not api.read_requires_token:
        return
    given = _given_token(request, query_token)
    if given is None:
        raise ApiError(401, "missing bearer token (Authorization: Bearer <api.token>)", _challenge())
    if _same(given, api.token):
        return
    if _same(given, api.read_token):
        if access == "read":
            return
        raise ApiError(403, "the read token cannot write; use the admin token (api.token)",
                       _challenge("insufficient_scope", "read-only token"))
    raise ApiError(401, "wrong bearer token", _challenge("invalid_token"))


MERGE_PATCH = "application/merge-patch+json"  # RFC 7396


def require_json(request: web.Request) -> None:
    """A write's body is JSON, said so: a cross-site form or `text/plain` fetch never is (415).
    A PATCH may also say it is a JSON merge patch."""
    allowed = ("application/json", MERGE_PATCH) if request.method == "PATCH" else ("application/json",)
    if (request.method in ("POST", "PUT", "PATCH") or request.body_exists) and request.content_type not in allowed:
        raise ApiError(415, f"Content-Type {request.content_type!r}: a write takes application/json")


async def check_reporter(request: web.Request, mac: str) -> None:
    """Who may report for a MAC: the access rule decides (access.py, `AccessRule.reporter`):
    this boot's credential, or in full mode the address holding the MAC's hardware lease.
    Reports go over HTTPS unless `[security] overlay_over_http` allows HTTP."""
    why = secrets_transport_refused(request)
    if why:
        raise ApiError(403, why)
    access = request.app[CTX].namespace.access
    if access is None:
        raise ApiError(403, "no access rule: this server takes no node reports")
    verdict = await asyncio.to_thread(access.reporter, mac, request.remote or "", node_credential(request))
    if not verdict.ok:
        raise ApiError(403, verdict.why)


async def signed_body_of(request: web.Request, model: type[M], mac: str, kind: str) -> M:
    """A report's body as `model`, once the TPM rule takes it: a node with a trusted TPM signs
    its reports with this boot's attestation key (tpm_gate.py); an unsigned or forged one is
    403, recorded as `untrusted-report`."""
    ctx = request.app[CTX]
    raw = await raw_body(request, ctx.config.api.max_report_kib)
    if ctx.tpm is not None:
        why = await asyncio.to_thread(ctx.tpm.check_report, mac, kind, raw,
                                      request.headers.get(SIGNATURE_HEADER))
        if why is not None:
            metrics.TPM_ATTESTATIONS.labels("untrusted-report").inc()
            ctx.events.record(mac, "untrusted-report", ip=request.remote or "", why=why[:200])
            log.warning("untrusted report", extra={"mac": mac, "client": request.remote, "why": why})
            raise ApiError(403, why)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        raise ApiError(400, S.validation_message(e)) from None


class ReportLimiter:
    """Per source address token buckets for node reports; pure bookkeeping, time passed in.

    At most `max_sources` buckets are kept: past that, the fullest (idle) ones are forgotten,
    which only ever gives a source more room, never less than a new source gets."""

    def __init__(self, rate: float, burst: int, max_sources: int = 4096):
        self.rate, self.burst, self.max_sources = rate, float(burst), max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)

    def take(self, source: str, now: float) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        tokens, at = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[source] = (tokens, now)  # most recent last
        if len(self._buckets) > self.max_sources:
            for key in list(self._buckets)[: len(self._buckets) - self.max_sources]:
                del self._buckets[key]
        return wait


REPORTS = web.AppKey("report_limiter", ReportLimiter)


def rate_limit_report(request: web.Request) -> None:
    wait = request.app[REPORTS].take(request.remote or "", time.monotonic())
    if wait:
        raise ApiError(429, f"too many reports from {request.remote}; retry in {math.ceil(wait)} s",
                       {"Retry-After": str(max(1, math.ceil(wait)))})


# -- helpers ------------------------------------------------------------------
def mac_param(request: web.Request) -> str:
    try:
        return normalize_mac(request.match_info["mac"])
    except BadMac as e:
        raise ApiError(400, str(e)) from None


async def raw_body(request: web.Request, limit_kib: int | None = None) -> bytes:
    """The body; over `limit_kib` (default `api.max_body_kib`) it is 413, unread."""
    limit = (limit_kib or request.app[CTX].config.api.max_body_kib) << 10
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"body over {limit >> 10} KiB")
    chunks, total = [], 0
    while True:  # read(n) returns what has arrived, up to n: a body may come in pieces
        chunk = await request.content.read(limit + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"body over {limit >> 10} KiB")
    return b"".join(chunks)


M = TypeVar("M", bound=BaseModel)


async def body_of(request: web.Request, model: type[M], limit_kib: int | None = None) -> M:
    """The JSON body as `model`; a bad one is 400 in words, naming the field."""
    raw = await raw_body(request, limit_kib)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        raise ApiError(400, S.validation_message(e)) from None


R = TypeVar("R")


async def service(request: web.Request, call: Callable[[Service], R]) -> R:
    """`call` on the service, in a worker thread (it reads the store); its refusal as an API error."""
    svc = request.app[CTX].service
    try:
        return await asyncio.to_thread(call, svc)
    except ServiceError as e:
        raise ApiError(e.status, str(e)) from None


# -- handlers -----------------------------------------------------------------
async def list_nodes(request: web.Request) -> web.Response:
    return json_response(await service(request, lambda svc: svc.list_nodes()))


async def get_node(request: web.Request) -> web.Response:
    mac = mac_param(request)
    return json_response(await service(request, lambda svc: svc.show_node(mac)))


async def put_node(request: web.Request) -> web.Response:
    mac = mac_param(request)
    body = await body_of(request, S.NodeIn)
    detail, created = await service(request, lambda svc: svc.add_node(mac, body, replace=True))
    request.app[BROADCAST].poke(mac)
    return json_response(detail, 201 if created else 200)


async def create_node(request: web.Request) -> web.Response:
    body = await body_of(request, S.NodeCreate)
    node = S.NodeIn.model_validate(body.model_dump(exclude={"mac"}))
    detail, _ = await service(request, lambda svc: svc.add_node(body.mac, node))
    request.app[BROADCAST].poke(body.mac)
    return json_response(detail, 201)


async def patch_node(request: web.Request) -> web.Response:
    mac = mac_param(request)
    try:
        patch = json.loads(await raw_body(request) or b"{}")
    except ValueError:
        raise ApiError(400, "body: not JSON") from None
    detail = await service(request, lambda svc: svc.patch_node(mac, patch))
    request.app[BROADCAST].poke(mac)
    return json_response(detail)


async def delete_node(request: web.Request) -> web.Response:
    mac = mac_param(request)
    await service(request, lambda svc: svc.remove_node(mac))
    request.app[BROADCAST].poke(mac)
    return web.Response(status=204)


async def node_events(request: web.Request) -> web.Response:
    mac = mac_param(request)
    try:
        limit = max(1, min(int(request.query.get("limit", "200")), 5000))
    except ValueError:
        raise ApiError(400, "limit: must be an integer") from None
    return json_response(await service(request, lambda svc: svc.node_events(mac, limit)))


async def node_inventory(request: web.Request) -> web.Response:
    mac = mac_param(request)
    return json_response(await service(request, lambda svc: svc.node_inventory(mac)))


async def report_event(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    mac = mac_param(request)
    rate_limit_report(request)
    await check_reporter(request, mac)
    body = await signed_body_of(request, S.EventIn, mac, "events")
    if body.stage in SERVER_STAGES or body.stage in NOTES or body.stage in OPERATOR_STAGES:
        raise ApiError(400, f"stage {body.stage!r} is recorded by the server, not reported by nodes")
    if clash := _RESERVED_DETAIL & set(body.detail):
        raise ApiError(400, f"detail: reserved key {sorted(clash)[0]!r}")
    if request.remote:
        ctx.events.bind(request.remote, mac)
    ctx.events.record(mac, body.stage, source="node", **body.detail)
    if body.stage == "booted":
        await asyncio.to_thread(consume_boot_once, ctx.store, ctx.events, mac)
    if ctx.seeds is not None:
        await seed_report(ctx, ctx.seeds, mac, body.stage, body.detail, request.remote)
    return json_response(S.Accepted(), 202)


async def report_inventory(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    mac = mac_param(request)
    rate_limit_report(request)
    await check_reporter(request, mac)
    report = await signed_body_of(request, S.InventoryReport, mac, "inventory")

    def work() -> bool:
        ctx.store.hardware.add(mac, report.model_dump(mode="json"))
        try:
            uuid = normalize_uuid(report.dmi.uuid) if report.dmi.uuid else None
        except ValueError:
            uuid = None
        spec = discovered_node(ctx.config.boot, ctx.store.directory, mac, uuid)
        if spec is not None:
            ctx.store.nodes.put(spec)
        return spec is not None

    try:
        discovered = await asyncio.to_thread(work)
    except StoreError as e:
        raise ApiError(409, str(e)) from None
    if discovered:
        log.info("node discovered", extra={"mac": mac})
    request.app[BROADCAST].poke(mac)
    return json_response(S.Accepted(), 202)


async def report_tpm(request: web.Request) -> web.Response:
    """A node's TPM (EK, AK, EK certificate), with this boot's credential from the node's address
    (the access rule, as for its overlay): the boot key wrapped to its enrolled EK (tpm_gate.py)."""
    ctx = request.app[CTX]
    mac = mac_param(request)
    rate_limit_report(request)
    if why := secrets_transport_refused(request):
        raise ApiError(403, why)
    access, gate = ctx.namespace.access, ctx.tpm
    if access is None or gate is None:
        raise ApiError(403, "no access rule: this server releases no node secrets")
    ip = request.remote or ""
    claim = await asyncio.to_thread(access.claim, mac, ip, node_credential(request), True)
    if claim.status != 200 or claim.credential is None:
        raise ApiError(claim.status, claim.why)
    body = await body_of(request, S.TpmReport, ctx.config.api.max_report_kib)
    try:
        ek, ak = base64.b64decode(body.ek, validate=True), base64.b64decode(body.ak, validate=True)
        cert = base64.b64decode(body.ek_cert, validate=True) if body.ek_cert else None
    except binascii.Error:
        raise ApiError(400, "ek, ak, ek_cert: not base64") from None
    rec = claim.credential
    measured = None
    if body.quote and body.quote_sig and body.pcrs:
        measured = Measured(base64.b64decode(body.quote), base64.b64decode(body.quote_sig),
                            base64.b64decode(body.pcrs), base64.b64decode(body.eventlog or ""))
    spec = await asyncio.to_thread(ctx.store.nodes.get, rec.node)
    image = spec.image if spec is not None and spec.image else "default"  # one name for profile/default images
    # The command line this boot was served, rendered again with the credential it presents
    # (the claim checked it): what an EFI kernel's stub measured, if nothing changed it.
    token = node_credential(request) or ""
    cmdline = (await asyncio.to_thread(ctx.namespace.load_options, rec.nic, rec.uuid, rec.node, token, ip)
               if measured else ())
    answer = await asyncio.to_thread(gate.attest, rec.node, rec.token_sha256, ek, ak, cert, measured, image, cmdline)
    metrics.TPM_ATTESTATIONS.labels(answer.event or "invalid").inc()
    if answer.event:
        ctx.events.record(rec.node, answer.event, ip=ip, ek=answer.fingerprint, why=answer.why[:200])
    if answer.event == "untrusted-tpm":
        log.warning("untrusted TPM", extra={"mac": rec.node, "client": ip, "why": answer.why})
    if answer.blob is None:
        raise ApiError(answer.status, answer.why)
    return web.Response(body=answer.blob, content_type="application/octet-stream",
                        headers={"Cache-Control": "no-store"})


async def trust_tpm(request: web.Request) -> web.Response:
    """The operator trusts a node's pending TPM, or (`replace`) the last other one it refused."""
    mac = mac_param(request)
    body = await body_of(request, S.TpmTrust)
    return json_response(await service(request, lambda svc: svc.trust_tpm(mac, body.replace)))


async def list_profiles(request: web.Request) -> web.Response:
    return json_response(await service(request, lambda svc: svc.list_profiles()))


async def get_profile(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return json_response(await service(request, lambda svc: svc.show_profile(name)))


async def put_profile(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await body_of(request, S.ProfileIn)
    out, created = await service(request, lambda svc: svc.put_profile(name, body))
    return json_response(out, 201 if created else 200)


async def delete_profile(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await service(request, lambda svc: svc.remove_profile(name))
    return web.Response(status=204)


async def list_images(request: web.Request) -> web.Response:
    return json_response(await service(request, lambda svc: svc.list_images()))


async def get_image(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return json_response(await service(request, lambda svc: svc.show_image(name)))


async def list_leases(request: web.Request) -> web.Response:
    return json_response(await service(request, lambda svc: svc.list_leases()))


async def list_servers(request: web.Request) -> web.Response:
    cluster = request.app[CTX].cluster
    me = cluster.name if cluster else None
    return json_response(await service(request, lambda svc: svc.list_servers(me)))


async def status(request: web.Request) -> web.Response:
    return json_response(await service(request, lambda svc: svc.status()))


async def openapi(request: web.Request) -> web.Response:
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = oa.document(ROUTES)
    return json_response(_OPENAPI)


_OPENAPI: dict[str, Any] | None = None


async def api_not_found(request: web.Request) -> web.Response:
    allowed = sorted({r.method for r in ROUTES if _template(r).match(request.path)})
    if allowed:
        methods = ", ".join(allowed)
        return error_json(405, f"{request.method} is not allowed here; use {methods}", {"Allow": methods})
    raise ApiError(404, f"no such API endpoint: {request.method} {request.path}")


def _template(r: Route) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\{[a-z]+\\}", "[^/]+", re.escape(PREFIX + r.path)) + "$")


# -- the route table: router and OpenAPI from one list -------------------------------
ROUTES = [
    Route("GET", "/nodes", list_nodes, "read", "List registered nodes with their last boot stage",
          response=S.NodeOut, many=True),
    Route("POST", "/nodes", create_node, "write", "Register a node", S.NodeCreate, S.NodeDetail, status=201),
    Route("GET", "/nodes/{mac}", get_node, "read", "A node with its inventory and last boot timeline",
          response=S.NodeDetail),
    Route("PUT", "/nodes/{mac}", put_node, "write", "Create or replace a node", S.NodeIn, S.NodeDetail),
    Route("PATCH", "/nodes/{mac}", patch_node, "write",
          "Change what the body names (RFC 7396 merge patch: a key sets, null unsets, an absent key keeps)",
          S.NodePatch, S.NodeDetail),
    Route("DELETE", "/nodes/{mac}", delete_node, "write", "Remove a node (its events and inventory stay)", status=204),
    Route("GET", "/nodes/{mac}/events", node_events, "read", "A node's events, oldest first",
          response=S.EventOut, many=True, query={"limit": {"type": "integer", "minimum": 1, "maximum": 5000}}),
    Route("POST", "/nodes/{mac}/events", report_event, "node", "A node reports a boot stage",
          S.EventIn, S.Accepted, status=202),
    Route("GET", "/nodes/{mac}/inventory", node_inventory, "read", "A node's hardware reports, newest first",
          response=S.InventoryOut, many=True),
    Route("POST", "/nodes/{mac}/inventory", report_inventory, "node", "A node reports its hardware",
          S.InventoryReport, S.Accepted, status=202),
    Route("POST", "/nodes/{mac}/tpm", report_tpm, "node",
          "A node reports its TPM; the answer is this boot's key wrapped to its enrolled EK",
          S.TpmReport, produces=("application/octet-stream", "a credential for tpm2_activatecredential")),
    Route("POST", "/nodes/{mac}/tpm/trust", trust_tpm, "write", "Trust a node's pending TPM (or the one refused)",
          S.TpmTrust, S.TpmOut),
    Route("GET", "/profiles", list_profiles, "read", "List profiles", response=S.ProfileOut, many=True),
    Route("GET", "/profiles/{name}", get_profile, "read", "One profile", response=S.ProfileOut),
    Route("PUT", "/profiles/{name}", put_profile, "write", "Create or replace a profile", S.ProfileIn, S.ProfileOut),
    Route("DELETE", "/profiles/{name}", delete_profile, "write", "Remove a profile", status=204),
    Route("GET", "/images", list_images, "read", "List images (from their manifests)", response=S.ImageOut, many=True),
    Route("GET", "/images/{name}", get_image, "read", "One image's manifest", response=S.ImageOut),
    Route("GET", "/leases", list_leases, "read", "DHCP leases", response=S.LeaseOut, many=True),
    Route("GET", "/servers", list_servers, "read", "The servers on this database, with when each was last seen",
          response=S.ServerOut, many=True),
    Route("GET", "/status", status, "read", "Every node seen, registered or not, with its last boot",
          response=S.NodeStatus, many=True),
    Route("GET", "/events/stream", event_stream, "read",
          "Live node updates (server-sent events, `event: node`, data: NodeStatus)",
          produces=("text/event-stream", "event stream")),
    Route("GET", "/openapi.json", openapi, "read", "This document", produces=("application/json", "OpenAPI document")),
]


def _guarded(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    query_token = route.handler is event_stream

    async def handler(request: web.Request) -> web.StreamResponse:
        authorize(request, route.access, query_token)
        if route.access == "write":
            require_json(request)
        return await route.handler(request)

    return handler


def add_routes(app: web.Application) -> None:
    ctx = app[CTX]
    api = ctx.config.api
    app[SERVER_NAMES] = server_names(ctx.config, ctx.booter.server_ip)
    app[REPORTS] = ReportLimiter(api.report_rate, api.report_burst)
    for r in ROUTES:
        app.router.add_route(r.method, PREFIX + r.path, _guarded(r))
    app.router.add_route("*", "/api/{tail:.*}", api_not_found)
