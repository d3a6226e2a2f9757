"""Which network addresses a fetch may connect to: only global ones, unless allowed.

A CSV row names the URL, so without this check a row could make a worker request the
cloud metadata server (169.254.169.254, which hands out the worker's credentials), a
service on the worker's own loopback, or anything else on the private network.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# host, port -> the addresses it resolves to, as text (a test substitutes its own).
Resolver = Callable[[str, int], Sequence[str]]

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


@dataclass(frozen=True)
class Refusal:
    """Why an address may not be fetched from."""

    address: IPAddress
    reason: str  # "a loopback address", ...

    def __str__(self) -> str:
        return f"{self.address} is {self.reason}"


@dataclass(frozen=True)
class AddressPolicy:
    """Global addresses are allowed; any other only inside allowed_networks."""

    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, networks: Iterable[str]) -> AddressPolicy:
        """From CIDR strings such as "10.20.0.0/16" (host bits are ignored)."""
        return cls(tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks))

    def refusal(self, address: IPAddress) -> Refusal | None:
        """Why address is refused, or None if it may be fetched from."""
        effective = _unmapped(address)
        if any(effective in net for net in self.allowed_networks):
            return None
        reason = non_global_reason(address)
        return Refusal(address, reason) if reason else None

    def first_refusal(self, addresses: Iterable[IPAddress]) -> Refusal | None:
        """The first refused address: one is enough to refuse the host, since the
        connection could go to any of them."""
        for address in addresses:
            if (refused := self.refusal(address)) is not None:
                return refused
        return None


def non_global_reason(address: IPAddress) -> str | None:
    """What kind of non-global address this is, or None if it is globally routable."""
    if isinstance(address, ipaddress.IPv6Address):
        for kind, embedded in _embedded_ipv4(address):
            if (reason := _plain_reason(embedded)) is not None:
                return f"{kind} of {embedded}, {reason}"
        if address.ipv4_mapped is not None:
            return None  # judged as the IPv4 address it is, above
    return _plain_reason(address)


def _plain_reason(address: IPAddress) -> str | None:
    # Explicit checks first: ipaddress's is_global calls 224.0.0.1, fec0::1 and
    # ::127.0.0.1 global, and is_private covers many kinds under one name.
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_multicast:
        return "a multicast address"
    if any(address in net for net in _PRIVATE if net.version == address.version):
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "a non-global address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses that an IPv6 address carries, and would reach through a gateway."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(("an IPv4-mapped form", address.ipv4_mapped))
    elif int(address) >> 32 == 0 and int(address) > 1:
        found.append(("an IPv4-compatible form", ipaddress.IPv4Address(int(address))))
    if address.sixtofour is not None:
        found.append(("a 6to4 form", address.sixtofour))
    if address.teredo is not None:
        found.append(("a Teredo form", address.teredo[1]))
    if address in _NAT64:
        found.append(("a NAT64 form", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
    return found


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host spells, as the C resolver reads it (inet_aton for IPv4:
    "127.1", "0x7f000001", "2130706433" and "017700000001" are all 127.0.0.1), or None
    for a name."""
    try:
        return ipaddress.IPv6Address(host.split("%", 1)[0]) if ":" in host else _inet_aton(host)
    except ValueError:
        return None


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    numbers = [_inet_number(p) for p in parts]
    # The last part fills the bytes the others leave: a.b.c.d, a.b.c16, a.b24, a32.
    last_bits = 8 * (5 - len(numbers))
    if any(n > 0xFF for n in numbers[:-1]) or numbers[-1] >= 1 << last_bits:
        return None
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value |= number << (24 - 8 * index)
    return ipaddress.IPv4Address(value)


def _inet_number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part, 16)
    return int(part, 8 if part.startswith("0") else 10)


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives host, in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(host: str, port: int, resolver: Resolver = system_resolver) -> tuple[IPAddress, ...]:
    """host's addresses: a numeric host is its own address (no lookup); a name is looked
    up once. Raises OSError (socket.gaierror) if it has none."""
    numeric = parse_numeric_host(host)
    if numeric is not None:
        return (numeric,)
    addresses = tuple(ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(host, port))
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address")
    return addresses
