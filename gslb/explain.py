"""Answers explained, and catchments drawn, through the real resolution and selection code.

Route 53's "test DNS answer" is the model: for a name, a type and a client (an address or a
subnet, as a resolver sends it with EDNS Client Subnet), say which edges the answer names
and why. Nothing here re-decides anything:

- the name is resolved by the zone code the DNS path uses (CNAME chains, wildcards, the
  pool narrowed to the members with an address of the type: gslb.zone);
- the client subnet is cut to /24 (/56) and located like an ECS query's (gslb.ecs), by the
  GeoIP locator the server is configured with;
- the choice and the reasons come from `gslb.selection.explain`, which runs the same view
  and per-client choice as `select` and reports the step that decided;
- the ECS scope is gslb.ecs.answer_scope, as in the reply.

`explain_answer` builds the JSON document of /v1/explain, `render` its text for
`gslb explain`; `catchment` runs `select` for the centre of every cell of a latitude and
longitude grid (the status page's catchment view). Pure apart from the locator it is given.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from geo.location import Location, Locator
from gslb.ecs import ClientSubnet, answer_scope
from gslb.errors import ExplainError
from gslb.metrics import rcode_name
from gslb.models import HealthView, Pool
from gslb.selection import Candidate, explain, select
from gslb.topology_view import pool_doc
from gslb.zone import AAAA, CNAME, PoolAnswer, RRset, Zones, name_from_text, name_to_text

__all__ = ["CATCHMENT_STEPS", "Target", "catchment", "explain_answer", "render", "target"]

RTYPES: Final = {"A": 1, "AAAA": AAAA}
# Grid cell sizes (degrees) a catchment may use: they divide 180, and 2 degrees is 16,200
# selections, the most one request may cost.
CATCHMENT_STEPS: Final = (2, 3, 4, 5, 6, 9, 10, 12, 15, 18, 20, 30)


@dataclass(frozen=True, slots=True)
class Target:
    """The pool answer a name and type resolve to."""

    qname: str  # absolute, lower case
    rtype: str  # "A" or "AAAA"
    answer: PoolAnswer  # its pool is narrowed to the members with an address of rtype
    chain: tuple[str, ...]  # the CNAMEs followed on the way, "a. CNAME b."


def target(zones: Zones, name: str, rtype: str = "A") -> Target:
    """Resolve `name` and `rtype` as a query would; raises ExplainError unless a pool
    answers it."""
    kind = rtype.upper()
    if kind not in RTYPES:
        raise ExplainError(f"type {rtype!r} is not A or AAAA")
    text = name.strip().lower()
    text = text if text.endswith(".") else text + "."
    try:
        qname = name_from_text(text)
    except ValueError as exc:
        raise ExplainError(f"{name!r} is not a domain name: {exc}") from None
    zone = zones.find(qname, RTYPES[kind])
    if zone is None:
        raise ExplainError(f"{text} is in no zone this server answers for", 404)
    res = zone.resolve(qname, RTYPES[kind])
    chain = tuple(
        f"{name_to_text(item.name)} CNAME {item.rdatas[0]}"
        for item in res.answer
        if isinstance(item, RRset) and item.rtype == CNAME
    )
    if res.pool is None:
        raise ExplainError(
            f"{text} {kind} is not answered by a pool (the zone answers it with "
            f"{len(res.answer)} RRset(s), rcode {rcode_name(res.rcode)})",
            404,
        )
    return Target(text, kind, res.pool, chain)


def client_subnet(text: str) -> ClientSubnet:
    """The ECS option for a client given as an address ("62.254.0.1": its full prefix) or
    a subnet ("62.254.0.0/16"); raises ExplainError."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ExplainError(
            f"client {text!r} is not an address or subnet such as 192.0.2.1 or 192.0.2.0/24"
        ) from None
    if net.prefixlen == 0:
        raise ExplainError(f"client {text!r}: a /0 subnet says nothing about where it is")
    return ClientSubnet.for_network(net)


def _location(where: Location | None) -> dict[str, Any] | None:
    if where is None:
        return None
    return {
        "latitude": where.latitude,
        "longitude": where.longitude,
        "country": where.country,
        "continent": where.continent,
        "network": str(where.network),
    }


def _candidate(c: Candidate) -> dict[str, Any]:
    return {
        "edge": c.edge.name,
        "status": c.status.value,
        "load": c.load,
        "distance_km": None if c.distance_km is None else round(c.distance_km, 1),
        "weight": round(c.weight, 6),
        "score": c.score,
        "rank": c.rank,
        "member": c.member,
        "note": c.note,
    }


