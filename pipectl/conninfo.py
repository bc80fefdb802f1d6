"""Where pipectl connects, by libpq's conventions, and how it chose.

asyncpg reads PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD and the SSL variables like libpq,
but not what this module adds: connection service files (PGSERVICE / `?service=`, searched in
PGSERVICEFILE or ~/.pg_service.conf, then PGSYSCONFDIR/pg_service.conf) and the application
name the user chose (`application_name` in the URL or the service, then PGAPPNAME), which wins
over pipectl's own names as libpq's fallback_application_name would. A service that cannot be
found, or holds a setting asyncpg cannot honour, is refused with a message: pipectl never
connects somewhere the user did not name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

DSN_ENV = "PIPECTL_DATABASE_URL"
# Settings of the libpq environment that name or reach a server (the rest tune a session).
LIBPQ_TARGET_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
# Where libpq looks for the system-wide service file when PGSYSCONFDIR is not set: its
# compiled-in sysconfdir, which is this on Debian/Ubuntu and on the PGDG RPMs.
DEFAULT_SYSCONFDIRS = (Path("/etc/postgresql-common"), Path("/etc/sysconfig/pgsql"))

# Service keywords asyncpg takes as URL query parameters, as libpq names them.
_PASSED_AS_QUERY = frozenset(
    {
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)
# Handled here rather than by asyncpg.
_HANDLED = frozenset(
    {"application_name", "fallback_application_name", "connect_timeout", "options"}
)


class ConnectionSettingsError(Exception):
    """A service or connection setting that cannot be honoured; the message says where."""


@dataclass(frozen=True)
class Service:
    name: str
    path: Path
    settings: dict[str, str]


@dataclass(frozen=True)
class Target:
    """What to hand asyncpg, and what to tell the operator about it."""

    dsn: str | None
    how: str
    application_name: str | None = None
    fallback_application_name: str | None = None
    connect_timeout: float | None = None
    server_settings: dict[str, str] = field(default_factory=dict)
    # No DSN was configured: the libpq environment (or its defaults) chose the server.
    from_environment: bool = False

    def application(self, own_name: str) -> str:
        """The session's application_name: the user's, else pipectl's own for this use."""
        return self.application_name or self.fallback_application_name or own_name


def service_files(environ: Mapping[str, str]) -> list[Path]:
    """Where libpq looks for a service, in order: the user's file, then the system one."""
    user_file = environ.get("PGSERVICEFILE")
    files = [Path(user_file)] if user_file else []
    if not user_file:
        home = environ.get("HOME") or str(Path.home())
        files.append(Path(home) / ".pg_service.conf")
    sysconf = environ.get("PGSYSCONFDIR")
    dirs = [Path(sysconf)] if sysconf else list(DEFAULT_SYSCONFDIRS)
    return files + [d / "pg_service.conf" for d in dirs]


