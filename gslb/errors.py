"""The exception tree of the gslb package.

GslbError
├── ConfigError       a configuration file (or a zone file it names) is invalid
│   ├── ZoneError     zone data is inconsistent (raised while building a zone)
│   └── TopologyError a topology file (`gslb run`) is invalid, or cannot be run
├── ProtocolError     a DNS message cannot be answered normally (wire.py)
│   ├── ShortHeader   not even a query header: the message is dropped without a reply
│   └── FormError     malformed query: answered with FORMERR
├── ExplainError      an answer cannot be explained as asked (explain.py): a bad name,
│                     type, client or pool; `status` is the HTTP status the API answers
└── PurgeError        a fleet purge cannot be done as asked (purge.py): a bad request
"""

from __future__ import annotations


class GslbError(Exception):
    """Base of every error raised by gslb."""


class ConfigError(GslbError):
    """Invalid configuration; the message reads "FILE: KEY: PROBLEM"."""


class ZoneError(ConfigError):
    """Inconsistent zone data. `key` is the config key path of the offending entry."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class TopologyError(ConfigError):
    """An invalid topology file ("FILE: KEY: PROBLEM"), or a run it describes cannot start
    (its run directory, an address in use)."""


class ProtocolError(GslbError):
    """A DNS message that cannot be answered normally."""


class ShortHeader(ProtocolError):
    """Fewer than 12 bytes, or a response (QR=1): dropped silently."""


class FormError(ProtocolError):
    """A malformed query, answered with FORMERR.

    `question_end` is the offset just past the question when the question itself parsed
    (so the reply can echo it), else 0; `edns` tells whether an OPT record parsed before the
    problem was found (the reply then carries an OPT too) and `do` whether its DO bit was set.
    """

    def __init__(
        self, reason: str, question_end: int = 0, edns: bool = False, do: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.question_end = question_end
        self.edns = edns
        self.do = do


class ExplainError(GslbError):
    """A request to explain an answer (or draw a catchment) that cannot be served: 400 for
    bad input, 404 for a name that is no pool's."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class PurgeError(GslbError):
    """A fleet purge request that cannot be served (400: what is wrong with it)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
