"""resolve_target(): profiles.yml rendered by dbt's own renderer, clear errors, no secrets shown."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mage_dbt.errors import ConfigError
from mage_dbt.warehouse import TargetConfig, connect, resolve_target

PROFILES = """
shop:
  target: "{{ env_var('SHOP_TARGET', 'local') }}"
  outputs:
    local:
      type: duckdb
      path: "{{ env_var('SHOP_DUCKDB_DIR', '/data') }}/shop.duckdb"
      schema: "{{ var('schema', 'main') }}"
      threads: 4
    pg:
      type: postgres
      host: "{{ env_var('SHOP_PG_HOST', '127.0.0.1') }}"
      port: "{{ env_var('SHOP_PG_PORT', '5432') | as_number }}"
      user: postgres
      pass: "{{ env_var('DBT_ENV_SECRET_SHOP_PG_PASSWORD', 'default-pw-123') }}"
      dbname: shop
      schema: analytics
    needs_env:
      type: postgres
      host: "{{ env_var('SHOP_REQUIRED_HOST') }}"
      user: postgres
      password: "s3cr3t-literal-value"
      dbname: shop
      schema: analytics
    bq:
      type: bigquery
      method: oauth
      project: my-project
      dataset: raw_data
      location: EU
    snow:
      type: snowflake
      account: x
other:
  outputs:
    dev:
      type: duckdb
      path: ":memory:"
"""


@pytest.fixture()
def profiles_dir(tmp_path: Path) -> Path:
    (tmp_path / "profiles.yml").write_text(textwrap.dedent(PROFILES))
    return tmp_path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SHOP_TARGET", "SHOP_DUCKDB_DIR", "SHOP_PG_HOST", "SHOP_PG_PORT",
                 "DBT_ENV_SECRET_SHOP_PG_PASSWORD", "SHOP_REQUIRED_HOST"):
        monkeypatch.delenv(name, raising=False)


def test_env_var_defaults_apply_when_unset(profiles_dir: Path) -> None:
    target = resolve_target(profiles_dir, "shop", None)
    assert (target.type, target.target_name, target.schema) == ("duckdb", "local", "main")
    assert target.get("path") == "/data/shop.duckdb"
    assert target.database == "shop"  # dbt-duckdb names the database after the file
    assert "threads" not in target.fields


def test_env_var_overrides_and_target_chosen_by_env(profiles_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_TARGET", "pg")
    monkeypatch.setenv("SHOP_PG_HOST", "db.internal")
    monkeypatch.setenv("SHOP_PG_PORT", "6543")
    target = resolve_target(profiles_dir, "shop", None)
    assert (target.type, target.target_name) == ("postgres", "pg")
    assert target.get("host") == "db.internal"
    assert target.get("port") == 6543  # as_number, exactly as dbt renders it
    # dbt's aliases: dbname -> database, pass -> password
    assert target.database == "shop" and target.get("password") == "default-pw-123"


def test_explicit_target_and_vars(profiles_dir: Path) -> None:
    assert resolve_target(profiles_dir, "shop", "local", vars={"schema": "raw"}).schema == "raw"
    bq = resolve_target(profiles_dir, "shop", "bq")
    assert (bq.type, bq.database, bq.schema, bq.get("location")) == (
        "bigquery", "my-project", "raw_data", "EU")


def test_secret_env_var_is_used_but_never_shown(profiles_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBT_ENV_SECRET_SHOP_PG_PASSWORD", "hunter2-from-env")
    target = resolve_target(profiles_dir, "shop", "pg")
    assert target.get("password") == "hunter2-from-env"
    assert "hunter2" not in repr(target) and "hunter2" not in str(target)
    assert "password': '***'" in repr(target)
    assert "hunter2-from-env" in target.secret_values()


def test_missing_env_var_in_other_target_is_no_error(profiles_dir: Path) -> None:
    # SHOP_REQUIRED_HOST is unset, but only the selected target is rendered (as in dbt).
    assert resolve_target(profiles_dir, "shop", "pg").target_name == "pg"


def test_missing_required_env_var_names_it(profiles_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_target(profiles_dir, "shop", "needs_env")
    message = str(info.value)
    assert "SHOP_REQUIRED_HOST" in message and "needs_env" in message
    assert "s3cr3t-literal-value" not in message


def test_missing_target_lists_available_targets(profiles_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_target(profiles_dir, "shop", "prod")
    message = str(info.value)
    assert "'prod'" in message and str(profiles_dir / "profiles.yml") in message
    assert "targets: bq, local, needs_env, pg, snow" in message


def test_missing_target_chosen_by_env_var(profiles_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_TARGET", "staging")
    with pytest.raises(ConfigError, match=r"target 'staging' not found .*targets: bq, local"):
        resolve_target(profiles_dir, "shop", None)


def test_missing_profile_and_missing_file(profiles_dir: Path, tmp_path_factory) -> None:
    with pytest.raises(ConfigError, match=r"profile 'nope' not found in .*profiles.yml "
                                          r"\(profiles: other, shop\)"):
        resolve_target(profiles_dir, "nope", None)
    empty = tmp_path_factory.mktemp("no_profiles")
    with pytest.raises(ConfigError, match=f"no profiles.yml in {empty}"):
        resolve_target(empty, "shop", None)


def test_profile_without_target_key_uses_dbt_default(profiles_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"target 'default' not found.*targets: dev"):
        resolve_target(profiles_dir, "other", None)
    assert resolve_target(profiles_dir, "other", "dev").get("path") == ":memory:"


def test_unsupported_adapter_type(profiles_dir: Path) -> None:
    with pytest.raises(ConfigError, match="type 'snowflake'.*supported: bigquery, duckdb"):
        resolve_target(profiles_dir, "shop", "snow")


def test_connection_error_does_not_leak_password(tmp_path: Path) -> None:
    (tmp_path / "profiles.yml").write_text(textwrap.dedent("""
        p:
          target: t
          outputs:
            t:
              type: postgres
              host: 127.0.0.1
              port: 1
              user: nobody
              password: "pw-that-must-not-leak"
              dbname: nothing
              schema: s
              connect_timeout: 2
    """))
    target = resolve_target(tmp_path, "p", None)
    with pytest.raises(ConfigError) as info:
        with connect(target):
            pass
    assert "cannot connect to Postgres target 't'" in str(info.value)
    assert "pw-that-must-not-leak" not in str(info.value)
    assert "pw-that-must-not-leak" not in repr(target)


def test_target_config_pickles_and_compares(profiles_dir: Path) -> None:
    import pickle

    target = resolve_target(profiles_dir, "shop", "pg")
    clone = pickle.loads(pickle.dumps(target))
    assert isinstance(clone, TargetConfig) and clone == target


def test_invalid_yaml_error_does_not_quote_the_file(tmp_path: Path) -> None:
    (tmp_path / "profiles.yml").write_text(
        'p:\n  outputs:\n    t:\n      type: postgres\n      password: "leaky-pw\n      host: [x\n')
    with pytest.raises(ConfigError, match="is not valid YAML: .*line 5") as info:
        resolve_target(tmp_path, "p", "t")
    assert "leaky-pw" not in str(info.value)


def test_nested_secrets_are_masked(tmp_path: Path) -> None:
    (tmp_path / "profiles.yml").write_text(textwrap.dedent("""
        d:
          target: t
          outputs:
            t:
              type: duckdb
              path: ":memory:"
              settings:
                s3_region: eu-west-1
                s3_secret_access_key: "aws-secret-do-not-show"
    """))
    target = resolve_target(tmp_path, "d", None)
    assert "aws-secret-do-not-show" not in repr(target) and "eu-west-1" in repr(target)
    assert target.get("settings")["s3_secret_access_key"] == "aws-secret-do-not-show"


PLAIN = """
plain:
  target: "{{ env_var('PLAIN_TARGET', 'pg') }}"
  outputs:
    pg:
      type: postgres
      host: "{{ env_var('PLAIN_HOST', '127.0.0.1') }}"
      port: "{{ env_var('PLAIN_PORT', '5432') | as_number }}"
      user: postgres
      password: "{{ env_var('PLAIN_PASSWORD', '') }}"
      dbname: "{{ var('db', 'shop') }}"
      schema: "analytics_{{ env_var('PLAIN_SUFFIX', 'dev') }}"
      keepalives_idle: 0
      connect_timeout: "10"
      search_path: ["{{ var('path', 'public') }}", "{{ env_var('PLAIN_HOST', 'x') }}"]
    macros:
      type: postgres
      host: "h{{ modules.datetime.date(2024, 1, 2).day }}"
      user: postgres
      dbname: shop
      schema: analytics
