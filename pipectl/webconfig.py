"""The metrics endpoint's web configuration: TLS and basic auth, in the file format of the
Prometheus exporters (exporter-toolkit's `web-config.yml`), so operators reuse what they
know and what their Prometheus scrape configs already match:

    tls_server_config:
      cert_file: /etc/pipectl/metrics.crt
      key_file: /etc/pipectl/metrics.key
      client_auth_type: RequireAndVerifyClientCert   # optional: mutual TLS
      client_ca_file: /etc/pipectl/prometheus-ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt hash (htpasswd -nBC 10 "")

TLS is the context prometheus-client's start_http_server builds for certfile/keyfile (plus
the verify mode and TLS versions of the file); basic auth, which prometheus-client lacks, is
checked here against bcrypt hashes (BasicAuth) and applied by the agent's server.
Problems are ConfigErrors naming the file, the line and the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipectl.config import ConfigError, Problem

_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version")  # fmt: skip
_TOP_KEYS = ("tls_server_config", "basic_auth_users")
# Keys of exporter-toolkit that Python's ssl module cannot honour: refused, never ignored.
_UNSUPPORTED = {
    "cipher_suites": "Python's ssl module chooses the cipher suites",
    "curve_preferences": "Python's ssl module chooses the curves",
    "prefer_server_cipher_suites": "not configurable here",
    "client_allowed_sans": "not supported by pipectl",
    "cert": "inline certificates are not supported: use cert_file",
    "key": "inline keys are not supported: use key_file",
    "http_server_config": "not supported by pipectl",
}


@dataclass(frozen=True)
class WebConfig:
    """What the metrics server needs: optional TLS and optional users with bcrypt hashes."""

    file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    min_version: ssl.TLSVersion | None = None
    max_version: ssl.TLSVersion | None = None
    users: dict[str, bytes] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """The server context prometheus-client's start_http_server(certfile=...) builds,
        plus the verify mode and version bounds of the file."""
        if self.cert_file is None or self.key_file is None:
            raise ValueError("TLS needs cert_file and key_file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=str(self.client_ca_file))
        context.verify_mode = self.client_auth
        context.load_cert_chain(certfile=str(self.cert_file), keyfile=str(self.key_file))
        if self.min_version is not None:
            context.minimum_version = self.min_version
        if self.max_version is not None:
            context.maximum_version = self.max_version
        return context


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config file; every problem at once, as a ConfigError."""
    import yaml

    file = Path(path)
    label = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [Problem(label, None, "", f"cannot read the web config: {exc}")]
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([Problem(label, line, "", f"invalid YAML: {exc}")]) from None
    lines = _key_lines(node)
    problems: list[Problem] = []

    def problem(key: str, message: str) -> None:
        problems.append(Problem(label, lines.get(key), key, message))

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(label, 1, "", "expected a YAML mapping")])
    for key in data:
        if key not in _TOP_KEYS:
            problem(str(key), _unknown(str(key), _TOP_KEYS))
    tls = data.get("tls_server_config") or {}
    users = data.get("basic_auth_users") or {}
    settings: dict[str, Any] = {}
    if not isinstance(tls, dict):
        problem("tls_server_config", "expected a mapping")
        tls = {}
    if not isinstance(users, dict):
        problem("basic_auth_users", "expected a mapping of user names to bcrypt hashes")
        users = {}
    for key, value in tls.items():
        path = f"tls_server_config.{key}"
        if key in _UNSUPPORTED:
            problem(path, _UNSUPPORTED[key])
        elif key not in _TLS_KEYS:
            problem(path, _unknown(str(key), _TLS_KEYS))
        elif key.endswith("_file"):
            found = file.parent / str(value) if isinstance(value, str) else None
            if found is None or not found.is_file():
                problem(path, f"file {value!r} not found")
            else:
                settings[key] = found
        elif key == "client_auth_type":
            if value not in _CLIENT_AUTH:
                problem(path, f"{value!r} is not supported; use one of {', '.join(_CLIENT_AUTH)}")
            else:
                settings["client_auth"] = _CLIENT_AUTH[value]
        elif value not in _VERSIONS:
            problem(path, f"{value!r} is not one of {', '.join(_VERSIONS)}")
        else:
            settings[key] = _VERSIONS[value]
    if tls and ("cert_file" not in tls or "key_file" not in tls):
        problem("tls_server_config", "needs both cert_file and key_file")
    if settings.get("client_auth", ssl.CERT_NONE) != ssl.CERT_NONE and "client_ca_file" not in tls:
        problem("tls_server_config.client_auth_type", "needs client_ca_file to verify clients")
    hashes: dict[str, bytes] = {}
    for user, hashed in users.items():
        path = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            problem(path, "user names are non-empty text without ':'")
        elif not isinstance(hashed, str) or not _is_bcrypt(hashed):
            problem(path, "expected a bcrypt hash ($2a$, $2b$ or $2y$, as htpasswd -B makes)")
        elif not _bcrypt_usable(hashed):
            problem(path, "not a valid bcrypt hash (bad salt or length)")
        else:
            hashes[user] = hashed.encode()
    if problems:
        raise ConfigError(problems)
    config = WebConfig(file=file, users=hashes, **settings)
    if config.tls:
        try:
            config.ssl_context()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                [Problem(label, lines.get("tls_server_config"), "tls_server_config", str(exc))]
            ) from None
    return config


