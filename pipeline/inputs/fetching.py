"""http:// and https:// images, fetched safely and politely with urllib3's pools.

Safely: every host, the first and each redirect's, is resolved once and refused if any
of its addresses is not global (pipeline.inputs.addresses) unless an allowed network
holds it; the connection then goes to the address that was checked, with the name sent
as Host (and, for https, as SNI and the name the certificate must match), so a second
DNS answer cannot point it elsewhere. Each image has a deadline and a size limit.

Politely: per host and process, at most max_connections_per_host requests in flight and
request starts at least 1 / requests_per_second_per_host seconds apart (a minimum
spacing, i.e. a token bucket of one token: no bursts); 429 and 503 wait out their
Retry-After; robots.txt and X-Robots-Tag opt-outs are honoured (pipeline.inputs.robots).
"""

from __future__ import annotations

import email.utils
import functools
import importlib.metadata
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from pipeline.common import counter
from pipeline.inputs import robots
from pipeline.inputs.addresses import (
    AddressPolicy,
    IPAddress,
    Refusal,
    Resolver,
    resolve,
    system_resolver,
)

DISTRIBUTION = "image-embeddings"
SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 10.0  # seconds, capped by what is left of the deadline
READ_TIMEOUT = 30.0  # seconds without a byte, capped so too
MAX_RETRY_AFTER = 120.0  # a longer Retry-After fails the fetch rather than wait
ROBOTS_DEADLINE = 30.0  # for one robots.txt, within the image's own deadline
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_AFTER_STATUSES = frozenset({429, 503})
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 64 * 1024
_DRAIN = 64 * 1024  # a redirect's or error's body read to keep its connection, at most
_DRAIN_TIMEOUT = 1.0
_MAX_LIMITERS = 4096  # idle hosts' limiters are dropped past this many


def _default_user_agent() -> str:
    try:
        metadata = importlib.metadata.metadata(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return f"{DISTRIBUTION}/unknown"
    urls = [u.split(",", 1)[-1].strip() for u in metadata.get_all("Project-URL") or []]
    url = next(iter(urls), None) or metadata.get("Home-page")
    return f"{DISTRIBUTION}/{metadata['Version']}" + (f" (+{url})" if url else "")


DEFAULT_USER_AGENT = _default_user_agent()


@dataclass(frozen=True)
class FetchSettings:
    """How a worker process fetches http(s) images (see the Fetching options)."""

    allowed_networks: tuple[str, ...] = ()  # CIDR; private addresses fetched only in these
    max_connections_per_host: int = 2  # requests in flight per host, per process
    requests_per_second_per_host: float = 5.0  # request starts per host, per process
    deadline_seconds: float = 60.0  # one image's fetch, retries and redirects included
    ignore_opt_outs: bool = False
    user_agent: str = ""  # "" = DEFAULT_USER_AGENT
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self):
        # A list would make the settings unhashable, and so unshareable between threads.
        object.__setattr__(self, "allowed_networks", tuple(self.allowed_networks))
        AddressPolicy.from_strings(self.allowed_networks)  # raises ValueError if invalid
        if self.max_connections_per_host < 1 or self.requests_per_second_per_host <= 0:
            raise ValueError("a host must be allowed at least one request")
        if self.deadline_seconds <= 0 or self.max_bytes < 0:
            raise ValueError("the deadline must be positive and max_bytes at least 0")


class FetchError(OSError):
    """An http(s) image that was not fetched; the message names the host and why."""

    outcome = "failed"  # the counter fetch_<outcome> counts it

    def __init__(self, host: str, reason: str):
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason

    def __reduce__(self):
        # OSError's would call __init__ with the message alone.
        return (_rebuilt, (type(self), str(self)), self.__dict__)


def _rebuilt(cls: type[FetchError], message: str) -> FetchError:
    error = cls.__new__(cls)
    OSError.__init__(error, message)
    return error


class InvalidUrlError(FetchError):
    outcome = "invalid_url"


