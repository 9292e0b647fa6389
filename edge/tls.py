"""TLS contexts: termination with several certificates chosen by SNI, and origin verification.

Clients get TLS 1.2+ with forward-secret AEAD ciphers only (TLS 1.3 suites are fixed by
OpenSSL and all modern). The first configured certificate is the default for clients that
send no SNI or a name no certificate lists.
"""

from __future__ import annotations

import ssl

from edge.config import Certificate, TLSConfig
from edge.errors import ConfigError

MODERN_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def _context(cert: Certificate, min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MODERN_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert.cert, cert.key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(cert.cert, "tls.certificates", f"cannot load: {exc}") from None
    return ctx


def certificate_context(cert: Certificate) -> ssl.SSLContext:
    """A listening context with one certificate (the admin listener's)."""
    return _context(cert, "1.2")


def match_name(name: str, patterns: tuple[str, ...]) -> bool:
    name = name.lower().rstrip(".")
    for pattern in patterns:
        if pattern == name:
            return True
        if pattern.startswith("*.") and name.count(".") >= 1:
            if name.split(".", 1)[1] == pattern[2:]:
                return True
    return False


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The listening context; an SNI callback switches to the certificate naming the host."""
    contexts = [(_context(c, tls.min_version), c.server_names) for c in tls.certificates]
    default = contexts[0][0]

    def choose(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if not server_name:
            return
        for ctx, names in contexts:
            if match_name(server_name, names):
                sock.context = ctx
                return

    default.sni_callback = choose
    return default


def origin_context(ca_bundle: str) -> ssl.SSLContext:
    """Client context for HTTPS origins: verification on, a private CA bundle if configured."""
    ctx = ssl.create_default_context(cafile=ca_bundle or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
