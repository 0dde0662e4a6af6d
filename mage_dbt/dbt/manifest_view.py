"""dbt's manifest.json read with attribute access, for code that reads node code, config and macros
but does not run dbt: state keys (`mage_dbt.dbt.state_keys`), the freshness gate's source lookup and
the run-date scan (`mage_dbt.refresh.date_reads`).

Unpickling dbt's own Manifest imports dbt's node classes first (about 0.7 s of a run's start-up); a run
whose every node is reused never calls dbt, so it reads the JSON document the manifest cache keeps
beside the pickle instead (`LoadedManifest.view`). The view answers the attribute names of dbt's
objects (`node.raw_code`, `node.depends_on.macros`, `node.config.to_dict()`, `macro.macro_sql`,
`source.loaded_at_field`); a field the document lacks reads as None, as an unset field of dbt's does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping


class JsonObject:
    """One JSON object of the manifest with attribute access; nested objects are wrapped too."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self._data.get(name))

    def to_dict(self, omit_none: bool = False) -> dict[str, Any]:
        """The object as dbt serialised it (`omit_none=False`, as manifest.json is written)."""
        data = dict(self._data)
        return {k: v for k, v in data.items() if v is not None} if omit_none else data


def _wrap(value: Any) -> Any:
    return JsonObject(value) if isinstance(value, dict) else value


class _Section(Mapping[str, Any]):
    """`nodes`, `sources` or `macros` of the document: unique id -> JsonObject."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw

    def __getitem__(self, key: str) -> JsonObject:
        return JsonObject(self._raw[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


class ManifestView:
    """The parts of manifest.json that keys and scans read, shaped like dbt's Manifest."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.nodes = _Section(document.get("nodes") or {})
        self.sources = _Section(document.get("sources") or {})
        self.macros = _Section(document.get("macros") or {})
        self.metadata = JsonObject(document.get("metadata") or {})

    @classmethod
    def read(cls, path: Path) -> "ManifestView":
        return cls(json.loads(path.read_text()))