class BlockedAddressError(FetchError):
    """The host resolves to an address that is not global and not allowed."""

    outcome = "blocked"

    def __init__(self, host: str, refusal: Refusal):
        super().__init__(
            host,
            f"refused: {refusal.address} is {refusal.reason} (only global addresses are "
            "fetched from, and those in --allow_private_addresses networks)",
        )
        self.address = str(refusal.address)


class HostNotFoundError(FetchError):
    outcome = "host_not_found"


class ConnectionFailedError(FetchError):
    outcome = "connection_failed"


class FetchTimeoutError(FetchError):
    outcome = "timeout"


class HttpStatusError(FetchError):
    outcome = "http_error"

    def __init__(self, host: str, status: int, reason: str = ""):
        super().__init__(host, f"HTTP {status}" + (f", {reason}" if reason else ""))
        self.status = status


class TooManyRedirectsError(FetchError):
    outcome = "too_many_redirects"


class UnsupportedRedirectError(FetchError):
    outcome = "unsupported_redirect"


class ResponseTooLargeError(FetchError):
    outcome = "too_large"


class OptedOutError(FetchError):
    outcome = "opted_out"


class RobotsDisallowedError(FetchError):
    outcome = "robots_disallowed"


# fetch_<outcome> for each FetchError, besides fetched, fetch_status_<code> (the last
# response's status, one per fetch that got one) and fetch_retries.
OUTCOMES = tuple(
    cls.outcome
    for cls in (
        InvalidUrlError,
        BlockedAddressError,
        HostNotFoundError,
        ConnectionFailedError,
        FetchTimeoutError,
        HttpStatusError,
        TooManyRedirectsError,
        UnsupportedRedirectError,
        ResponseTooLargeError,
        OptedOutError,
        RobotsDisallowedError,
    )
)


@functools.cache
def _counter(name: str):
    return counter(name)


def _count(trace: _Trace, outcome: str, counts: list[str] | None) -> None:
    names = [outcome] + ["fetch_retries"] * trace.retries
    if trace.status is not None:
        names.append(f"fetch_status_{trace.status}")
    if counts is not None:
        counts.extend(names)
        return
    for name in names:
        _counter(name).inc()


@dataclass(frozen=True)
class Backoff:
    """Attempts per request, and the exponential wait with jitter between them (for
    5xx without a Retry-After, timeouts and dropped connections): before retry n, a
    random time between half and all of min(cap, base * 2 ** (n - 1))."""

    attempts: int = 4
    base: float = 1.0
    cap: float = 30.0

    def delay(self, retry: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()


@dataclass(frozen=True)
class _Target:
    """One URL to request: where to connect and what to send."""

    url: str
    scheme: str
    host: str  # lower-case, IDNA-encoded; an IPv6 address without brackets
    port: int
    path: str  # with its query

    @classmethod
    def parse(cls, url: str) -> _Target:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
            host = (parts.hostname or "").encode("idna").decode("ascii")
        except (ValueError, UnicodeError) as error:
            raise InvalidUrlError(url, f"not a valid URL ({error})") from error
        if parts.scheme not in SCHEMES:
            raise InvalidUrlError(host or url, f"{parts.scheme}:// is not fetched, only http(s)")
        if not host or any(c.isspace() or ord(c) < 0x20 for c in host):
            raise InvalidUrlError(host or url, "the URL names no valid host")
        if parts.username is not None:
            raise InvalidUrlError(host, "the URL holds credentials, which are not sent")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url, parts.scheme, host, port, path)

    @property
    def authority(self) -> str:
        """The Host header: the name, and the port unless the scheme's own."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"

    @property
    def host_key(self) -> str:
        """What politeness limits count per: the host name and port."""
        return f"{self.host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"


class _NoSlot(Exception):
    """No slot for the request before the deadline."""


class _HostLimiter:
    """One host's connection slots and request spacing."""

    def __init__(self, connections: int, per_second: float):
        self._slots = threading.BoundedSemaphore(connections)
        self._interval = 1.0 / per_second
        self._starting = threading.Lock()  # held by the thread whose request starts next
        self._last_start = -float("inf")
        self.users = 0  # threads holding or awaiting a slot; under HostLimiters' lock

    def idle(self) -> bool:
        return self.users == 0 and self._last_start + self._interval <= time.monotonic()

    @contextmanager
    def slot(self, deadline: Deadline) -> Iterator[None]:
        """Held while one request is in flight; entered no sooner than 1 / per_second
        after the previous request to this host was let go."""
        if not self._slots.acquire(timeout=max(deadline.remaining(), 0.0)):
            raise _NoSlot
        try:
            self._wait_turn(deadline)
            yield
        finally:
            self._slots.release()

    def _wait_turn(self, deadline: Deadline) -> None:
        # One thread at a time waits out the interval from the previous start as it
        # happened, not as it was planned: a thread that overslept does not let the
        # next one start sooner.
        if not self._starting.acquire(timeout=max(deadline.remaining(), 0.0)):
            raise _NoSlot
        try:
            wait = self._last_start + self._interval - time.monotonic()
            if wait >= deadline.remaining():
                raise _NoSlot
            if wait > 0:
                time.sleep(wait)
            self._last_start = time.monotonic()
        finally:
            self._starting.release()


