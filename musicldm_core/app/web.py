"""The page's HTTP layer: the routes, their guards, the multipart reader, the server.

    GET    /                 the page (static/index.html), with a CSP that allows only its own scripts
    POST   /api/jobs        JSON or multipart (file parts: `audio`, audio-to-audio's input; `like`, an audio prompt)
                            -> 202 {"id"}; a bad field -> 400
                            {"error", "field"}; the queue full -> 503; too large -> 413
    GET    /api/jobs        every job, newest first; GET /api/jobs/ID: one
    DELETE /api/jobs/ID     cancel: a queued job leaves the queue, a running one stops at its next step
    GET    /files/NAME      a file this server (or a batch run into DIR) recorded; nothing else
    GET    /api/openapi.json  this API as an OpenAPI 3.0 document (openapi.py)

Safe by default: it binds 127.0.0.1; a Host header other than the served address is refused (DNS
rebinding); a POST or DELETE from another origin is refused; binding beyond loopback needs a token, and
then every call and file carries it (`Authorization: Bearer T`, or `?token=T` for the page and its
players); bodies are bounded; only recorded files inside DIR are served, never through a symlink. Every
answer, errors included, is JSON with a status."""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import http.server
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from .jobs import Refused, Service

JSON_LIMIT = 64 * 1024
UPLOAD_LIMIT = 50 * 1024 * 1024
FILE_PARTS = ("audio", "like")  # a form's file parts
TEXT_PARTS = ("prompt", "negative", "sampler", "blend_mode")  # a form's fields read as text (the others as JSON)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PAGE = Path(__file__).parent / "static" / "index.html"



