"""Parse once: load a dbt project's manifest, cache it per project revision and target, select nodes.

The cache key is the project's file contents (or, for a git-synced project, its commit and revision
folder), the installed packages (`dbt_packages/`, local packages through their links: path, size
and modification time of every file), the profiles file, the target, the values of the env vars
the project reads and the dbt version; then, per such revision, one variant per *parse
dependencies*: the vars `dbt parse` read and how (`mage_dbt.dbt.parse_vars`). A run whose vars give
the same parse result reuses a variant; other vars parse again, once per distinct value. A hit loads a small pickled node index (fast enough for `blocks`) and, lazily, the pickled
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
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mage_dbt.dbt.invocation import dbt_lock, error_text, invoke_dbt
from mage_dbt.dbt.manifest_pickle import FORMAT as PICKLE_FORMAT
from mage_dbt.dbt.manifest_pickle import dumps as pickle_dumps
from mage_dbt.dbt.nodes import DbtNode, nodes_from_manifest_dict
from mage_dbt.dbt.parse_patches import tracing
from mage_dbt.dbt.parse_vars import ParseDependencies, TraceEscaped, pin_traced
from mage_dbt.errors import DbtProjectError
from mage_dbt.dbt.pruning import prune_manifest_cache, touch

LOG = logging.getLogger("mage_dbt.manifest")
CACHE_LAYOUT = "parse-deps-v1+nodes-v2"  # part of the key: caches laid out another way are not reused
# The vars mage_dbt sets on every run (mage_dbt.dates.dbt_vars): traced rather than pinned at parse time.
RUN_VARS = frozenset({"execution_date", "execution_ts", "interval_start", "interval_end"})

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
        """dbt's artifacts folder for this process (concurrent processes never share one); a dbt
        worker process writes to its run's (`share_artifacts_of`), where the run's links point."""
        return target_root(self.data_dir) / self.name / f"{self.target or 'default'}-{_ARTIFACTS_PID or os.getpid()}"

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
    deps: ParseDependencies = field(default_factory=ParseDependencies)
    _dbt_manifest: Any = None
    _graph: Any = None
    _view: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def manifest_json(self) -> Path:
        """dbt's manifest.json of this revision (kept beside the cache entry)."""
        return self._manifest_file.parent / "manifest.json"

    @property
    def cache_folder(self) -> Path:
        """The manifest cache entry this was read from (`cached_variant` reads it back elsewhere)."""
        return self._manifest_file.parent

    def serves(self, dbt_vars: dict[str, Any] | None) -> bool:
        """True when dbt would parse this same manifest with `dbt_vars`."""
        return self.deps.mismatch(dbt_vars or {}) is None

    @property
    def dbt_manifest(self) -> Any:
        """dbt's own Manifest object, for `dbtRunner(manifest=...)` and dbt's selector."""
        with self._lock:
            if self._dbt_manifest is None:
                self._dbt_manifest = pickle.loads(self._manifest_file.read_bytes())
            return self._dbt_manifest

    @property
    def view(self) -> Any:
        """manifest.json as a `ManifestView` (no dbt import); dbt's Manifest when the file is missing."""
        if self._view is None:
            from mage_dbt.dbt.manifest_view import ManifestView
            self._view = ManifestView.read(self.manifest_json) if self.manifest_json.is_file() else self.dbt_manifest
        return self._view

    def select(self, select: list[str] | None, exclude: list[str] | None = None) -> set[str]:
        """Unique ids chosen by dbt's own selector syntax (tag:, path:, +model, @model, ...);
        remembered per manifest, so a repeated run needs no dbt (`mage_dbt.dbt.selection_cache`)."""
        from mage_dbt.dbt.selection_cache import select_nodes

        return select_nodes(self, select, exclude)

    def dbt_graph(self) -> Any:
        """dbt's node graph of this manifest (built once)."""
        from dbt.compilation import Linker

        manifest = self.dbt_manifest
        with self._lock:
            if self._graph is None:
                linker = Linker()
                linker.link_graph(manifest)
                self._graph = linker.graph
            return self._graph


_ARTIFACTS_PID: int | None = None  # set in a dbt worker process: the pid of the run it works for


def share_artifacts_of(pid: int) -> None:
    """dbt's artifacts of this process go to process `pid`'s folder (a dbt worker: its run's, so the
    compiled SQL a failure section links to is where the run says, and is pruned with the run)."""
    global _ARTIFACTS_PID
    _ARTIFACTS_PID = pid


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
    from importlib.metadata import version  # not dbt.version: importing it costs 0.6 s

    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{version('dbt-core')}|{PICKLE_FORMAT}|{CACHE_LAYOUT}|{ref.target}|".encode())
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
    digest.update(package_stamp(ref.project_dir))
    return digest.hexdigest()


