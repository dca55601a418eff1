"""Content-addressed storage of the images a station received and the pictures it drew.

A file's key is the SHA-256 of its bytes plus a suffix (``<64 hex>.png``); it lives at
``root/<first two hex>/<key>``. Keys come from the log, never from a client: :meth:`ContentStore.path`
accepts only the key pattern, so no request can name another path on the server.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from flawscope.errors import DataError

_KEY = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{2,5}$")


class ContentStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, suffix: str) -> str:
        """Store ``data`` once (a second put of the same bytes is free) and return its key."""
        key = f"{hashlib.sha256(data).hexdigest()}.{suffix.lower().lstrip('.')}"
        target = self.path(key)
        if target.exists():
            return key
        target.parent.mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return key

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise DataError(f"{key!r} is not a stored file's key.")
        return self.root / key[:2] / key