class HostLimiters:
    """Every host's limiter, shared by the threads of a process."""

    def __init__(self, connections: int, per_second: float):
        self._connections = connections
        self._per_second = per_second
        self._limiters: dict[str, _HostLimiter] = {}
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, host_key: str, deadline: Deadline) -> Iterator[None]:
        with self._lock:
            limiter = self._limiters.get(host_key)
            if limiter is None:
                if len(self._limiters) >= _MAX_LIMITERS:
                    self._drop_idle()
                limiter = self._limiters[host_key] = _HostLimiter(
                    self._connections, self._per_second
                )
            limiter.users += 1
        try:
            with limiter.slot(deadline):
                yield
        finally:
            with self._lock:
                limiter.users -= 1

    def _drop_idle(self) -> None:
        for key in [key for key, limiter in self._limiters.items() if limiter.idle()]:
            del self._limiters[key]


@dataclass
class _Trace:
    status: int | None = None  # the last response's
    retries: int = 0


def _ca_certs() -> str | None:
    try:
        import certifi
    except ImportError:  # the system's store, then
        return None
    return certifi.where()


@dataclass(eq=False)
class Fetcher:
    """Fetches http(s) URLs as settings say; thread-safe, one per process and settings
    (its pools, per-host limits and robots.txt cache are what the threads share)."""

    settings: FetchSettings
    resolver: Resolver = system_resolver
    backoff: Backoff = Backoff()
    ca_certs: str | None = None  # a CA bundle's path; None: certifi's, else the system's
    user_agent: str = field(init=False)
    agent_token: str = field(init=False)  # what robots.txt and X-Robots-Tag call us
    _policy: AddressPolicy = field(init=False)
    _pools: urllib3.PoolManager = field(init=False)
    _hosts: HostLimiters = field(init=False)
    _robots: robots.RobotsCache = field(init=False)

    def __post_init__(self):
        settings = self.settings
        self._policy = AddressPolicy.from_strings(settings.allowed_networks)
        self.user_agent = settings.user_agent or DEFAULT_USER_AGENT
        self.agent_token = robots.product_token(self.user_agent)
        self._pools = urllib3.PoolManager(
            num_pools=256,
            maxsize=settings.max_connections_per_host,
            retries=False,
            ca_certs=self.ca_certs or _ca_certs(),
        )
        self._hosts = HostLimiters(
            settings.max_connections_per_host, settings.requests_per_second_per_host
        )
        self._robots = robots.RobotsCache()

    def fetch(self, url: str, counts: list[str] | None = None) -> bytes:
        """The body at url; raises a FetchError subclass. Counts the outcome: with Beam
        counters, or, given a list, by adding the counters' names to it (see fetch)."""
        trace = _Trace()
        deadline = Deadline(self.settings.deadline_seconds)
        try:
            body = self._get(url, deadline, trace, max_bytes=self.settings.max_bytes, image=True)
        except FetchError as error:
            _count(trace, f"fetch_{error.outcome}", counts)
            raise
        _count(trace, "fetched", counts)
        return body

    def close(self) -> None:
        """Closes the pooled connections (a later fetch opens new ones)."""
        self._pools.clear()

    def _get(
        self, url: str, deadline: Deadline, trace: _Trace, *, max_bytes: int, image: bool
    ) -> bytes:
        """The body at url after at most MAX_REDIRECTS redirects; an image's is checked
        for opt-outs and refused past max_bytes, robots.txt's cut at max_bytes."""
        target = _Target.parse(url)
        for hop in range(MAX_REDIRECTS + 1):
            addresses = self._addresses(target)
            if image and not self.settings.ignore_opt_outs:
                self._check_robots(target, deadline)
            accept = functools.partial(self._accept, target, deadline, max_bytes, image)
            location = self._exchange(target, addresses, deadline, trace, accept)
            if isinstance(location, bytes):
                return location
            if hop == MAX_REDIRECTS:
                break
            following = urllib.parse.urljoin(target.url, location)
            scheme = urllib.parse.urlsplit(following).scheme
            if scheme not in SCHEMES:
                raise UnsupportedRedirectError(
                    target.host, f"redirects to a {scheme or 'schemeless'}: URL, not http(s)"
                )
            target = _Target.parse(following)
        raise TooManyRedirectsError(target.host, f"more than {MAX_REDIRECTS} redirects")

    def _addresses(self, target: _Target) -> tuple[IPAddress, ...]:
        try:
            addresses = resolve(target.host, target.port, self.resolver)
        except (OSError, UnicodeError, ValueError) as error:
            raise HostNotFoundError(target.host, f"the name does not resolve ({error})") from error
        refusal = self._policy.first_refusal(addresses)
        if refusal is not None:
            raise BlockedAddressError(target.host, refusal)
        return addresses

    def _exchange(
        self,
        target: _Target,
        addresses: tuple[IPAddress, ...],
        deadline: Deadline,
        trace: _Trace,
        accept: Callable[[Any], bytes | str],
    ) -> bytes | str:
        """What accept makes of the response, after retries: 429 and 503 after their
        Retry-After, other retryable statuses and network errors after a backoff."""
        for attempt in range(1, self.backoff.attempts + 1):
            last = attempt == self.backoff.attempts
            address = addresses[(attempt - 1) % len(addresses)]  # the next on a retry
            if deadline.remaining() <= 0:
                raise _past_deadline(target, deadline)
            try:
                with self._hosts.slot(target.host_key, deadline):
                    response = self._send(target, address, deadline)
                    try:
                        trace.status = response.status
                        wait = None
                        if not last:
                            wait = self._retry_wait(target, response, attempt, deadline)
                        if wait is None:
                            return accept(response)
                    finally:
                        _finish(response)
            except FetchError:
                raise
            except _NoSlot as error:
                raise _past_deadline(target, deadline) from error
            except (urllib3.exceptions.HTTPError, OSError) as error:
                failure = _network_failure(target, error, deadline)
                wait = self.backoff.delay(attempt)
                if last or not _retryable(error) or wait >= deadline.remaining():
                    raise failure from error
            trace.retries += 1
            time.sleep(wait)  # holding no slot
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, target: _Target, address: IPAddress, deadline: Deadline):
        host = f"[{address}]" if address.version == 6 else str(address)
        tls = {"server_hostname": target.host, "assert_hostname": target.host}
        pool = self._pools.connection_from_host(
            host, target.port, target.scheme, pool_kwargs=tls if target.scheme == "https" else None
        )
        left = deadline.remaining()
        return pool.urlopen(
            "GET",
            target.path,
            headers={
                "Host": target.authority,
                "User-Agent": self.user_agent,
                "Accept": "image/*, */*;q=0.5",
                "Accept-Encoding": "identity",
            },
            redirect=False,
            retries=False,
            preload_content=False,
            release_conn=False,
            assert_same_host=False,
            timeout=urllib3.Timeout(
                connect=min(CONNECT_TIMEOUT, left), read=min(READ_TIMEOUT, left)
            ),
        )

    def _retry_wait(self, target: _Target, response, attempt: int, deadline: Deadline):
        """Seconds to wait before retrying, or None to take the response as final."""
        if response.status not in RETRY_STATUSES:
            return None
        retry_after = None
        if response.status in RETRY_AFTER_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After", ""))
        if retry_after is None:
            wait = self.backoff.delay(attempt)
            return wait if wait < deadline.remaining() else None
        if retry_after > min(MAX_RETRY_AFTER, deadline.remaining()):
            raise HttpStatusError(
                target.host,
                response.status,
                f"asked to retry after {retry_after:.0f} s, longer than the fetch may wait",
            )
        return retry_after

    def _accept(
        self, target: _Target, deadline: Deadline, max_bytes: int, image: bool, response
    ) -> bytes | str:
        """The body of a 2xx response, or a redirect's Location; raises for the rest."""
        status = response.status
        if image and not self.settings.ignore_opt_outs:
            tags = response.headers.getlist("X-Robots-Tag")
            directive = robots.opt_out_directive(tags, self.agent_token)
            if directive is not None and (200 <= status < 300 or status in REDIRECT_STATUSES):
                raise OptedOutError(
                    target.host, f"the site opts out of this use (X-Robots-Tag: {directive})"
                )
        if status in REDIRECT_STATUSES:
            location = response.headers.get("Location")
            if not location:
                raise HttpStatusError(target.host, status, "a redirect without a Location")
            return location
        if not 200 <= status < 300:
            raise HttpStatusError(target.host, status, response.reason or "")
        length = response.headers.get("Content-Length", "")
        if image and length.isdigit() and int(length) > max_bytes:
            raise ResponseTooLargeError(
                target.host,
                f"{int(length)} bytes, more than the limit of {max_bytes} (--max_image_bytes)",
            )
        return _read_body(target, response, deadline, max_bytes, cut=not image)

    def _check_robots(self, target: _Target, deadline: Deadline) -> None:
        key = f"{target.scheme}://{target.host_key}"
        try:
            rules = self._robots.rules(
                key, lambda: self._load_robots(target, deadline), deadline.remaining()
            )
        except TimeoutError as error:
            raise _past_deadline(target, deadline) from error
        if not rules.allows(target.path):
            detail = f": {rules.why}" if rules.disallow_all else ""
            raise RobotsDisallowedError(
                target.host,
                f"robots.txt disallows {urllib.parse.urlsplit(target.url).path or '/'} "
                f"for {self.agent_token}{detail}",
            )

    def _load_robots(self, target: _Target, deadline: Deadline) -> robots.RobotsRules:
        """The origin's robots.txt rules for our agent (RFC 9309 2.3.1)."""
        budget = Deadline(min(ROBOTS_DEADLINE, deadline.remaining()))
        try:
            body = self._get(
                f"{target.origin}/robots.txt",
                budget,
                _Trace(),
                max_bytes=robots.MAX_ROBOTS_BYTES,
                image=False,
            )
        except HttpStatusError as error:
            # 2.3.1.3: 4xx is "unavailable", which allows everything; but 429 asks for
            # less traffic, which 2.3.1.4's disallow-all (server errors) gives.
            if error.status < 500 and error.status != 429:
                return robots.ALLOW_ALL
            return robots.unreachable(f"HTTP {error.status}")
        except (TooManyRedirectsError, UnsupportedRedirectError, InvalidUrlError):
            return robots.ALLOW_ALL  # 2.3.1.2: past five redirects, "unavailable"
        except FetchTimeoutError:
            if deadline.remaining() <= 0:
                raise  # the image's own deadline; not the site's doing, so not cached
            return robots.unreachable("timed out")
        except FetchError as error:
            return robots.unreachable(error.reason)
        return robots.RobotsRules.parse(body.decode("utf-8-sig", "replace"), self.agent_token)


