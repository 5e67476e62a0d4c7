"""The kcoro metrics NDJSON schema, shared by ``kcoro top --ndjson``, ``kcoro bench --ndjson``
and the metrics socket.

Every record is one JSON object on one line with ``"type"`` and ``"schema"`` (this module's
:data:`SCHEMA_VERSION`).  Readers must ignore fields they do not know (new ones may be added
without a version bump); removing or retyping a field bumps the version.  JSON has no infinity:
the ``capacity`` of an unlimited channel is ``null``.

Record types (fields in :data:`RECORDS`; docs/MONITOR.md explains each):

``hello``     first line on a metrics socket: who is serving and the emit rules
``snapshot``  everything at one instant (cumulative counters; what the socket streams)
``channel``   one channel over one interval: packets/s, bytes/s, depth, failures, zref deltas
``tokens``    the token kernel over one interval (tickets/s, outstanding, zombies)
``arena``     one arena (in use, peak, spills) over one interval
``runtime``   one runtime and the state of each of its tasks
``summary``   the end of a stream: averages and peaks per channel (bench_chan_metrics' AVERAGE)
``end``       why a stream stopped (target exited, count reached ...)
``subscribe`` sent by a monitor on the socket: at most one snapshot per ``interval_s``

:func:`validate` checks a record against its type; :func:`json_schema` gives the same rules as a
JSON Schema (draft 2020-12) document for other tools.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "RECORDS",
    "SCHEMA_VERSION",
    "SchemaError",
    "dumps",
    "json_schema",
    "validate",
]

SCHEMA_VERSION = 1


class SchemaError(ValueError):
    """A record does not match the schema; ``path`` says where (``channels[2].sends``)."""

    def __init__(self, path: str, msg: str) -> None:
        super().__init__(f"{path}: {msg}" if path else msg)
        self.path = path


@dataclass(frozen=True)
class Obj:
    required: Mapping[str, Spec]
    optional: Mapping[str, Spec] = field(default_factory=dict)


@dataclass(frozen=True)
class Arr:
    item: Spec


@dataclass(frozen=True)
class Nullable:
    inner: Spec


Spec = Union[str, Obj, Arr, Nullable]  # noqa: UP007 (a runtime alias used in annotations)
INT, NUM, STR, BOOL = "integer", "number", "string", "boolean"

_ZREF = Obj({k: INT for k in ("sent", "received", "fallback_small", "fallback_capacity",
                               "canceled", "aborted_close")})
_FAIL = Obj({f"{side}_{cause}": INT
             for side in ("send", "recv")
             for cause in ("would_block", "timeout", "closed", "cancelled")},
            {"send_dropped": INT})
_CHANNEL_STATS = Obj({
    "name": STR, "kind": STR, "capacity": Nullable(INT), "buffered": INT, "peak": INT,
    "waiting_senders": INT, "waiting_receivers": INT, "closed_for_send": BOOL,
    "closed_for_recv": BOOL, "sends": INT, "recvs": INT, "bytes_sent": INT, "bytes_recv": INT,
    "send_would_block": INT, "send_timeout": INT, "send_closed": INT, "send_cancelled": INT,
    "recv_would_block": INT, "recv_timeout": INT, "recv_closed": INT, "recv_cancelled": INT,
    "undelivered": INT, "zref_sent": INT, "zref_received": INT, "zref_fallback_small": INT,
    "zref_fallback_capacity": INT, "zref_canceled": INT, "zref_aborted_close": INT,
    "first_op_ns": INT, "last_op_ns": INT, "snapshot_ns": INT,
}, {"id": INT, "send_dropped": INT})
_TOKENS = Obj({k: INT for k in ("published", "parked", "completed", "cancelled", "outstanding",
                                 "zombies")}, {"keyed": INT})
_ARENA_FIELDS = {k: INT for k in ("capacity", "in_use", "peak", "blocks", "allocs", "frees",
                                  "spills", "fallbacks")}
_ARENA = Obj({"name": STR, **_ARENA_FIELDS})
_PARKED_ON = Nullable(Obj({"kind": STR, "name": STR}))
_TASK = Obj({"id": INT, "name": STR, "state": STR, "parked_on": _PARKED_ON})
_RUNTIME = Obj({"thread": STR, "steps": INT, "polls": INT, "tasks": Arr(_TASK)})
_HEAD = {"type": STR, "schema": INT}
_SAMPLE = {**_HEAD, "pid": INT, "t": NUM}  # every per-sample record

RECORDS: dict[str, Obj] = {
    "hello": Obj({**_HEAD, "pid": INT, "argv": Arr(STR), "python": STR, "kcoro": STR,
                  "emit": Obj({"min_ops": INT, "min_ms": NUM, "tick_ms": NUM,
                               "heartbeat_s": NUM})}),
    "snapshot": Obj({**_SAMPLE, "mono_ns": INT, "channels": Arr(_CHANNEL_STATS),
                     "tokens": _TOKENS, "arenas": Arr(_ARENA), "runtimes": Arr(_RUNTIME)},
                    {"seq": INT, "dropped": INT}),
    "channel": Obj({
        **_SAMPLE, "seq": INT, "interval_s": NUM, "channel": STR, "kind": STR,
        "capacity": Nullable(INT), "depth": INT, "peak_depth": INT, "waiting_senders": INT,
        "waiting_receivers": INT, "closed": BOOL,
        "packets_per_s": NUM, "ema_packets_per_s": NUM, "peak_packets_per_s": NUM,
        "sends_per_s": NUM, "recvs_per_s": NUM, "bytes_sent_per_s": NUM,
        "bytes_recv_per_s": NUM, "gbps": NUM,
        "sends": INT, "recvs": INT, "bytes_sent": INT, "bytes_recv": INT,
        "d_sends": INT, "d_recvs": INT, "d_bytes_sent": INT, "d_bytes_recv": INT,
        "failures": _FAIL, "d_failures": _FAIL, "undelivered": INT, "d_undelivered": INT,
        "zref": _ZREF, "d_zref": _ZREF,
    }, {"id": INT}),
    "tokens": Obj({**_SAMPLE, "seq": INT, "interval_s": NUM, **_TOKENS.required,
                   "tickets_per_s": NUM, "d_published": INT, "d_completed": INT,
                   "d_cancelled": INT, "d_zombies": INT}, {"keyed": INT}),
    "arena": Obj({**_SAMPLE, "seq": INT, "interval_s": NUM, **_ARENA.required,
                  "d_allocs": INT, "d_frees": INT, "d_spills": INT, "d_fallbacks": INT}),
    "runtime": Obj({**_SAMPLE, "seq": INT, "thread": STR, "steps": INT, "polls": INT,
                    "tasks": Arr(_TASK)}),
    "summary": Obj({**_HEAD, "pid": INT, "samples": INT, "duration_s": NUM,
                    "channels": Arr(Obj({
                        "channel": STR, "kind": STR, "samples": INT,
                        "avg_packets_per_s": NUM, "peak_packets_per_s": NUM,
                        "avg_gbps": NUM, "peak_gbps": NUM, "sends": INT, "recvs": INT,
                        "zref_per_sample": Obj({"sent": NUM, "received": NUM,
                                                "aborted_close": NUM})}))}),
    "end": Obj({**_HEAD, "pid": INT, "reason": STR}),
    "subscribe": Obj({**_HEAD, "interval_s": NUM}),
}

_PY_TYPES: dict[str, tuple[type, ...]] = {
    INT: (int,), NUM: (int, float), STR: (str,), BOOL: (bool,),
}


def _check(value: Any, spec: Spec, path: str) -> None:
    if isinstance(spec, Nullable):
        if value is not None:
            _check(value, spec.inner, path)
        return
    if isinstance(spec, str):
        ok = isinstance(value, _PY_TYPES[spec])
        if ok and spec != BOOL and isinstance(value, bool):
            ok = False  # JSON true is not a number
        if not ok:
            raise SchemaError(path, f"expected {spec}, got {type(value).__name__} {value!r:.60}")
        return
    if isinstance(spec, Arr):
        if not isinstance(value, list):
            raise SchemaError(path, f"expected array, got {type(value).__name__}")
        for i, v in enumerate(value):
            _check(v, spec.item, f"{path}[{i}]")
        return
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected object, got {type(value).__name__}")
    for k, sub in spec.required.items():
        if k not in value:
            raise SchemaError(f"{path}.{k}" if path else k, "missing")
        _check(value[k], sub, f"{path}.{k}" if path else k)
    for k, sub in spec.optional.items():
        if k in value:
            _check(value[k], sub, f"{path}.{k}" if path else k)


def validate(record: Any) -> None:
    """Raise :class:`SchemaError` unless ``record`` is a valid record of a known type."""
    if not isinstance(record, dict):
        raise SchemaError("", f"a record is a JSON object, got {type(record).__name__}")
    t = record.get("type")
    spec = RECORDS.get(t) if isinstance(t, str) else None
    if spec is None:
        raise SchemaError("type", f"unknown record type {t!r}")
    if record.get("schema") != SCHEMA_VERSION:
        raise SchemaError("schema", f"expected {SCHEMA_VERSION}, got {record.get('schema')!r}")
    _check(record, spec, "")


def dumps(record: Mapping[str, Any]) -> str:
    """One compact NDJSON line (no trailing newline).  NaN/Infinity are refused: they are not
    JSON."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


def _to_json_schema(spec: Spec) -> dict[str, Any]:
    if isinstance(spec, Nullable):
        inner = _to_json_schema(spec.inner)
        t = inner.get("type")
        if isinstance(t, str):
            return {**inner, "type": [t, "null"]}
        return {"anyOf": [inner, {"type": "null"}]}
    if isinstance(spec, str):
        return {"type": spec}
    if isinstance(spec, Arr):
        return {"type": "array", "items": _to_json_schema(spec.item)}
    props = {k: _to_json_schema(v) for k, v in {**spec.required, **spec.optional}.items()}
    return {"type": "object", "required": sorted(spec.required), "properties": props}


def json_schema() -> dict[str, Any]:
    """The schema as a JSON Schema (draft 2020-12) document: one of the record types."""
    variants = []
    for name, spec in RECORDS.items():
        s = _to_json_schema(spec)
        s["properties"]["type"] = {"const": name}
        s["properties"]["schema"] = {"const": SCHEMA_VERSION}
        variants.append(s)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"kcoro metrics NDJSON record (schema {SCHEMA_VERSION})",
            "oneOf": variants}
