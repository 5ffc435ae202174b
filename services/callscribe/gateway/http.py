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
import json
import uuid
from typing import Any, Generator

from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage
from websockets.http11 import Request, Response, parse_headers, parse_line
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.exceptions import SecurityError

from callscribe.protocols.common import resolve_model
from callscribe.recognition.vocabulary import VocabularyError, VocabularyNotFound, VocabularyStore

#: largest HTTP request body accepted (a 500-entry vocabulary is ~50 KB)
MAX_HTTP_BODY = 1 << 20
VOCABULARY_PATH = "/api/v1/services/audio/asr/customization"


@dataclasses.dataclass
class HttpRequest(Request):
    body: bytes = b""


class RequestLineTooLong(SecurityError):
    pass


class HeaderTooLarge(SecurityError):
    pass


class BodyTooLarge(SecurityError):
    pass


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
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        raise ValueError("invalid Content-Length")
    size = int(lengths.pop()) if lengths else 0
    if size > MAX_HTTP_BODY:
        raise BodyTooLarge(f"request body of {size} bytes exceeds {MAX_HTTP_BODY} bytes")
    body = bytes((yield from reader.read_exact(size))) if size else b""
    return HttpRequest(raw_path.decode("ascii"), headers, raw_method.decode("ascii"),
                       raw_protocol.decode("ascii"), body=body)


def _parse(protocol: ServerProtocol) -> Generator[None, None, None]:
    try:
        request = yield from _read_request(protocol.reader)
    except Exception as exc:
        protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
        protocol.handshake_exc.__cause__ = exc
        status = {RequestLineTooLong: http.HTTPStatus.REQUEST_URI_TOO_LONG,
                  HeaderTooLarge: http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                  BodyTooLarge: http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE}.get(type(exc))
        if status is not None:
            protocol.send_response(protocol.reject(status, f"{exc}\n"))
        else:
            protocol.send_eof()
            protocol.parser = protocol.discard()
            next(protocol.parser)
        yield
        return
    protocol.events.append(request)
    yield from Protocol.parse(protocol)


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


# --- the vocabulary API (DashScope ``speech-biasing`` customization) ---------------------------


async def handle_vocabulary(request: HttpRequest, owner: str,
                            store: VocabularyStore) -> Response:
    """``POST {"model": "speech-biasing", "input": {"action": ..., ...}}``."""
    rid = uuid.uuid4().hex
    if request.method != "POST":
        return error_response(405, "MethodNotAllowed", "use POST with a JSON body", rid)
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        return error_response(400, "InvalidParameter", "the request body is not valid JSON", rid)
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
        output = await asyncio.to_thread(_dispatch, store, owner, action, inp)
    except VocabularyNotFound as exc:
        return error_response(404, exc.code, exc.message, rid)
    except VocabularyError as exc:
        return error_response(400, exc.code, exc.message, rid)
    if output is None:
        return error_response(400, "InvalidParameter",
                              f"unknown action {action!r}; expected create_vocabulary, "
                              "list_vocabulary, query_vocabulary, update_vocabulary or "
                              "delete_vocabulary", rid)
    return json_response(200, {"request_id": rid, "output": output, "usage": {"count": 1}})


def _dispatch(store: VocabularyStore, owner: str, action: Any,
              inp: dict[str, Any]) -> dict[str, Any] | None:
    if action == "create_vocabulary":
        target = inp.get("target_model")
        if not isinstance(target, str) or resolve_model(target) is None:
            raise VocabularyError(f"target_model {target!r} is not a supported model "
                                  "(e.g. fun-asr-realtime, paraformer-realtime-v2)")
        vid = store.create(owner, target, inp.get("prefix"), inp.get("vocabulary"))
        return {"vocabulary_id": vid}
    if action == "list_vocabulary":
        return {"vocabulary_list": store.list(owner, inp.get("prefix") or None,
                                              inp.get("page_index", 0),
                                              inp.get("page_size", 10))}
    if action == "query_vocabulary":
        return store.get(owner, inp.get("vocabulary_id"))
    if action == "update_vocabulary":
        store.update(owner, inp.get("vocabulary_id"), inp.get("vocabulary"))
        return {}
    if action == "delete_vocabulary":
        store.delete(owner, inp.get("vocabulary_id"))
        return {}
    return None
