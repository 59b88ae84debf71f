"""The content hash of a blob, as it travels on the wire and sits in manifests: one spelling for all.

An uploaded episode's payload, a published checkpoint and the robot's last good checkpoint are named and
checked by the lower-case hex sha256 of their bytes. (A checkpoint's `weights_sha256` hashes the tensors,
independent of the file layout, and lives with the checkpoint format; a credential's token hash lives with
the credentials.)
"""

from __future__ import annotations

import hashlib


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Lower-case hex sha256 of `data`, the form used on the wire for episodes and checkpoints."""
    return hashlib.sha256(data).hexdigest()
