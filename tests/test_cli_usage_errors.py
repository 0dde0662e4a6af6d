"""Every mistake at the command line ends in a short message and exit code 2, never a traceback.

- Usage errors are generated from the typer app's own command list: every verb is called with an
  option it does not have, and every required argument / option of every verb is left out once,
  so a new verb is checked without anyone writing a test for it.
- The mistakes seen in issue 21, as users typed them (the real `mage-dbt` console script).
- File-system errors: an output path that cannot be written, a full disk, a read-only data folder:
  one line naming the path, exit 2, nothing half-written, no flow run.
- The git sync flow with wrong credentials logs git's `fatal:` line, not a traceback.
- A dry run of a million hourly intervals answers at once with a summary.

Usage errors fail before any command code runs, so no case needs dbt or Prefect; they run the
console script in a throwaway folder whose contents are compared before and after.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from mage_dbt.cli.typer_app import app
from tests.conftest import REPO, cli, copy_project

BIN = Path(sys.executable).parent


# --- the verbs, from the app itself -----------------------------------------------------------------


def _commands(group=None, path: tuple[str, ...] = ()):
    """(argv prefix, click command) for every verb, descending into sub-groups."""
    group = group if group is not None else typer.main.get_command(app)
    for name, command in sorted(group.commands.items()):
        if getattr(command, "hidden", False):
            continue
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = list(_commands())
VERBS = {" ".join(path): command for path, command in COMMANDS}


def _sample_value(param) -> str:
    """A value `param` accepts, so a case fails on what it leaves out rather than on a bad value."""
    kind = getattr(param, "type", None)  # click's parameter type (typer before 0.2x, plain click)
    descriptor = getattr(param, "type_descriptor", None)  # typer's own
    choices = getattr(kind, "choices", None) or getattr(descriptor, "choices", None)
    if choices:
        return str(list(choices)[0])
    if getattr(descriptor, "annotation", None) in (int, float) or getattr(kind, "name", "") in ("integer", "float"):
        return "1"
    return "sample"


def _missing_cases():
    """(verb, argv, what the error must name) leaving out each required parameter once."""
    for path, command in COMMANDS:
        required = [p for p in command.params if p.required]
        arguments = [p for p in required if p.param_type_name == "argument"]
        options = [p for p in required if p.param_type_name == "option"]
        given_options = [token for o in options for token in (o.opts[0], _sample_value(o))]
        for index, argument in enumerate(arguments):  # positional: leave out this one and those after it
            argv = [*path, *(_sample_value(a) for a in arguments[:index]), *given_options]
            yield " ".join(path), argv, ("argument", argument.name)
        for option in options:
            rest = [token for o in options if o is not option for token in (o.opts[0], _sample_value(o))]
            argv = [*path, *(_sample_value(a) for a in arguments), *rest]
            yield " ".join(path), argv, ("option", option.opts[0])


MISSING = list(_missing_cases())


def test_the_command_list_is_really_read():
    assert {"run", "backfill", "output", "graph", "rebuild", "full-refresh", "sync", "init"} <= set(VERBS)
    assert ("run", ("argument", "pipeline")) in [(verb, named) for verb, _, named in MISSING]
    assert ("run", ("option", "--execution-date")) in [(verb, named) for verb, _, named in MISSING]


# --- running the console script -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A demo project that no case may change (usage errors fail before any command code runs)."""
    return copy_project(tmp_path_factory.mktemp("usage") / "project")


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _usage_error(result, verb: str) -> str:
    """Click's usage line, its hint line and one `Error:` line on stderr; exit 2; returns the error line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert result.stdout == "", result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"Usage: mage-dbt {verb}".rstrip()), result.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    assert len(lines) <= 4, result.stderr  # usage, "Try 'mage-dbt ... --help'", error
    return errors[0]


def _one_error_line(result) -> str:
    """Our own errors: exactly one `error: <what> — <fix>` line on stderr, exit 2, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], result.stderr
    return lines[0]


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_refuses_an_unknown_option_in_one_line(folder, verb):
    before = _tree(folder)
    error = _usage_error(cli(folder, *verb.split(), "--no-such-flag"), verb)
    assert error == "Error: No such option: --no-such-flag", error
    assert _tree(folder) == before


