"""Parse once: load a dbt project's manifest, cache it per project revision and target, select nodes.

The cache key is the project's file contents (or, for a git-synced project, its commit and revision
folder), the profiles file, the target, the values of the env vars the project reads and the dbt
version. A hit loads a small pickled node index (fast enough for `blocks`) and, lazily, the pickled
dbt `Manifest` object that `dbtRunner(manifest=...)` reuses so no dbt invocation parses again. A
miss runs `dbt parse` in-process once and fills the cache atomically. A git-synced project is
parsed in its revision folder, never through the destination symlink: dbt records the folder in
the manifest (seeds are read from it), and the symlink moves on the next sync.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mage_dbt.dbt_invocation import dbt_lock, error_text, invoke_dbt, working_directory
from mage_dbt.errors import DbtProjectError, SelectionError
from mage_dbt.manifest_pickle import FORMAT as PICKLE_FORMAT
from mage_dbt.manifest_pickle import dumps as pickle_dumps
from mage_dbt.nodes import DbtNode, nodes_from_manifest_dict

_SKIP_DIRS = {"target", "logs", "dbt_packages", ".git", "__pycache__", ".venv"}
_ENV_VAR_NAME = re.compile(r"env_var\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]")


@dataclass(frozen=True)
class DbtProjectRef:
    """Which dbt project, with which profiles and target, and where mage_dbt keeps its files."""

    name: str
    project_dir: Path
    profiles_dir: Path
    data_dir: Path
    target: str | None = None

    @property
    def target_path(self) -> Path:
        """dbt's artifacts folder for this process (concurrent processes never share one)."""
        return target_root(self.data_dir) / self.name / f"{self.target or 'default'}-{os.getpid()}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs"

    @property
    def invocation_log(self) -> Path:
        return self.log_path / "dbt_invocations.jsonl"

    def base_args(self, target_path: Path | None = None) -> list[str]:
        """Flags every dbt invocation of this project gets; the orchestrator owns these."""
        args = [
            "--project-dir", str(self.project_dir),
            "--profiles-dir", str(self.profiles_dir),
            "--target-path", str(target_path or self.target_path),
            "--log-path", str(self.log_path),
        ]
        if self.target:
            args += ["--target", self.target]
        return args


@dataclass
class LoadedManifest:
    """The node index of one project revision, plus the dbt Manifest object on demand."""

    ref: DbtProjectRef
    key: str
    nodes: dict[str, DbtNode]
    _manifest_file: Path
    _dbt_manifest: Any = None
    _graph: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dbt_manifest(self) -> Any:
        """dbt's own Manifest object, for `dbtRunner(manifest=...)` and dbt's selector."""
        with self._lock:
            if self._dbt_manifest is None:
                self._dbt_manifest = pickle.loads(self._manifest_file.read_bytes())
            return self._dbt_manifest

    def select(self, select: list[str] | None, exclude: list[str] | None = None) -> set[str]:
        """Unique ids chosen by dbt's own selector syntax (tag:, path:, +model, @model, ...)."""
        _ensure_dbt_flags()
        from dbt.compilation import Linker
        from dbt.graph import Graph, NodeSelector
        from dbt.graph.cli import parse_difference

        manifest = self.dbt_manifest
        with self._lock:
            if self._graph is None:
                linker = Linker()
                linker.link_graph(manifest)
                self._graph = linker.graph
        try:
            spec = parse_difference(list(select) if select else None, list(exclude) if exclude else None)
            # dbt resolves `path:` selectors against the working directory, as its CLI runs there.
            with dbt_lock(), working_directory(self.ref.project_dir):
                chosen = NodeSelector(Graph(self._graph), manifest).get_selected(spec, warn_on_no_nodes=False)
        except Exception as exc:  # dbt raises a zoo of types for malformed selectors
            raise SelectionError(
                f"invalid dbt selector {select!r}: {str(exc).splitlines()[0]}",
                hint="use dbt's selector syntax, e.g. 'tag:daily', '+fct_orders', 'path:models/staging'",
            ) from None
        return {uid for uid in chosen if uid in self.nodes and self.nodes[uid].resource_type != "source"}


