"""The exception tree of the edge package.

Everything the edge raises on purpose derives from EdgeError; library exceptions (aiohttp,
diskcache, sqlite3, brotli, zlib) are translated into these at the module boundary.
"""


class EdgeError(Exception):
    """Base of every error raised by edge."""


class ConfigError(EdgeError):
    """The edge configuration is invalid; the message names the file, the key and the problem."""


class StoreError(EdgeError):
    """The cache store failed in a way the caller must hear about (not a plain miss)."""


class StoreFullError(StoreError):
    """The disk (or the database) is full; the store stops caching for a while."""


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


class NoHealthyOriginError(OriginError):
    """Every origin in the pool is down."""


class ProxyError(EdgeError):
    """A request cannot be proxied; carries the HTTP status the client should get."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status
