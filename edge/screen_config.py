"""The `[screening]` and `[geo]` tables of the edge configuration: request rules, as frozen
values validated at load (edge.config calls `screening` and `geo`; edge.screening compiles
them). Every error names the file, the key and the problem, like the rest of edge.config.

    [geo]
    database = "GeoLite2-City.mmdb"      # for `countries` conditions

    [screening]
    table_slots = 65536                  # rate-limit keys kept per node (edge.ratelimit)
    log_interval = 10.0                  # at most one refusal log line per rule this often

    [[screening.rule]]
    name = "api-per-network"
    action = "limit"                     # allow | deny | limit | close
    path_prefix = ["/api/"]
    rate = "20/s"                        # N/s, N/m or N/h
    burst = 40
    key = "client"                       # client | path | header:NAME
    prefix_v4 = 24                       # client keys: the client's /24 ...
    prefix_v6 = 56                       # ... or /56
    ban_after = 10                       # refusals (each within ban_window s) before a ban
    ban_seconds = 300
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.ratelimit import Rate
from geo.errors import GeoError
from geo.location import IPNetwork
from geo.locator import GeoIPLocator

if TYPE_CHECKING:
    from edge.config import _Section

ACTIONS = ("allow", "deny", "limit", "close")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_UNIT_SECONDS.update({"h": 3600, "hour": 3600})
_COUNTRY = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True)
class Rule:
    """One `[[screening.rule]]`: conditions (all must hold; an empty one always does) and an
    action. `rate` and `concurrency` make the rule hold only once the key's budget is spent."""

    name: str
    action: str
    methods: tuple[str, ...] = ()
    path_prefix: tuple[str, ...] = ()
    path_regex: str = ""
    hosts: tuple[str, ...] = ()
    header: str = ""  # lower-case name; present (and with header_value / header_regex)
    header_value: str | None = None
    header_regex: str = ""
    clients: tuple[IPNetwork, ...] = ()
    countries: tuple[str, ...] = ()
    rate: Rate | None = None
    concurrency: int = 0  # requests in flight per key on the node (all workers)
    key: str = "client"  # client | path | header
    key_header: str = ""  # lower-case, for key = header:NAME
    prefix_v4: int = 32
    prefix_v6: int = 64


@dataclass(frozen=True, slots=True)
class ScreeningConfig:
    rules: tuple[Rule, ...] = ()
    table_slots: int = 65536
    log_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class GeoConfig:
    database: str = ""  # a MaxMind City (or Country) database; "" none


def geo(sec: _Section, base_dir: str) -> GeoConfig:
    path = sec.take("database", str, "")
    if path:
        path = path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))
        if not os.path.isfile(path):
            raise sec.error("database", f"no such file: {path}")
        try:
            GeoIPLocator(path, cache_size=0).close()
        except GeoError as exc:
            raise sec.error("database", f"not a usable GeoIP database: {exc}") from None
    sec.done()
    return GeoConfig(database=path)


def screening(sec: _Section, geo_config: GeoConfig) -> ScreeningConfig:
    d = ScreeningConfig()
    table_slots = sec.count("table_slots", d.table_slots, minimum=64)
    log_interval = sec.positive("log_interval", d.log_interval, allow_zero=True)
    raw_rules = sec.take("rule", list, [])
    rules: list[Rule] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule_sec = type(sec)(sec.source, f"{sec.key('rule')}[{i}]", raw)
        rule = _rule(rule_sec)
        if rule.name in names:
            raise rule_sec.error("name", f"{rule.name!r} is used by another rule")
        if rule.countries and not geo_config.database:
            raise rule_sec.error("countries", "needs a GeoIP database: set [geo] database")
        names.add(rule.name)
        rules.append(rule)
    sec.done()
    return ScreeningConfig(tuple(rules), table_slots, log_interval)


