"""Writing a file so that a reader (a polling CLI, a browser, a rerun after a crash) never sees half of it.

The bytes go to a temporary file beside the target, are fsynced, and the file is renamed over the target; a failed
write (a full disk) removes the temporary file and leaves the old target as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (its folder must exist)."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