def explain_answer(
    zones: Zones, locator: Locator, health: HealthView, name: str, client: str, rtype: str = "A"
) -> dict[str, Any]:
    """The /v1/explain document (see the module docstring); raises ExplainError."""
    t = target(zones, name, rtype)
    ecs = client_subnet(client)
    address = ecs.lookup_address()  # what an ECS query with this subnet locates
    where = locator.locate(address)
    pool = t.answer.pool
    exp = explain(pool, where, health)
    v6 = t.rtype == "AAAA"
    answer = []
    for e in exp.selection.edges:
        addr = e.ipv6 if v6 else e.ipv4
        if addr is not None:
            answer.append({"edge": e.name, "address": str(addr)})
    return {
        "name": t.qname,
        "type": t.rtype,
        "via": list(t.chain),
        "client": ecs.text(),
        "located": {"address": str(address), "location": _location(where)},
        "ecs_scope": answer_scope(ecs, where, exp.selection.tailored),
        "tailored": exp.selection.tailored,
        "pool": pool_doc(pool),
        "step": exp.step.value,
        "reason": exp.reason,
        "answer": answer,
        "ttl": t.answer.ttl,
        "candidates": [_candidate(c) for c in exp.candidates],
        "health_version": health.version,
    }


def render(doc: Mapping[str, Any]) -> str:
    """`gslb explain`'s text for an /v1/explain document."""
    pool = doc["pool"]
    located = doc["located"]
    loc = located["location"]
    lines = [f"{doc['name']} {doc['type']} for client {doc['client']}"]
    lines.extend(f"  via {hop}" for hop in doc["via"])
    if loc is None:
        lines.append(f"  located: {located['address']} -> unknown to the GeoIP database")
    else:
        place = ", ".join(x for x in (loc["country"], loc["continent"]) if x)
        lines.append(
            f"  located: {located['address']} -> {loc['latitude']:.2f}, {loc['longitude']:.2f}"
            f"{f' ({place})' if place else ''}, network {loc['network']}"
        )
    lines.append(f"  ECS scope: /{doc['ecs_scope']}")
    fallback = pool["fallback"] if pool["fallback"] == "all" else ", ".join(pool["fallback"])
    lines.append(
        f"  pool {pool['name']}: policy {pool['policy']}, {pool['answers']} answer(s), "
        f"TTL {doc['ttl']}, load_threshold {pool['load_threshold']:g}, "
        f"hysteresis {pool['hysteresis']:g}, fallback {fallback}"
    )
    named = ", ".join(f"{a['edge']} {a['address']}" for a in doc["answer"]) or "(no address)"
    lines.append(f"  answer: {named}")
    lines.append(f"  decided by: {doc['step']}: {doc['reason']}")
    lines.append("")
    rows = [("edge", "status", "load", "distance", "weight", "note")]
    for c in doc["candidates"]:
        dist = "-" if c["distance_km"] is None else f"{c['distance_km']:.0f} km"
        rows.append(
            (c["edge"], c["status"], f"{c['load']:.2f}", dist, f"{c['weight']:.3g}", c["note"])
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [r[i].rjust(widths[i]) for i in (2, 3, 4)]
        lines.append("  " + "  ".join([*cells, r[5]]))
    return "\n".join(lines)


def _stand_in(cell: int) -> ipaddress.IPv4Network:
    """A network of its own for each grid cell (10.0.0.0/8 /24s): weighted pools hash the
    client network, so each cell shows what one network there would get."""
    return ipaddress.IPv4Network(((10 << 24) | (cell << 8), 24))


def catchment(pool: Pool, health: HealthView, step: int = 5) -> dict[str, Any]:
    """The first edge `select` names for a client at the centre of each `step`-degree cell:
    {"rows": [[edge index, ...] per row from the south], "edges": [name, ...], ...}."""
    if step not in CATCHMENT_STEPS:
        allowed = ", ".join(str(s) for s in CATCHMENT_STEPS)
        raise ExplainError(f"step must be one of {allowed} (degrees), not {step!r}")
    rows, cols = 180 // step, 360 // step
    index: dict[str, int] = {}
    grid = []
    tailored = False
    for r in range(rows):
        lat = -90.0 + (r + 0.5) * step
        row = []
        for c in range(cols):
            lon = -180.0 + (c + 0.5) * step
            where = Location(lat, lon, None, None, _stand_in(r * cols + c))
            sel = select(pool, where, health)
            tailored = tailored or sel.tailored
            first = sel.edges[0].name
            row.append(index.setdefault(first, len(index)))
        grid.append(row)
    return {
        "pool": pool.name,
        "policy": pool.policy.value,
        "step": step,
        "south": -90,
        "west": -180,
        "tailored": tailored,
        "edges": list(index),
        "rows": grid,
        "health_version": health.version,
    }
