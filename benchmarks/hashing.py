"""The ``argument_hash`` scenario: fingerprinting a large DataFrame or array passed to a step.

Per run: a mixed-dtype DataFrame of about ``n`` MB (int, float, string, categorical, tz-aware
datetime and object columns) and a float array of ``n`` MB are built (not timed), then each is
fingerprinted by ``stable_hash`` (by its buffers) and by ``legacy_stable_hash`` (the walk of its
pickle reduction that pyergon 0.9 used for every argument).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.result import RunResult
from pyergon._hashing import legacy_stable_hash, stable_hash

__all__ = ["BYTES_PER_ROW", "argument_hash", "mixed_frame"]

BYTES_PER_ROW = 96
"""About what a row of ``mixed_frame`` takes in memory (``memory_usage(deep=True)``), with
pandas 3 and pyarrow (its strings in Arrow buffers; 145 with Python strings)."""


def mixed_frame(rows: int) -> Any:
    import numpy as np
    import pandas as pd

    generator = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "count": generator.integers(0, 1_000, rows),
            "price": generator.random(rows),
            "name": generator.choice(["alpha", "beta", "gamma", "delta"], rows),
            "kind": pd.Categorical(generator.choice(["x", "y", "z"], rows)),
            "at": pd.date_range("2024-01-01", periods=rows, freq="s", tz="Europe/Paris"),
            "note": pd.Series(generator.choice(["a", "b"], rows), dtype=object),
        }
    )


def _seconds(hash_arguments: Callable[[tuple[Any, ...], dict[str, Any]], str], value: Any) -> float:
    started = time.perf_counter()
    hash_arguments((value,), {})
    return time.perf_counter() - started


async def argument_hash(_backend: str, n: int) -> RunResult:
    """Fingerprint an ``n`` MB DataFrame and an ``n`` MB array, the new way and the old way."""
    import numpy as np

    frame = mixed_frame(n * 1_000_000 // BYTES_PER_ROW)
    array = np.random.default_rng(1).random(n * 1_000_000 // 8)
    frame_s = _seconds(stable_hash, frame)
    legacy_frame_s = _seconds(legacy_stable_hash, frame)
    array_s = _seconds(stable_hash, array)
    legacy_array_s = _seconds(legacy_stable_hash, array)
    return RunResult(
        frame_s,
        extra={
            "frame_mb": round(int(frame.memory_usage(deep=True).sum()) / 1e6, 1),
            "frame_hash_s": frame_s,
            "legacy_frame_hash_s": legacy_frame_s,
            "frame_speedup": legacy_frame_s / frame_s,
            "array_mb": round(array.nbytes / 1e6, 1),
            "array_hash_s": array_s,
            "legacy_array_hash_s": legacy_array_s,
            "array_speedup": legacy_array_s / array_s,
        },
    )