def package_stamp(project_dir: Path) -> bytes:
    """Path, size and modification time of every file of the installed packages.

    dbt reads packages from `dbt_packages/` (its `packages-install-path`), where a `local:` package
    is a link to its folder: the walk follows links. Stat only, no reads: measured in the README.
    """
    root = project_dir / _packages_install_path(project_dir)
    if not root.is_dir():
        return b"no-packages"
    rows = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:  # a link loop
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:  # a dangling link: dbt cannot read it either
                continue
            rows.append(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}")
    return "\n".join(rows).encode()


def _packages_install_path(project_dir: Path) -> str:
    text = (project_dir / "dbt_project.yml").read_text(errors="replace") if (project_dir / "dbt_project.yml").is_file() else ""
    if "packages-install-path" not in text:
        return "dbt_packages"
    import yaml

    try:
        return str((yaml.safe_load(text) or {}).get("packages-install-path") or "dbt_packages")
    except yaml.YAMLError:
        return "dbt_packages"


def _project_files(root: Path):
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in files:
            yield Path(folder) / name


class ManifestCache:
    """Loaded manifests of this process, backed by the on-disk cache under the data folder."""

    def __init__(self) -> None:
        self._loaded: dict[Path, LoadedManifest] = {}
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str]] = set()

    def load(self, ref: DbtProjectRef, *, commit: str | None = None,
             dbt_vars: dict[str, Any] | None = None) -> LoadedManifest:
        """The manifest dbt would parse for `ref` with `dbt_vars` (the run's `--vars`).

        `commit`: the git commit of `ref.project_dir` when no git sync marker says it yet (validation).
        """
        ref, commit = pinned_ref(ref, commit)
        base = project_fingerprint(ref, commit)
        dbt_vars = dict(dbt_vars or {})
        with self._lock:
            root = ref.data_dir / "manifest_cache"
            mismatches = []
            for folder in sorted(root.glob(f"{ref.name}-{base}-*"), key=_newest_first):
                loaded = self._loaded.get(folder) or _read_variant(ref, f"{base}-{folder.name.rsplit('-', 1)[1]}", folder)
                if loaded is None:
                    continue
                self._loaded[folder] = loaded
                why = loaded.deps.mismatch(dbt_vars)
                if why is None:
                    touch(folder)  # most recently used: kept by the pruning (mage_dbt.dbt.pruning)
                    return loaded
                mismatches.append(why)
            manifest, payload, deps = parse_project(ref, dbt_vars)
            if mismatches:
                self._report(ref, mismatches[0])
            folder = root / f"{ref.name}-{base}-{deps.key()}"
            _write_cache(folder, manifest, payload, deps, ref.target_path / "manifest.json")
            prune_manifest_cache(root, folder)
            loaded = _read_variant(ref, f"{base}-{deps.key()}", folder)
            assert loaded is not None
            self._loaded[folder] = loaded
            return loaded

    def _report(self, ref: DbtProjectRef, why: str) -> None:
        """Say once per process and var why dbt parses again for other vars."""
        key = (ref.name, why.split(" (")[0])
        if key in self._reported:
            return
        self._reported.add(key)
        message = f"dbt project '{ref.name}': {why} changes what dbt parses; parsing once per distinct value"
        try:  # inside a flow run: its log; otherwise the console
            from prefect.logging import get_run_logger

            get_run_logger().warning(message)
        except Exception:  # noqa: BLE001 - no run context
            LOG.info(message)


def _newest_first(folder: Path) -> float:
    try:
        return -folder.stat().st_mtime
    except OSError:
        return 0.0


def _read_variant(ref: DbtProjectRef, key: str, folder: Path) -> LoadedManifest | None:
    files = [folder / name for name in ("nodes.pkl", "manifest.pkl", "parse_deps.pkl")]
    if not all(f.is_file() for f in files):
        return None  # being written by another process, or left half by a crash
    try:
        nodes = pickle.loads(files[0].read_bytes())
        deps = pickle.loads(files[2].read_bytes())
    except Exception:  # noqa: BLE001 - an unreadable cache entry is a miss
        return None
    return LoadedManifest(ref=ref, key=key, nodes=nodes, _manifest_file=files[1], deps=deps)


