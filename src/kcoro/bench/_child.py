"""One measurement, in a fresh interpreter: ``python _child.py '<json spec>'``.

Run by file path (never as ``-m kcoro.bench._child``) so that importing it does not import the
kcoro package: a peer's measurement loads only its workload module (by path) and its library.
The last line of stdout is ``KCORO-BENCH-RESULT {json}``::

    {"status": "ok", "value": 123.4, "extra": {...}, "seconds": 0.41}
    {"status": "not installed", "detail": "No module named 'trio'"}
    {"status": "not available yet", "detail": "kcoro.select not available yet"}
    {"status": "error", "detail": "ValueError: ..."}

Spec keys: ``module``, ``func``, ``n``, ``kwargs``, ``warmup`` (work size of a warm-up run, 0 for
none), ``kcoro`` (this is a kcoro row), ``with_metrics``, ``ndjson`` (path to append records to),
``ndjson_interval``, ``labels`` (copied into NDJSON records).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from typing import Any

MARKER = "KCORO-BENCH-RESULT "
HERE = os.path.dirname(os.path.abspath(__file__))


def _load(module: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"kcoro_bench_{module}",
                                                  os.path.join(HERE, f"{module}.py"))
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load workload module {module}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _start_metrics() -> Any:
    try:
        metrics = importlib.import_module("kcoro.metrics")
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("kcoro"):
            raise NotImplementedError("kcoro.metrics not available yet") from None
        raise
    serve = getattr(metrics, "serve", None)
    if serve is None:
        raise NotImplementedError("kcoro.metrics.serve not available yet")
    serve()
    return metrics


def _stop(metrics: Any) -> None:
    stop = getattr(metrics, "stop", None)
    if callable(stop):
        stop()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    server = sampler = None
    try:
        fn = getattr(_load(spec["module"]), spec["func"])
        kwargs = spec.get("kwargs", {})
        if spec.get("kcoro") and spec.get("with_metrics"):
            server = _start_metrics()
        if spec.get("warmup"):
            fn(spec["warmup"], **kwargs)
        if spec.get("kcoro") and spec.get("ndjson"):
            from kcoro.bench.sampler import Sampler

            sampler = Sampler(spec["ndjson"], spec.get("ndjson_interval", 0.25),
                              spec.get("labels", {}))
            sampler.start()
        t0 = time.perf_counter()
        value, extra = fn(spec["n"], **kwargs)
        seconds = time.perf_counter() - t0
        if sampler is not None:
            sampler.stop()
            extra = {**extra, "ndjson_source": sampler.source, "ndjson_samples": sampler.count}
        return {"status": "ok", "value": float(value), "extra": extra, "seconds": seconds}
    except NotImplementedError as exc:
        return {"status": "not available yet", "detail": str(exc)}
    except ImportError as exc:
        return {"status": "not installed", "detail": str(exc)}
    except BaseException as exc:
        tb = traceback.format_exc(limit=6)
        return {"status": "error", "detail": f"{type(exc).__name__}: {exc}", "traceback": tb}
    finally:
        if sampler is not None:
            sampler.stop()
        if server is not None:
            _stop(server)


def main() -> int:
    if sys.path and os.path.abspath(sys.path[0] or ".") == HERE:
        del sys.path[0]  # never let a workload module shadow a library module
    spec = json.loads(sys.argv[1])
    result = measure(spec)
    sys.stdout.flush()
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
