"""The config file before its models: where it is looked for, reading it, what the environment
overrides, how a problem is reported, and how a connection string is shown without its secret.

Nothing here imports pydantic or the check kinds, so a verb whose config is known valid
(pipectl.configcache) can find and read it without loading them; `pipectl.config` validates
it and re-exports these names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEARCH_PATH_ENV = "PIPECTL_CONFIG"
DATABASE_URL_ENV = "PIPECTL_DATABASE_URL"
REDIS_URL_ENV = "PIPECTL_REDIS_URL"


def default_search_paths() -> list[Path]:
    """Where a config file is looked for when neither --config nor PIPECTL_CONFIG says."""
    return [
        Path("pipectl.toml"),
        Path.home() / ".config" / "pipectl" / "config.toml",
        Path("/etc/pipectl/config.toml"),
    ]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, located as precisely as the file allows."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def find_config_file(explicit: str | os.PathLike[str] | None) -> tuple[Path | None, list[Path]]:
    """Apply the search order; an explicit or env-given file must exist."""
    if explicit is not None:
        return Path(explicit), [Path(explicit)]
    env = os.environ.get(SEARCH_PATH_ENV)
    if env:
        return Path(env), [Path(env)]
    candidates = default_search_paths()
    for candidate in candidates:
        if candidate.is_file():
            return candidate, candidates
    return None, candidates


@dataclass(frozen=True)
class ConfigSource:
    """A config as found and read: its file (None when no file was found and none was
    required: the defaults and the environment), its text, and where it was looked for."""

    file: Path | None
    text: str
    searched: tuple[Path, ...]


def read_source(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    require_file: bool = False,
) -> ConfigSource:
    """Find and read the config file (--config, $PIPECTL_CONFIG, then the search paths);
    ConfigError when a named file cannot be read, or none is found and one is required."""
    env = os.environ if environ is None else environ
    if explicit is None and env.get(SEARCH_PATH_ENV):
        explicit = env[SEARCH_PATH_ENV]
    path, searched = find_config_file(explicit)
    if path is None:
        if require_file:
            looked = ", ".join(str(p) for p in searched)
            raise ConfigError(
                [
                    Problem(
                        "pipectl",
                        None,
                        "",
                        f"no config file found (looked in {looked}); copy config.example.toml "
                        "to ./pipectl.toml or pass --config FILE",
                    )
                ]
            )
        return ConfigSource(None, "", tuple(searched))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {exc}")]) from None
    return ConfigSource(path, text, tuple(searched))


def env_overrides(
    raw: dict[str, Any], env: Mapping[str, str], origins: dict[str, str]
) -> dict[str, Any]:
    """Environment beats the file for connection settings (twelve-factor style)."""
    data = {key: value for key, value in raw.items()}
    for section, key, var in (
        ("database", "dsn", DATABASE_URL_ENV),
        ("redis", "url", REDIS_URL_ENV),
    ):
        value = env.get(var)
        if value:
            table = dict(data.get(section) or {}) if isinstance(data.get(section), dict) else {}
            table[key] = value
            data[section] = table
            origins[f"{section}.{key}"] = f"env {var}"
    database = data.get("database")
    if not (isinstance(database, dict) and "dsn" in database) and any(
        env.get(v) for v in ("PGHOST", "PGDATABASE", "PGUSER", "PGPORT", "PGSERVICE")
    ):
        origins["database.dsn"] = "libpq environment (PGHOST, PGUSER, ...)"
    return data


# libpq keywords whose values are secrets (key=value strings and URL query parameters).
SECRET_KEYWORDS = frozenset({"password", "sslpassword"})
MASK = "****"
_SECRET_QUERY = re.compile(r"(?i)(^|[?&;])((?:ssl)?password)=[^&#]*")


def mask_secret_url(value: str) -> str:
    """The connection string with every credential libpq or redis-py accepts masked: the
    password of a URL's user info, `password=` and `sslpassword=` query parameters, and the
    same keywords of a libpq key=value string (quoted or not). Masks more rather than less
    when the string cannot be parsed."""
    if "://" not in value:
        return _mask_conninfo(value)
    scheme, _, rest = value.partition("://")
    return f"{scheme}://{_mask_query(_mask_userinfo(rest))}"


def _mask_userinfo(rest: str) -> str:
    """`user:password@hosts...` -> `user:****@hosts...`. A password holding an unencoded
    '/', '?', '#' or '@' is still masked up to the last '@' that could end it."""
    authority_end = len(rest)
    for stop in "/?#":
        position = rest.find(stop)
        if position != -1:
            authority_end = min(authority_end, position)
    at = rest.rfind("@", 0, authority_end)
    if at == -1:
        colon = rest.find(":", 0, authority_end)
        later_at = rest.rfind("@")
        if colon == -1 or later_at == -1:
            return rest
        at = later_at  # 'user:pa/ss@host': the authority ended early, inside the password
    userinfo = rest[:at]
    if ":" not in userinfo:
        return rest
    return userinfo.split(":", 1)[0] + ":" + MASK + rest[at:]


def _mask_query(rest: str) -> str:
    path, question, query = rest.partition("?")
    if not question:
        return rest
    return path + "?" + _SECRET_QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}", query)


_CONNINFO_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


def _mask_conninfo(value: str) -> str:
    """A libpq key=value string: values may be single-quoted (with \\ and \\' escapes) or
    bare (backslash escapes a character). Unparseable from some point: masked from there."""
    out: list[str] = []
    position = 0
    while position < len(value):
        match = _CONNINFO_KEY.match(value, position)
        if match is None:
            if value[position:].strip():
                out.append(value[position:] if not _mentions_secret(value[position:]) else MASK)
            else:
                out.append(value[position:])
            break
        end = _value_end(value, match.end())
        out.append(match.group(0))
        secret = match.group(1).lower() in SECRET_KEYWORDS
        if end is None:  # an unterminated quote: nothing after it is safe to show
            tail = value[match.end() :]
            out.append(MASK if secret or _mentions_secret(tail) else tail)
            break
        out.append(MASK if secret else value[match.end() : end])
        position = end
    return "".join(out)


def _value_end(text: str, start: int) -> int | None:
    """Where a conninfo value starting at `start` ends (after its closing quote, or at the
    first unescaped whitespace); None when a quote never closes."""
    position = start
    if position < len(text) and text[position] == "'":
        position += 1
        while position < len(text):
            if text[position] == "\\":
                position += 2
            elif text[position] == "'":
                return position + 1
            else:
                position += 1
        return None
    while position < len(text) and not text[position].isspace():
        position += 2 if text[position] == "\\" else 1
    return min(position, len(text))


def _mentions_secret(text: str) -> bool:
    return any(keyword in text.lower() for keyword in SECRET_KEYWORDS)
