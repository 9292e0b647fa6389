"""Request screening: the `[[screening.rule]]` list compiled once per configuration, and the
decision for one request, taken before the cache on the full handler and the fast hit path.

Rules are checked in order. A rule holds when all its conditions do: method, path (prefix or
regular expression, on the path with percent-decoding and dot segments undone, so
`/%61pi/../api/` cannot slip past `/api/`), host, a header (present, equal, or matching),
the client's network and country, and, for a rule with a `rate` or a `concurrency`, the
key's budget being spent (edge.ratelimit). The first rule that holds decides: `allow` lets
the request pass without looking further, `deny` answers 403, `limit` 429 with Retry-After
and the RateLimit-Policy / RateLimit fields of draft-ietf-httpapi-ratelimit-headers, `close`
drops the connection without an answer (no tarpit: nothing is held open). A budget that
still has room does not decide: the next rules are checked too.

The decision is split so that the fast path pays per request only for what can change
between two identical segments: `RuleSet.candidates` (method, path, host, headers: the
rules a request could match) is remembered with the parsed segment, `Screening.client`
(network and country conditions, budget keys) is remembered per client address, and only
budgets are looked at per request. With no rules both are empty and cost nothing.

The client is the connection's peer, or, when that is one of server.trusted_proxies, the
right-most untrusted address of X-Forwarded-For (the fast path leaves such requests to the
full handler). `concurrency` counts the requests in flight per key in the node's table
(edge.ratelimit: `enter` when the full handler admits a request, `leave` when it ends), so
the limit holds across the workers; the fast hit path, answered at once, only reads it.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from edge.exchange import bare_host
from edge.ratelimit import Leases, RateTable, table_key
from edge.screen_config import Rule, ScreeningConfig
from geo.location import IPAddress, IPNetwork, Locator

log = logging.getLogger("edge.screening")

Header = Callable[[str], str | None]  # a request's field value by lower-case name (joined)
_MEMO: Final = 4096  # clients and budget keys remembered; emptied when full


@dataclass(frozen=True, slots=True)
class Verdict:
    """A refusal: which rule, what to do, and for a spent budget when to come back."""

    rule: str
    action: str  # deny | limit | close
    retry_after: int = 0
    policy: str = ""  # RateLimit-Policy member
    limit: str = ""  # RateLimit member

    @property
    def status(self) -> int:
        """403 deny, 429 limit; 444 (no response, as nginx logs it) close."""
        return _STATUS[self.action]


_STATUS: Final = {"deny": 403, "limit": 429, "close": 444}


@dataclass(frozen=True, slots=True)
class Client:
    """What the rules need of one client address, worked out once per address."""

    text: str  # the address as logged
    trusted: bool  # a trusted proxy: the real client is in X-Forwarded-For
    matches: int  # bit i: rule i's network and country conditions hold (or it has none)
    keys: dict[int, int]  # rule index -> the budget key of a rule keyed by client


class _Compiled:
    """One rule's conditions in the form that is quick to test."""

    def __init__(self, index: int, rule: Rule) -> None:
        self.index = index
        self.rule = rule
        self.methods = frozenset(rule.methods)
        self.path_re = re.compile(rule.path_regex) if rule.path_regex else None
        self.hosts = frozenset(rule.hosts)
        self.header_re = re.compile(rule.header_regex) if rule.header_regex else None
        self.rate = rule.rate
        self.budget = rule.rate is not None or rule.concurrency > 0
        self.client_key = self.budget and rule.key == "client"
        self.fixed = (
            None if self.budget or rule.action == "allow" else Verdict(rule.name, rule.action)
        )
        if rule.rate is not None:
            self.policy = f'"{rule.name}";q={rule.rate.burst};w={math.ceil(rule.rate.window)}'
        elif rule.concurrency:
            self.policy = f'"{rule.name}";q={rule.concurrency};qu="concurrent-requests"'
        else:
            self.policy = ""

    def holds(self, method: str, path: str, host: str, header: Header) -> bool:
        rule = self.rule
        if self.methods and method not in self.methods:
            return False
        if rule.path_prefix and not path.startswith(rule.path_prefix):
            return False
        if self.path_re is not None and self.path_re.search(path) is None:
            return False
        if self.hosts and host not in self.hosts:
            return False
        if rule.header:
            value = header(rule.header)
            if value is None:
                return False
            if rule.header_value is not None and value != rule.header_value:
                return False
            if self.header_re is not None and self.header_re.search(value) is None:
                return False
        return True


