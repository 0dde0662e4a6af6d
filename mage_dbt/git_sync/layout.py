"""Where a synced repository lives on disk, and the atomic switch between its revisions.

    dbt_projects/
      <destination>  -> .git_sync/<name>/revisions/<sha>[/<subdirectory>]   (relative symlink)
      .git_sync/<name>/
        repo.git/                  bare clone shared by all revisions
        revisions/<sha>/           one detached worktree per revision; holds MARKER_FILE
        state.json                 current and previous commit, the ref they came from
        lock                       held (flock) while a sync or checkout of <name> runs

The symlink is the single source of truth for the current revision: it is replaced with
`os.replace` of a freshly made temporary symlink, so a reader sees the old or the new revision,
never a mix. `revision_commit()` answers "which commit is this dbt project folder?" from the marker
file written into every revision.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, syncs must not overlap
    fcntl = None  # type: ignore[assignment]

from mage_dbt.git_sync.errors import DestinationConflict

SYNC_DIR = ".git_sync"
MARKER_FILE = ".mage_dbt_revision.json"
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class SyncPaths:
    """All paths of one synced repository inside a `dbt_projects/` folder."""

    dbt_projects_dir: Path
    name: str
    destination: str

    @property
    def base(self) -> Path:
        return self.dbt_projects_dir / SYNC_DIR / self.name

    @property
    def repo(self) -> Path:
        return self.base / "repo.git"

    @property
    def revisions(self) -> Path:
        return self.base / "revisions"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"

    @property
    def link(self) -> Path:
        return self.dbt_projects_dir / self.destination

    def revision_dir(self, sha: str) -> Path:
        return self.revisions / sha

    def link_target(self, sha: str, subdirectory: str | None) -> str:
        """The symlink's content: relative, so the whole project folder can be moved."""
        target = Path(SYNC_DIR) / self.name / "revisions" / sha
        return (target / subdirectory if subdirectory else target).as_posix()

    def current_commit(self) -> str | None:
        """The commit the destination symlink points at, or None before the first sync."""
        if not self.link.is_symlink():
            return None
        parts = Path(os.readlink(self.link)).parts
        prefix = (SYNC_DIR, self.name, "revisions")
        if len(parts) >= 4 and parts[:3] == prefix and _SHA.match(parts[3]):
            return parts[3]
        return None

    def current_target(self) -> str | None:
        return os.readlink(self.link) if self.link.is_symlink() else None

    def check_destination(self, *, force: bool) -> None:
        """Refuse to replace a folder or file (or, unless forced, a foreign symlink) at the destination."""
        link = self.link
        if link.is_symlink():
            if self.current_commit() is None and not force:
                raise DestinationConflict(
                    f"{link} is a symlink to {os.readlink(link)}, not to a git sync revision of '{self.name}'",
                    hint="remove it, choose another destination, or sync with force to replace the link",
                )
        elif link.exists():
            raise DestinationConflict(
                f"{link} exists and is not managed by git sync",
                hint="move it away or set another destination for this repository; it is never overwritten",
            )

    def switch(self, target: str) -> None:
        """Point the destination at `target` atomically (temporary symlink + os.replace)."""
        temporary = self.dbt_projects_dir / f".{self.destination}.switch-{uuid.uuid4().hex[:8]}"
        os.symlink(target, temporary, target_is_directory=True)
        try:
            os.replace(temporary, self.link)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize syncs of this repository across processes.

        A first sync that fails leaves nothing behind: when this call created the repository's
        folder and it still holds only the lock file, both go (and `.git_sync/` if it is empty)."""
        created = not self.base.exists()
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.base / "lock", "a+") as handle:
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    if created and [p.name for p in self.base.iterdir()] == ["lock"]:
                        (self.base / "lock").unlink(missing_ok=True)
                    if fcntl is not None:
                        fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            if created:
                for folder in (self.base, self.base.parent):
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when empty

    # -- state.json ----------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, **values: Any) -> None:
        _write_json_atomic(self.state_file, {**self.read_state(), **values})


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def write_marker(revision_dir: Path, *, name: str, commit: str, ref: str, adhoc: bool) -> None:
    """Record in the revision which repository and commit it is (read by `revision_commit`)."""
    _write_json_atomic(revision_dir / MARKER_FILE, {
        "repository": name,
        "commit": commit,
        "ref": ref,
        "adhoc": adhoc,
        "checked_out_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def read_marker(revision_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((revision_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _SHA.match(str(data.get("commit", ""))):
        return None
    return data


def revision_commit(project_dir: str | os.PathLike[str]) -> str | None:
    """The commit SHA of a git-synced dbt project folder, or None when it was not synced.

    Accepts the destination symlink (`dbt_projects/<destination>`), the revision folder or any
    folder inside it (the dbt project in a sub-directory): the marker is found walking upwards.
    """
    path = Path(project_dir).resolve()
    for folder in (path, *path.parents):
        marker = read_marker(folder)
        if marker is not None:
            return marker["commit"]
        if folder.parent.name == "revisions" and folder.parent.parent.parent.name == SYNC_DIR:
            break  # the revision folder itself had no marker: not a finished revision
    return None
