"""State keys of dbt nodes: a hash of everything a node's build depends on, computed before it runs.

A node's key covers its code with whitespace and comments ignored (SQL `--` and `/* */`, Jinja
`{# #}`; string literals and quoted names are kept as written; Python models verbatim), its
config, the SQL of every macro it uses (transitively), the values of the vars it reads, the keys
of its upstream nodes (recursively) and the data version of the sources it reads, plus the run's
interval for incremental models (and the event-time window for microbatch models), and the
environment: dbt and adapter version, the target's identity, dbt_project.yml. Two builds with
the same key write the same data, so the second may be skipped (`mage_dbt.runs.reuse`).

When in doubt, a node has no key (`StateKey.key is None`) and runs, with the reason: its code or
a macro it uses reads `run_started_at`, `invocation_id`, `env_var()`, the clock (`now()`,
`current_timestamp`, ...) or a var by a computed name; a source it reads has no data version; an
upstream it reads is not built by this run and has no recorded build; an upstream has no key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

# Reading any of these makes a build depend on the moment or the machine: such a node always runs.
_VOLATILE = re.compile(
    r"\b(run_started_at|invocation_id|env_var|current_timestamp|current_date|current_time|localtimestamp|"
    r"sysdate|systimestamp)\b|\b(now|getdate|random|rand|uuid|gen_random_uuid|uuid_generate_v4|clock_timestamp"
    r"|statement_timestamp|transaction_timestamp|timeofday)\s*\(|modules\.datetime",
    re.IGNORECASE,
)
_VAR_NAMED = re.compile(r"""\bvar\s*\(\s*(["'])([^"']+)\1""")
_VAR_ANY = re.compile(r"\bvar\s*\(")
_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class StateKey:
    """A node's key (None: it cannot be trusted and runs; `reason` says why) and its parts' hashes."""

    unique_id: str
    key: str | None
    reason: str | None = None
    parts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyInputs:
    """What a key depends on besides the manifest: the run and the recorded state of the target."""

    run_vars: Mapping[str, Any]
    interval: str  # the run's interval, "start/end"
    environment: str  # dbt/adapter version, target identity, dbt_project.yml (see environment_stamp)
    built_here: frozenset[str]  # node ids this run builds; other upstreams count by their recorded key
    recorded: Mapping[str, str] = field(default_factory=dict)  # node id -> key of its last successful build
    source_versions: Mapping[str, str] = field(default_factory=dict)  # source id -> data version
    source_doubts: Mapping[str, str] = field(default_factory=dict)  # source id -> why it has no version
    event_time: str | None = None  # microbatch window "start/end"


def normalize_sql(text: str) -> str:
    """`text` without comments and insignificant whitespace; quoted text is kept as written."""
    out: list[str] = []
    i, n = 0, len(text)
    pending_space = False
    while i < n:
        ch = text[i]
        two = text[i:i + 2]
        if ch in "'\"`":
            end = i + 1
            while end < n:
                if text[end] == ch:
                    if end + 1 < n and text[end + 1] == ch:  # '' or "" inside the literal
                        end += 2
                        continue
                    break
                end += 1
            _emit(out, text[i:end + 1], pending_space)
            pending_space = False
            i = end + 1
            continue
        if two == "--":
            end = text.find("\n", i)
            i = n if end < 0 else end
            pending_space = True
            continue
        if two in ("/*", "{#"):
            end = text.find("*/" if two == "/*" else "#}", i + 2)
            i = n if end < 0 else end + 2
            pending_space = True
            continue
        if ch.isspace():
            pending_space = True
            i += 1
            continue
        _emit(out, ch, pending_space)
        pending_space = False
        i += 1
    return "".join(out)


def _emit(out: list[str], piece: str, pending_space: bool) -> None:
    # A space survives only between two word characters (`select a` vs `selecta`).
    if pending_space and out and _WORD.match(out[-1][-1:]) and _WORD.match(piece[:1]):
        out.append(" ")
    out.append(piece)


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class KeyComputer:
    """Computes (and memoizes) the keys of a manifest's nodes for one run."""

    def __init__(self, dbt_manifest: Any, inputs: KeyInputs) -> None:
        self.manifest = dbt_manifest
        self.inputs = inputs
        self._keys: dict[str, StateKey] = {}
        self._macros: dict[str, tuple[str, str | None, frozenset[str], list[str]]] = {}

    def keys(self, unique_ids: list[str]) -> dict[str, StateKey]:
        return {uid: self.key(uid) for uid in unique_ids}

    def key(self, uid: str) -> StateKey:
        found = self._keys.get(uid)
        if found is None:
            found = self._keys[uid] = self._compute(uid)
        return found

    # -- one node ---------------------------------------------------------------------------------
    def _compute(self, uid: str) -> StateKey:
        if uid.startswith("source."):
            return self._source(uid)
        node = self.manifest.nodes.get(uid)
        if node is None:
            return StateKey(uid, None, f"{uid} is not in the manifest")
        language = str(getattr(node, "language", "sql") or "sql")
        raw = getattr(node, "raw_code", "") or ""
        code = raw if language == "python" else normalize_sql(raw)
        config = node.config.to_dict(omit_none=False) if hasattr(node.config, "to_dict") else {}
        # dates as manifest.json writes them (`begin`): the same key from dbt's objects and from the JSON view
        config = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in config.items()}
        seed = _seed_digest(node) if node.resource_type == "seed" else None
        macros_hash, macro_doubt, macro_vars = self._macro_closure(list(node.depends_on.macros or ()))
        doubt = _volatile(code, "its code") or _volatile(json.dumps(config, default=str), "its config") or macro_doubt
        if language != "python" and _VAR_ANY.search(code) and len(_VAR_ANY.findall(code)) > len(_VAR_NAMED.findall(code)):
            doubt = doubt or "its code reads a var by a computed name"
        var_names = sorted(set(m[1] for m in _VAR_NAMED.findall(code)) | macro_vars)
        run_vars = self.inputs.run_vars
        parts: dict[str, str] = {
            "code": _digest(code, seed, getattr(getattr(node, "test_metadata", None), "to_dict", lambda: None)()),
            "config": _digest(config),
            "macros": macros_hash,
            "vars": _digest({name: run_vars.get(name, "<default>") for name in var_names}),
            "environment": self.inputs.environment,
        }
        if config.get("materialized") == "incremental":
            parts["interval"] = _digest(self.inputs.interval)
            if config.get("incremental_strategy") == "microbatch":
                parts["event_time"] = _digest(self.inputs.event_time)
        for up in dict.fromkeys(getattr(node.depends_on, "nodes", None) or ()):
            up_key = self._upstream(up)
            if up_key.key is None:
                doubt = doubt or f"upstream {_short(up)}: {up_key.reason}"
            parts[f"upstream:{up}"] = up_key.key or "?"
        if node.resource_type == "seed" and seed is None:
            doubt = doubt or "its seed file could not be read"
        if doubt:
            return StateKey(uid, None, doubt, parts)
        return StateKey(uid, _digest(parts), None, parts)

    def _upstream(self, up: str) -> StateKey:
        """An upstream's key: computed when this run builds it (or it is ephemeral or a source),
        else the key of its last recorded build (its data now)."""
        node = self.manifest.nodes.get(up)
        ephemeral = node is not None and getattr(node.config, "materialized", None) == "ephemeral"
        if up.startswith("source.") or ephemeral or up in self.inputs.built_here:
            return self.key(up)
        recorded = self.inputs.recorded.get(up)
        if recorded is None:
            return StateKey(up, None, "not built by this run and no build of it is recorded on this target")
        return StateKey(up, recorded)

    def _source(self, uid: str) -> StateKey:
        version = self.inputs.source_versions.get(uid)
        if version is None:
            why = self.inputs.source_doubts.get(uid) or "no data version (no loaded_at_field, no recorded load)"
            return StateKey(uid, None, f"source {_short(uid)} has {why}" if not why.startswith("source") else why)
        return StateKey(uid, _digest(uid, version), None, {"data": version})

    def _macro_closure(self, roots: list[str]) -> tuple[str, str | None, set[str]]:
        """(hash of the SQL of every macro reached, why one makes the node untrusted, vars they read)."""
        seen: set[str] = set()
        todo = list(roots)
        hashes, doubt, names = [], None, set()
        while todo:
            macro_id = todo.pop()
            if macro_id in seen:
                continue
            seen.add(macro_id)
            digest, why, var_names, deps = self._macro(macro_id)
            hashes.append((macro_id, digest))
            doubt = doubt or why
            names |= var_names
            todo.extend(deps)
        return _digest(sorted(hashes)), doubt, names

    def _macro(self, macro_id: str) -> tuple[str, str | None, frozenset[str], list[str]]:
        """One macro's (hash, doubt, vars, macros it calls), once per run (many nodes share a macro)."""
        found = self._macros.get(macro_id)
        if found is None:
            found = self._macros[macro_id] = self._read_macro(macro_id)
        return found

    def _read_macro(self, macro_id: str) -> tuple[str, str | None, frozenset[str], list[str]]:
        macro = self.manifest.macros.get(macro_id)
        if macro is None:
            return "missing", None, frozenset(), []
        sql = normalize_sql(macro.macro_sql or "")
        why = _volatile(sql, f"macro {macro_id.split('.', 1)[-1]}")
        if not why and len(_VAR_ANY.findall(sql)) > len(_VAR_NAMED.findall(sql)):
            why = f"macro {macro_id.split('.', 1)[-1]} reads a var by a computed name"
        names = frozenset(m[1] for m in _VAR_NAMED.findall(sql))
        return _digest(sql), why, names, list(getattr(macro.depends_on, "macros", None) or ())


def _seed_digest(node: Any) -> str | None:
    """A seed's content: dbt's sha256 checksum, or (dbt checksums big seeds by path only) the file's hash."""
    checksum = getattr(node, "checksum", None)
    if checksum is not None and checksum.name == "sha256":
        return checksum.checksum
    try:
        from pathlib import Path

        return hashlib.sha256((Path(node.root_path) / node.original_file_path).read_bytes()).hexdigest()
    except (OSError, TypeError, AttributeError):
        return None


def _volatile(text: str, where: str) -> str | None:
    match = _VOLATILE.search(text)
    if match is None:
        return None
    return f"{where} reads {match.group(0).rstrip('(').strip()}, which differs on every run"


def _short(uid: str) -> str:
    return ".".join(uid.split(".")[2:]) or uid


def source_queries(dbt_manifest: Any, source_ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The SQL giving each source's data version (`max(loaded_at_field)`, or its `loaded_at_query`),
    and why the others have none."""
    queries, doubts = {}, {}
    for uid in source_ids:
        source = dbt_manifest.sources.get(uid)
        if source is None:
            doubts[uid] = f"source {_short(uid)} is not in the manifest"
            continue
        custom = getattr(source, "loaded_at_query", None)
        field_name = getattr(source, "loaded_at_field", None)
        if custom:
            queries[uid] = f"select ({custom})"
        elif field_name and source.relation_name:
            queries[uid] = f"select max({field_name}), count(*) from {source.relation_name}"
        else:
            doubts[uid] = f"source {_short(uid)} has no loaded_at_field (no freshness): its data version is unknown"
    return queries, doubts


def upstream_sources(dbt_manifest: Any, unique_ids: list[str]) -> list[str]:
    """The sources the nodes read, directly or through ephemeral models."""
    found: dict[str, None] = {}
    seen: set[str] = set()
    todo = list(unique_ids)
    while todo:
        uid = todo.pop()
        if uid in seen:
            continue
        seen.add(uid)
        node = dbt_manifest.nodes.get(uid)
        for up in (getattr(node.depends_on, "nodes", None) or () if node is not None else ()):
            if up.startswith("source."):
                found[up] = None
            else:
                todo.append(up)
    return list(found)


def environment_stamp(adapter_type: str, target_identity: Mapping[str, Any], project_file: bytes) -> str:
    """The environment part of every key: dbt and adapter versions, the target, dbt_project.yml."""
    from importlib import metadata

    import dbt.version

    try:
        adapter_version = metadata.version(f"dbt-{adapter_type}")
    except metadata.PackageNotFoundError:
        adapter_version = "?"
    return _digest(dbt.version.__version__, adapter_type, adapter_version, dict(target_identity),
                   hashlib.sha256(project_file).hexdigest())


def diff_reason(parts: Mapping[str, str], before: Mapping[str, str], label=lambda uid: _short(uid)) -> str:
    """Why a key differs from a recorded one, from the parts that changed."""
    changed = []
    names = {"code": "code", "config": "config", "macros": "macros", "vars": "vars it reads",
             "environment": "dbt version or target", "interval": "interval", "event_time": "event-time window"}
    for part, name in names.items():
        if parts.get(part) != before.get(part):
            changed.append("new interval" if part == "interval" else f"{name} changed")
    ups = [p for p in parts if p.startswith("upstream:")]
    moved = [label(p.split(":", 1)[1]) for p in ups if parts.get(p) != before.get(p)]
    if moved:
        changed.append(f"upstream changed: {', '.join(moved[:5])}{' ...' if len(moved) > 5 else ''}")
    if set(ups) != {p for p in before if p.startswith("upstream:")}:
        changed.append("upstreams changed")
    return "; ".join(changed) or "key changed"
