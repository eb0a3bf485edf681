"""What a view file was when it was claimed: size, mtime and a fast hash (issue 16).

Recorded in the ledger at every claim, so that a view file replaced after success (same
name, new data: a re-acquired view) is noticed, and a view that failed while its file
was still being copied is retried once the file has stopped changing.

The fast hash is BLAKE2b (16 bytes) over the size, the first and last MiB and 16 blocks
of 64 KiB spread evenly between: at most 3 MiB read per view, whatever its size. Two
files with the same size and hash count as the same content; an mtime alone (a
``touch``, a copy that keeps content) is not a change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat

#: Bytes read at each end of the file.
EDGE_BYTES = 1024 * 1024
#: Blocks sampled between the ends, and their size.
SAMPLES, SAMPLE_BYTES = 16, 64 * 1024


@dataclasses.dataclass(frozen=True)
class InputFingerprint:
    """A view file's size (bytes), mtime (ns) and fast hash (hex)."""

    size: int
    mtime_ns: int
    fast_hash: str

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> InputFingerprint | None:
        """The fingerprint of the regular file at ``path``; None when it cannot be read."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            digest = hashlib.blake2b(str(info.st_size).encode(), digest_size=16)
            size = info.st_size
            offsets = [0]
            if size > 2 * EDGE_BYTES:
                span = size - 2 * EDGE_BYTES
                offsets += [EDGE_BYTES + span * k // (SAMPLES + 1) for k in range(1, SAMPLES + 1)]
                offsets.append(size - EDGE_BYTES)
            for offset in offsets:
                length = EDGE_BYTES if offset in (0, size - EDGE_BYTES) else SAMPLE_BYTES
                digest.update(os.pread(fd, length, offset))
            return cls(size, info.st_mtime_ns, digest.hexdigest())
        except OSError:
            return None
        finally:
            os.close(fd)

    def same_content(self, other: InputFingerprint) -> bool:
        """Same size and fast hash (the mtime may differ)."""
        return (self.size, self.fast_hash) == (other.size, other.fast_hash)


def changed_since(recorded: InputFingerprint, path: str | os.PathLike[str]) -> bool:
    """True when the file at ``path`` now holds other data than ``recorded`` describes.
    Cheap when nothing changed: the same size and mtime are taken as the same file, and
    only a differing one is hashed. A missing file is not "changed"."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if (info.st_size, info.st_mtime_ns) == (recorded.size, recorded.mtime_ns):
        return False
    current = InputFingerprint.of(path)
    return current is not None and not recorded.same_content(current)