def match_path(target: str) -> str:
    """The path rules match: query dropped, percent-decoded, slashes merged and dot
    segments removed (RFC 3986 §5.2.4), as an origin would resolve it."""
    path = unquote(target.partition("?")[0], errors="surrogateescape")
    if "//" not in path and "/." not in path:
        return path
    out: list[str] = []
    parts = path.split("/")
    for part in parts[1:]:
        if part == "..":
            if out:
                out.pop()
        elif part not in (".", ""):
            out.append(part)
    tail = "/" if parts[-1] in ("", ".", "..") and out else ""
    return "/" + "/".join(out) + tail


class RuleSet:
    """The compiled rules of one configuration: pure matching, no state."""

    def __init__(self, rules: Sequence[Rule], locator: Locator | None) -> None:
        self.rules = tuple(_Compiled(i, r) for i, r in enumerate(rules))
        self._locator = locator
        self._countries = any(r.countries for r in rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def candidates(self, method: str, target: str, host: str, header: Header) -> int:
        """The rules whose request conditions hold, as bits (rule i: bit i); client and
        budget conditions are left to `Screening.decide`."""
        if not self.rules:
            return 0
        path = match_path(target)
        name = bare_host(host)
        bits = 0
        for c in self.rules:
            if c.holds(method, path, name, header):
                bits |= 1 << c.index
        return bits

    def client(self, text: str, trusted: Sequence[IPNetwork]) -> Client:
        """The network, country and budget-key facts of the client at address `text`."""
        try:
            addr: IPAddress | None = ipaddress.ip_address(text.partition("%")[0])
        except ValueError:
            addr = None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        country = None
        if addr is not None and self._countries and self._locator is not None:
            found = self._locator.locate(addr)
            country = found.country if found is not None else None
        matches = 0
        keys: dict[int, int] = {}
        for c in self.rules:
            rule = c.rule
            ok = not rule.clients or (addr is not None and any(addr in n for n in rule.clients))
            if ok and rule.countries:
                ok = country in rule.countries
            if ok:
                matches |= 1 << c.index
            if c.client_key:
                keys[c.index] = table_key(rule.name, "client", _network_key(addr, rule))
        is_trusted = addr is not None and any(addr in n for n in trusted)
        return Client(text, is_trusted, matches, keys)


def _network_key(addr: IPAddress | None, rule: Rule) -> str:
    if addr is None:
        return "unknown"
    prefix = rule.prefix_v4 if addr.version == 4 else rule.prefix_v6
    return str(ipaddress.ip_network((addr, prefix), strict=False))


def forwarded_client(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The client of a request from a trusted proxy: the right-most X-Forwarded-For entry
    that is not itself trusted (an entry further left could be the client's own invention);
    the peer when there is none."""
    if not forwarded_for:
        return peer
    hops = [h.strip().strip("[]") for h in forwarded_for.split(",")]
    for hop in reversed(hops):
        try:
            addr = ipaddress.ip_address(hop)
        except ValueError:
            return peer  # an unparsable hop: trust nothing further left
        if not any(addr in n for n in trusted):
            return hop
    return hops[0] if hops else peer


class Screening:
    """The rules of one configuration applied to requests: budgets in the node's RateTable
    (kept across reloads), requests in flight, hit counters and the refusal log."""

    def __init__(
        self,
        config: ScreeningConfig,
        trusted: Sequence[IPNetwork],
        table: RateTable,
        locator: Locator | None,
        counts: Counter[tuple[str, str]],
        clock: Callable[[], float],
    ) -> None:
        self.ruleset = RuleSet(config.rules, locator)
        self.active = bool(self.ruleset)
        self.bans = any(r.rate is not None and r.rate.ban_after for r in config.rules)
        self._trusted = tuple(trusted)
        self._table = Leases(table)
        self._inflight = table  # concurrency counts: exact, never leased
        self._counts = counts  # (rule, action) -> hits; ("rule", "ban") bans started
        self._clock = clock
        self._log_interval = config.log_interval
        self._logged: dict[str, tuple[float, int]] = {}
        self._clients: dict[str, Client] = {}
        self._keys: dict[tuple[int, str], int] = {}

    def client(self, text: str) -> Client:
        client = self._clients.get(text)
        if client is None:
            client = self.ruleset.client(text, self._trusted)
            if len(self._clients) >= _MEMO:
                self._clients.clear()
            self._clients[text] = client
        return client

    def peer_client(self, peer: str, header: Header) -> Client:
        """The client of a request that arrived from `peer` (see `forwarded_client`)."""
        client = self.client(peer)
        if client.trusted:
            return self.client(forwarded_client(peer, header("x-forwarded-for"), self._trusted))
        return client

    def decide(
        self,
        candidates: int,
        client: Client,
        target: str,
        header: Header,
        held: list[int] | None = None,
    ) -> Verdict | None:
        """The verdict on a request whose `candidates` rules' (bits) request conditions hold: None
        to let it pass. Budgets are spent here. `held` collects the keys of concurrency
        budgets the request takes, released with `leave` once it ends (a refusal releases
        them here); without `held` (the fast path) a concurrency budget is looked at only."""
        rules = self.ruleset.rules
        relevant = candidates & client.matches
        while relevant:
            low = relevant & -relevant  # the rules in order: lowest bit first
            relevant ^= low
            i = low.bit_length() - 1
            c = rules[i]
            rule = c.rule
            verdict = c.fixed
            if c.rate is not None:
                key = client.keys[i] if c.client_key else self._key(c, target, header)
                out = self._table.take(key, c.rate, self._clock())
                if out.allowed:
                    continue
                if out.ban_started:
                    self._counts[(rule.name, "ban")] += 1
                retry = max(1, math.ceil(out.retry_after))
                verdict = Verdict(
                    rule.name, rule.action, retry, c.policy, f'"{rule.name}";r=0;t={retry}'
                )
            elif rule.concurrency:
                key = client.keys[i] if c.client_key else self._key(c, target, header)
                if held is None:
                    if self._inflight.inflight(key) < rule.concurrency:
                        continue
                elif self._inflight.enter(key, rule.concurrency, self._clock()):
                    held.append(key)
                    continue
                verdict = Verdict(rule.name, rule.action, 1, c.policy, f'"{rule.name}";r=0;t=1')
            if held:
                self.leave(held)
            self._counts[(rule.name, rule.action)] += 1
            if verdict is not None:
                self._note(verdict, client, target)
            return verdict
        return None

    def leave(self, held: list[int]) -> None:
        """The request that took the concurrency budgets `held` ended (emptied: once only)."""
        for key in held:
            self._inflight.leave(key)
        held.clear()

    def _key(self, c: _Compiled, target: str, header: Header) -> int:
        """The budget key of a rule keyed by path or header (client keys: `Client.keys`)."""
        rule = c.rule
        value = match_path(target) if rule.key == "path" else header(rule.key_header) or ""
        memo = (c.index, value)
        key = self._keys.get(memo)
        if key is None:
            key = table_key(rule.name, rule.key, value)
            if len(self._keys) >= _MEMO:
                self._keys.clear()
            self._keys[memo] = key
        return key

    def _note(self, verdict: Verdict, client: Client, target: str) -> None:
        """Log a refusal with its rule's name: the first, then at most one line per rule
        each log_interval, saying how many went unlogged (a flood must not flood the log)."""
        now = self._clock()
        last, quiet = self._logged.get(verdict.rule, (-math.inf, 0))
        if now - last < self._log_interval:
            self._logged[verdict.rule] = (last, quiet + 1)
            return
        self._logged[verdict.rule] = (now, 0)
        log.warning(
            "screening: rule %s: %s %d for %s %s%s",
            verdict.rule,
            verdict.action,
            verdict.status,
            client.text,
            target[:200],
            f" ({quiet} more since the last line)" if quiet else "",
        )


def refusal_head(verdict: Verdict, date: str) -> tuple[bytes, bytes]:
    """Status line and fields (but Cache-Status and the blank line) and body of the answer
    to a refused request: the same bytes on the fast path and the full handler."""
    status = verdict.status
    reason = "Forbidden" if status == 403 else "Too Many Requests"
    body = f"{status} {reason}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {reason}\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        f"Content-Length: {len(body)}\r\n",
        f"Date: {date}\r\n",
        # The answer depends on who asks and when: no cache in front may keep it.
        "Cache-Control: no-store\r\n",
    ]
    if verdict.action == "limit":
        lines.append(f"Retry-After: {verdict.retry_after}\r\n")
        lines.append(f"RateLimit-Policy: {verdict.policy}\r\n")
        lines.append(f"RateLimit: {verdict.limit}\r\n")
    return "".join(lines).encode("latin-1"), body
