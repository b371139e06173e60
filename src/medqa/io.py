"""Atomic file writes: write a temporary file beside the target, fsync, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def new_run_dir(kind: str, root: str | Path = "runs") -> str:
    """A new folder name `runs/KIND-YYYYmmdd-HHMMSS` for a run started without `--out`: never an earlier
    run's folder (a suffix -2, -3 ... when one exists). Processes of one torchrun / accelerate launch agree on
    the name: it is taken from the launcher's start time (their common parent), not each process's clock."""
    import time

    started = time.time()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        try:
            import psutil

            started = psutil.Process(os.getppid()).create_time()
        except Exception:  # noqa: BLE001 - no parent information: the processes' clocks (same second in practice)
            pass
        return str(Path(root) / time.strftime(f"{kind}-%Y%m%d-%H%M%S", time.localtime(started)))
    name = Path(root) / time.strftime(f"{kind}-%Y%m%d-%H%M%S", time.localtime(started))
    candidate, i = name, 1
    while candidate.exists():
        i += 1
        candidate = name.with_name(f"{name.name}-{i}")
    return str(candidate)
