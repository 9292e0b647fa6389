"""The status page served at GET / of the gslb API: one self-contained HTML document.

gslb/static/status.html holds the markup, the CSS and the script inline; the land shapes of
its world map (gslb/static/land-110m.json, Natural Earth 1:110m, see
gslb/static/build_land.py) are put into it as a JSON data block when the page is first
built. The page loads nothing else but this API's own /v1/topology, /v1/catchment and
/v1/explain, and says so to the browser: its Content-Security-Policy admits only the inline
script and style it was built with (by hash), connections to its own origin and no frames.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

__all__ = ["page"]

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@functools.cache
def page() -> tuple[bytes, str]:
    """(the page's HTML, its Content-Security-Policy header value)."""
    static = resources.files("gslb").joinpath("static")
    template = static.joinpath("status.html").read_text(encoding="utf-8")
    land = static.joinpath("land-110m.json").read_text(encoding="utf-8").strip()
    # A data block ends at the first "</script": the land file holds numbers and one
    # plain-text sentence, but make sure.
    html = template.replace("{{LAND}}", land.replace("</", "<\\/"))
    scripts = [body for tag, body in _INLINE.findall(html) if tag == "script"]
    styles = [body for tag, body in _INLINE.findall(html) if tag == "style"]
    csp = "; ".join(
        (
            "default-src 'none'",
            "script-src " + " ".join(_hash(s) for s in scripts),
            "style-src " + " ".join(_hash(s) for s in styles),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return html.encode("utf-8"), csp
