"""Files are written under a temporary name and renamed, with the permissions of a plain write."""

import os

from attnvgg_runtime.files import write_text_atomic


def test_an_atomic_write_has_the_permissions_a_plain_write_would_have(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text_atomic(tmp_path / "atomic.txt", "x")
    assert os.stat(atomic).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    assert not list(tmp_path.glob(".*.partial"))
