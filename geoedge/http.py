"""The Server field of the answers GeoEdge's own HTTP servers make.

aiohttp names itself, its version and Python's in every response it serializes (``Server:
Python/3.11 aiohttp/3.14.5``), which tells a scanner which advisories to try. GeoEdge's
servers answer ``Server: GeoEdge`` instead, without a version, as nginx does with
``server_tokens off``. A Server field an origin sent is relayed as it came.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

SERVER = "GeoEdge"


def name_server(response: web.StreamResponse) -> None:
    """Put SERVER in place of the Server field aiohttp gave ``response`` while preparing
    it (``setdefault`` of its SERVER_SOFTWARE). That is told by identity, not equality: a
    field an origin sent, even one with aiohttp's very value, is a string of its own and is
    relayed as it came, as it is on the paths that never reach aiohttp's responses."""
    if response.headers.get("Server") is SERVER_SOFTWARE:
        response.headers["Server"] = SERVER


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """``name_server`` as an Application's on_response_prepare signal handler."""
    name_server(response)