def _unknown(key: str, known: Iterable[str]) -> str:
    import difflib

    hint = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """`a.b` -> 1-based line of each mapping key (yaml.compose keeps positions)."""
    import yaml

    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            lines[name] = key.start_mark.line + 1
            lines.update(_key_lines(value, f"{name}."))
    return lines


def _is_bcrypt(value: str) -> bool:
    parts = value.split("$")
    return len(parts) == 4 and parts[1] in ("2a", "2b", "2y") and parts[2].isdigit()


def _bcrypt_usable(hashed: str) -> bool:
    import bcrypt

    try:
        bcrypt.checkpw(b"", hashed.encode())
    except ValueError:
        return False
    return True


def _rounds(hashed: bytes) -> int:
    """The cost factor of a bcrypt hash ($2b$12$...)."""
    parts = hashed.split(b"$")
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else 10


# The challenge of a 401: Prometheus and browsers answer it with basic credentials.
CHALLENGE = 'Basic realm="pipectl metrics", charset="UTF-8"'
# bcrypt reads at most 72 bytes (bcrypt 5 raises beyond): no configured hash matches more.
_BCRYPT_MAX_PASSWORD = 72
# Answers remembered, by keyed digest; past these sizes the memory starts over.
_MAX_VERIFIED = 1_000
_MAX_REFUSED = 10_000


@dataclass(frozen=True)
class Verification:
    """One bcrypt check: its answer and the CPU time it took (for the caller's budget)."""

    allowed: bool
    cpu_seconds: float


class BasicAuth:
    """`Authorization: Basic ...` headers checked against bcrypt hashes, in two steps:

    `known(header)` answers at once what needs no bcrypt: malformed headers, passwords bcrypt
    cannot hold, and every user+password already checked (remembered by an HMAC with a key
    of this process, never the password itself), so a scrape every few seconds and a
    client repeating one wrong password cost a digest, not a bcrypt check.
    `verify(header)` is the bcrypt check for the rest: slow on purpose (tens of ms), so the
    caller runs it off its event loop and decides how many it affords (agent/http.py).
    Unknown users cost a check against a dummy hash of the same cost, so response times do
    not tell which names exist."""

    def __init__(self, users: dict[str, bytes]) -> None:
        import bcrypt

        self.users = users
        self._bcrypt = bcrypt
        rounds = max((_rounds(h) for h in users.values()), default=10)
        self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=rounds))
        self._key = os.urandom(32)
        self._verified: set[bytes] = set()
        self._refused: set[bytes] = set()
        self._lock = threading.Lock()
        self.bcrypt_calls = 0  # checks made, their CPU time and the longest (tests, figures)
        self.bcrypt_cpu_seconds = 0.0
        self.bcrypt_cpu_max = 0.0

    def known(self, header: str) -> bool | None:
        """True or False when the answer needs no bcrypt; None when `verify` must tell."""
        credentials = self._credentials(header)
        if credentials is None:
            return False
        digest = self._digest(credentials)
        with self._lock:
            if digest in self._verified:
                return True
            if digest in self._refused:
                return False
        return None

    def verify(self, header: str) -> Verification:
        """One bcrypt check (blocking; releases the GIL while it hashes); remembered."""
        credentials = self._credentials(header)
        if credentials is None:
            return Verification(False, 0.0)
        user, _, password = credentials.partition(":")
        hashed = self.users.get(user)
        started = time.thread_time()
        matches = self._bcrypt.checkpw(password.encode(), hashed or self._dummy)
        spent = time.thread_time() - started
        allowed = matches and hashed is not None
        digest = self._digest(credentials)
        with self._lock:
            self.bcrypt_calls += 1
            self.bcrypt_cpu_seconds += spent
            self.bcrypt_cpu_max = max(self.bcrypt_cpu_max, spent)
            memory = self._verified if allowed else self._refused
            if len(memory) >= (_MAX_VERIFIED if allowed else _MAX_REFUSED):
                memory.clear()
            memory.add(digest)
        return Verification(allowed, spent)

    @staticmethod
    def _credentials(header: str) -> str | None:
        """`user:password` from a Basic header; None when malformed or beyond bcrypt."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        if not sep or len(password.encode()) > _BCRYPT_MAX_PASSWORD:
            return None
        return decoded

    def _digest(self, credentials: str) -> bytes:
        return hmac.new(self._key, credentials.encode(), hashlib.sha256).digest()