def _read_body(target: _Target, response, deadline: Deadline, limit: int, cut: bool) -> bytes:
    """At most limit bytes of the body (more: refused, or, if cut, dropped), each read
    waiting no longer than what is left of the deadline."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        left = deadline.remaining()
        if left <= 0:
            raise _past_deadline(target, deadline)
        sock = getattr(response.connection, "sock", None)
        if sock is not None:
            sock.settimeout(min(READ_TIMEOUT, left))
        chunk = response.read1(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    if cut:
        return b"".join(chunks)[:limit]
    raise ResponseTooLargeError(
        target.host, f"more than the limit of {limit} bytes (--max_image_bytes)"
    )


def _finish(response) -> None:
    """Returns the connection to its pool: as it is if the body was read to its end or
    was a short one of a response not taken (a redirect, an error), else closed, so that
    an image's refused body is never read."""
    left = response.length_remaining
    if not response.closed and response.status >= 300 and left is not None and left <= _DRAIN:
        sock = getattr(response.connection, "sock", None)
        if sock is not None:
            sock.settimeout(_DRAIN_TIMEOUT)
        response.drain_conn()  # to its end (then closed), or up to an error it ignores
    if not response.closed:
        response.close()
    elif (sock := getattr(response.connection, "sock", None)) is not None:
        sock.settimeout(READ_TIMEOUT)  # not the last read's, cut to its deadline
    response.release_conn()


