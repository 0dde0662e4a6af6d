"""`mage-dbt init` scaffolds a project that runs as it is, and refuses to overwrite files."""

from __future__ import annotations

from tests.conftest import cli


def test_init_scaffolds_a_runnable_project(tmp_path):
    target = tmp_path / "acme"
    created = cli(tmp_path, "init", str(target), "--dbt-project", "acme_dw")
    assert created.returncode == 0, created.stderr
    for path in ("mage_dbt.yaml", "profiles.yml", "flows/example.yaml", "dbt_projects/acme_dw/dbt_project.yml",
                 "git_sync/repositories.example.yaml", "examples", "tests"):
        assert (target / path).exists(), path
    blocks = cli(target, "blocks", "example")
    assert blocks.returncode == 0 and "example" in blocks.stdout and "dbt_model" in blocks.stdout
    run = cli(target, "run", "example", "--execution-date", "2024-03-01")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 success" in run.stdout


def test_init_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "existing").mkdir()
    keep = tmp_path / "existing" / "notes.txt"
    keep.write_text("mine")
    result = cli(tmp_path, "init", str(tmp_path / "existing"))
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert keep.read_text() == "mine" and sorted(p.name for p in keep.parent.iterdir()) == ["notes.txt"]
