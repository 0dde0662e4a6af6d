"""Pickle dbt's parsed Manifest so that it loads back intact (the manifest cache's on-disk format).

dbt-core 1.11's `Manifest.__reduce_ex__` passes the manifest's fields positionally but leaves out
`fixtures`, so every later argument lands one field early: an unpickled manifest's `fixtures`
holds the doc lookup and its `_source_lookup` holds the ref lookup, and every `source()` call
then fails to compile ("RefableLookup.find() missing 1 required positional argument:
'manifest'"). We pickle a Manifest by field name instead and leave out dbt's private caches
(lookups, macro indexes), which dbt rebuilds on first use.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from typing import Any

FORMAT = "fields-v1"  # part of the manifest cache key: caches written another way are not reused


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _ManifestPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


class _ManifestPickler(pickle.Pickler):
    _manifest_type: Any = None

    def reducer_override(self, obj: Any) -> Any:
        if self._manifest_type is None:
            from dbt.contracts.graph.manifest import Manifest

            type(self)._manifest_type = Manifest
        if type(obj) is self._manifest_type:
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
            return _rebuild_manifest, (fields,)
        return NotImplemented


def _rebuild_manifest(fields: dict[str, Any]) -> Any:
    from dbt.contracts.graph.manifest import Manifest

    return Manifest(**fields)