def cached_variant(ref: DbtProjectRef, key: str, folder: Path) -> LoadedManifest | None:
    """A manifest cache entry read back by its folder (a dbt worker process loads its parent's)."""
    return _read_variant(ref, key, folder)


def parse_project(ref: DbtProjectRef, dbt_vars: dict[str, Any] | None = None) -> tuple[Any, bytes, ParseDependencies]:
    """Run `dbt parse` in-process with the run's vars; return dbt's Manifest, its pickle and what
    it depends on. Raise a one-line DbtProjectError when the project does not parse."""
    if not (ref.profiles_dir / "profiles.yml").is_file():
        raise DbtProjectError(
            f"no profiles.yml in {ref.profiles_dir}",
            hint="create it (see README) or point DBT_PROFILES_DIR / mage_dbt.yaml profiles_dir at it",
        )
    check_profile(ref)
    dbt_vars = dict(dbt_vars or {})
    result, deps, why = _parse(ref, dbt_vars, traced=True)
    payload = None
    if result.success and result.result is not None and why is None:
        try:
            payload = pickle_dumps(result.result)  # not pickle.dumps: dbt's Manifest pickling loses fields
        except TraceEscaped as exc:
            why = str(exc)
    if why is not None:
        LOG.info("dbt project '%s': run vars pinned for this parse (%s)", ref.name, why)
        result, plain_deps, _ = _parse(ref, dbt_vars, traced=False)
        deps = pin_traced(plain_deps, dbt_vars, why)
    if not result.success or result.result is None:
        reason = error_text(result) or "dbt parse failed"
        raise DbtProjectError(
            f"dbt project '{ref.name}' ({ref.project_dir}) does not parse: {reason}",
            hint=f"fix the project, then check with: dbt parse --project-dir {ref.project_dir}",
        )
    return result.result, payload or pickle_dumps(result.result), deps


def _parse(ref: DbtProjectRef, dbt_vars: dict[str, Any], *, traced: bool):
    """One `dbt parse`; returns (dbtRunnerResult, parse dependencies, why tracing gave up or None)."""
    args = ["parse", *ref.base_args(), "--log-level", "none", "--no-partial-parse"]
    if dbt_vars:
        args += ["--vars", json.dumps(dbt_vars, default=str)]
    (ref.target_path / "manifest.json").unlink(missing_ok=True)  # never read a stale one afterwards
    with dbt_lock(), tracing(RUN_VARS, enabled=traced) as recorder:
        result = invoke_dbt(args, invocation_log=ref.invocation_log,
                            note={"traced": traced, "vars": sorted(dbt_vars)})
    why = recorder.gave_up
    if traced and not result.success and RUN_VARS & dbt_vars.keys():
        # Only a parse that traced run dates may have failed because of the tracing: retry it
        # with the dates pinned. Without them the failure is the project's own: report it as is.
        why = why or "the traced parse failed"
    return result, (pin_traced(recorder.deps, dbt_vars, why) if why else recorder.deps), why


def check_profile(ref: DbtProjectRef) -> None:
    """Fail early, in one line, when the project's profile or the requested target does not exist."""
    from mage_dbt.dbt.profile_check import check_profile as check

    check(ref)


def _write_cache(folder: Path, manifest: Any, manifest_pickle: bytes, deps: ParseDependencies,
                 manifest_json: Path) -> None:
    """Write the cache entry atomically (temp files + rename), so readers never see half a cache;
    `parse_deps.pkl` is written last, and an entry without it is not read.

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
    payloads = (("manifest.json", text.encode()), ("manifest.pkl", manifest_pickle),
                ("nodes.pkl", pickle_dumps(nodes)), ("parse_deps.pkl", pickle.dumps(deps, protocol=4)))
    for name, payload in payloads:
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(payload)
        os.replace(tmp, folder / name)


def load_manifest_json(path: Path) -> dict[str, DbtNode]:
    """Node index straight from a manifest.json file (the cold path measured in bench/)."""
    return nodes_from_manifest_dict(json.loads(path.read_text()))


DEFAULT_CACHE = ManifestCache()


def load_manifest(ref: DbtProjectRef, *, commit: str | None = None,
                  dbt_vars: dict[str, Any] | None = None) -> LoadedManifest:
    """Load the manifest of `ref` for a run with `dbt_vars`: parsed at most once per revision,
    target and parse-relevant var values."""
    return DEFAULT_CACHE.load(ref, commit=commit, dbt_vars=dbt_vars)
