"""The RPC's HTTP server: aiohttp's, with its own error pages replaced by JSON.

Requests aiohttp cannot parse (a bad request line or header, a header over 8190 bytes, a
bad Content-Length, invalid chunked framing) never reach the application or its
middleware: aiohttp answers them from ``RequestHandler.handle_error`` with a plain-text
page and logs a traceback. ``RpcRunner`` serves the application through a handler whose
``handle_error`` answers ``{"error": ...}`` with the same status instead, and logs one
line. Errors that surface while a handler reads the body are mapped in ``rpc.py``'s
middleware with ``client_error``.
"""
from __future__ import annotations

import logging
import sys
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

log = logging.getLogger("stepchain.rpc")
MAX_MESSAGE = 160


def one_line(text: str) -> str:
    """The first line of aiohttp's multi-line parser message, bounded, without its trailing colon."""
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    first = first.rstrip(":").strip()
    return first if len(first) <= MAX_MESSAGE else first[:MAX_MESSAGE] + "..."


def client_error(exc: HttpProcessingError) -> tuple[int, str]:
    """(status, message) for an HTTP-level error in a client's request."""
    status = exc.code if 400 <= (exc.code or 0) < 500 else 400
    if isinstance(exc, LineTooLong):
        return status, f"bad HTTP request: request line or header longer than {exc.args[1]} bytes"
    return status, f"bad HTTP request: {one_line(exc.message) or HTTPStatus(status).phrase}"


class _JsonErrorHandler(RequestHandler):
    def data_received(self, data: bytes) -> None:
        """aiohttp's C parser, failing on the framing of a body that a handler is reading (bad
        chunk size, missing CRLF), queues an error for the *next* request and never fails the
        current body: the handler would wait for it forever. Fail it, as a bad-body error."""
        request = getattr(self, "_current_request", None)
        queue = getattr(self, "_messages", None)
        queued = len(queue) if queue is not None else 0
        super().data_received(data)
        if request is None or queue is None or len(queue) <= queued or request.content.is_eof():
            return
        err = queue[-1][0]
        if isinstance(err, _ErrInfo) and isinstance(err.exc, HttpProcessingError):
            failure = RequestPayloadError("request body framing is invalid")
            failure.__cause__ = err.exc
            request.content.set_exception(failure)

    def log_exception(self, *args, **kw) -> None:
        """aiohttp's own error logs as one line. A bad body was reported by the middleware
        already; aiohttp meets it again when it drains the rest of the request."""
        exc = kw.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        if isinstance(exc, RequestPayloadError):
            return
        try:
            what = str(args[0]) % args[1:] if args else "aiohttp error"
        except (TypeError, ValueError):
            what = str(args[0])
        log.warning("%s: %s", what, f"{type(exc).__name__}: {one_line(str(exc))}" if isinstance(exc, BaseException)
                    else "no details")

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's own errors as JSON: a malformed request is a 4xx answer and one log line."""
        if isinstance(exc, HttpProcessingError):
            status, text = client_error(exc)
            log.info("rejected a malformed HTTP request from %s: %s", request.remote, text)
        elif status < 500:
            text = one_line(message or "") or HTTPStatus(status).phrase
            log.info("rejected an HTTP request from %s: %s", request.remote, text)
        else:  # only reached when a handler raised past the middleware: a bug
            text = "internal error"
            log.error("RPC request from %s failed: %s", request.remote,
                      f"{type(exc).__name__}: {exc}" if exc is not None else HTTPStatus(status).phrase)
        if request.writer.output_size > 0:  # a response is already on its way: nothing more to say
            raise ConnectionError("response already started")
        resp = web.json_response({"error": text}, status=status)
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class RpcRunner(web.AppRunner):
    """An AppRunner whose connections answer aiohttp's own errors in JSON."""

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _JsonErrorServer(base.request_handler, request_factory=base.request_factory,
                                handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs)