class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "musicldm"
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # (not 0.9, whose answers have no status line): a bad request line too
    timeout = 60  # a client that stalls mid-request is let go

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    # every request passes here first
    def _checked(self) -> Tuple[str, Dict[str, List[str]]]:
        app = self.server
        host = self.headers.get("Host", "")
        if app.allowed_hosts is not None and host.lower() not in app.allowed_hosts:
            raise Refused(403, f"Host {host!r} is not the address this server answers ({app.address}): refused "
                               "(a page on another site pointing its name here)")
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if self.command in ("POST", "DELETE"):
            origin = self.headers.get("Origin")
            if origin is not None and origin.lower() != f"http://{host.lower()}":
                raise Refused(403, f"a request from another site ({origin}) is refused")
            if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                raise Refused(403, "a request from another site is refused")
        if app.token is not None:
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or \
                (query.get("token") or [""])[0]
            if not hmac.compare_digest(given.encode(), app.token.encode()):
                raise Refused(401, "this server needs its token (Authorization: Bearer T, or ?token=T)")
        return url.path, query

    def _send(self, status: int, body: bytes, kind: str, extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _handle(self, work) -> None:
        """Every request ends here with an HTTP status and, for an error, a JSON body: a refusal as itself,
        anything else as 500 with the exception's type only (no traceback reaches the client or the log)."""
        try:
            if self.command != "POST" and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # a body no route reads: not to be taken for the next request
            path = urlsplit(self.path).path
            methods = allowed_methods(path)
            if methods and self.command not in methods:
                allow = ", ".join(sorted(methods))
                return self._refuse(405, f"{self.command} is not allowed on {path}: {allow}", allow=allow)
            work(*self._checked())
        except Refused as e:
            self._refuse(e.status, str(e), e.field)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug: answered, named by type, and the server goes on
            self._refuse(500, f"internal error ({type(e).__name__}); the server goes on")

    def _refuse(self, status: int, message: str, field_name: Optional[str] = None, allow: Optional[str] = None) -> None:
        # a body may be left unread (any method may send one): this connection ends here
        self.close_connection, extra = True, {"Connection": "close", **({"Allow": allow} if allow else {})}
        try:
            self._send(status, json.dumps({"error": message, **({"field": field_name} if field_name else {})}
                                          ).encode(), "application/json", extra)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The base class's own refusals (a malformed request line or header, a line too long) in the API's
        form: a JSON error, and the connection closed. A method no route takes is 405 with the route's
        methods (Allow), or 404 where no route is."""
        allow = None
        if code == 501 and hasattr(self, "path"):  # no do_<METHOD>
            methods = allowed_methods(urlsplit(self.path).path)
            code, message = (405, f"{self.command} is not allowed here") if methods else (404, "not found")
            allow = ", ".join(sorted(methods)) if methods else "GET"
        try:
            self._refuse(code, message or http.server.BaseHTTPRequestHandler.responses.get(code, ("error",))[0],
                         allow=allow)
        except AttributeError:
            pass  # no request line was parsed, so there is nothing to answer

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._post)

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle(self._delete)

    def _get(self, path: str, query) -> None:
        app = self.server
        if path in ("/", "/index.html"):
            page = PAGE.read_bytes()
            self._send(200, page, "text/html; charset=utf-8", {
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                                           f"style-src 'self' 'unsafe-inline'; script-src {script_hashes(page)}; "
                                           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY"})
        elif path == "/api/jobs":
            self._json(200, {"jobs": app.service.views(), "samplers": app.samplers, "limits": app.limits})
        elif path == "/api/openapi.json":
            from .openapi import document

            self._json(200, document(app.samplers, app.limits))
        elif path.startswith("/api/jobs/"):
            self._json(200, app.service.view(path[len("/api/jobs/"):]))
        elif path.startswith("/files/"):
            file = app.service.file(path[len("/files/"):])
            kinds = {".wav": "audio/wav", ".png": "image/png"}
            self._send(200, file.read_bytes(), kinds.get(file.suffix, "application/octet-stream"),
                       {"Content-Disposition": f'inline; filename="{file.name}"'})
        else:
            raise Refused(404, "not found")

    def _post(self, path: str, query) -> None:
        if path != "/api/jobs":
            raise Refused(404, "not found")
        kind = self.headers.get("Content-Type", "")
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):  # ("²".isdigit() is true)
            raise Refused(411, "a POST needs its Content-Length, a whole number of bytes")
        limit = UPLOAD_LIMIT if kind.startswith("multipart/form-data") else JSON_LIMIT
        if int(length) > limit:
            raise Refused(413, f"the request is {int(length)} bytes; at most {limit} are read")
        body = self.rfile.read(int(length))
        uploads: Dict[str, Tuple[bytes, str]] = {}
        if kind.startswith("multipart/form-data"):
            data, uploads = _multipart(kind, body)
        elif kind.split(";")[0].strip() == "application/json":
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise Refused(400, f"the body is not valid JSON ({e})") from None
            except RecursionError:
                raise Refused(400, "the body is not valid JSON (nested too deep)") from None
            if not isinstance(data, dict):
                raise Refused(400, f"the body must be a JSON object, got {type(data).__name__}")
        else:
            raise Refused(415, "send application/json or multipart/form-data")
        job = self.server.service.submit(data, *uploads.get("audio", (None, "input")), like=uploads.get("like"))
        self._json(202, {"id": job.id})

    def _delete(self, path: str, query) -> None:
        if not path.startswith("/api/jobs/"):
            raise Refused(404, "not found")
        self._json(200, self.server.service.cancel(path[len("/api/jobs/"):]).view())


def script_hashes(page: bytes) -> str:
    """The CSP source list that lets exactly the page's own inline scripts run: their SHA-256 hashes. No
    other inline script, event-handler attribute or javascript: URL can (no 'unsafe-inline')."""
    import base64
    import hashlib

    scripts = re.findall(rb"<script>(.*?)</script>", page, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" for body in scripts) \
        or "'none'"


def allowed_methods(path: str) -> set:
    """The methods a route answers (empty: no such route)."""
    exact = {"/": {"GET"}, "/index.html": {"GET"}, "/api/openapi.json": {"GET"}, "/api/jobs": {"GET", "POST"}}
    if path in exact:
        return exact[path]
    if path.startswith("/api/jobs/"):
        return {"GET", "DELETE"}
    return {"GET"} if path.startswith("/files/") else set()


def _multipart(kind: str, body: bytes) -> Tuple[dict, Dict[str, Tuple[bytes, str]]]:
    """A form: its text fields as a batch line's JSON values, and its file parts (FILE_PARTS: `audio`, the input
    of audio-to-audio; `like`, an audio prompt) as {part: (bytes, file name)}."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {kind}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise Refused(400, "a multipart body without parts")
    data, files = {}, {}
    for part in message.iter_parts():
        key = part.get_param("name", header="content-disposition")
        if key is None:
            continue
        payload = part.get_payload(decode=True) or b""
        if key in FILE_PARTS:
            if part.get_filename() is not None:
                if not payload:
                    raise Refused(400, f"the {key} file {part.get_filename()!r} is empty", key)
                files[key] = payload, part.get_filename()
            continue
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise Refused(400, f"{key} is not valid UTF-8 (byte 0x{payload[e.start]:02x} at {e.start}); send the "
                               "form as UTF-8", key) from None
        if text == "":
            continue  # a blank field: its default (a blank seed: a random one)
        try:
            data[key] = json.loads(text) if key not in TEXT_PARTS else text
        except (json.JSONDecodeError, RecursionError):
            data[key] = text  # the type check names it
    return data, files


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 7860, token: Optional[str] = None,
                 verbose: bool = False):
        if host not in LOOPBACK and not token:
            raise ValueError(f"--host {host} reaches beyond this machine: give --token T (every call must carry it)")
        super().__init__((host, port), Handler)
        from ..audio_input import MAX_INPUT_SECONDS
        from ..samplers import SAMPLERS

        self.service, self.token, self.verbose = service, token, verbose
        self.port = self.server_address[1]
        shown = "localhost" if host in ("127.0.0.1", "localhost") else host
        self.address = f"http://{shown if ':' not in shown else f'[{shown}]'}:{self.port}"
        names = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost")} if host in ("127.0.0.1", "localhost") \
            else {f"[::1]:{self.port}", f"localhost:{self.port}"} if host == "::1" else None
        self.allowed_hosts = names  # beyond loopback the token is the guard
        self.samplers = list(SAMPLERS)
        self.limits = {"json": JSON_LIMIT, "upload": UPLOAD_LIMIT, "input_seconds": MAX_INPUT_SECONDS}
