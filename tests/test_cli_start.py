"""The CLI starts at once because each verb imports only what it needs (docs/DEVELOPING.md,
"A CLI that starts at once"). These tests guard that structure, never a time: `pipectl --help`
loads none of the heavy packages, `status` and `rerun` none they do not use, and
`pipectl.cli.VERBS` (what `--help` lists without importing a verb's module) matches what the
modules register. Timings are figures in bench/RESULTS.md (`python -m bench.cli_start`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from pipectl.cli import VERBS, _verb_of, build_parser, main, parser_for, verb_module
from tests.test_cli_ops import add_state

REPO = Path(__file__).resolve().parents[1]

# Packages that cost a tenth of a second or more to import on this machine.
HEAVY = ("asyncpg", "pydantic", "rich", "redis", "opentelemetry", "textual", "psutil")

# Runs `pipectl ARGS` in a fresh interpreter, then reports which heavy packages were loaded.
PROBE = """
import json, sys
from pipectl.cli import main
code = main(sys.argv[1:])
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
cli = sorted(m for m in sys.modules if m.startswith("pipectl.cli."))
modules = sorted(m for m in sys.modules if m in MODULES)
found = {"code": code, "heavy": loaded, "cli": cli, "modules": modules}
print("LOADED " + json.dumps(found), file=sys.stderr)
"""


@dataclass(frozen=True)
class Loaded:
    code: int
    heavy: list[str]
    """The heavy packages loaded."""
    cli: list[str]
    """The pipectl.cli modules loaded."""
    modules: list[str]
    """Which of the modules asked about were loaded."""


def loaded_by(
    *args: str, env: dict[str, str] | None = None, modules: tuple[str, ...] = ()
) -> Loaded:
    """What `pipectl ARGS` loaded, and its exit code."""
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\nMODULES = {modules!r}\n{PROBE}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    line = next((x for x in done.stderr.splitlines() if x.startswith("LOADED ")), None)
    assert line is not None, done.stderr
    return Loaded(**json.loads(line.removeprefix("LOADED ")))


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_load_no_heavy_package(args: list[str]) -> None:
    found = loaded_by(*args)
    assert found.code == 0
    assert found.heavy == []
    assert found.cli == ["pipectl.cli.common"]


def test_an_unknown_verb_is_refused_with_every_choice_listed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipectl", "statsu"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "invalid choice: 'statsu' (did you mean 'status'?); choose from " in done.stderr
    assert all(f"'{verb}'" in done.stderr for verb in VERBS)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_verb_imports_only_its_own_module(verb: str) -> None:
    """`pipectl VERB --help` imports VERB's module and no other verb's."""
    found = loaded_by(verb, "--help")
    assert found.code == 0
    own = f"pipectl.cli.{VERBS[verb][0]}"
    verbs = {f"pipectl.cli.{module}" for module, _ in VERBS.values()}
    assert own in found.cli
    assert set(found.cli) & verbs == {own}


async def test_status_and_rerun_load_asyncpg_and_rich_only_once_the_config_is_known(
    tmp_path: Path, database: str
) -> None:
    """The read and request verbs need asyncpg (the database) and rich (the output). The
    first start validates the config whole (pydantic, every check kind) and remembers it
    (pipectl.configcache); later starts with the same file and environment load neither
    pydantic nor the check kinds, nor redis (which loads OpenTelemetry's SDK), the SDK itself
    (no OTEL_* variable set) or Textual. A request's arguments are no pydantic models."""
    db = await asyncpg.connect(database)
    try:
        await add_state(db, "ok")
    finally:
        await db.close()
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    first = await asyncio.to_thread(
        loaded_by, "status", "--config", str(config), env=env, modules=("pipectl.checks",)
    )
    assert first.code == 0
    assert {"asyncpg", "pydantic", "rich"} <= set(first.heavy)
    assert first.modules == ["pipectl.checks"]
    for args, expected in [
        (["status"], 0),
        (["status", "--json"], 0),
        (["history"], 0),
        (["history", "--requests", "--json"], 0),
        (["rerun", "s1"], 0),
        (["rerun", "s1", "--json"], 0),
        (["pause", "s1", "--reason", "test"], 0),
        (["silence", "c1", "--for", "1h"], 0),
        # Filed, then nobody takes it (no agent): exit 3 once the wait is over.
        (["rerun", "s1", "--wait", "--timeout", "0.2"], 3),
        (["lineage"], 0),
        (["why", "c1"], 0),
    ]:
        found = await asyncio.to_thread(
            loaded_by,
            *args,
            "--config",
            str(config),
            env=env,
            modules=("pipectl.checks", "pipectl.config"),
        )
        assert found.code == expected, args
        assert set(found.heavy) == {"asyncpg", "rich"}, args
        assert "pipectl.checks" not in found.modules, args
        assert "pipectl.config" not in found.modules, args


async def test_a_config_changed_after_it_was_known_is_validated_again(
    tmp_path: Path, database: str
) -> None:
    """A config file edited into a broken one gives the located error of a full validation,
    whatever the verb, even though its valid form was remembered."""
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n')
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert (
        await asyncio.to_thread(loaded_by, "status", "--config", str(config), env=env)
    ).code == 0
    config.write_text(
        f'[database]\ndsn = "{database}"\n\n[[checks]]\nname = "x"\nkind = "volume"\n'
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipectl", "status", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert f"{config}:4: checks.x.table: required key is missing" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def test_check_loads_rich_tables_only_to_print_them(tmp_path: Path, database: str) -> None:
    """`pipectl check` imports rich's tables when it prints them, after its probes; `--json`
    prints without them (rich itself may load for a note)."""
    db = await asyncpg.connect(database)
    try:
        await db.execute("CREATE TABLE public.starts (n int); INSERT INTO public.starts VALUES (1)")
    finally:
        await db.close()
    config = tmp_path / "pipectl.toml"
    config.write_text(
        f'[database]\ndsn = "{database}"\n\n[[checks]]\nname = "n_present"\nkind = "quality"\n'
        'table = "public.starts"\nrule = { type = "not_null", column = "n" }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    as_json = await asyncio.to_thread(
        loaded_by, "check", "--json", "--config", str(config), env=env, modules=("rich.table",)
    )
    assert as_json.code == 0
    assert as_json.modules == []
    printed = await asyncio.to_thread(
        loaded_by, "check", "--config", str(config), env=env, modules=("rich.table",)
    )
    assert printed.code == 0
    assert "rich" in printed.heavy
    assert printed.modules == ["rich.table"]


def test_fault_list_loads_only_rich() -> None:
    """The faults' table is static: listing it needs neither the simulator's engine nor
    Redis, asyncpg, psutil or the config (importing a simulator module no longer imports the
    whole simulator package)."""
    found = loaded_by("fault", "list")
    assert found.code == 0
    assert found.heavy == ["rich"]
    assert found.cli == ["pipectl.cli.common", "pipectl.cli.demo_fault_cmd"]


def test_the_verb_table_matches_what_the_modules_register() -> None:
    """VERBS lists every verb in `--help` order with its module and help line: a new verb
    goes there too (until then it works, but `--help` does not list it)."""
    registered: list[tuple[str, str, str]] = []
    for module in dict.fromkeys(module for module, _ in VERBS.values()):
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        verb_module(module).register(subparsers)
        registered += [(a.dest, module, a.help or "") for a in subparsers._choices_actions]
    listed = [(verb, module, text) for verb, (module, text) in VERBS.items()]
    assert sorted(listed) == sorted(registered)
    eager = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert [(a.dest, a.help) for a in eager._choices_actions] == [
        (verb, text) for verb, (_, text) in VERBS.items()
    ]


def test_lazy_help_is_the_full_parsers_help() -> None:
    assert build_parser(verbs=()).format_help() == build_parser().format_help()


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["status"], "status"),
        (["-c", "status", "rerun", "x"], "rerun"),
        (["--config", "history", "status"], "status"),
        (["--config=rerun", "status", "--json"], "status"),
        (["-cstatus", "--read-only"], None),
        (["--read-only"], None),
        ([], None),
        (["config", "check"], "config"),
        (["--conf", "status", "check", "--json"], "check"),
        (["--re", "status"], "status"),
    ],
)
def test_the_verb_is_found_past_the_top_level_options(argv: list[str], verb: str | None) -> None:
    assert _verb_of(build_parser(verbs=()), argv) == verb


