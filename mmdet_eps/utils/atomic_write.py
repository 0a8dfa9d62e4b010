"""Atomic file output for the tools: a file is either complete or absent, never half-written;
and the checksum they record of their inputs.

Every output goes to a temporary file beside its destination (so the rename stays on one file
system), is flushed to disk, then renamed over the destination with ``os.replace``. A failure
at any point, including a check of the temporary file, removes the temporary file and leaves the
destination as it was.
"""
import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[str]:
    """Yield a temporary path to write ``path``'s content to; it replaces ``path`` when the
    block exits cleanly and is removed when the block raises.

    Creates the missing parent folders. The temporary file is created empty and exclusively
    (so cleanup only ever removes our own file), with the mode a new file gets under the umask.
    """
    dst = Path(path).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f'.{dst.name}.{secrets.token_hex(4)}.tmp')
    open(tmp, 'xb').close()
    try:
        yield str(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: PathLike, data: Union[bytes, str]) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    with atomic_output(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)


def sha256sum(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (the digest tools record with outputs)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()