def _retryable(error: BaseException) -> bool:
    return isinstance(error, ConnectTimeoutError | ReadTimeoutError | ProtocolError) or (
        isinstance(error, OSError) and not isinstance(error, urllib3.exceptions.SSLError)
    )


def _network_failure(target: _Target, error: BaseException, deadline: Deadline) -> FetchError:
    if deadline.remaining() <= 0:
        return _past_deadline(target, deadline)
    if isinstance(error, ReadTimeoutError):
        return FetchTimeoutError(target.host, f"no response within {READ_TIMEOUT:g} s")
    if isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError):
        return FetchTimeoutError(target.host, f"no connection within {CONNECT_TIMEOUT:g} s")
    return ConnectionFailedError(target.host, f"the connection failed ({error})")


def _past_deadline(target: _Target, deadline: Deadline) -> FetchTimeoutError:
    return FetchTimeoutError(
        target.host, f"not fetched within the deadline of {deadline.seconds:g} s"
    )


def parse_retry_after(value: str) -> float | None:
    """Seconds to wait that a Retry-After header asks for: delay-seconds or an
    HTTP-date; None if it is neither."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


_fetchers: dict[FetchSettings, Fetcher] = {}
_fetchers_lock = threading.Lock()


def fetcher(settings: FetchSettings) -> Fetcher:
    """This process's Fetcher for settings."""
    with _fetchers_lock:
        if settings not in _fetchers:
            _fetchers[settings] = Fetcher(settings)
        return _fetchers[settings]


def fetch(url: str, settings: FetchSettings, counts: list[str] | None = None) -> bytes:
    """The body at an http(s) url, fetched as settings say; raises a FetchError
    subclass (its class name says why, its message names the host).

    Counts the outcome with Beam counters, which count only in a thread that Beam runs
    a step on; from another (a ThreadPoolExecutor's), pass a list, to which the names of
    the counters to increment are added, and increment them in the step's thread."""
    return fetcher(settings).fetch(url, counts)
