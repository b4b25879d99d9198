"""Certificate, key and CA files checked at start-up, on the side that has them (collector and agent):
each problem is one line naming the flag and the file, instead of a listen error or endless retries
later (docs/deployment.md, "TLS"). Certificates that expire within EXPIRY_WARN_DAYS, or have expired,
are warned about. Standard library only: PEM blocks, a minimal DER walk for the validity, and
`ssl` for whether a key belongs to its certificate."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import ssl

EXPIRY_WARN_DAYS = 7

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s+(.*?)-----END \1-----", re.S)


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used: the message is the one line to print."""


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsFileError(f"{flag} {path}: cannot read it: {e.strerror or e}") from None


def _blocks(data: bytes) -> list[tuple[str, bytes]]:
    """(label, DER) of every PEM block whose base64 decodes."""
    out = []
    for label, body in _PEM.findall(data):
        try:
            out.append((label.decode(), base64.b64decode(b"".join(body.split()), validate=True)))
        except (binascii.Error, ValueError):
            continue
    return out


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at i; ValueError if truncated."""
    if i + 2 > len(der):
        raise ValueError("truncated")
    tag, n = der[i], der[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or i + k > len(der):
            raise ValueError("bad length")
        n = int.from_bytes(der[i : i + k], "big")
        i += k
    if i + n > len(der):
        raise ValueError("truncated")
    return tag, i, i + n


def _time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 1950-2049 (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def validity(der: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter) of a DER X.509 certificate; ValueError when it is not one."""
    tag, start, _ = _tlv(der, 0)  # Certificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, i, end = _tlv(der, start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, _, nxt = _tlv(der, i)
    if tag == 0xA0:  # [0] version
        i = nxt
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, i = _tlv(der, i)
    tag, i, _ = _tlv(der, i)  # validity
    if tag != 0x30 or i >= end:
        raise ValueError("not a certificate")
    tag1, s1, e1 = _tlv(der, i)
    tag2, s2, e2 = _tlv(der, e1)
    return _time(tag1, der[s1:e1]), _time(tag2, der[s2:e2])


def _certificates(flag: str, path: str, what: str) -> list[tuple[dt.datetime, dt.datetime]]:
    certs = []
    for label, der in _blocks(_read(flag, path)):
        if label == "CERTIFICATE":
            try:
                certs.append(validity(der))
            except (ValueError, UnicodeDecodeError):
                raise TlsFileError(f"{flag} {path}: a CERTIFICATE block in it is not an X.509 certificate") from None
    if not certs:
        raise TlsFileError(f"{flag} {path}: no PEM {what} in it (want -----BEGIN CERTIFICATE-----)")
    return certs


def check_pair(cert_flag: str, cert: str, key_flag: str, key: str) -> None:
    """A certificate chain and its private key: both PEM, and the key is the certificate's."""
    _certificates(cert_flag, cert, "certificate")
    if not any(label.endswith("PRIVATE KEY") for label, _ in _blocks(_read(key_flag, key))):
        raise TlsFileError(f"{key_flag} {key}: no PEM private key in it (want -----BEGIN PRIVATE KEY-----)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")  # an encrypted key fails here, never prompts
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(f"{key_flag} {key} is not the private key of {cert_flag} {cert}") from None
        raise TlsFileError(
            f"{cert_flag} {cert} with {key_flag} {key}: cannot be loaded ({e.reason or e}; an encrypted key "
            "is not supported)"
        ) from None


def check_ca(flag: str, path: str) -> None:
    """A CA bundle: PEM certificates that TLS can load."""
    _certificates(flag, path, "CA certificate")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as e:
        raise TlsFileError(f"{flag} {path}: cannot be loaded as CA certificates ({e.reason or e})") from None


def expiry_warnings(flag: str, path: str, now: dt.datetime | None = None) -> list[str]:
    """One line per certificate in the file that has expired, is not valid yet, or expires within
    EXPIRY_WARN_DAYS (the file was checked already)."""
    now = now or dt.datetime.now(dt.UTC)
    out = []
    for i, (not_before, not_after) in enumerate(_certificates(flag, path, "certificate")):
        which = f"{flag} {path}" + (f" (certificate {i + 1} in it)" if i else "")
        if not_after <= now:
            out.append(f"{which} expired on {not_after:%Y-%m-%d %H:%M} UTC: TLS peers refuse it")
        elif not_before > now:
            out.append(f"{which} is not valid before {not_before:%Y-%m-%d %H:%M} UTC: TLS peers refuse it")
        elif not_after - now < dt.timedelta(days=EXPIRY_WARN_DAYS):
            out.append(
                f"{which} expires on {not_after:%Y-%m-%d %H:%M} UTC, in less than {EXPIRY_WARN_DAYS} days: renew it"
            )
    return out