def _rule(sec: _Section) -> Rule:
    name = sec.take("name", str, "")
    if not _NAME.fullmatch(name):
        raise sec.error("name", f"expected a name of letters, digits, '.', '_', '-'; got {name!r}")
    action = sec.choice("action", ACTIONS, "")  # required: "" is never one of them
    methods = tuple(m.upper() for m in sec.strings("methods", ()))
    for i, method in enumerate(methods):
        if not _TOKEN.fullmatch(method):
            raise sec.error(f"methods[{i}]", f"not a method: {method!r}")
    prefixes: str | list[object] = sec.take("path_prefix", (str, list), [])
    prefix_list = [prefixes] if isinstance(prefixes, str) else prefixes
    if not all(isinstance(p, str) and p.startswith("/") for p in prefix_list):
        raise sec.error("path_prefix", "expected paths starting with '/'")
    path_regex = _regex(sec, "path_regex")
    hosts = tuple(h.lower().rstrip(".") for h in sec.strings("hosts", ()))
    header = sec.take("header", str, "").lower()
    if header and not _TOKEN.fullmatch(header):
        raise sec.error("header", f"not a header field name: {header!r}")
    header_value = sec.take("header_value", str, "") if "header_value" in sec.data else None
    header_regex = _regex(sec, "header_regex")
    if (header_value is not None or header_regex) and not header:
        raise sec.error("header", "header_value and header_regex need the header's name")
    if header_value is not None and header_regex:
        raise sec.error("header_regex", "use header_value or header_regex, not both")
    clients = []
    for i, text in enumerate(sec.strings("clients", ())):
        try:
            clients.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise sec.error(f"clients[{i}]", f"not an IP network (CIDR): {text!r}") from None
    countries = tuple(c.upper() for c in sec.strings("countries", ()))
    for i, country in enumerate(countries):
        if not _COUNTRY.fullmatch(country):
            raise sec.error(f"countries[{i}]", f"not an ISO 3166 country code: {country!r}")
    rate = _rate(sec)
    concurrency = sec.count("concurrency", 0, minimum=0)
    key, key_header = _key(sec)
    prefix_v4 = sec.count("prefix_v4", 32, minimum=1)
    prefix_v6 = sec.count("prefix_v6", 64, minimum=1)
    if prefix_v4 > 32:
        raise sec.error("prefix_v4", "must be 1..32")
    if prefix_v6 > 128:
        raise sec.error("prefix_v6", "must be 1..128")
    if rate is not None and concurrency:
        raise sec.error("concurrency", "a rule limits either a rate or a concurrency, not both")
    if action == "limit" and rate is None and not concurrency:
        raise sec.error("action", '"limit" needs a rate or a concurrency')
    if action == "allow" and (rate is not None or concurrency):
        raise sec.error("action", '"allow" takes no rate or concurrency (use "limit")')
    rule = Rule(
        name=name,
        action=action,
        methods=methods,
        path_prefix=tuple(str(p) for p in prefix_list),
        path_regex=path_regex,
        hosts=hosts,
        header=header,
        header_value=header_value,
        header_regex=header_regex,
        clients=tuple(clients),
        countries=countries,
        rate=rate,
        concurrency=concurrency,
        key=key,
        key_header=key_header,
        prefix_v4=prefix_v4,
        prefix_v6=prefix_v6,
    )
    sec.done()
    return rule


def _regex(sec: _Section, name: str) -> str:
    text = sec.take(name, str, "")
    try:
        re.compile(text)
    except re.error as exc:
        raise sec.error(name, f"not a regular expression: {exc}") from None
    return text


def _rate(sec: _Section) -> Rate | None:
    """`rate` ("N/s", "N/m", "N/h") with `burst` and the ban keys; None without a rate."""
    text = sec.take("rate", str, "")
    names = ("burst", "ban_after", "ban_seconds", "ban_window")
    if not text:
        for name in names:
            if name in sec.data:
                raise sec.error(name, "needs a rate")
        return None
    match = _RATE.match(text)
    if not match:
        raise sec.error("rate", f'expected a number per unit such as "10/s", "600/m"; got {text!r}')
    per_second = float(match.group(1)) / _UNIT_SECONDS[match.group(2)]
    if per_second <= 0:
        raise sec.error("rate", "must be above 0")
    burst = sec.count("burst", max(1, round(per_second)))
    ban_after = sec.count("ban_after", 0, minimum=0)
    ban_seconds = sec.positive("ban_seconds", 60.0 if ban_after else 0.0, allow_zero=True)
    if ban_after and ban_seconds <= 0:
        raise sec.error("ban_seconds", "a ban (ban_after) needs a duration above 0")
    ban_window = sec.positive("ban_window", 60.0)
    return Rate(per_second, burst, ban_after, ban_seconds, ban_window)


def _key(sec: _Section) -> tuple[str, str]:
    text = sec.take("key", str, "client")
    kind, _, header = text.partition(":")
    if kind in ("client", "path") and not header:
        return kind, ""
    if kind == "header" and _TOKEN.fullmatch(header):
        return "header", header.lower()
    raise sec.error("key", f'expected "client", "path" or "header:NAME"; got {text!r}')
