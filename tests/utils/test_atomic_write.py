"""atomic_output / write_atomic: the destination is complete or untouched, never half-written."""
import os

import pytest

from mmdet_eps.utils import atomic_output, write_atomic


def test_write_replaces_and_creates_parents(tmp_path):
    dst = tmp_path / 'a' / 'b' / 'out.md'
    write_atomic(dst, 'één\n')
    assert dst.read_text(encoding='utf-8') == 'één\n'
    write_atomic(dst, b'bytes')
    assert dst.read_bytes() == b'bytes'
    assert os.listdir(dst.parent) == ['out.md']


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    dst = tmp_path / 'ckpt.pth'
    dst.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='check failed'):
        with atomic_output(dst) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'half')
            raise RuntimeError('check failed')  # e.g. verifying the written file
    assert dst.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['ckpt.pth']


def test_the_temporary_file_sits_beside_the_destination_with_the_usual_mode(tmp_path):
    dst = tmp_path / 'out.json'
    with atomic_output(dst) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith('.tmp')
        assert os.path.isfile(tmp)  # reserved exclusively
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~umask
