"""Run directories: fresh by default, never overwritten, with atomic JSON writes."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional


class RunDirError(Exception):
    """A run directory that cannot be used, explained in one line."""


def new_run_dir(model: str, run_dir: Optional[str] = None, root: str = "runs") -> Path:
    """Create the run directory: ``run_dir`` if given (must be new or empty), else
    ``runs/<model>-<time>`` with a numeric suffix if that exists already."""
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunDirError(f"run directory {path} already exists and is not empty; choose another --run-dir")
    else:
        base = Path(root) / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 1
        while path.exists():
            path, n = Path(f"{base}-{n}"), n + 1
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test", delete=True)
        probe.close()
    except OSError as exc:
        raise RunDirError(f"cannot write run directory {path}: {exc.strerror or exc}") from None
    return path


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
