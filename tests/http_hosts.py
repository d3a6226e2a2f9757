"""Loopback HTTP servers for the fetcher's tests, each logging every request it serves.

Every server listens on a 127.0.0.x address only (Linux routes all of 127.0.0.0/8 to
the loopback interface, so each address is a host of its own), serves a bounded set of
paths with bounded loops, and stops when its `serving` block ends, also on failure.

Paths (a query sets their details):
  /robots.txt                 the host's robots (text; a status such as 404 or 503)
  /photo/<any>?delay=S        a real photograph (JPEG), after S seconds
  /html-typed/<any>           the photograph, labelled text/html
  /once/<status>/<key>?ra=S|date=S
                              <status> with Retry-After (S seconds, or an HTTP date S
                              seconds ahead) the first time, the photograph after
  /status/<code>              that status, every time
  /redirect?to=URL            a 302 to URL
  /hops/<n>                   a 302 to /hops/<n-1>; /hops/0 is the photograph
  /large?size=N&length=0|1    N bytes, with Content-Length (1) or chunked (0)
  /slow?size=N                N bytes (with Content-Length), 1 KiB every 0.1 s
  /tagged?tag=T&tag=U&size=N  one X-Robots-Tag header per tag; N bytes or the photograph
  /private/<any>              the photograph (robots.txt may disallow it)
"""

from __future__ import annotations

import datetime
import email.utils
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PHOTO = (Path(__file__).parent / "data" / "photos" / "rocket.jpg").read_bytes()
_FILLER = bytes(range(256)) * 256  # 64 KiB
_MAX_SIZE = 64 * 1024 * 1024  # what a test may ask a path to send, at most
_SLOW_CHUNK = 1024


@dataclass
class Request:
    """One request a server handled, with monotonic start and end times."""

    server: str  # "127.0.0.2:port"
    path: str  # with its query
    host_header: str
    user_agent: str
    start: float
    end: float | None = None  # None while the handler runs
    status: int = 0
    body_size: int = 0  # the bytes the response's body holds
    body_sent: int = 0  # the bytes written before the client went away
    error: str = ""  # the write's error, such as BrokenPipeError


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, robots: str | int, tls: ssl.SSLContext | None):
        super().__init__((address, 0), _Handler)
        self.robots = robots
        self.tls = tls
        self.requests: list[Request] = []
        self.connections = 0
        self.server_names: list[str | None] = []  # each TLS client's SNI
        self.once_seen: set[str] = set()
        self.lock = threading.Lock()
        if tls is not None:
            tls.sni_callback = self._note_server_name

    def verify_request(self, request, client_address) -> bool:
        with self.lock:
            self.connections += 1  # every accepted connection, before any request
        return True

    def finish_request(self, request, client_address):
        # The TLS handshake in the connection's own thread, bounded by a timeout.
        if self.tls is not None:
            request.settimeout(_Handler.timeout)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate
        super().finish_request(request, client_address)

    def _note_server_name(self, connection, name, context):
        with self.lock:
            self.server_names.append(name)


