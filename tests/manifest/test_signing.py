"""Signed builds: the manifest and every file it lists signed with a local key (model-signing), and
a box that refuses an unsigned, re-signed-by-another-key or altered build, naming the file."""

import os
import subprocess
import sys

import pytest

from attnvgg_runtime.signing import (
    SIGNATURE,
    SignatureError,
    make_key_pair,
    sign_build,
    signed_files,
    verify_signature,
)
from tests.conftest import copy_build
from tests.verify.test_on_box import NO_TORCH


def _export(*args, env=None):
    return subprocess.run([sys.executable, "-m", "attnvgg_export", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def _box(*args):
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def signed(gated_build, tmp_path):
    """A copy of the gated build signed with a new key (the commands: test_the_commands_...)."""
    root = copy_build(gated_build, tmp_path / "box")
    make_key_pair(tmp_path / "keys")
    sign_build(root / "manifest.json", tmp_path / "keys" / "private.pem")
    return root, tmp_path / "keys"


def test_the_commands_make_a_key_pair_and_sign(gated_build, tmp_path):
    root = copy_build(gated_build, tmp_path / "box")
    keys = tmp_path / "keys"
    made = _export("keygen", "--out", str(keys))
    assert made.returncode == 0, made.stderr
    assert oct((keys / "private.pem").stat().st_mode & 0o777) == "0o600"
    result = _export("sign", "--manifest", str(root / "manifest.json"), "--key", str(keys / "private.pem"))
    assert result.returncode == 0 and (root / SIGNATURE).is_file(), result.stderr
    assert verify_signature(root / "manifest.json", keys / "public.pem")


def test_a_signed_build_verifies_on_the_box_and_covers_what_the_manifest_lists(signed):
    root, keys = signed
    listed = signed_files(root / "manifest.json")
    assert "manifest.json" in listed and "golden/inputs.json" in listed
    assert "engines/openvino/model.int8.bin" in listed
    assert verify_signature(root / "manifest.json", keys / "public.pem") == listed
    checked = _box("signature", str(root / "manifest.json"), "--key", str(keys / "public.pem"))
    assert checked.returncode == 0 and "signature verified" in checked.stderr, checked.stderr
    # what the box writes later (verify.json) does not break it, and a restricted verify runs
    verified = _box("verify", str(root / "manifest.json"), "--require-signature", str(keys / "public.pem"),
                    "--case", "heldout", "--images", "1", "--reader", "onnxruntime",
                    "--artifact", "model.onnx")
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    assert (root / "verify.json").is_file()
    assert verify_signature(root / "manifest.json", keys / "public.pem") == listed


@pytest.mark.parametrize("victim", ["model.int8-cpu.onnx", "engines/openvino/model.int8.bin",
                                    "golden/outputs.json", "manifest.json"])
def test_one_altered_byte_is_refused_naming_the_file(signed, victim):
    root, keys = signed
    with open(root / victim, "r+b") as f:
        f.seek(os.path.getsize(root / victim) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SignatureError, match=f"changed or missing since it was signed: {victim}"):
        verify_signature(root / "manifest.json", keys / "public.pem")
    if victim == "model.int8-cpu.onnx":  # the box's commands say so and exit 2
        refused = _box("classify", str(root / "manifest.json"), str(root / "x.png"), "--require-signature",
                       str(keys / "public.pem"))
        assert refused.returncode == 2, refused.stderr
        assert "does not match its signature" in refused.stderr and victim in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


def test_an_unsigned_build_or_another_key_is_refused(signed, gated_build, tmp_path):
    root, keys = signed
    other = tmp_path / "other"
    make_key_pair(other)
    with pytest.raises(SignatureError, match="files are as signed, but the signature is not this key's"):
        verify_signature(root / "manifest.json", other / "public.pem")
    unsigned = copy_build(gated_build, tmp_path / "unsigned")
    refused = _box("verify", str(unsigned / "manifest.json"), "--require-signature", str(keys / "public.pem"))
    assert refused.returncode == 2 and f"is not signed (no {SIGNATURE})" in refused.stderr
    assert not (unsigned / "verify.json").exists()  # refused before anything ran


def test_a_key_is_never_overwritten_and_a_password_comes_from_the_environment(tmp_path):
    make_key_pair(tmp_path)
    refused = _export("keygen", "--out", str(tmp_path))
    assert refused.returncode == 2 and "is never overwritten" in refused.stderr
    env = dict(os.environ, BUILD_KEY_PASSWORD="s3cret")
    locked = _export("keygen", "--out", str(tmp_path / "locked"), "--password-env", "BUILD_KEY_PASSWORD",
                     env=env)
    assert locked.returncode == 0 and b"ENCRYPTED" in (tmp_path / "locked/private.pem").read_bytes()
    unset = _export("keygen", "--out", str(tmp_path / "x"), "--password-env", "NO_SUCH_VARIABLE_HERE")
    assert unset.returncode == 2 and "NO_SUCH_VARIABLE_HERE" in unset.stderr
