"""Build gslb/static/land-110m.json, the land shapes of the status page's world map.

A maintainer's tool, not used at run time. The source is Natural Earth's 1:110m land
polygons (public domain) as the npm package world-atlas 2.0.2 ships them (TopoJSON,
land-110m.json; world-atlas itself is ISC-licensed, by Mike Bostock). To rebuild:

    npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    python gslb/static/build_land.py package/land-110m.json gslb/static/land-110m.json

It decodes the TopoJSON arcs into rings of (longitude, latitude), simplifies each ring with
Douglas-Peucker at TOLERANCE degrees (a map a few hundred pixels wide loses nothing),
rounds to 0.1 degree, drops rings left with fewer than 4 points. world-atlas keeps shapes
that cross the antimeridian whole (Chukotka, Fiji), which a flat map would draw as a line
across the world: their longitudes are unwrapped to run past +-180, and a copy shifted by
360 degrees is added (the map clips both at its edges). It writes
{"source": ..., "polygons": [[ring, hole, ...], ...]} with each ring a flat list
[lon0, lat0, lon1, lat1, ...].
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TOLERANCE = 0.2  # degrees
SOURCE = (
    "Natural Earth 1:110m land (public domain, naturalearthdata.com), from the npm package "
    "world-atlas 2.0.2 (land-110m.json), simplified by gslb/static/build_land.py"
)

Point = tuple[float, float]


def decode_arcs(topo: dict[str, Any]) -> list[list[Point]]:
    """The arcs of a quantized TopoJSON topology as absolute (lon, lat) points."""
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def ring(arcs: list[list[Point]], indexes: list[int]) -> list[Point]:
    """One ring from its arc indexes (~i: arc i reversed); consecutive arcs share a point."""
    out: list[Point] = []
    for i in indexes:
        points = arcs[i] if i >= 0 else arcs[~i][::-1]
        out.extend(points if not out else points[1:])
    return out


def _segment_distance(p: Point, a: Point, b: Point) -> float:
    (px, py), (ax, ay), (bx, by) = p, a, b
    dx, dy = bx - ax, by - ay
    if dx == 0 and dy == 0:
        return float(((px - ax) ** 2 + (py - ay) ** 2) ** 0.5)
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return float(((px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2) ** 0.5)


def simplify(points: list[Point], tolerance: float) -> list[Point]:
    """Douglas-Peucker, iterative (rings can be long); keeps the first and last point."""
    if len(points) < 3:
        return list(points)
    keep = [False] * len(points)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        best, index = 0.0, 0
        for i in range(first + 1, last):
            d = _segment_distance(points[i], points[first], points[last])
            if d > best:
                best, index = d, i
        if best > tolerance:
            keep[index] = True
            stack.extend(((first, index), (index, last)))
    return [p for p, k in zip(points, keep, strict=True) if k]


def flat(points: list[Point]) -> list[float]:
    out: list[float] = []
    for lon, lat in points:
        q = (round(lon, 1), round(lat, 1))
        if len(out) >= 2 and (out[-2], out[-1]) == q:
            continue
        out.extend(q)
    return out


def unwrap(points: list[Point]) -> list[Point]:
    """`points` with longitudes shifted by multiples of 360 so that no step exceeds 180."""
    out: list[Point] = []
    for lon, lat in points:
        if out:
            prev = out[-1][0]
            while lon - prev > 180:
                lon -= 360
            while prev - lon > 180:
                lon += 360
        out.append((lon, lat))
    return out


def build(topo: dict[str, Any], tolerance: float = TOLERANCE) -> dict[str, Any]:
    arcs = decode_arcs(topo)
    polygons = []
    for geometry in topo["objects"]["land"]["geometries"]:
        kind = geometry["type"]
        parts = geometry["arcs"] if kind == "MultiPolygon" else [geometry["arcs"]]
        for polygon in parts:
            rings = [unwrap(simplify(ring(arcs, r), tolerance)) for r in polygon]
            lons = [lon for r in rings for lon, _ in r]
            copies = [0.0]
            if max(lons) > 180:
                copies.append(-360.0)
            if min(lons) < -180:
                copies.append(360.0)
            for shift in copies:
                outer, *holes = [flat([(lon + shift, lat) for lon, lat in r]) for r in rings]
                if len(outer) >= 8:  # 4 points at least, or the island is too small to draw
                    polygons.append([outer, *(h for h in holes if len(h) >= 8)])
    return {"source": SOURCE, "polygons": polygons}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    topo = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    land = build(topo)
    Path(argv[2]).write_text(json.dumps(land, separators=(",", ":")) + "\n", encoding="utf-8")
    points = sum(len(r) // 2 for p in land["polygons"] for r in p)
    print(f"{argv[2]}: {len(land['polygons'])} polygons, {points} points")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
