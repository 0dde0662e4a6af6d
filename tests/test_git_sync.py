"""Git sync against real local remotes: refs, atomic switch, validation, local edits, packages, layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mage_dbt.errors import ConfigError, GitSyncError
from mage_dbt.git_sync import (
    DestinationConflict,
    LocalEditsError,
    RefNotFound,
    RevisionInvalid,
    checkout_revision,
    revision_commit,
    sync,
    sync_all,
)
from tests.gitsync_fixtures import *  # noqa: F401,F403 - fixtures (until conftest registers the plugin)
from tests.gitsync_fixtures import TINY_PROJECT, git

BROKEN_MODEL = {"models/broken.sql": "select * from {{ ref('does_not_exist') }}\n"}


def _points_at(project, sha: str) -> bool:
    return revision_commit(project.link()) == sha and sha in os.readlink(project.link())


def test_first_sync_clones_validates_with_dbt_and_switches(sync_project, make_remote, dbt_validator) -> None:
    remote = make_remote()
    sync_project.configure({"name": "tiny", "url": remote.path})

    result = sync(sync_project.root, validate=dbt_validator)

    sha = remote.sha()
    assert (result.name, result.ref, result.commit, result.previous_commit) == ("tiny", "main", sha, None)
    assert result.changed and not result.deps_needed
    link = sync_project.link()
    assert link.is_symlink() and os.readlink(link) == f".git_sync/tiny/revisions/{sha}"
    assert result.project_dir == link and result.revision_dir == link.resolve()
    assert (link / "models" / "one.sql").read_text() == "select 1 as id\n"
    assert (link / "target" / "manifest.json").is_file()  # dbt really parsed it, in the new revision
    assert revision_commit(link) == sha and revision_commit(link / "models") == sha
    assert revision_commit(remote.work) is None
    state = json.loads((sync_project.dbt_projects / ".git_sync" / "tiny" / "state.json").read_text())
    assert state["current"] == sha

    again = sync(sync_project.root, validate=dbt_validator)  # dbt's target/ and logs/ are not local edits
    assert (again.commit, again.previous_commit, again.changed) == (sha, sha, False)


def test_branch_switch_tag_pinned_sha_and_pruning(sync_project, make_remote, light_validator) -> None:
    remote = make_remote()
    first = remote.sha()
    second = remote.commit("second model", {"models/two.sql": "select 2 as id\n"})
    remote.push("main")
    remote.tag("v1.0", first, message="release 1.0")  # annotated: peeled to its commit
    remote.switch("fix-branch")
    fix = remote.commit("hotfix", {"models/one.sql": "select 11 as id\n"})
    remote.push("fix-branch")
    sync_project.configure({"name": "tiny", "url": remote.path})
    root = sync_project.root

    assert sync(root, validate=light_validator).commit == second
    switched = sync(root, ref="fix-branch", validate=light_validator)
    assert (switched.commit, switched.previous_commit, switched.ref) == (fix, second, "fix-branch")
    assert (sync_project.link() / "models" / "one.sql").read_text() == "select 11 as id\n"
    assert sync(root, ref="v1.0", validate=light_validator).commit == first
    assert not (sync_project.link() / "models" / "two.sql").exists()
    # Only the current and the previous revision are kept.
    assert sync_project.revisions() == {first, fix}
    pinned = sync(root, ref=second, validate=light_validator)
    assert pinned.commit == second and _points_at(sync_project, second)
    assert sync(root, ref=fix[:10], validate=light_validator).commit == fix  # a short SHA
    assert sync_project.revisions() == {second, fix}


def test_commit_outside_every_branch_is_fetched_by_sha(sync_project, make_remote, light_validator) -> None:
    remote = make_remote()
    remote.switch("tmp")
    orphan = remote.commit("only reachable by sha", {"models/three.sql": "select 3 as id\n"})
    remote.push("tmp")
    git("update-ref", "refs/keep/orphan", orphan, cwd=remote.bare)  # keep it, then drop the branch
    git("branch", "-D", "tmp", cwd=remote.bare)
    sync_project.configure({"name": "tiny", "url": remote.path, "ref": orphan})
    assert sync(sync_project.root, validate=light_validator).commit == orphan


def test_force_pushed_branch_is_taken_over(sync_project, make_remote, light_validator) -> None:
    remote = make_remote()
    base = remote.sha()
    doomed = remote.commit("will be rewritten", {"models/two.sql": "select 2 as id\n"})
    remote.push("main")
    sync_project.configure({"name": "tiny", "url": remote.path})
    assert sync(sync_project.root, validate=light_validator).commit == doomed

    git("reset", "--quiet", "--hard", base, cwd=remote.work)
    rewritten = remote.commit("rewritten history", {"models/other.sql": "select 4 as id\n"})
    remote.push("main", force=True)

    result = sync(sync_project.root, validate=light_validator)
    assert (result.commit, result.previous_commit) == (rewritten, doomed)
    assert (sync_project.link() / "models" / "other.sql").is_file()
    assert not (sync_project.link() / "models" / "two.sql").exists()


def test_missing_ref_keeps_the_current_revision(sync_project, make_remote, light_validator) -> None:
    remote = make_remote()
    sync_project.configure({"name": "tiny", "url": remote.path})
    sha = sync(sync_project.root, validate=light_validator).commit

    with pytest.raises(RefNotFound) as caught:
        sync(sync_project.root, ref="no-such-branch", validate=light_validator)
    assert "fatal: couldn't find remote ref no-such-branch" in str(caught.value)
    assert _points_at(sync_project, sha) and sync_project.revisions() == {sha}
    with pytest.raises(ConfigError, match="not a valid branch, tag or commit SHA"):
        sync(sync_project.root, ref="-x", validate=light_validator)


def test_revision_that_does_not_parse_never_becomes_current(
    sync_project, make_remote, dbt_validator, light_validator
) -> None:
    remote = make_remote()
    sync_project.configure({"name": "tiny", "url": remote.path})
    good = sync(sync_project.root, validate=light_validator).commit
    broken = remote.commit("reference a missing model", BROKEN_MODEL)
    remote.push("main")

    with pytest.raises(RevisionInvalid) as caught:
        sync(sync_project.root, validate=dbt_validator)
    message = str(caught.value)
    assert f"commit {broken[:12]} (main)" in message and "does_not_exist" in message
    assert _points_at(sync_project, good)
    assert not (sync_project.link() / "models" / "broken.sql").exists()
    assert broken not in sync_project.revisions()  # the failed checkout is cleaned up

    fixed = remote.commit("fix it", {"models/broken.sql": None})
    remote.push("main")
    result = sync(sync_project.root, validate=light_validator)
    assert (result.commit, result.previous_commit) == (fixed, good) and _points_at(sync_project, fixed)


def test_local_edits_refuse_unless_forced(sync_project, make_remote, light_validator) -> None:
    remote = make_remote()
    sync_project.configure({"name": "tiny", "url": remote.path})
    first = sync(sync_project.root, validate=light_validator).commit
    model = sync_project.link() / "models" / "one.sql"
    model.write_text("select 'edited in place' as id\n")
    (sync_project.link() / "models" / "scratch.sql").write_text("select 5 as id\n")
    (sync_project.link() / "target").mkdir()
    (sync_project.link() / "target" / "manifest.json").write_text("{}")  # dbt output: not an edit
    second = remote.commit("upstream change", {"models/two.sql": "select 2 as id\n"})
    remote.push("main")

    with pytest.raises(LocalEditsError) as caught:
        sync(sync_project.root, validate=light_validator)
    message = str(caught.value)
    assert "M models/one.sql" in message and "?? models/scratch.sql" in message and "target" not in message
    assert _points_at(sync_project, first) and "edited in place" in model.read_text()

    forced = sync(sync_project.root, force=True, validate=light_validator)
    assert forced.commit == second and _points_at(sync_project, second)
    # The edited revision is kept as the previous one, edits intact, for whoever needs them.
    assert "edited in place" in (sync_project.dbt_projects / ".git_sync/tiny/revisions" / first / "models/one.sql").read_text()

    (sync_project.link() / "models" / "one.sql").write_text("select 'again' as id\n")
    with pytest.raises(LocalEditsError):
        sync(sync_project.root, validate=light_validator)
    same = sync(sync_project.root, force=True, validate=light_validator)  # same commit: edits discarded
    assert (same.commit, same.changed) == (second, True)
    assert (sync_project.link() / "models" / "one.sql").read_text() == "select 1 as id\n"


def test_subdirectory_packages_and_deps_detection(sync_project, make_remote, light_validator) -> None:
    files = {f"transform/{k}": v for k, v in TINY_PROJECT.items()}
    remote = make_remote(files={**files, "README.md": "docs\n"})
    sync_project.configure({"name": "tiny", "url": remote.path, "subdirectory": "transform", "destination": "shop"})
    installs: list[Path] = []

    def install_deps(project_dir: Path) -> None:
        installs.append(project_dir)
        (project_dir / "dbt_packages" / "helpers").mkdir(parents=True)

    first = sync(sync_project.root, validate=light_validator, install_deps=install_deps)
    link = sync_project.link("shop")
    assert os.readlink(link) == f".git_sync/tiny/revisions/{first.commit}/transform"
    assert (link / "dbt_project.yml").is_file() and revision_commit(link) == first.commit
    assert not first.deps_needed and installs == []

    remote.commit("add packages", {"transform/packages.yml": "packages: []\n"})
    remote.push("main")
    with_packages = sync(sync_project.root, validate=light_validator, install_deps=install_deps)
    assert with_packages.deps_needed and installs == [with_packages.revision_dir]
    assert (link / "dbt_packages" / "helpers").is_dir()

    remote.commit("models only", {"transform/models/two.sql": "select 2 as id\n", "README.md": "more docs\n"})
    remote.push("main")
    unchanged = sync(sync_project.root, validate=light_validator, install_deps=install_deps)
    assert not unchanged.deps_needed and len(installs) == 1
    assert (link / "dbt_packages" / "helpers").is_dir()  # carried over from the previous revision

    remote.commit("lost the project", {"transform/dbt_project.yml": None})
    remote.push("main")
    with pytest.raises(RevisionInvalid, match="has no dbt_project.yml in 'transform/'"):
        sync(sync_project.root, validate=light_validator)
    assert revision_commit(link) == unchanged.commit


def test_destination_that_is_not_ours_is_never_replaced(sync_project, make_remote, light_validator) -> None:
    remote = make_remote()
    sync_project.configure({"name": "tiny", "url": remote.path})
    handmade = sync_project.link()
    handmade.mkdir()
    (handmade / "dbt_project.yml").write_text("name: handmade\n")
    with pytest.raises(DestinationConflict, match="exists and is not managed by git sync"):
        sync(sync_project.root, force=True, validate=light_validator)
    assert (handmade / "dbt_project.yml").read_text() == "name: handmade\n"


def test_checkout_revision_for_one_run_leaves_current_alone(sync_project, make_remote, light_validator) -> None:
    remote = make_remote()
    sync_project.configure({"name": "tiny", "url": remote.path})
    current = sync(sync_project.root, validate=light_validator).commit
    remote.switch("experiment")
    other = remote.commit("try something", {"models/two.sql": "select 2 as id\n"})
    remote.push("experiment")

    revision = checkout_revision(sync_project.root, "tiny", "experiment", validate=light_validator)
    assert revision.commit == other and (revision.project_dir / "models" / "two.sql").is_file()
    assert revision_commit(revision.project_dir) == other
    assert _points_at(sync_project, current)
    assert sync(sync_project.root, validate=light_validator).changed is False
    assert other in sync_project.revisions()  # a fresh one-off checkout survives pruning for a while


def test_sync_all_reports_each_failure_and_syncs_the_rest(sync_project, make_remote, light_validator) -> None:
    good, other = make_remote("good"), make_remote("other")
    sync_project.configure({"name": "good", "url": good.path}, {"name": "other", "url": other.path, "ref": "gone"})
    with pytest.raises(GitSyncError, match="1 of 2 repositories failed to sync: other: .*remote ref gone"):
        sync_all(sync_project.root, validate=light_validator)
    assert revision_commit(sync_project.link("good")) == good.sha()
    assert not sync_project.link("other").exists()
    with pytest.raises(ConfigError, match=r"name the repository to sync \(configured: good, other\)"):
        sync(sync_project.root)