def test_an_abbreviated_option_before_the_verb_still_parses() -> None:
    args = parser_for(["--conf", "status", "check", "--json"]).parse_args(
        ["--conf", "status", "check", "--json"]
    )
    assert (args.config, args.verb, args.json) == ("status", "check", True)
    assert callable(args.handler)


FAILING = """
import sys
import pipectl.cli as cli
from pipectl.cli.common import CliError

def failing(args):
    raise {error}

cli.run_handler = failing
code = cli.main([])  # the console's verb: it imports neither asyncpg nor pydantic
print("asyncpg loaded" if "asyncpg" in sys.modules else "asyncpg not loaded")
sys.exit(code)
"""


@pytest.mark.parametrize(
    ("error", "code", "message", "lean"),
    [
        ('CliError("refused", exit_code=3)', 3, "pipectl: refused", True),
        # Describing a lost connection uses pipectl.resilience, which imports asyncpg.
        ('ConnectionResetError("reset by peer")', 3, "lost the connection", False),
        ("KeyboardInterrupt()", 130, "pipectl: interrupted", True),
    ],
)
def test_expected_failures_of_a_verb_without_asyncpg_are_messages(
    error: str, code: int, message: str, lean: bool
) -> None:
    """main() matches asyncpg's and pydantic's exception classes only once a verb imported
    them; failures before that are still one message and their exit code, no traceback."""
    done = subprocess.run(
        [sys.executable, "-c", FAILING.format(error=error)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if lean:
        assert done.stdout.strip() == "asyncpg not loaded"


def test_an_unexpected_error_is_not_swallowed() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FAILING.format(error='ValueError("bug")')],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "ValueError: bug" in done.stderr


def _loaded_by_console_import(selector: str) -> list[str]:
    """The modules that `import pipectl.console.app` loads, of those `selector` (a Python
    expression of the module's name `m`) picks, sorted."""
    probe = (
        "import sys, json, pipectl.console.app\n"
        f"print(json.dumps(sorted(m for m in sys.modules if {selector})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return list(json.loads(done.stdout))


def test_the_console_imports_no_pydantic_and_no_check_kind() -> None:
    """The console reads only [database] (a known config: pipectl.configcache) and the cache
    floors (pipectl.cache_floors): its app loads neither pydantic, the config's models nor a
    check kind (importing any of which registers them all)."""
    loaded = _loaded_by_console_import(
        "m.split('.')[0] == 'pydantic' or m.startswith(('pipectl.checks', 'pipectl.config'))"
    )
    assert loaded == ["pipectl.configfile"]


def test_the_console_imports_only_the_screen_it_opens_with() -> None:
    """The Overview is the first screen; the others load when first shown (their switching
    is tested in tests/console/test_screens.py)."""
    loaded = set(_loaded_by_console_import("m.startswith('pipectl.console.screens.')"))
    assert "pipectl.console.screens.overview" in loaded
    later = {"checks", "cache", "timeline", "requests", "schema"}
    assert not {f"pipectl.console.screens.{name}" for name in later} & loaded


def collector_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The calls made to gc.freeze and gc.disable from now on (they then do nothing). Not
    gc.get_freeze_count(): objects another test froze may be freed meanwhile, and the count
    of frozen objects then falls with no freeze at all."""
    calls: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "disable", lambda: calls.append("disable"))
    return calls


def test_only_the_command_leaves_its_objects_to_the_operating_system(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pipectl` (main() without arguments, then the process ends) freezes the collector so
    the interpreter's teardown skips the objects the imports made; main(argv), the verbs run
    in-process (by these tests too), leaves the collector alone."""
    calls = collector_calls(monkeypatch)
    assert main(["--version"]) == 0
    assert calls == []
    probe = (
        "import gc, sys\n"
        "from pipectl.cli import main\n"
        "sys.argv = ['pipectl', '--version']\n"
        "code = main()\n"
        "print(code, gc.get_freeze_count() > 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.split()[-2:] == ["0", "True"]


# Runs `pipectl --config FILE config show` as the command, and reports the collections made
# inside its start-up blocks (the verb module's import, the config's validation), how many
# blocks ran, and the collector once the config is loaded.
START_UP_PROBE = """
import gc, json, sys
from contextlib import contextmanager
import pipectl.cli as cli
import pipectl.cli.common as common

inside = []
seen = {"blocks": 0, "collected_in_start_up": 0}

def collection(phase, info):
    if phase == "start" and inside:
        seen["collected_in_start_up"] += 1

gc.callbacks.append(collection)
original_start_up = common.start_up

@contextmanager
def start_up():
    seen["blocks"] += 1
    inside.append(1)
    try:
        with original_start_up():
            yield
    finally:
        inside.pop()

cli.start_up = common.start_up = start_up
original_load = common.load

def load(*args, **kwargs):
    loaded = original_load(*args, **kwargs)
    seen["collecting_after"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count() > 0
    return loaded

common.load = load
sys.argv = ["pipectl", "--config", sys.argv[1], "config", "show"]
code = cli.main()
print("SEEN " + json.dumps({"code": code, **seen}))
"""


def test_start_up_runs_without_the_collector_and_the_verb_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's start-up (the verb's imports, its validated config) makes objects that
    live to the end: collecting while they are made finds nothing to free. It runs with the
    collector off, freezes what it made, and turns the collector on again for the verb (the
    agent and the console collect as usual); the verbs run in-process leave it alone."""
    config = tmp_path / "pipectl.toml"
    config.write_text('[database]\ndsn = "postgresql://localhost/apes"\n')
    done = subprocess.run(
        [sys.executable, "-c", START_UP_PROBE, str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(done.stdout.split("SEEN ", 1)[1])
    assert seen == {
        "code": 0,
        "blocks": 2,
        "collected_in_start_up": 0,
        "collecting_after": True,
        "frozen": True,
    }
    calls = collector_calls(monkeypatch)
    assert main(["--config", str(config), "config", "show"]) == 0
    assert calls == []
    assert gc.isenabled()


@pytest.mark.parametrize(("set_by_user", "expected"), [(None, "__all__"), ("", "")])
def test_the_command_asks_pydantic_not_to_look_for_plugins(
    set_by_user: str | None, expected: str
) -> None:
    """pydantic scans every installed distribution's entry points for plugins when it builds
    its first model; pipectl uses none, so the command turns the scan off, unless the user
    set PYDANTIC_DISABLE_PLUGINS (here: to enable them all)."""
    probe = (
        "import os, sys\n"
        "from pipectl.cli import main\n"
        "sys.argv = ['pipectl', '--version']\n"
        "main()\n"
        "print(repr(os.environ.get('PYDANTIC_DISABLE_PLUGINS')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if set_by_user is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = set_by_user
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.split()[-1] == repr(expected)