@pytest.mark.parametrize("verb, argv, named", MISSING, ids=[f"{v}-{n[1]}" for v, _, n in MISSING])
def test_every_required_parameter_left_out_is_named(folder, verb, argv, named):
    before = _tree(folder)
    error = _usage_error(cli(folder, *argv), verb)
    kind, name = named
    assert error.startswith(f"Error: Missing {kind} ") and name.lower() in error.lower(), error
    assert _tree(folder) == before


# --- the mistakes of issue 21, as typed ------------------------------------------------------------------

SEEN = {
    "unknown option": (["run", "demo", "-d", "2024-02-01", "--bogus"], "run", "No such option: --bogus"),
    "no pipeline": (["run"], "run", "Missing argument 'pipeline'"),
    "no date": (["run", "demo"], "run", "Missing option '--execution-date'"),
    "unknown verb": (["frobnicate"], "", "No such command 'frobnicate'"),
    "negative rows": (["output", "demo", "BLOCK", "--rows", "-1"], "output",
                      "Invalid value for '--rows' / '-n': Input should be greater than or equal to 0"),
    "rows not a number": (["output", "demo", "BLOCK", "--rows", "x"], "output",
                          "Invalid value for '--rows' / '-n': Input should be a valid integer"),
    "concurrency not a number": (["backfill", "demo", "--start", "2024-01-01", "--end", "2024-01-02",
                                  "--concurrency", "x"], "backfill", "Invalid value for '--concurrency'"),
    "an option of another verb": (["rebuild", "demo", "--select", "fct_orders", "--start", "2024-01-01",
                                   "--end", "2024-01-02", "--include-snapshots"], "rebuild",
                                  "No such option: --include-snapshots"),
    "a near miss suggests the option": (["run", "demo", "-d", "2024-02-01", "--selct", "x"], "run",
                    ("No such option: --selct (Possible options:", "--select)")),
}


@pytest.mark.parametrize("case", sorted(SEEN))
def test_seen_usage_mistakes(folder, case):
    argv, verb, expected = SEEN[case]
    before = _tree(folder)
    error = _usage_error(cli(folder, *argv), verb)
    for fragment in (expected,) if isinstance(expected, str) else expected:
        assert fragment in error, error
    assert _tree(folder) == before


def test_mage_dbt_alone_prints_the_help_and_exits_0(folder):
    result = cli(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "" and "Traceback" not in result.stdout
    assert "Usage: mage-dbt" in result.stdout
    for verb in ("run", "backfill", "full-refresh", "sync"):
        assert f" {verb} " in result.stdout, result.stdout


# --- file-system errors ----------------------------------------------------------------------------------


@pytest.fixture
def solo(tmp_path) -> Path:
    """A project whose pipeline `solo` is one Python block: no dbt parse, so file-system cases are cheap."""
    project = tmp_path / "solo_project"
    project.mkdir()
    for name in ("mage_dbt.yaml", "profiles.yml"):
        shutil.copy2(REPO / name, project / name)
    (project / "flows" / "solo").mkdir(parents=True)
    (project / "flows" / "solo.yaml").write_text("description: one Python block\nblocks:\n"
                                                 "  - name: hello\n    type: python\n")
    (project / "flows" / "solo" / "hello.py").write_text(
        "from mage_dbt import data_loader\n\n\n@data_loader\ndef hello(**kwargs):\n    return {'hello': 1}\n")
    return project


def test_graph_to_a_path_that_cannot_be_written(solo):
    error = _one_error_line(cli(solo, "graph", "solo", "-o", "/proc/dag.svg"))
    assert error.startswith("error: cannot write /proc/dag.svg: No such file or directory — "), error
    assert "choose another path" in error
    assert not Path("/proc/dag.svg").exists()

    folder = solo / "pictures"
    folder.mkdir()
    (folder / "dag.svg").mkdir()  # a folder where the picture should go
    error = _one_error_line(cli(solo, "graph", "solo", "-o", str(folder / "dag.svg")))
    assert f"cannot write {folder / 'dag.svg'}: Is a directory" in error, error
    assert sorted(p.name for p in folder.iterdir()) == ["dag.svg"]  # no temporary file left behind

    written = cli(solo, "graph", "solo", "-o", str(folder / "ok.svg"))
    assert written.returncode == 0 and (folder / "ok.svg").read_text().startswith("<svg"), written.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_graph_on_a_full_disk(solo):
    full = solo / "full.svg"
    full.symlink_to("/dev/full")  # every write to it fails with ENOSPC, like a full disk
    error = _one_error_line(cli(solo, "graph", "solo", "-o", str(full)))
    assert error.startswith(f"error: cannot write {full}: No space left on device — the disk is full"), error
    assert full.is_symlink() and os.readlink(full) == "/dev/full"  # the device was written, never replaced
    assert [p.name for p in solo.iterdir() if p.name.startswith(".full.svg")] == []


def test_debug_env_shows_the_traceback_above_the_same_line(solo):
    result = cli(solo, "graph", "solo", "-o", "/proc/dag.svg", env={"MAGE_DBT_DEBUG": "1"})
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "FileNotFoundError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write /proc/dag.svg")


