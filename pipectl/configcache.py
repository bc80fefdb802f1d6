"""Configs known to be valid, so that a verb that only connects starts at once.

Validating a config whole (pydantic, the models of every check kind) costs about half of the
start of `pipectl status` or `pipectl rerun`, which read nothing of it but [database]. A config
that validated is remembered by its key: a hash of the file's text, the environment variables
that override it, and the code that validated it (pipectl's version and the size and mtime of
its modules, pydantic's, the interpreter). Next time the same key skips validation; any change
of the file, of those variables or of the code misses, and the config is validated whole again,
so a broken config gives the same located errors as ever (only a valid one is remembered).

What is stored is a verdict, not the config: the key, the two [database] values a connection
needs that are no secret (connect_timeout, application_name) and the files the validation found
(sslrootcert, ...), which must still be files. The DSN is read again from the file or the
environment at every start: no password reaches the cache.

Where: `$XDG_CACHE_HOME/pipectl/config/` (default `~/.cache/pipectl/config/`), one small JSON file
per key, at most `KEEP` of them. An entry is used only if it is a regular file owned by the
user running pipectl, writable by nobody else, and holds its own key; anything else (another
user's file, a corrupt or truncated one) is ignored, and failing to write is never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import stat
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipectl import __version__
from pipectl.configfile import DATABASE_URL_ENV, REDIS_URL_ENV, ConfigSource, env_overrides

if TYPE_CHECKING:
    from pipectl.config import Config

FORMAT = 1
KEEP = 32
"""Entries kept: one per config file (and environment) in use is plenty."""
_MAX_ENTRY = 64 * 1024
_PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DatabaseSettings:
    """The [database] values a connection reads (pipectl.db.DatabaseSection)."""

    dsn: str | None
    connect_timeout: timedelta
    application_name: str


@dataclass(frozen=True)
class QuickConfig:
    """A config known to be valid, as much of it as connecting needs (pipectl.db.ConnectConfig)."""

    database: DatabaseSettings


def cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """`$XDG_CACHE_HOME/pipectl/config` (a relative XDG_CACHE_HOME is ignored, as the XDG
    spec says), else `~/.cache/pipectl/config`; None without a home directory."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            return None
    return Path(base) / "pipectl" / "config"


def cache_key(source: ConfigSource, environ: Mapping[str, str]) -> str:
    """What a verdict depends on: the text, the overriding variables, the validating code."""
    digest = hashlib.sha256()
    for part in (
        f"format {FORMAT}",
        f"pipectl {__version__}",
        sys.version,
        "file" if source.file is not None else "no file",
        *_code_fingerprint(),
        f"{DATABASE_URL_ENV}={environ.get(DATABASE_URL_ENV, '')}",
        f"{REDIS_URL_ENV}={environ.get(REDIS_URL_ENV, '')}",
        source.text,
    ):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def _code_fingerprint() -> Iterable[str]:
    """Size and mtime of pipectl's modules (an editable install changes without a new
    version) and of pydantic's, which validate."""
    for folder in (_PACKAGE, _PACKAGE / "checks"):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            yield f"{folder}: unreadable"
            continue
        for entry in entries:
            if entry.name.endswith(".py"):
                try:
                    found = entry.stat()
                except OSError:
                    continue
                yield f"{folder.name}/{entry.name} {found.st_size} {found.st_mtime_ns}"
    for package in ("pydantic", "pydantic_core"):
        spec = importlib.util.find_spec(package)
        origin = spec.origin if spec is not None else None
        try:
            module = os.stat(origin) if origin else None
        except OSError:
            module = None
        yield f"{package} {module.st_size} {module.st_mtime_ns}" if module else f"{package} -"


def lookup(
    source: ConfigSource, environ: Mapping[str, str] | None = None, folder: Path | None = None
) -> QuickConfig | None:
    """The settings of `source` if it validated before with this environment (`environ`:
    the variables overriding the file) and code; None otherwise (validate it, then
    `remember`). The cache is in `folder`, default `cache_dir()` of the process's own
    environment."""
    env = os.environ if environ is None else environ
    folder = folder or cache_dir()
    if folder is None:
        return None
    key = cache_key(source, env)
    entry = _read_entry(folder / f"{key}.json")
    if entry is None or entry.get("key") != key:
        return None
    timeout, name, files = (entry.get(k) for k in ("connect_timeout", "application_name", "files"))
    if not (
        isinstance(timeout, int | float)
        and isinstance(name, str)
        and isinstance(files, list)
        and all(isinstance(f, str) for f in files)
    ):
        return None
    if not all(Path(f).expanduser().is_file() for f in files):
        return None  # validation checked they exist: validate again, for its message
    try:
        raw = tomllib.loads(source.text) if source.file is not None else {}
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        return None
    database = env_overrides(raw, env, {}).get("database") or {}
    dsn = database.get("dsn") if isinstance(database, dict) else None
    if dsn is not None and not isinstance(dsn, str):
        return None
    return QuickConfig(DatabaseSettings(dsn, timedelta(seconds=timeout), name))


def remember(
    source: ConfigSource,
    config: Config,
    environ: Mapping[str, str] | None = None,
    folder: Path | None = None,
) -> None:
    """Record that `source` validated as `config` (with this environment and code).
    Never raises: a cache that cannot be written only costs the next start its time."""
    import tempfile  # with shutil, lzma and bz2: only when writing

    from pipectl.config import files_checked

    env = os.environ if environ is None else environ
    folder = folder or cache_dir()
    if folder is None:
        return
    entry = {
        "key": cache_key(source, env),
        "connect_timeout": config.database.connect_timeout.total_seconds(),
        "application_name": config.database.application_name,
        "files": files_checked(config),
    }
    try:
        if not _own_folder(folder):
            return
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".entry-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entry, out)
            os.replace(temporary, folder / f"{entry['key']}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _prune(folder)
    except OSError:
        pass


def _read_entry(path: Path) -> dict[str, Any] | None:
    """The entry at `path` if it is a regular file of this user's that nobody else may
    write, and readable JSON; None otherwise."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        found = os.fstat(handle)
        if (
            not stat.S_ISREG(found.st_mode)
            or found.st_uid != os.geteuid()
            or found.st_mode & 0o022
            or found.st_size > _MAX_ENTRY
        ):
            return None
        data = json.loads(os.read(handle, _MAX_ENTRY + 1))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(handle)
    return data if isinstance(data, dict) else None


def _own_folder(folder: Path) -> bool:
    """Make `folder` (private to this user) unless it or a parent that exists belongs to
    someone else (`sudo pipectl` with another user's HOME must not leave root's folders in
    it): whether entries may be written there."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            return False
        current = current.parent
    found = current.stat()
    if found.st_uid != os.geteuid() or not stat.S_ISDIR(found.st_mode):
        return False
    if not missing and found.st_mode & 0o022:
        return False  # others could replace entries (each still has to name its own key)
    for path in reversed(missing):
        path.mkdir(mode=0o700)
    return True


def _prune(folder: Path) -> None:
    """Keep the KEEP newest entries."""
    entries = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".json"):
            try:
                entries.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.path))
            except OSError:
                continue
    entries.sort(reverse=True)
    for _, path in entries[KEEP:]:
        try:
            os.unlink(path)
        except OSError:
            continue