def target_root(data_dir: Path) -> Path:
    return data_dir / "dbt_target"


def prune_target_folders(data_dir: Path) -> list[Path]:
    """Delete the dbt artifact folders of processes that have ended; returns what was deleted.

    Every process writes dbt's artifacts (compiled SQL, run_results.json, manifest.json) to its own
    `<target>-<pid>` folder; without this, every run would leave one behind for good.
    """
    import shutil

    removed = []
    for folder in target_root(data_dir).glob("*/*-*"):
        pid = folder.name.rsplit("-", 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _ensure_dbt_flags() -> None:
    from argparse import Namespace

    from dbt.flags import get_flags, set_from_args

    if not hasattr(get_flags(), "INDIRECT_SELECTION"):
        set_from_args(Namespace(), {})


def synced_commit(project_dir: Path) -> str | None:
    """The git sync commit of a dbt project folder (None when it was not synced)."""
    from mage_dbt.git_sync.layout import revision_commit

    return revision_commit(project_dir)


def pinned_ref(ref: DbtProjectRef, commit: str | None = None) -> tuple[DbtProjectRef, str | None]:
    """A git-synced project resolved to its revision folder, with its commit; others unchanged."""
    real = ref.project_dir.resolve()
    commit = commit or synced_commit(real)
    return (replace(ref, project_dir=real), commit) if commit else (ref, None)


def project_fingerprint(ref: DbtProjectRef, commit: str | None = None) -> str:
    """A hash of everything that changes what `dbt parse` produces for this project and target.

    A git-synced project (or an explicit `commit`) is keyed by commit and revision folder instead
    of its file contents: its files are that commit's (git sync refuses local edits).
    """
    import dbt.version

    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{dbt.version.__version__}|{PICKLE_FORMAT}|{ref.target}|".encode())
    env_names: set[str] = set()
    profiles = ref.profiles_dir / "profiles.yml"
    if profiles.is_file():
        text = profiles.read_bytes()
        digest.update(text)
        env_names.update(_ENV_VAR_NAME.findall(text.decode(errors="replace")))
    commit = commit or synced_commit(ref.project_dir)
    if commit:
        digest.update(f"commit:{commit}|{ref.project_dir.resolve()}\0".encode())
    for path in sorted(_project_files(ref.project_dir)):
        data = path.read_bytes()
        if not commit:
            digest.update(str(path.relative_to(ref.project_dir)).encode() + b"\0" + data)
        if b"env_var" in data:  # also for a commit: the values dbt renders at parse time are part of the key
            env_names.update(_ENV_VAR_NAME.findall(data.decode(errors="replace")))
    for name in sorted(env_names):
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return digest.hexdigest()


def _project_files(root: Path):
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in files:
            yield Path(folder) / name


class ManifestCache:
    """Loaded manifests of this process, backed by the on-disk cache under the data folder."""

    def __init__(self) -> None:
        self._loaded: dict[str, LoadedManifest] = {}
        self._lock = threading.Lock()

    def load(self, ref: DbtProjectRef, *, commit: str | None = None) -> LoadedManifest:
        """`commit`: the git commit of `ref.project_dir` when no git sync marker says it yet (validation)."""
        ref, commit = pinned_ref(ref, commit)
        key = project_fingerprint(ref, commit)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            folder = ref.data_dir / "manifest_cache" / f"{ref.name}-{key}"
            nodes_file, manifest_file = folder / "nodes.pkl", folder / "manifest.pkl"
            if not (nodes_file.is_file() and manifest_file.is_file()):
                manifest = parse_project(ref)
                _write_cache(folder, manifest, ref.target_path / "manifest.json")
            nodes = pickle.loads(nodes_file.read_bytes())
            loaded = LoadedManifest(ref=ref, key=key, nodes=nodes, _manifest_file=manifest_file)
            self._loaded[key] = loaded
            return loaded


def parse_project(ref: DbtProjectRef) -> Any:
    """Run `dbt parse` in-process and return dbt's Manifest, or raise a one-line DbtProjectError."""
    if not (ref.profiles_dir / "profiles.yml").is_file():
        raise DbtProjectError(
            f"no profiles.yml in {ref.profiles_dir}",
            hint="create it (see README) or point DBT_PROFILES_DIR / mage_dbt.yaml profiles_dir at it",
        )
    check_profile(ref)
    result = invoke_dbt(
        ["parse", *ref.base_args(), "--log-level", "none", "--no-partial-parse"],
        invocation_log=ref.invocation_log,
    )
    if not result.success or result.result is None:
        reason = error_text(result) or "dbt parse failed"
        raise DbtProjectError(
            f"dbt project '{ref.name}' ({ref.project_dir}) does not parse: {reason}",
            hint=f"fix the project, then check with: dbt parse --project-dir {ref.project_dir}",
        )
    return result.result


def check_profile(ref: DbtProjectRef) -> None:
    """Fail early, in one line, when the project's profile or the requested target does not exist."""
    import yaml

    profiles_file = ref.profiles_dir / "profiles.yml"
    try:
        project = yaml.safe_load((ref.project_dir / "dbt_project.yml").read_text()) or {}
        profiles = yaml.safe_load(profiles_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DbtProjectError(f"cannot read {profiles_file} or dbt_project.yml: {exc}".splitlines()[0]) from None
    profile_name = project.get("profile")
    profile = profiles.get(profile_name) if isinstance(profiles, dict) else None
    if not isinstance(profile, dict):
        raise DbtProjectError(
            f"profile '{profile_name}' (from {ref.project_dir / 'dbt_project.yml'}) is not in {profiles_file}",
            hint=f"add it to profiles.yml; profiles there: {', '.join(k for k in profiles if k != 'config') or 'none'}",
        )
    targets = sorted((profile.get("outputs") or {}).keys())
    if ref.target and ref.target not in targets:
        raise DbtProjectError(
            f"unknown target '{ref.target}' for profile '{profile_name}' in {profiles_file}",
            hint=f"use one of: {', '.join(targets)}",
        )


def _write_cache(folder: Path, manifest: Any, manifest_json: Path) -> None:
    """Write both pickles atomically (temp files + rename), so readers never see half a cache.

    dbt's manifest.json of the revision is kept beside them: runs do not rewrite it (see
    dbt_executor), so this is the artifact for tools that read one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if manifest_json.is_file():
        text = manifest_json.read_text()
        nodes = nodes_from_manifest_dict(json.loads(text))
    else:
        as_dict = manifest.writable_manifest().to_dict(omit_none=False)
        text, nodes = json.dumps(as_dict), nodes_from_manifest_dict(as_dict)
    payloads = (("manifest.json", text.encode()), ("manifest.pkl", pickle_dumps(manifest)),
                ("nodes.pkl", pickle_dumps(nodes)))  # not pickle.dumps: dbt's Manifest pickling loses fields
    for name, payload in payloads:
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(payload)
        os.replace(tmp, folder / name)


def load_manifest_json(path: Path) -> dict[str, DbtNode]:
    """Node index straight from a manifest.json file (the cold path measured in bench/)."""
    return nodes_from_manifest_dict(json.loads(path.read_text()))


DEFAULT_CACHE = ManifestCache()


def load_manifest(ref: DbtProjectRef, *, commit: str | None = None) -> LoadedManifest:
    """Load (parse at most once per revision and target) the manifest of `ref`."""
    return DEFAULT_CACHE.load(ref, commit=commit)