def find_service(name: str, environ: Mapping[str, str]) -> Service:
    """The settings of service `name` from the first file (libpq's order) that defines it."""
    searched = service_files(environ)
    for path in searched:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConnectionSettingsError(
                f"cannot read service file {path}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConnectionSettingsError(f"service file {path} is not UTF-8 text") from None
        settings = _parse_service(text, name, path)
        if settings is not None:
            return Service(name, path, settings)
    where = ", ".join(str(p) for p in searched)
    raise ConnectionSettingsError(f"service {name!r} is not defined in any of: {where}")


def _parse_service(text: str, name: str, path: Path) -> dict[str, str] | None:
    """Section `name` of a pg_service.conf as libpq reads it (`key=value` lines, `#`
    comments, no quoting); None when the file has no such section."""
    settings: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if settings is not None:
                break  # the section ended
            if line.endswith("]") and line[1:-1] == name:
                settings = {}
            continue
        if settings is None:
            continue
        key, equals, value = line.partition("=")
        if not equals or not key:
            raise ConnectionSettingsError(f"{path}:{number}: expected key=value in [{name}]")
        if key.startswith("ldap"):
            raise ConnectionSettingsError(
                f"{path}:{number}: LDAP service lookups are not supported by pipectl"
            )
        if key == "service":
            raise ConnectionSettingsError(f"{path}:{number}: a service cannot name another one")
        if key not in _PASSED_AS_QUERY | _HANDLED:
            raise ConnectionSettingsError(
                f"{path}:{number}: [{name}] {key} is not supported by pipectl (supported: "
                + ", ".join(sorted(_PASSED_AS_QUERY | _HANDLED))
                + ")"
            )
        settings.setdefault(key, value)  # libpq keeps the first setting of a keyword
    return settings


def resolve_target(dsn: str | None, environ: Mapping[str, str] | None = None) -> Target:
    """The connection asyncpg should make for `dsn` (None: the libpq environment), with a
    service folded in as explicit settings, and how it was chosen."""
    env = os.environ if environ is None else environ
    if env.get("PGHOSTADDR"):
        raise ConnectionSettingsError(
            "PGHOSTADDR is not supported by pipectl (asyncpg would ignore it and connect"
            " elsewhere): name the server with PGHOST or the URL"
        )
    base = dsn or ""
    try:
        query = parse_qsl(urlsplit(base).query, keep_blank_values=True) if base else []
    except ValueError as exc:  # a bad IPv6 host, say; the message never quotes the URL
        raise ConnectionSettingsError(f"not a valid connection URL: {exc}") from None
    named_service = [value for key, value in query if key == "service"]
    service_name = named_service[-1] if named_service else env.get("PGSERVICE") or None
    service = find_service(service_name, env) if service_name else None
    settings = dict(service.settings) if service else {}
    explicit = _explicit_keywords(base) if base else set()
    kept = [(k, v) for k, v in query if k not in ("service", "application_name")]
    added = [(k, v) for k, v in settings.items() if k in _PASSED_AS_QUERY and k not in explicit]
    server_settings = _options(settings.get("options", ""), service) if service else {}
    user_app = [v for k, v in query if k == "application_name"]
    application = (
        (user_app[-1] if user_app else None)
        or settings.get("application_name")
        or env.get("PGAPPNAME")
        or None
    )
    how = _how(dsn, env, service)
    if not base and not service:
        return Target(None, how, application, from_environment=True)
    return Target(
        _with_query(base or "postgresql://", kept + added),
        how,
        application,
        settings.get("fallback_application_name") or None,
        _timeout(settings.get("connect_timeout"), service),
        server_settings,
        from_environment=not dsn,
    )


def _explicit_keywords(dsn: str) -> set[str]:
    """The libpq keywords a URL sets itself (user info, hosts, path, query)."""
    parts = urlsplit(dsn)
    found = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        found.add("user")
        if ":" in userinfo:
            found.add("password")
    if hosts:
        found.add("host")
        if any(":" in spec.rsplit("]", 1)[-1] for spec in hosts.split(",")):
            found.add("port")
    if parts.path.strip("/"):
        found.add("dbname")
    if "database" in found:
        found.add("dbname")
    return found


def _with_query(dsn: str, query: list[tuple[str, str]]) -> str:
    head, _, _ = dsn.partition("?")
    head, _, fragment = head.partition("#")
    encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    return head + (f"?{encoded}" if encoded else "") + (f"#{fragment}" if fragment else "")


def _options(text: str, service: Service) -> dict[str, str]:
    """libpq's `options` as server settings: `-c name=value` and `--name=value` only."""
    settings: dict[str, str] = {}
    words = text.split()
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            pair, index = words[index + 1], index + 2
        elif (word.startswith("-c") and len(word) > 2) or word.startswith("--"):
            pair, index = word[2:], index + 1
        else:
            raise ConnectionSettingsError(
                f"{service.path}: [{service.name}] options: only -c name=value settings are"
                f" supported by pipectl, not {word!r}"
            )
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ConnectionSettingsError(
                f"{service.path}: [{service.name}] options: expected name=value after -c"
            )
        settings[name.replace("-", "_")] = value
    return settings


def _timeout(text: str | None, service: Service | None) -> float | None:
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 86400 or seconds != seconds:
        where = f"{service.path}: [{service.name}] " if service else ""
        raise ConnectionSettingsError(f"{where}connect_timeout {text!r} is not a number of seconds")
    # libpq: 0 means wait forever, and anything under 2 s means 2 s.
    return None if seconds == 0 else max(seconds, 2.0)


def _how(dsn: str | None, env: Mapping[str, str], service: Service | None) -> str:
    """How the target was chosen, for messages such as `pipectl status`."""
    used = [v for v in LIBPQ_TARGET_ENV if env.get(v) and v != "PGSERVICE"]
    parts = []
    if dsn:
        parts.append(DSN_ENV if env.get(DSN_ENV) == dsn else "database.dsn")
    if service:
        parts.append(f"service {service.name!r} from {service.path}")
    if used:
        parts.append(", ".join(used))
    if not parts:
        return f"libpq defaults: no {DSN_ENV}, database.dsn or PG* variables"
    return "; ".join(parts)


def describe_server(address: object, database: str, user: str) -> str:
    """`host:port/dbname as user` for a connected session; a socket shows its directory."""
    if isinstance(address, str):  # a Unix socket: /dir/.s.PGSQL.5432
        directory, _, name = address.rpartition("/")
        port = name.rsplit(".", 1)[-1]
        place = f"{directory}:{port}"
    elif isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        place = f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    else:
        place = "?"
    return f"{place}/{unquote(database)} as {user}"
