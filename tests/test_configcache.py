"""The cache of configs known to be valid (pipectl.configcache): what makes it miss, what it
never trusts, and that it keeps no secret. The verbs' side (a known config loads neither
pydantic nor the check kinds; an edited one is validated again) is in tests/test_cli_start.py."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from pipectl import configcache
from pipectl.config import validate_source
from pipectl.configfile import ConfigSource, read_source

DSN = "postgresql://alice:s3cret-pw@db.example.com:5432/apes"


def remembered(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> ConfigSource:
    """`text` as a config file, validated and remembered in tmp_path/cache."""
    path = tmp_path / "pipectl.toml"
    path.write_text(text)
    source = read_source(path, environ=env or {})
    config = validate_source(source, env or {}).config
    configcache.remember(source, config, env or {}, tmp_path / "cache")
    return source


def lookup(source: ConfigSource, tmp_path: Path, env: dict[str, str] | None = None) -> object:
    return configcache.lookup(source, env or {}, tmp_path / "cache")


def entries(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("*.json"))


def test_a_remembered_config_gives_its_connection_settings(tmp_path: Path) -> None:
    text = f'[database]\ndsn = "{DSN}"\nconnect_timeout = "3s"\napplication_name = "ops"\n'
    source = remembered(text, tmp_path)
    found = lookup(source, tmp_path)
    assert found == configcache.QuickConfig(
        configcache.DatabaseSettings(DSN, timedelta(seconds=3), "ops")
    )


def test_nothing_is_known_before_a_validation(tmp_path: Path) -> None:
    path = tmp_path / "pipectl.toml"
    path.write_text(f'[database]\ndsn = "{DSN}"\n')
    assert lookup(read_source(path, environ={}), tmp_path) is None


def test_no_secret_is_written(tmp_path: Path) -> None:
    env = {"PIPECTL_DATABASE_URL": "postgresql://bob:env-secret@h/db"}
    remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path)
    remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path, env)
    assert len(entries(tmp_path)) == 2
    for entry in entries(tmp_path):
        text = entry.read_text()
        assert "s3cret" not in text and "env-secret" not in text and "db.example" not in text


def test_the_environment_overriding_the_file_is_part_of_the_key(tmp_path: Path) -> None:
    source = remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path)
    env = {"PIPECTL_DATABASE_URL": "postgresql://bob@elsewhere/db"}
    assert lookup(source, tmp_path, env) is None
    remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path, env)
    found = lookup(source, tmp_path, env)
    assert isinstance(found, configcache.QuickConfig)
    assert found.database.dsn == "postgresql://bob@elsewhere/db"  # the environment wins
    assert lookup(source, tmp_path, {"PIPECTL_REDIS_URL": "redis://r/0"}) is None


def test_an_edited_file_or_another_pipectl_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path)
    edited = ConfigSource(source.file, source.text + "\n", source.searched)
    assert lookup(edited, tmp_path) is None
    assert lookup(source, tmp_path) is not None
    monkeypatch.setattr(configcache, "__version__", "99.0")
    assert lookup(source, tmp_path) is None


def test_a_file_the_validation_found_must_still_be_one(tmp_path: Path) -> None:
    root = tmp_path / "root.crt"
    root.write_text("not really a certificate")
    source = remembered(f'[database]\ndsn = "{DSN}?sslrootcert={root}"\n', tmp_path)
    assert lookup(source, tmp_path) is not None
    root.unlink()
    assert lookup(source, tmp_path) is None


def test_entries_others_could_write_are_not_trusted(tmp_path: Path) -> None:
    source = remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path)
    (entry,) = entries(tmp_path)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    entry.chmod(0o620)
    assert lookup(source, tmp_path) is None
    entry.chmod(0o600)
    assert lookup(source, tmp_path) is not None
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(entry, 4321, -1)
        assert lookup(source, tmp_path) is None


def test_an_entry_must_name_its_own_key(tmp_path: Path) -> None:
    """An entry copied under another config's key (or a hand-made one) is not that config's."""
    one = remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path)
    (first,) = entries(tmp_path)
    other = ConfigSource(one.file, one.text + "# edited\n", one.searched)
    key = configcache.cache_key(other, {})
    (tmp_path / "cache" / f"{key}.json").write_bytes(first.read_bytes())
    (tmp_path / "cache" / f"{key}.json").chmod(0o600)
    assert lookup(other, tmp_path) is None


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"key": 1}', b"\xff\xfe", b"{" * 5000])
def test_a_corrupt_entry_is_ignored_and_replaced(tmp_path: Path, content: bytes) -> None:
    source = remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path)
    (entry,) = entries(tmp_path)
    entry.write_bytes(content)
    assert lookup(source, tmp_path) is None
    remembered(f'[database]\ndsn = "{DSN}"\n', tmp_path)
    assert lookup(source, tmp_path) is not None


def test_a_folder_that_cannot_be_made_is_no_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = tmp_path / "pipectl.toml"
    path.write_text(f'[database]\ndsn = "{DSN}"\n')
    source = read_source(path, environ={})
    config = validate_source(source, {}).config
    configcache.remember(source, config, {}, blocker / "cache")
    assert configcache.lookup(source, {}, blocker / "cache") is None


def test_no_file_and_only_the_environment(tmp_path: Path) -> None:
    """No config file at all (the defaults and $PIPECTL_DATABASE_URL) is remembered too."""
    env = {"PIPECTL_DATABASE_URL": DSN}
    source = ConfigSource(None, "", ())
    config = validate_source(source, env).config
    configcache.remember(source, config, env, tmp_path / "cache")
    found = configcache.lookup(source, env, tmp_path / "cache")
    assert found == configcache.QuickConfig(
        configcache.DatabaseSettings(DSN, timedelta(seconds=10), "pipectl")
    )


def test_at_most_keep_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [remembered(f'[database]\ndsn = "{DSN}"\n# {n}\n', tmp_path) for n in range(5)]
    assert len(entries(tmp_path)) == 5
    for n, source in enumerate(sources):  # written in this order, whatever the clock's grain
        key = configcache.cache_key(source, {})
        os.utime(tmp_path / "cache" / f"{key}.json", ns=(n, n))
    monkeypatch.setattr(configcache, "KEEP", 3)
    remembered(f'[database]\ndsn = "{DSN}"\n# 5\n', tmp_path)
    assert len(entries(tmp_path)) == 3
    assert lookup(sources[0], tmp_path) is None


def test_the_default_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert configcache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "pipectl/config"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home/.cache/pipectl/config"
    assert configcache.cache_dir({"XDG_CACHE_HOME": "relative/path"}) == expected
    assert configcache.cache_dir({}) == expected


def test_the_folder_is_the_process_own_whatever_overrides_are_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`environ` names the variables overriding the config (bench.console passes none); where
    the cache lives follows the process's own XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "pipectl.toml"
    path.write_text(f'[database]\ndsn = "{DSN}"\n')
    source = read_source(path, environ={})
    configcache.remember(source, validate_source(source, {}).config, {})
    assert len(list((tmp_path / "xdg/pipectl/config").glob("*.json"))) == 1
    assert configcache.lookup(source, {}) is not None