"""


@pytest.mark.parametrize("profile, target, env, cli_vars, light", [
    ("shop", None, {}, {}, True),
    ("shop", None, {"SHOP_DUCKDB_DIR": "/tmp/x"}, {"schema": "s2"}, True),
    ("shop", "pg", {"SHOP_PG_PORT": "6543"}, {}, False),  # a DBT_ENV_SECRET_ variable: dbt's placeholder
    ("shop", "needs_env", {"SHOP_REQUIRED_HOST": "db.internal"}, {}, True),
    ("shop", "bq", {}, {}, True),
    ("plain", None, {}, {}, True),
    ("plain", None, {"PLAIN_PORT": "6000", "PLAIN_PASSWORD": "{{ not jinja }}", "PLAIN_SUFFIX": "7"},
     {"db": "warehouse", "path": 3}, True),
    ("plain", "macros", {}, {}, False),  # `modules` is no env_var/var: dbt renders it
])
def test_the_light_renderer_equals_dbts_or_leaves_it_to_dbt(tmp_path, monkeypatch, profile, target, env, cli_vars,
                                                            light):
    """profiles.yml rendered without dbt (`profile_light`) gives the very TargetConfig dbt's own
    renderer gives, or None (then dbt renders it)."""
    from mage_dbt.warehouse.profile import _build, _resolve
    from mage_dbt.warehouse.profile_light import render_target_light

    (tmp_path / "profiles.yml").write_text(textwrap.dedent(PROFILES) + textwrap.dedent(PLAIN))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("PLAIN_TARGET", "PLAIN_HOST", "PLAIN_PORT", "PLAIN_PASSWORD", "PLAIN_SUFFIX"):
        if name not in env:
            monkeypatch.delenv(name, raising=False)
    path = tmp_path / "profiles.yml"
    rendered = render_target_light(path, profile, target, cli_vars)
    assert (rendered is not None) is light
    by_dbt = _resolve(path, profile, target, dict(cli_vars))
    if rendered is not None:
        by_light = _build(path, profile, *rendered)
        assert by_light == by_dbt and by_light.fields == by_dbt.fields
        assert [type(v) for v in by_light.fields.values()] == [type(v) for v in by_dbt.fields.values()]


def test_a_missing_env_var_is_left_to_dbt_which_names_it(profiles_dir: Path) -> None:
    from mage_dbt.warehouse.profile_light import render_target_light

    assert render_target_light(profiles_dir / "profiles.yml", "shop", "needs_env", {}) is None
