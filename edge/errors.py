"""The exception tree of the edge package.

Everything the edge raises on purpose derives from EdgeError; library exceptions (aiohttp,
diskcache, sqlite3, brotli, zlib) are translated into these at the module boundary.
"""


class EdgeError(Exception):
    """Base of every error raised by edge."""


class ConfigError(EdgeError):
    """The edge configuration is invalid: `str()` reads `file: key: problem`."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class StoreError(EdgeError):
    """The cache store failed in a way the caller must hear about (not a plain miss)."""


class CorruptBodyError(StoreError):
    """A stored body did not match its recorded length or SHA-256; the entry was evicted."""


class CacheMetadataError(StoreError):
    """Stored entry metadata is not valid JSON of the expected shape."""


class CompressionError(EdgeError):
    """A compressor or decompressor failed, or an unknown content coding was requested."""


class OriginError(EdgeError):
    """Talking to an origin failed (connect, timeout, broken response)."""


class OriginProtocolError(OriginError):
    """An origin broke HTTP/1.1 (an unrequested 101, a status outside 100-599...); `kind`
    labels it in edge_origin_errors_total."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class OriginFailure(OriginError):
    """No origin gave a usable answer: `status` is what the client gets (502 broken or
    protocol error, 503 no healthy origin, 504 timeout), `kind` labels it in metrics."""

    def __init__(self, status: int, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.status = status
        self.kind = kind


class RequestBodyTooLarge(EdgeError):
    """The client's request body went past limits.max_body_bytes (413)."""


class ClientGone(EdgeError):
    """The client's side failed mid-exchange (connection lost, or a broken request body)."""
