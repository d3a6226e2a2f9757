"""Sites' opt-outs: robots.txt rules (RFC 9309) and X-Robots-Tag response headers.

Parsing uses the standard library's urllib.robotparser; matching does not, since its
can_fetch differs from RFC 9309 where that matters: it applies the first rule that
matches rather than the longest (2.2.2), has no * or $ wildcards (2.2.3), applies a group
whose user-agent is any substring of ours, uses only the first of several groups for the
same agent (2.2.1: they are combined), and lets a blank line end a group.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
import urllib.robotparser
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# RFC 9309 2.5: a crawler must parse at least 500 KiB; what follows may be ignored.
MAX_ROBOTS_BYTES = 500 * 1024

# X-Robots-Tag directives that opt an image out of being collected for this use.
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# Directives whose value follows a colon, so that "max-snippet: 5" names no user agent.
_VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)
_AGENT_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")

# How long a robots.txt that could not be fetched (disallow all) is kept before the next
# try: RFC 9309 2.3.1.4 has an unreachable robots.txt disallow everything, but a worker
# that runs for hours should not stay locked out of a host by one bad minute.
UNREACHABLE_RETRY_SECONDS = 300.0
MAX_CACHED_ORIGINS = 10_000


def product_token(user_agent: str) -> str:
    """The name robots.txt groups and X-Robots-Tag headers call a crawler by:
    "image-embeddings" for "image-embeddings/0.1.0 (+https://...)"."""
    match = _AGENT_TOKEN.match(user_agent.strip())
    return match.group().lower() if match else ""


def opt_out_directive(header_values: Iterable[str], agent_token: str) -> str | None:
    """The first opt-out directive in X-Robots-Tag header values that applies to the
    agent: one with no user agent before it, or ours ("otherbot: noai" is not for us).
    A user agent applies to the directives after it in the same header."""
    for value in header_values:
        agent = None
        for part in value.split(","):
            name, colon, rest = part.partition(":")
            name = name.strip()
            if colon and name.lower() not in _VALUED_DIRECTIVES and _AGENT_TOKEN.fullmatch(name):
                agent, part = name.lower(), rest
            directive = part.split(":", 1)[0].strip().lower()
            if directive in OPT_OUT_DIRECTIVES and agent in (None, agent_token):
                return directive
    return None


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    length: int  # characters of the rule's path: the longest match wins
    allow: bool


@dataclass(frozen=True)
class RobotsRules:
    """What one origin's robots.txt allows our agent."""

    rules: tuple[_Rule, ...] = ()
    disallow_all: bool = False
    why: str = "robots.txt"

    @classmethod
    def parse(cls, text: str, agent_token: str) -> RobotsRules:
        """The rules of the groups for agent_token, or if none, of the groups for *."""
        parser = _GroupingParser()
        # RFC 9309 has no blank-line group ends (robotparser does): drop those lines.
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        parser.parse([line for line in lines if line])
        ours = [g for g in parser.groups if agent_token in map(_agent_name, g.useragents)]
        groups = ours or [g for g in parser.groups if "*" in g.useragents]
        rules = tuple(
            _compile(urllib.parse.unquote(line.path), line.allowance)
            for group in groups
            for line in group.rulelines
            if line.path  # an empty Disallow: is no rule
        )
        return cls(rules)

    def allows(self, path: str) -> bool:
        """Whether the path (with its query) may be fetched (RFC 9309 2.2.2)."""
        if self.disallow_all:
            return False
        if path == "/robots.txt":
            return True
        target = urllib.parse.unquote(path or "/")
        best = max(
            ((rule.length, rule.allow) for rule in self.rules if rule.pattern.match(target)),
            default=(-1, True),  # no rule matches: allowed
        )
        return best[1]  # on a tie in length, allow wins (True > False)


ALLOW_ALL = RobotsRules(why="robots.txt unavailable (4xx): everything allowed")


def unreachable(reason: str) -> RobotsRules:
    """RFC 9309 2.3.1.4: a robots.txt unreachable through server or network errors
    disallows everything."""
    return RobotsRules(disallow_all=True, why=f"robots.txt unreachable ({reason})")


def _agent_name(useragent: str) -> str:
    return useragent.split("/", 1)[0].strip().lower()


def _compile(path: str, allow: bool) -> _Rule:
    anchored = path.endswith("$")
    body = path[:-1] if anchored else path
    regex = ".*".join(re.escape(piece) for piece in body.split("*"))
    return _Rule(re.compile(regex + (r"\Z" if anchored else ""), re.DOTALL), len(path), allow)


class _GroupingParser(urllib.robotparser.RobotFileParser):
    """RobotFileParser that keeps every group, the * ones included (it keeps only the
    first * group, as its default entry)."""

    def __init__(self):
        super().__init__()
        self.groups: list[urllib.robotparser.Entry] = []

    def _add_entry(self, entry):
        self.groups.append(entry)


@dataclass
class _Cached:
    rules: RobotsRules
    expires: float  # monotonic; inf: for the process's life


@dataclass(eq=False)
class RobotsCache:
    """Each origin's rules, fetched once per process by the first thread that asks while
    the others wait; a robots.txt that could not be fetched is tried again after
    UNREACHABLE_RETRY_SECONDS. Holds at most max_origins, least recently used dropped."""

    max_origins: int = MAX_CACHED_ORIGINS
    _entries: OrderedDict[str, _Cached] = field(default_factory=OrderedDict)
    _loading: dict[str, threading.Lock] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def rules(self, origin: str, load: Callable[[], RobotsRules], wait: float) -> RobotsRules:
        """origin's rules, from load() if not cached; raises TimeoutError if another
        thread's load of them takes longer than wait seconds."""
        if (cached := self._get(origin)) is not None:
            return cached
        with self._lock:
            loading = self._loading.setdefault(origin, threading.Lock())
        if not loading.acquire(timeout=max(wait, 0.0)):
            raise TimeoutError(f"waited {wait:.0f} s for {origin}/robots.txt")
        try:
            if (cached := self._get(origin)) is not None:
                return cached
            rules = load()
            expires = time.monotonic() + UNREACHABLE_RETRY_SECONDS
            self._put(origin, _Cached(rules, expires if rules.disallow_all else float("inf")))
            return rules
        finally:
            with self._lock:
                self._loading.pop(origin, None)
            loading.release()

    def _get(self, origin: str) -> RobotsRules | None:
        with self._lock:
            cached = self._entries.get(origin)
            if cached is None or cached.expires <= time.monotonic():
                return None
            self._entries.move_to_end(origin)
            return cached.rules

    def _put(self, origin: str, cached: _Cached) -> None:
        with self._lock:
            self._entries[origin] = cached
            self._entries.move_to_end(origin)
            while len(self._entries) > self.max_origins:
                self._entries.popitem(last=False)