def _read_only(folder: Path) -> tuple[list[str], callable]:
    """A command prefix under which `folder` is read-only, and a function that undoes it.

    Root ignores permissions, so as root the folder is bind-mounted read-only in a private mount
    namespace of the command alone; as another user its write permission is removed."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        return [], lambda: folder.chmod(mode)
    if not shutil.which("unshare"):
        pytest.skip("running as root without unshare: cannot make a folder read-only")
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a read-only folder here: {probe.stderr.decode()[-300:]}")
    return ["unshare", "-m", "sh", "-c", script, str(folder)], lambda: None


def _cli_under(prefix: list[str], project: Path, *args: str, env: dict | None = None):
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("MAGE_DBT_DATA_DIR", None)
    return subprocess.run([*prefix, str(BIN / "mage-dbt"), *args], cwd=project, env=full_env,
                          capture_output=True, text=True, timeout=300)


def _flow_runs_named(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


@pytest.mark.parametrize("where", [".mage_dbt", ".mage_dbt/outputs"])
def test_run_with_a_read_only_data_folder_stops_before_any_flow_run(solo, where):
    data = solo / ".mage_dbt"
    (data / "outputs").mkdir(parents=True)
    (data / "outputs" / "kept.txt").write_text("from an earlier run\n")
    before = _tree(data)
    prefix, undo = _read_only(solo / where)
    try:
        result = _cli_under(prefix, solo, "run", "solo", "-d", "2031-07-19")
    finally:
        undo()
    error = _one_error_line(result)
    assert f"cannot write to {solo / where}: " in error, error
    if os.geteuid() == 0:  # a read-only mount
        assert "Read-only file system — that file system is mounted read-only" in error, error
    else:
        assert f"Permission denied — give this user write access to {solo / where}" in error, error
    assert "the data folder is data_dir in mage_dbt.yaml" in error, error
    assert _tree(data) == before
    assert _flow_runs_named("solo-2031-07-19") == []


def test_run_on_a_full_data_folder_stops_before_any_flow_run(solo):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("mounting a small tmpfs needs root")
    (solo / ".mage_dbt").mkdir()
    script = ('mount -t tmpfs -o size=64k tmpfs "$0" && (dd if=/dev/zero of="$0/filler" bs=4k count=64 '
              '2>/dev/null; true) && exec "$@"')
    result = _cli_under(["unshare", "-m", "sh", "-c", script, str(solo / ".mage_dbt")], solo,
                        "run", "solo", "-d", "2031-07-20")
    if "mount:" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr[-300:]}")
    error = _one_error_line(result)
    assert f"cannot write to {solo / '.mage_dbt'}: No space left on device — the disk is full" in error, error
    assert _flow_runs_named("solo-2031-07-20") == []


def test_file_system_errors_name_the_target_and_keep_bugs_visible(tmp_path):
    from mage_dbt.errors import FileSystemError
    from mage_dbt.files import replacing, write_atomically

    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(FileSystemError) as caught:
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert caught.value.path == str(target) and str(tmp) not in caught.value.one_line()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(ZeroDivisionError):  # not a file-system problem: unchanged, still cleaned up
        with replacing(target) as tmp:
            tmp.write_text("half")
            1 / 0
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert write_atomically(target, "new") == target and target.read_text() == "new"

    assert FileSystemError.from_os_error(OSError(errno.ECONNREFUSED, "Connection refused", "/x")) is None
    assert FileSystemError.from_os_error(PermissionError(errno.EACCES, "Permission denied")) is None


# --- git sync flow ---------------------------------------------------------------------------------------


def test_sync_flow_with_wrong_credentials_logs_gits_fatal_line(solo, tmp_path, git_home, git_http_server, http_token):
    from tests.support.runs import flow_run
    from tests.support.synced_project import TINY, configure, flow_run_logs, push_project

    push_project(tmp_path / "remotes", "tiny", files=TINY)
    configure(solo, {"name": "tiny", "url": git_http_server.url("tiny.git"), "token_env": "GITSYNC_TEST_TOKEN"})
    git_http_server.set_tokens({"a-rotated-token"})  # the configured token is no longer accepted
    code = ("from mage_dbt.sync_flow import sync_flow\n"
            "state = sync_flow(name='tiny', return_state=True)\n"
            "print('flow run:', state.state_details.flow_run_id)\n")
    env = {**os.environ, "MAGE_DBT_PROJECT_DIR": str(solo)}
    env.pop("MAGE_DBT_DATA_DIR", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=solo, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run_id = result.stdout.split("flow run:")[-1].strip()

    run = flow_run(run_id)
    assert run.state.type.value == "FAILED"
    assert f"fatal: Authentication failed for '{git_http_server.url('tiny.git')}/'" in run.state.message
    deadline = time.monotonic() + 30
    logs = flow_run_logs(run_id)
    while not any("fatal:" in m for m in logs) and time.monotonic() < deadline:
        time.sleep(0.5)  # the subprocess flushed its logs on exit; the server may still be storing them
        logs = flow_run_logs(run_id)
    fatal = [m for m in logs if "fatal:" in m and "Finished in state" not in m]
    assert len(fatal) == 1 and "fatal: Authentication failed" in fatal[0] and "\n" not in fatal[0], logs
    assert [m for m in logs if "Traceback" in m] == [], logs
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [m for m in logs if http_token in m] == []
    assert not (solo / "dbt_projects" / "tiny").exists()  # nothing was synced


# --- huge dry runs -------------------------------------------------------------------------------------


def test_a_dry_run_of_a_million_hours_summarizes_at_once(solo):
    started = time.monotonic()
    result = cli(solo, "backfill", "solo", "--start", "1900-01-01", "--end", "2020-01-01", "--interval", "hour",
                 "--yes", "--dry-run", timeout=120)
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"took {elapsed:.1f}s"  # building a million intervals alone took ~5 s, printing them minutes
    out = result.stdout
    assert "solo: 1051897 hour intervals (dry run)" in out and "1051897 intervals" in out, out[-3000:]
    assert "1900-01-01T00:00:00+00:00 │ 1900-01-01T01:00:00+00:00" in out  # the first interval
    assert "2020-01-01T00:00:00+00:00 │ 2020-01-01T01:00:00+00:00" in out  # the last one
    assert "1051887 more" in out and len(out.splitlines()) < 30
    error = _one_error_line(result)  # a real backfill this long is refused: the dry run says so
    assert "1051897 hour intervals, more than a backfill may have (100000" in error and "split the range" in error
    assert not (solo / ".mage_dbt" / "backfills").exists()

    real = cli(solo, "backfill", "solo", "--start", "1900-01-01", "--end", "2020-01-01", "--interval", "hour",
               "--yes", timeout=120)
    assert "more than a backfill may have" in _one_error_line(real)
    assert not (solo / ".mage_dbt" / "backfills").exists()

    years = cli(solo, "backfill", "solo", "--start", "2020-01-01", "--end", "2024-12-31", "--yes", "--dry-run")
    assert years.returncode == 0, years.stdout[-2000:] + years.stderr[-2000:]
    assert "1827 intervals" in years.stdout and "1817 more" in years.stdout
    assert "│ 1827 │ 2024-12-31 " in years.stdout

    unconfirmed = cli(solo, "backfill", "solo", "--start", "2020-01-01", "--end", "2024-12-31", "--dry-run")
    assert "1827 intervals" in unconfirmed.stdout
    assert "more than the maximum of 366 — pass --yes" in _one_error_line(unconfirmed)