class Host:
    """One server: its address, port, request log and accepted connections; https if
    given a TLS context."""

    def __init__(self, address: str, robots: str | int = 404, tls: ssl.SSLContext | None = None):
        self._server = _Server(address, robots, tls)
        self.scheme = "https" if tls else "http"
        self.address = address
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def authority(self) -> str:
        return f"{self.address}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.authority}{path}"

    @property
    def connections(self) -> int:
        with self._server.lock:
            return self._server.connections

    @property
    def server_names(self) -> list[str | None]:
        with self._server.lock:
            return list(self._server.server_names)

    def requests(self, prefix: str = "/") -> list[Request]:
        with self._server.lock:
            return [r for r in self._server.requests if r.path.startswith(prefix)]

    def finished(self, prefix: str, timeout: float = 5.0) -> list[Request]:
        """The requests under prefix, once every one of them has ended."""
        stop = time.monotonic() + timeout
        while True:
            found = self.requests(prefix)
            if all(r.end is not None for r in found) or time.monotonic() > stop:
                return found
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def serving(*hosts: tuple) -> Iterator[list[Host]]:
    """Servers on these (address, robots[, tls]) tuples, stopped when the block ends."""
    with ExitStack() as stack:
        started = []
        for address, *details in hosts:
            host = Host(address, *details)
            stack.callback(host.stop)
            started.append(host)
        yield started


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle keep-alive connection is closed after this
    server: _Server

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        record = Request(
            server=f"{self.server.server_address[0]}:{self.server.server_address[1]}",
            path=self.path,
            host_header=self.headers.get("Host", ""),
            user_agent=self.headers.get("User-Agent", ""),
            start=time.monotonic(),
        )
        with self.server.lock:
            self.server.requests.append(record)
        try:
            self._route(record)
        finally:
            record.end = time.monotonic()

    def _route(self, record: Request) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        first = lambda name, default="": query.get(name, [default])[0]  # noqa: E731
        size = min(int(first("size", "0")), _MAX_SIZE)
        parts = url.path.strip("/").split("/")
        if url.path == "/robots.txt":
            robots = self.server.robots
            if isinstance(robots, int):
                self._respond(record, robots, b"no robots here")
            else:
                self._respond(record, 200, robots.encode(), "text/plain")
        elif parts[0] in ("photo", "private"):
            time.sleep(min(float(first("delay", "0")), 2.0))
            self._respond(record, 200, PHOTO, "image/jpeg")
        elif parts[0] == "html-typed":
            self._respond(record, 200, PHOTO, "text/html")
        elif parts[0] == "once" and len(parts) == 3:
            with self.server.lock:
                again = url.path in self.server.once_seen
                self.server.once_seen.add(url.path)
            if again:
                self._respond(record, 200, PHOTO, "image/jpeg")
            else:
                when = first("ra") or email.utils.formatdate(
                    time.time() + float(first("date", "0")), usegmt=True
                )
                self._respond(record, int(parts[1]), b"later", headers={"Retry-After": when})
        elif parts[0] == "status":
            self._respond(record, int(parts[1]), b"a status")
        elif parts[0] == "redirect":
            self._respond(record, 302, b"", headers={"Location": first("to")})
        elif parts[0] == "hops":
            left = int(parts[1])
            if left == 0:
                self._respond(record, 200, PHOTO, "image/jpeg")
            else:
                self._respond(record, 302, b"", headers={"Location": f"/hops/{left - 1}"})
        elif parts[0] == "large":
            chunked = first("length", "1") == "0"
            self._stream(record, size, _filler(size), chunked=chunked)
        elif parts[0] == "slow":
            self._stream(record, size, _slowly(size))
        elif parts[0] == "tagged":
            tags = [("X-Robots-Tag", tag) for tag in query.get("tag", [])]
            body = _filler(size) if size else [PHOTO]
            self._stream(record, size or len(PHOTO), body, headers=tags)
        else:
            self._respond(record, 404, b"no such path")

    def _respond(
        self,
        record: Request,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> None:
        extra = [("Content-Type", content_type), *(headers or {}).items()]
        self._stream(record, len(body), [body], headers=extra, status=status)

    def _stream(
        self,
        record: Request,
        size: int,
        chunks: Iterable[bytes],
        *,
        chunked: bool = False,
        headers: list[tuple[str, str]] = (),
        status: int = 200,
    ) -> None:
        record.status = status
        record.body_size = size
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(size))
            self.end_headers()
            for chunk in chunks:
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    self.wfile.write(chunk)
                record.body_sent += len(chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as error:
            record.error = type(error).__name__
            self.close_connection = True


def tls_for(name: str, directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a new self-signed certificate for the DNS name alone, and
    the certificate's file (the CA bundle a client needs to trust it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def _filler(size: int, piece: int = len(_FILLER)) -> Iterator[bytes]:
    while size > 0:
        chunk = _FILLER[: min(size, piece)]
        size -= len(chunk)
        yield chunk


def _slowly(size: int) -> Iterator[bytes]:
    for chunk in _filler(size, _SLOW_CHUNK):
        time.sleep(0.1)
        yield chunk
