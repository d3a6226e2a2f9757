"""The http(s) fetcher: address safety, limits, politeness and opt-outs, against loopback
servers on 127.0.0.2-4 (tests/http_hosts.py); addresses off this machine are only ever
checked as values, never put in a URL."""

from __future__ import annotations

import ipaddress
import itertools
import pickle
import re
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import http_hosts
import pytest
from http_hosts import PHOTO, Request, serving

from pipeline.common import progress
from pipeline.inputs import addresses, fetching, robots
from pipeline.inputs.fetching import (
    Backoff,
    BlockedAddressError,
    ConnectionFailedError,
    Fetcher,
    FetchSettings,
    FetchTimeoutError,
    HttpStatusError,
    OptedOutError,
    ResponseTooLargeError,
    RobotsDisallowedError,
    TooManyRedirectsError,
    UnsupportedRedirectError,
)

ALLOWED = ("127.0.0.2/31", "127.0.0.4/32")
MIB = 1024 * 1024
BIG = 32 * MIB  # more than the kernel's socket buffers hold, so a refused body stalls
# Fast enough that a test's few requests to one host do not wait on the rate.
FAST = FetchSettings(
    allowed_networks=ALLOWED,
    requests_per_second_per_host=50.0,
    deadline_seconds=5.0,
    max_bytes=MIB,
)
OURS = """# comments and blank lines end no group (RFC 9309)
User-agent: otherbot
Disallow: /

User-agent: Image-Embeddings

Disallow: /private/
Allow: /private/open/
"""


@pytest.fixture(scope="module")
def hosts():
    with serving(
        ("127.0.0.2", OURS),
        ("127.0.0.3", 404),
        ("127.0.0.4", "User-agent: *\nDisallow: /private/\n"),
        ("127.0.0.4", 503),  # robots.txt unreachable: everything disallowed
        ("127.0.0.3", 401),  # robots.txt unavailable: everything allowed
        ("127.0.0.1", 404),  # never allowed: must never see a connection
    ) as started:
        yield dict(zip(("a", "b", "c", "down", "locked", "trap"), started, strict=True))


@pytest.fixture
def fetcher():
    """A fresh fetcher per settings (its own robots.txt cache and limits)."""
    made = []

    def make(settings=FAST, **kwargs):
        made.append(Fetcher(settings, **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _outcome(fetcher, url):
    try:
        return fetcher.fetch(url)
    except fetching.FetchError as error:
        return error


# Address safety.


def test_loopback_is_refused_without_allowed_networks(hosts, fetcher):
    fetch = fetcher(FetchSettings())
    for name in ("a", "b", "c"):
        host = hosts[name]
        with pytest.raises(BlockedAddressError, match=f"{host.address} is a loopback"):
            fetch.fetch(host.url("/photo/refused"))
        assert host.requests("/photo/refused") == []
    assert hosts["trap"].connections == 0


def test_allowed_networks_are_fetched_byte_for_byte(hosts, fetcher):
    fetch = fetcher()
    for name in ("a", "b", "c"):
        assert fetch.fetch(hosts[name].url("/photo/allowed")) == PHOTO
    # The bytes decide what an image is, never the Content-Type.
    assert fetch.fetch(hosts["a"].url("/html-typed/x")) == PHOTO
    [request] = hosts["a"].requests("/photo/allowed")
    assert request.host_header == hosts["a"].authority
    assert request.user_agent == fetching.DEFAULT_USER_AGENT


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.1",
        "0x7f000001",
        "2130706433",
        "017700000001",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
        "[::]",
        "[::1]",
    ],
)
def test_loopback_spellings_are_refused(hosts, fetcher, host):
    trap = hosts["trap"]
    with pytest.raises(BlockedAddressError, match=r"(a loopback|the unspecified) address"):
        fetcher().fetch(f"http://{host}:{trap.port}/photo/spelled")
    assert trap.connections == 0


def test_a_numeric_spelling_is_the_address_it_spells(hosts, fetcher):
    a = hosts["a"]
    assert fetcher().fetch(f"http://0x7f000002:{a.port}/photo/hex") == PHOTO
    [request] = a.requests("/photo/hex")
    assert request.host_header == f"0x7f000002:{a.port}"


def test_redirect_to_a_refused_address_is_never_requested(hosts, fetcher):
    a, trap = hosts["a"], hosts["trap"]
    fetch = fetcher()
    for target in (f"http://127.0.0.1:{trap.port}/photo/x", f"http://localhost:{trap.port}/"):
        redirect = a.url("/redirect?" + urllib.parse.urlencode({"to": target}))
        with pytest.raises(BlockedAddressError, match=r"127\.0\.0\.1 is a loopback"):
            fetch.fetch(redirect)
    assert trap.connections == 0
    # A redirect to another allowed host is followed.
    elsewhere = a.url("/redirect?" + urllib.parse.urlencode({"to": hosts["c"].url("/photo/r")}))
    assert fetch.fetch(elsewhere) == PHOTO


