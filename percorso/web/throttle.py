"""Limits on how fast one client may ask: token buckets per key, lockouts that double, and a
bound on concurrent CPU-heavy work.

The collector limits requests per write key with :class:`RateLimiter`; sign-in limits failed
attempts per account with :class:`Backoff` and per client address with :class:`RateLimiter`, and
bounds concurrent password hashing with :class:`Gate`. State lives in memory, per process: the
checks cost a dictionary lookup and a few float operations, and nothing is written to the store.

None of these take a lock: their callers run on the server's event loop, one at a time. Called
from threads instead, a lost update would only make a limit approximate, never raise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.requests import Request

Clock = Callable[[], float]

#: Most keys a limiter remembers; past it, idle keys are dropped first, then the oldest.
MAX_KEYS = 100_000


def retry_after(seconds: float) -> int:
    """Whole seconds for a ``Retry-After`` header: rounded up, at least 1."""
    return max(1, math.ceil(seconds))


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """A token bucket per key: ``capacity`` requests at once, refilled at ``rate`` per second.

    Example: ``RateLimiter(capacity=30, rate=0.5)`` allows 30 at once, then one every 2 s.
    A ``rate`` of 0 turns the limiter off.
    """

    def __init__(
        self, capacity: float, rate: float, *, clock: Clock = time.monotonic, max_keys: int = MAX_KEYS
    ):
        self.capacity = float(capacity)
        self.rate = float(rate)
        self.enabled = self.rate > 0 and self.capacity > 0
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """Takes one token for ``key``: 0.0 when there was one, else the seconds until there is."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune(now)
            self._buckets[key] = _Bucket(self.capacity - 1, now)
            return 0.0
        tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return 0.0
        bucket.tokens = tokens
        return (1.0 - tokens) / self.rate

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may take a token (0.0 now), without taking one."""
        bucket = self._buckets.get(key) if self.enabled else None
        if bucket is None:
            return 0.0
        tokens = bucket.tokens + (self._clock() - bucket.stamp) * self.rate
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def give_back(self, key: str) -> None:
        """Returns a token taken for something that turned out not to count."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.capacity, bucket.tokens + 1.0)

    def _prune(self, now: float) -> None:
        full = [
            k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.capacity
        ]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) >= self._max_keys:
            del self._buckets[next(iter(self._buckets))]


class _Strikes:
    __slots__ = ("count", "last", "until")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.until = 0.0


class Backoff:
    """Failures per key: ``free`` of them cost nothing; each one after locks the key for
    ``first`` seconds, doubling up to ``cap``. A success, or ``forget_after`` seconds without a
    failure, clears the key. A ``first`` of 0 turns lockouts off.

    Example: ``Backoff(free=5, first=30, cap=900)``: the 5th failure locks for 30 s, the 6th for
    60 s, ..., the 10th and later for 15 min.
    """

    def __init__(
        self,
        free: int,
        first: float,
        cap: float,
        *,
        forget_after: float | None = None,
        clock: Clock = time.monotonic,
        max_keys: int = MAX_KEYS,
    ):
        self.free = max(1, free)
        self.first = float(first)
        self.cap = max(float(cap), self.first)
        self.forget_after = forget_after if forget_after is not None else max(3600.0, 4 * self.cap)
        self._clock = clock
        self._max_keys = max_keys
        self._keys: dict[str, _Strikes] = {}

    def lockout(self, failures: int) -> float:
        """Seconds a key is locked after its ``failures``-th failure in a row."""
        if self.first <= 0 or failures < self.free:
            return 0.0
        return min(self.cap, self.first * 2.0 ** min(failures - self.free, 40))

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0.0: now)."""
        strikes = self._keys.get(key)
        return max(0.0, strikes.until - self._clock()) if strikes is not None else 0.0

    def strike(self, key: str) -> float:
        """Records a failure for ``key``; returns the lockout it now has (0.0: none)."""
        now = self._clock()
        strikes = self._keys.get(key)
        if strikes is None:
            if len(self._keys) >= self._max_keys:
                self._prune(now)
            strikes = self._keys[key] = _Strikes()
        elif now - strikes.last > self.forget_after:
            strikes.count = 0
        strikes.count += 1
        strikes.last = now
        locked = self.lockout(strikes.count)
        strikes.until = now + locked
        return locked

    def clear(self, key: str) -> None:
        self._keys.pop(key, None)

    def _prune(self, now: float) -> None:
        stale = [k for k, s in self._keys.items() if s.until <= now and now - s.last > self.forget_after]
        for k in stale:
            del self._keys[k]
        while len(self._keys) >= self._max_keys:
            del self._keys[next(iter(self._keys))]


class Busy(Exception):
    """Every slot of a :class:`Gate` is taken and its queue is full, or waiting took too long."""


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Gate:
    """At most ``slots`` pieces of CPU-heavy work at once. Up to ``queue`` more wait at most
    ``patience`` seconds for a slot; the rest are refused at once with :class:`Busy`, so a flood
    of requests cannot pile up behind the work."""

    def __init__(self, slots: int, queue: int, patience: float):
        self.slots = max(1, slots)
        self.queue = queue
        self.patience = patience
        self._limiter: anyio.CapacityLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current(self) -> anyio.CapacityLimiter:
        # A capacity limiter belongs to one event loop; a test client may start another.
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._loop is not loop:
            self._limiter, self._loop = anyio.CapacityLimiter(self.slots), loop
        return self._limiter

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with gate.slot():`` holds a slot for the block, or raises :class:`Busy`."""
        limiter = self._current()
        try:
            limiter.acquire_nowait()  # a free slot is taken at once, whatever the clock says
        except anyio.WouldBlock:
            if limiter.statistics().tasks_waiting >= self.queue:
                raise Busy() from None
            held = False
            with anyio.move_on_after(self.patience):
                await limiter.acquire()
                held = True
            if not held:
                raise Busy() from None
        try:
            yield
        finally:
            limiter.release()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` as networks. Raises ValueError naming a bad entry."""
    out: list[Network] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part))
        except ValueError as exc:
            raise ValueError(f"{part!r} is not an IP address or network: {exc}") from None
    return tuple(out)


def proxy_options(trusted_proxies: str) -> dict[str, Any]:
    """uvicorn's options for ``X-Forwarded-For``: believed only from the proxies named (by
    default uvicorn would believe any local process)."""
    networks = parse_networks(trusted_proxies)
    if not networks:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(str(n) for n in networks)}


def client_address(request: Request) -> str:
    """The address a request came from, as a throttling key: the socket peer, or the client a
    trusted proxy names (see :func:`proxy_options`). IPv6 addresses count per /64, the block
    one subscriber usually gets."""
    peer = request.client.host if request.client else ""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer[:64]
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
