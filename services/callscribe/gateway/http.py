"""Plain HTTP on the WebSocket port: request bodies, JSON responses, the vocabulary API.

websockets parses only body-less handshake requests (it refuses any ``Content-Length`` other
than 0).  The vocabulary API is a JSON ``POST``, so :func:`install_body_parser` swaps the
handshake parser of each new connection for one that also reads a ``Content-Length`` body
(at most :data:`MAX_HTTP_BODY` bytes) into :class:`HttpRequest.body`.  Everything after the
request line and headers — WebSocket frames, or the discard after an HTTP response — is
websockets' own code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import http
import ipaddress
import json
import uuid
from typing import Any, Generator
from urllib.parse import parse_qs

from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import InvalidMessage
from websockets.http11 import Request, Response, parse_headers, parse_line
from websockets.protocol import CONNECTING, Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.exceptions import SecurityError

from callscribe import wire
from callscribe.errors import BadRequest, ForbiddenOrigin, HttpError
from callscribe.gateway.auth import cross_site
from callscribe.protocols.common import resolve_model
from callscribe.recognition.vocabulary import (Quota, VocabularyError, VocabularyNotFound,
                                               VocabularyQuotaExceeded, VocabularyStore)

#: largest HTTP request body accepted (a 500-entry vocabulary is ~50 KB)
MAX_HTTP_BODY = 1 << 20
VOCABULARY_PATH = "/api/v1/services/audio/asr/customization"


@dataclasses.dataclass
class HttpRequest(Request):
    body: bytes = b""


class _TooLarge(SecurityError, HttpError):
    """A request refused while it is read, before websockets sees it: a websockets
    ``SecurityError`` (its parsers raise and catch that) under callscribe's root; ``status`` is
    the plain-text response's status."""

    code = "RequestTooLarge"


class RequestLineTooLong(_TooLarge):
    status = 414


class HeaderTooLarge(_TooLarge):
    status = 431


class BodyTooLarge(_TooLarge):
    status = 413


def install_body_parser(protocol: ServerProtocol) -> None:
    """Replace the (not yet started) handshake parser of a fresh ServerProtocol."""
    protocol.parser = _parse(protocol)
    next(protocol.parser)


def _read_request(reader: StreamReader) -> Generator[None, None, HttpRequest]:
    line = yield from parse_line(reader.read_line, RequestLineTooLong)
    try:
        raw_method, raw_path, raw_protocol = line.split(b" ", 2)
    except ValueError:
        raise ValueError("invalid HTTP request line") from None
    if raw_protocol not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError("unsupported HTTP protocol")
    try:
        headers = yield from parse_headers(reader.read_line)
    except SecurityError as exc:
        raise HeaderTooLarge(str(exc)) from exc
    if "Transfer-Encoding" in headers:
        raise NotImplementedError("transfer codings aren't supported")
    lengths = set(headers.get_all("Content-Length"))
    if len(lengths) > 1 or not all(v.isascii() and v.isdigit() and len(v) <= 12
                                   for v in lengths):
        raise ValueError("invalid Content-Length")
    size = int(lengths.pop()) if lengths else 0
    if size > MAX_HTTP_BODY:
        raise BodyTooLarge(f"request body of {size} bytes exceeds {MAX_HTTP_BODY} bytes")
    body = bytes((yield from reader.read_exact(size))) if size else b""
    return HttpRequest(raw_path.decode("ascii"), headers, raw_method.decode("ascii"),
                       raw_protocol.decode("ascii"), body=body)


def _parse(protocol: ServerProtocol) -> Generator[None, None, None]:
    """Read one request; hand it to websockets; then parse WebSocket frames, but only once the
    handshake was accepted (101).  Bytes that arrive before the response is sent (a pipelined
    second request) stay unread: a non-101 response closes the connection (``Connection:
    close``) and websockets discards them; frame parsing must never see them."""
    try:
        request = yield from _read_request(protocol.reader)
    except Exception as exc:
        protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
        protocol.handshake_exc.__cause__ = exc
        if isinstance(exc, _TooLarge):
            protocol.send_response(protocol.reject(http.HTTPStatus(exc.status), f"{exc}\n"))
        else:
            protocol.send_eof()
            protocol.parser = protocol.discard()
            next(protocol.parser)
        yield
        return
    protocol.events.append(request)
    while protocol.state is CONNECTING:
        yield
    yield from Protocol.parse(protocol)


# --- reading a request: one place for headers, query integers and the no-key guard ----------


def header(request: Request, name: str) -> str | None:
    """The single value of header ``name`` (None when absent); a repeated header is a
    :class:`BadRequest` (two ``Authorization`` headers must not pick one silently)."""
    try:
        return request.headers.get(name)
    except MultipleValuesError:
        raise BadRequest(f"the {name} header appears more than once; send it once") from None


def query_int(query: str, name: str, lo: int, hi: int) -> int | None:
    """Query parameter ``name`` as an integer from ``lo`` to ``hi`` (ASCII digits only), None
    when absent; anything else is a :class:`BadRequest` that states the rule."""
    raw = parse_qs(query).get(name)
    if raw is None:
        return None
    try:
        value = wire.parse_int(raw[0])
    except wire.WireError:
        value = None
    if value is None or len(raw) > 1 or not lo <= value <= hi:
        raise BadRequest(f"{name} must be given once, as an integer from {lo} to {hi}")
    return value