def test_the_checked_address_is_the_one_connected_to(hosts, fetcher):
    """A name is resolved once per hop: a second answer (DNS rebinding) is never asked."""
    a, trap = hosts["a"], hosts["trap"]
    answers = iter([["127.0.0.2"], ["127.0.0.1"]])
    asked = []

    def rebinding(host, port):
        asked.append(host)
        return next(answers)

    settings = FetchSettings(allowed_networks=ALLOWED, ignore_opt_outs=True)
    fetch = fetcher(settings, resolver=rebinding)
    assert fetch.fetch(f"http://images.test:{a.port}/photo/named") == PHOTO
    assert asked == ["images.test"]
    [request] = a.requests("/photo/named")
    assert request.host_header == f"images.test:{a.port}"
    # One refused address among several refuses the host.
    fetch = fetcher(settings, resolver=lambda host, port: ["127.0.0.2", "127.0.0.1"])
    with pytest.raises(BlockedAddressError, match=r"127\.0\.0\.1 is a loopback"):
        fetch.fetch(f"http://mixed.test:{a.port}/photo/mixed")
    assert a.requests("/photo/mixed") == []
    assert trap.connections == 0


def test_https_checks_the_name_on_the_checked_address(fetcher, tmp_path_factory):
    """The connection goes to the resolved address; SNI and the certificate's check use
    the URL's name."""
    tls, ca = http_hosts.tls_for("images.test", tmp_path_factory.mktemp("tls"))
    with serving(("127.0.0.2", 404, tls)) as (secure,):
        names = {"images.test": ["127.0.0.2"], "other.test": ["127.0.0.2"]}
        fetch = fetcher(FAST, resolver=lambda host, port: names[host], ca_certs=str(ca))
        assert fetch.fetch(f"https://images.test:{secure.port}/photo/tls") == PHOTO
        [request] = secure.requests("/photo/tls")
        assert request.host_header == f"images.test:{secure.port}"
        assert "images.test" in secure.server_names
        # A name, or an address, that the certificate does not hold is refused.
        settings = FetchSettings(allowed_networks=ALLOWED, ignore_opt_outs=True)
        fetch = fetcher(settings, resolver=lambda host, port: names[host], ca_certs=str(ca))
        for host in ("other.test", "127.0.0.2"):
            with pytest.raises(ConnectionFailedError, match=f"{host}: .*match 'images.test'"):
                fetch.fetch(f"https://{host}:{secure.port}/photo/untrusted")
        assert secure.requests("/photo/untrusted") == []


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "a link-local address"),
        ("10.0.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("fc00::1", "a private address"),
        ("fe80::1", "a link-local address"),
        ("::ffff:169.254.169.254", "an IPv4-mapped form of 169.254.169.254, a link-local"),
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::127.0.0.1", "an IPv4-compatible form of 127.0.0.1"),
        ("2002:a9fe:a9fe::1", "a 6to4 form of 169.254.169.254"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 form of 169.254.169.254"),
        ("240.0.0.1", "a reserved address"),
        ("192.0.2.1", "a non-global address"),
        ("fec0::1", "a site-local address"),
        ("8.8.8.8", None),
        ("::ffff:8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_check(address, reason):
    refusal = addresses.AddressPolicy().refusal(ipaddress.ip_address(address))
    if reason is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.reason.startswith(reason)


def test_address_check_of_resolved_names():
    """The check takes what a (substituted) resolver answers; nothing is connected to."""
    policy = addresses.AddressPolicy.from_strings(["10.20.0.0/16"])
    answers = {"metadata.test": ["169.254.169.254"], "cdn.test": ["10.20.3.4"]}
    resolver = lambda host, port: answers[host]  # noqa: E731
    refusal = policy.first_refusal(addresses.resolve("metadata.test", 80, resolver))
    assert str(refusal) == "169.254.169.254 is a link-local address"
    assert policy.first_refusal(addresses.resolve("cdn.test", 80, resolver)) is None
    assert policy.refusal(ipaddress.ip_address("10.21.0.1")) is not None
    mapped = addresses.AddressPolicy.from_strings(["127.0.0.2/31"])
    assert mapped.refusal(ipaddress.ip_address("::ffff:127.0.0.3")) is None
    assert mapped.refusal(ipaddress.ip_address("127.0.0.1")) is not None
    # A numeric host is its own address: the resolver is never asked.
    assert addresses.resolve("0x7f000001", 80, None) == (ipaddress.ip_address("127.0.0.1"),)


@pytest.mark.parametrize(
    "text",
    [
        *("127.1", "0x7f000001", "2130706433", "017700000001", "0177.0.0.01", "0X7F.1"),
        *("1.2.65535", "0", "08", "0x", "1.2.3.256", "4294967296", "1..2", ".1.2.3"),
        *("127.0.0.1.", "1e3"),
    ],
)
def test_numeric_hosts_are_read_as_inet_aton_reads_them(text):
    try:
        expected = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    assert addresses.parse_numeric_host(text) == expected


# Limits.


def test_outcomes(hosts, fetcher):
    a, b = hosts["a"], hosts["b"]
    fetch = fetcher()
    expected = [
        (a.url("/status/404"), HttpStatusError),
        (a.url("/hops/5"), bytes),
        (a.url("/hops/6"), TooManyRedirectsError),
        (a.url("/redirect?to=file:///etc/passwd"), UnsupportedRedirectError),
        (a.url(f"/redirect?to=ftp://{a.authority}/x"), UnsupportedRedirectError),
        (a.url(f"/large?size={MIB}&length=1"), bytes),
        (a.url(f"/large?size={MIB}&length=0"), bytes),
        (b.url(f"/large?size={MIB + 1}&length=1"), ResponseTooLargeError),
        (b.url("/once/429/never?ra=600"), HttpStatusError),
    ]
    for url, kind in expected:
        assert isinstance(_outcome(fetch, url), kind), url
    assert len(a.requests("/status/404")) == 1  # a 4xx is final
    assert len(b.requests("/once/429/never")) == 1  # not worth waiting for


@pytest.mark.parametrize(
    "url",
    [
        "gs://bucket/image.jpg",
        "http:///no-host",
        "http://127.0.0.2:99999/x",
        "http://user:secret@127.0.0.2/x",
        "http://[::1/x",
        "http://exa mple.test/x",
    ],
)
def test_invalid_urls(fetcher, url):
    with pytest.raises(fetching.InvalidUrlError):
        fetcher().fetch(url)


@pytest.mark.parametrize("length", ["1", "0"])
def test_a_body_over_the_limit_is_not_read(hosts, fetcher, length):
    a = hosts["a"]
    path = f"/large?size={BIG}&length={length}"
    with pytest.raises(ResponseTooLargeError, match=r"127\.0\.0\.2: .*limit of 1048576"):
        fetcher().fetch(a.url(path))
    [request] = a.finished(path)
    assert request.body_sent < BIG and request.error


def test_the_deadline_covers_a_slow_body(hosts, fetcher):
    settings = FetchSettings(allowed_networks=ALLOWED, deadline_seconds=1.0)
    began = time.monotonic()
    with pytest.raises(FetchTimeoutError, match=r"127\.0\.0\.4: .*deadline of 1 s"):
        fetcher(settings).fetch(hosts["c"].url("/slow?size=100000"))
    assert time.monotonic() - began < 1.5


def test_server_errors_are_retried_with_backoff(hosts, fetcher):
    fetch = fetcher(FAST, backoff=Backoff(attempts=4, base=0.01))
    with pytest.raises(HttpStatusError) as raised:
        fetch.fetch(hosts["b"].url("/status/500"))
    assert raised.value.status == 500
    assert len(hosts["b"].requests("/status/500")) == 4


# Politeness.


def _most_in_flight(requests: list[Request]) -> int:
    events = sorted([(r.end, -1) for r in requests] + [(r.start, 1) for r in requests])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_requests_per_host_stay_within_their_limits(hosts, fetcher):
    settings = FetchSettings(
        allowed_networks=ALLOWED, max_connections_per_host=2, requests_per_second_per_host=10
    )
    fetch = fetcher(settings)
    began = time.monotonic()
    names = ("a", "b", "c")
    urls = [hosts[n].url(f"/photo/polite-{i}?delay=0.15") for i in range(20) for n in names]
    with ThreadPoolExecutor(16) as pool:
        assert all(body == PHOTO for body in pool.map(fetch.fetch, urls))
    for name in names:
        served = hosts[name].finished("/photo/polite-") + hosts[name].finished("/robots.txt")
        served = [r for r in served if r.start >= began]  # robots.txt too: it is a request
        assert [r.path for r in served].count("/robots.txt") == 1, name  # 16 threads asked
        assert _most_in_flight(served) == 2, name
        starts = sorted(r.start for r in served)
        # Starts 1/10 s apart, as the server sees them: give or take its threads'
        # scheduling on a busy machine (without the limit, two would start together).
        assert min(b - a for a, b in itertools.pairwise(starts)) > 0.05, name
        assert starts[-1] - starts[0] > (len(starts) - 1) / 10 - 0.05, name


def test_retry_after_is_waited_out(hosts, fetcher):
    a, b = hosts["a"], hosts["b"]
    one_at_a_time = FetchSettings(
        allowed_networks=ALLOWED, max_connections_per_host=1, requests_per_second_per_host=50
    )
    fetch = fetcher(one_at_a_time)
    seconds, date = a.url("/once/429/seconds?ra=1"), b.url("/once/503/date?date=2")
    with ThreadPoolExecutor(3) as pool:
        fetched = [pool.submit(fetch.fetch, url) for url in (seconds, date)]
        time.sleep(0.3)
        # The 429's wait holds no connection slot: a's only one serves another request.
        fetched.append(pool.submit(fetch.fetch, a.url("/photo/meanwhile")))
        assert [f.result() for f in fetched] == [PHOTO, PHOTO, PHOTO]
    first, retry = a.requests("/once/429/seconds")
    assert (first.status, retry.status) == (429, 200)
    assert retry.start - first.end >= 1.0
    [meanwhile] = a.requests("/photo/meanwhile")
    assert first.end < meanwhile.start < meanwhile.end < retry.start
    first, retry = b.requests("/once/503/date")
    # The date has whole seconds: 2 s ahead when sent is more than 1 s ahead when read.
    assert (first.status, retry.status) == (503, 200)
    assert retry.start - first.end >= 0.9


# Opt-outs.


@pytest.mark.parametrize(
    ("tags", "opted_out"),
    [
        (["noai"], "noai"),
        (["otherbot: noindex"], None),
        (["image-embeddings: noai"], "noai"),
        (["max-image-preview: large", "noimageai"], "noimageai"),
        (["googlebot: noindex, nofollow"], None),
        (["otherbot: nofollow, Image-Embeddings: none"], "none"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["max-snippet: 0, NoImageIndex"], "noimageindex"),
        (["all"], None),
    ],
)
def test_x_robots_tag(tags, opted_out):
    assert robots.opt_out_directive(tags, "image-embeddings") == opted_out


def test_an_opted_out_body_is_not_read(hosts, fetcher):
    c = hosts["c"]
    fetch = fetcher()
    path = f"/tagged?tag=noai&size={BIG}"
    with pytest.raises(OptedOutError, match=r"127.0.0.4: .*X-Robots-Tag: noai"):
        fetch.fetch(c.url(path))
    [request] = c.finished(path)
    assert request.body_sent < BIG and request.error
    assert fetch.fetch(c.url("/tagged?tag=otherbot:%20noindex")) == PHOTO
    with pytest.raises(OptedOutError):
        fetch.fetch(c.url("/tagged?tag=image-embeddings:%20noai"))
    ignoring = fetcher(FetchSettings(allowed_networks=ALLOWED, ignore_opt_outs=True))
    assert ignoring.fetch(c.url("/tagged?tag=noai")) == PHOTO


def test_robots_txt(hosts, fetcher):
    a, b, c, down, locked = (hosts[n] for n in ("a", "b", "c", "down", "locked"))
    fetch = fetcher(FAST, backoff=Backoff(base=0.01))
    before = {n: len(hosts[n].requests("/robots.txt")) for n in hosts}
    expected = [
        (a.url("/private/x.jpg"), RobotsDisallowedError),  # our group
        (a.url("/private/open/x.jpg"), bytes),  # a longer Allow
        (a.url("/photo/robots"), bytes),  # otherbot's "Disallow: /" is not ours
        (b.url("/private/x.jpg"), bytes),  # 404: allow all
        (c.url("/private/x.jpg"), RobotsDisallowedError),  # the * group
        (c.url("/photo/robots"), bytes),
        (down.url("/photo/robots"), RobotsDisallowedError),  # 503: disallow all
        (locked.url("/photo/robots"), bytes),  # 401 is 4xx: allow all (RFC 9309)
    ]
    for url, kind in expected + expected:
        assert isinstance(_outcome(fetch, url), kind), url
    for name in ("a", "b", "c", "locked"):
        assert len(hosts[name].requests("/robots.txt")) - before[name] == 1, name
    # 503 was retried, then cached for a while.
    assert len(down.requests("/robots.txt")) - before["down"] == 4
    with pytest.raises(RobotsDisallowedError, match=r"robots\.txt unreachable \(HTTP 503\)"):
        fetch.fetch(down.url("/photo/robots"))
    # Another agent, another group; ignore_opt_outs reads no robots.txt.
    other = FetchSettings(allowed_networks=ALLOWED, user_agent="otherbot/2.0 (+https://x.test)")
    with pytest.raises(RobotsDisallowedError, match="for otherbot"):
        fetcher(other).fetch(a.url("/photo/robots"))
    requests = len(c.requests("/robots.txt"))
    ignoring = fetcher(FetchSettings(allowed_networks=ALLOWED, ignore_opt_outs=True))
    assert ignoring.fetch(c.url("/private/y.jpg")) == PHOTO
    assert len(c.requests("/robots.txt")) == requests


RULES = """
User-agent: *
Disallow: /

User-agent: image-embeddings
Disallow: /private/
Allow: /private/open/
Disallow: /*.gif$
Disallow: /*/thumbs/
Allow: /tie
Disallow: /tie
Disallow: /caf%C3%A9/

User-agent: IMAGE-EMBEDDINGS
Disallow: /later/

User-agent: image
Disallow: /photos/
"""


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/photo.jpg", True),  # our groups, not *'s "Disallow: /"
        ("/private/x", False),
        ("/private/open/x", True),  # the longest match wins
        ("/a/b.gif", False),
        ("/a/b.gif?size=2", True),  # $ ends the match
        ("/a/thumbs/1.jpg", False),  # * matches any run
        ("/tie", True),  # equally long: allow wins
        ("/caf%c3%a9/1.jpg", False),
        ("/later/x", False),  # groups for the same agent are combined
        ("/photos/x", True),  # "image" is another agent, not a prefix of ours
        ("/robots.txt", True),
    ],
)
def test_robots_rules_follow_rfc_9309(path, allowed):
    assert robots.RobotsRules.parse(RULES, "image-embeddings").allows(path) is allowed


def test_robots_rules_of_the_star_group_and_of_none():
    star = robots.RobotsRules.parse("User-agent: *\nDisallow: /x\n\nDisallow: /y", "ours")
    assert not star.allows("/x/1") and not star.allows("/y/1") and star.allows("/z")
    assert robots.RobotsRules.parse("", "ours").allows("/anything")
    assert robots.product_token("image-embeddings/0.1.0 (+https://x.test)") == "image-embeddings"


# The rest of the contract.


def test_counters(hosts, fetcher):
    a, trap = hosts["a"], hosts["trap"]
    fetch = fetcher()
    with progress.watched() as watched:
        for url in (
            a.url("/photo/counted"),
            a.url("/status/404"),
            trap.url("/photo/counted"),
            a.url("/private/counted"),
            a.url("/tagged?tag=noai"),
        ):
            _outcome(fetch, url)
    assert watched.counts == {
        "fetched": 1,
        "fetch_status_200": 2,
        "fetch_status_404": 1,
        "fetch_http_error": 1,
        "fetch_blocked": 1,
        "fetch_robots_disallowed": 1,
        "fetch_opted_out": 1,
    }
    # For a thread outside Beam's steps: the names, to count in the step's thread.
    counts = []
    with progress.watched() as watched:
        assert fetch.fetch(hosts["b"].url("/once/429/counted?ra=0"), counts) == PHOTO
    assert sorted(counts) == ["fetch_retries", "fetch_status_200", "fetched"]
    assert watched.counts == {}


def test_fetch_shares_one_fetcher_per_settings(hosts):
    settings = FetchSettings(allowed_networks=ALLOWED, requests_per_second_per_host=50.0)
    assert fetching.fetch(hosts["b"].url("/photo/shared"), settings) == PHOTO
    assert fetching.fetcher(settings) is fetching.fetcher(FetchSettings(**vars(settings)))
    fetching.fetcher(settings).close()


def test_errors_name_the_host_and_survive_pickling():
    error = HttpStatusError("images.test", 503, "Service Unavailable")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.status) == (HttpStatusError, str(error), 503)
    assert str(error) == "images.test: HTTP 503, Service Unavailable"
    assert isinstance(error, OSError)


def test_default_user_agent_names_the_tool_and_its_version():
    assert re.fullmatch(r"image-embeddings/[0-9][^ ]*( \(\+\S+\))?", fetching.DEFAULT_USER_AGENT)


def test_retry_after_values():
    assert fetching.parse_retry_after("7") == 7.0
    soon = fetching.parse_retry_after(
        time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    )
    assert 28 <= soon <= 30
    assert fetching.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert fetching.parse_retry_after("soon") is None
