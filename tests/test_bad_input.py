"""User mistakes on `mage-dbt run`: one line naming the problem and the fix, exit code 2, no
traceback, and no table touched (the DuckDB file is never even created).

Command-line typos, unwritable paths and read-only data folders: tests/test_cli_usage_errors.py."""

from __future__ import annotations

import pytest

from tests.conftest import cli


def _broken_yaml(project):
    (project / "flows" / "broken.yaml").write_text("dbt:\n  select: [\"*\"]\n   command: build\n")
    return ["run", "broken", "--execution-date", "2024-02-01"], "broken.yaml:3"


def _unknown_key(project):
    (project / "flows" / "typo.yaml").write_text("dbt:\n  select: ['*']\nshedule:\n  cron: '0 6 * * *'\n")
    return ["run", "typo", "--execution-date", "2024-02-01"], "typo.yaml:3"


def _empty_selector(project):
    (project / "flows" / "empty.yaml").write_text("dbt:\n  select: ['tag:no_such_tag']\n")
    return ["run", "empty", "--execution-date", "2024-02-01"], "matches no node"


def _missing_profiles(project):
    (project / "profiles.yml").unlink()
    return ["run", "demo", "--execution-date", "2024-02-01"], "no profiles.yml"


def _unparseable_project(project):
    model = project / "dbt_projects" / "demo" / "models" / "staging" / "stg_orders.sql"
    model.write_text(model.read_text() + "\n{{ ref('a_model_that_does_not_exist') }}\n")
    return ["run", "demo", "--execution-date", "2024-02-01"], "does not parse"


def _data_folder_is_a_file(project):
    (project / ".mage_dbt").write_text("not a folder\n")
    return ["run", "demo", "--execution-date", "2024-02-01"], f"cannot create {project / '.mage_dbt'}: File exists"


def _policy_case(name, text, expected_line, expected):
    def case(project):
        (project / "flows" / f"{name}.yaml").write_text(text)
        return ["run", name, "--execution-date", "2024-02-01"], f"{name}.yaml:{expected_line}: {expected}"
    return case


# Run policies (README "Retries and timeouts"): each mistake names the file and the line of the key.
POLICY_CASES = {
    "policy: unknown key": _policy_case(
        "p_key", "dbt:\n  select: ['*']\nrun_policy:\n  retires: 2\n", 4, "'run_policy.retires'"),
    "policy: negative retries": _policy_case(
        "p_retries", "blocks:\n  - name: a\n    type: python\n    retries: -1\n", 4, "'blocks.0.retries'"),
    "policy: zero timeout": _policy_case(
        "p_timeout", "dbt:\n  select: ['*']\n  policies:\n    - select: tag:x\n      timeout_seconds: 0\n",
        5, "'dbt.policies.0.timeout_seconds'"),
    "policy: negative timeout": _policy_case(
        "p_timeout2", "dbt:\n  select: ['*']\nrun_policy: {timeout_seconds: -5}\n", 3,
        "'run_policy.timeout_seconds'"),
    "policy: negative delay": _policy_case(
        "p_delay", "dbt:\n  select: ['*']\nrun_policy:\n  retries: 1\n  retry_delay_seconds: -1\n", 5,
        "'run_policy.retry_delay_seconds'"),
    "policy: unknown key in a dbt policy": _policy_case(
        "p_dbtkey", "dbt:\n  select: ['*']\n  policies:\n    - select: tag:x\n      retry: 1\n", 5,
        "'dbt.policies.0.retry'"),
    "policy: selector matches nothing": _policy_case(
        "p_nothing", "dbt:\n  select: ['*']\n  policies:\n    - {select: stg_orders, retries: 1}\n"
        "    - select: tag:no_such_tag\n      retries: 2\n", 5, "run policy selector 'tag:no_such_tag' matches none"),
}


CASES = {
    "unknown pipeline": lambda p: (["run", "nope", "--execution-date", "2024-02-01"], "unknown pipeline 'nope'"),
    "unknown target": lambda p: (["run", "demo", "--execution-date", "2024-02-01", "--target", "prod"], "unknown target 'prod'"),
    "not a date": lambda p: (["run", "demo", "--execution-date", "2024-02-30"], "is not a date"),
    "malformed yaml": _broken_yaml,
    "unknown key": _unknown_key,
    "selector matches nothing": _empty_selector,
    "missing profiles.yml": _missing_profiles,
    "project does not parse": _unparseable_project,
    "data folder is a file": _data_folder_is_a_file,
    **POLICY_CASES,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_and_touches_nothing(demo_project, case):
    args, expected = CASES[case](demo_project)
    result = cli(demo_project, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert " — " in lines[0]  # the message says how to fix it
    assert "Traceback" not in result.stdout + result.stderr
    assert not (demo_project / ".mage_dbt" / "demo.duckdb").exists()
