"""Where webhooks may connect: public addresses only, unless an admin allows a private network.

A webhook URL is written by an editor, and the worker sends from inside the network it runs
in; without a check a URL could reach a database, an admin panel or a cloud metadata service
(169.254.169.254). The check runs on the address actually connected to: the host is resolved
once, each address is checked, and the socket connects to a checked address — so a name that
resolves to a public address when checked and to 127.0.0.1 when connecting (DNS rebinding) gets
nowhere, and neither do spellings such as ``http://2130706433/`` or ``http://0x7f.1/``, which the
resolver turns into 127.0.0.1. Redirects are never followed (see webhook.py).

``PERCORSO_WEBHOOK_ALLOW_NETWORKS`` lists the networks (CIDR, or single addresses) that are
reachable anyway, such as a CRM inside the company network.

Example::

    >>> Destinations(["10.1.0.0/16"]).refusal(ipaddress.ip_address("10.1.2.3")) is None
    True
    >>> Destinations().refusal(ipaddress.ip_address("169.254.169.254"))
    'a link-local address (where cloud metadata services answer)'
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import httpx

from percorso.automation.actions.errors import DeliveryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_SETTING = "PERCORSO_WEBHOOK_ALLOW_NETWORKS"

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses translated to IPv6, RFC 6052


class DestinationRefused(DeliveryError):
    """A webhook's host resolves only to addresses webhooks may not reach; retrying cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The networks in ``entries`` ("10.0.0.0/8", "127.0.0.1"); a bad one raises ValueError naming it."""
    networks = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(
                f"{ALLOW_SETTING}: {text!r} is not a network; write it as 10.0.0.0/8, 192.168.1.20 or fd00::/8"
            ) from None
    return tuple(networks)


def _embedded(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


class Destinations:
    """Which addresses webhooks may connect to: public ones, and those in ``allowed``."""

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        self.allowed = parse_networks(allowed)

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached (None when it may)."""
        if any(address in network for network in self.allowed):
            return None
        target = _embedded(address)
        if target is not address and any(target in network for network in self.allowed):
            return None
        checks = (
            (target.is_unspecified, "an unspecified address"),
            (target.is_loopback, "a loopback address"),
            (target.is_link_local, "a link-local address (where cloud metadata services answer)"),
            (target.is_multicast, "a multicast address"),
            (target in _SHARED, "a carrier-grade NAT address"),
            (target.is_private, "a private address"),
            (not target.is_global, "not a public address"),
        )
        for refused, reason in checks:
            if refused:
                return reason
        return None


class _CheckedBackend(httpcore.NetworkBackend):
    """Resolves the host once and connects only to an address :class:`Destinations` allows."""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        allowed: list[str] = []
        refused: list[str] = []
        for address in _resolve(host, port):
            reason = self.destinations.refusal(address)
            if reason is None:
                allowed.append(str(address))
            else:
                refused.append(f"{address} ({reason})")
        if not allowed:
            raise DestinationRefused(
                f"{host} resolves to {', '.join(refused)}; webhooks only reach public addresses "
                f"unless {ALLOW_SETTING} allows the network"
            )
        error: Exception | None = None
        for address_text in allowed:
            try:
                return self._backend.connect_tcp(address_text, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise DestinationRefused("webhooks do not connect to local sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[IPAddress] = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])  # drop an IPv6 zone
        if address not in addresses:
            addresses.append(address)
    return addresses


class CheckedTransport(httpx.HTTPTransport):
    """httpx's transport with every connection checked against ``destinations``."""

    def __init__(self, destinations: Destinations, **options: Any) -> None:
        super().__init__(**options)
        # httpx builds its connection pool with the default backend; this one checks addresses.
        self._pool._network_backend = _CheckedBackend(destinations)


def webhook_client(allowed: Sequence[str] = ()) -> httpx.Client:
    """An HTTP client for webhooks: checked destinations, no redirects, no proxy from the environment."""
    return httpx.Client(transport=CheckedTransport(Destinations(allowed)), follow_redirects=False)