def json_body(request: HttpRequest) -> Any:
    """The request body through the strict loader (:func:`callscribe.wire.loads`)."""
    try:
        return wire.loads(request.body or b"null")
    except wire.WireError as exc:
        raise BadRequest(f"the request body is {exc}") from None


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value (``[::1]:8080`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isascii() and port.isdigit() and ":" not in name else host


def is_loopback(host: str) -> bool:
    """``localhost``, an address in 127.0.0.0/8, or ``::1`` (brackets allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_no_key_request(request: Request) -> None:
    """No-key (loopback) mode, every request: the ``Host`` must name a loopback address, so a
    DNS name rebound to 127.0.0.1 by a web page is refused; an ``Origin`` (browsers send it on
    WebSocket handshakes, POSTs and cross-site fetches) must be that same host and port."""
    host = header(request, "Host")
    if not host or not is_loopback(host_name(host)):
        raise ForbiddenOrigin(f"Host {(host or '')[:100]!r} is not a loopback name: without API "
                              "keys the server answers only localhost, 127.0.0.0/8 and [::1] "
                              "(configure CALLSCRIBE_API_KEYS to serve other names)")
    origin = header(request, "Origin")
    if origin is not None and cross_site(origin, host):
        raise ForbiddenOrigin(f"Origin {origin[:100]!r} is another site: without API keys only "
                              f"pages served from http://{host[:100]} may call this server "
                              "(configure CALLSCRIBE_API_KEYS to allow other origins)")


# --- responses -------------------------------------------------------------------------------


def response(status: int, body: bytes, content_type: str,
             extra: dict[str, str] | None = None) -> Response:
    st = http.HTTPStatus(status)
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Length", str(len(body))), ("Content-Type", content_type)])
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(st.value, st.phrase, headers, body)


def json_response(status: int, obj: Any) -> Response:
    return response(status, json.dumps(obj, ensure_ascii=False).encode(),
                    "application/json; charset=utf-8")


def text_response(status: int, text: str, extra: dict[str, str] | None = None) -> Response:
    return response(status, text.encode(), "text/plain; charset=utf-8", extra)


def error_response(status: int, code: str, message: str, request_id: str | None = None) -> Response:
    return json_response(status, {"request_id": request_id or uuid.uuid4().hex, "code": code,
                                  "message": message})


def refusal(exc: HttpError) -> Response:
    """The documented JSON error shape for an :class:`~callscribe.errors.HttpError`."""
    resp = error_response(exc.status, exc.code, exc.message)
    if exc.retriable:
        resp.headers["Retry-After"] = "5"
    return resp


def without_body(resp: Response) -> Response:
    """The response to ``HEAD``: same status and headers (``Content-Length`` of the body a GET
    would get), no body."""
    return dataclasses.replace(resp, body=b"")


# --- the vocabulary API (DashScope ``speech-biasing`` customization) ---------------------------


async def handle_vocabulary(request: HttpRequest, owner: str, store: VocabularyStore,
                            quota: Quota | None = None) -> Response:
    """``POST {"model": "speech-biasing", "input": {"action": ..., ...}}``; creates and
    updates count against ``owner``'s ``quota`` (403 ``VocabularyQuotaExceeded``)."""
    rid = uuid.uuid4().hex
    if request.method != "POST":
        return error_response(405, "MethodNotAllowed", "use POST with a JSON body", rid)
    try:
        body = json_body(request)
    except BadRequest as exc:
        return error_response(400, exc.code, exc.message, rid)
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        return error_response(400, "InvalidParameter",
                              'the body must be {"model": "speech-biasing", "input": {...}}', rid)
    if body.get("model", "speech-biasing") != "speech-biasing":
        return error_response(400, "InvalidParameter",
                              f"model {body.get('model')!r} is not supported here; use "
                              "speech-biasing", rid)
    inp = body["input"]
    action = inp.get("action")
    try:
        output = await asyncio.to_thread(_dispatch, store, owner, action, inp, quota)
    except VocabularyNotFound as exc:
        return error_response(404, exc.code, exc.message, rid)
    except VocabularyQuotaExceeded as exc:
        return error_response(403, exc.code, exc.message, rid)
    except VocabularyError as exc:
        return error_response(400, exc.code, exc.message, rid)
    if output is None:
        return error_response(400, "InvalidParameter",
                              f"unknown action {action!r}; expected create_vocabulary, "
                              "list_vocabulary, query_vocabulary, update_vocabulary or "
                              "delete_vocabulary", rid)
    return json_response(200, {"request_id": rid, "output": output, "usage": {"count": 1}})


def _dispatch(store: VocabularyStore, owner: str, action: Any, inp: dict[str, Any],
              quota: Quota | None) -> dict[str, Any] | None:
    if action == "create_vocabulary":
        target = inp.get("target_model")
        if not isinstance(target, str) or resolve_model(target) is None:
            raise VocabularyError(f"target_model {target!r} is not a supported model "
                                  "(e.g. fun-asr-realtime, paraformer-realtime-v2)")
        vid = store.create(owner, target, inp.get("prefix"), inp.get("vocabulary"), quota)
        return {"vocabulary_id": vid}
    if action == "list_vocabulary":
        return {"vocabulary_list": store.list(owner, inp.get("prefix") or None,
                                              inp.get("page_index", 0),
                                              inp.get("page_size", 10))}
    if action == "query_vocabulary":
        return store.get(owner, inp.get("vocabulary_id"))
    if action == "update_vocabulary":
        store.update(owner, inp.get("vocabulary_id"), inp.get("vocabulary"), quota)
        return {}
    if action == "delete_vocabulary":
        store.delete(owner, inp.get("vocabulary_id"))
        return {}
    return None
