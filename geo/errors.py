"""The exception tree of the geo package."""


class GeoError(Exception):
    """Base of every error raised by geo."""


class DatabaseError(GeoError):
    """A GeoIP database file is missing, unreadable or not a City database."""
