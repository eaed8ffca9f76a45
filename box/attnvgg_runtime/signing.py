"""Signed builds: the manifest and every file it lists, signed with a local key pair by OpenSSF's
model-signing (a Sigstore bundle; key-based signing and verification reach no network), so
that a box can prove a build is the one the CI that gated it signed. The manifest's sha256s are
the box's root of trust for the bytes it runs; the signature is the root of trust for the
manifest.

    attnvgg-export keygen --out keys/                       # keys/private.pem (0600), keys/public.pem
    attnvgg-export sign --manifest build/se/manifest.json --key keys/private.pem
    attnvgg-runtime signature build/se/manifest.json --key keys/public.pem
    attnvgg-runtime verify build/se/manifest.json --require-signature keys/public.pem

The signature is `build.sig` beside the manifest. What is signed: manifest.json, each artifact
(an IR's .bin too) and the golden I/O. Files the box writes later (verify.json,
box-bench.json) and the build's reports are not signed, and do not break the signature.
model-signing is imported on first use (the [signing] extra).
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.files import atomic_path, sha256_file
from attnvgg_runtime.manifest import Manifest, inside_build, read_manifest

SIGNATURE = "build.sig"
INSTALL_HINT = "install the runtime wheel's [signing] extra (pip install model-signing pyopenssl)"


class SignatureError(ToolchainError):
    """A build that is not signed, not signed by the key given, or altered since it was signed."""


def signed_files(manifest_path: Path, manifest: Manifest | None = None) -> list[str]:
    """What a signature of the build covers, relative to its folder: the manifest and every file
    it lists (each artifact, an IR's weights, the golden I/O), each confined to the folder."""
    manifest_path = Path(manifest_path)
    manifest = manifest or read_manifest(manifest_path)
    names = {manifest_path.name}
    for artifact in manifest.artifacts:
        names.update(item.path for item in artifact.files())
    for key in ("inputs", "outputs"):
        if manifest.golden and key in manifest.golden:
            names.add(manifest.golden[key]["path"])
    for name in names:
        inside_build(manifest_path.parent, name, str(manifest_path))
    return sorted(names)


def make_key_pair(folder: Path, password: str | None = None) -> tuple[Path, Path]:
    """A new elliptic-curve (P-256) key pair for signing builds: FOLDER/private.pem (mode 0600;
    encrypted with ``password`` where given) and FOLDER/public.pem. Never overwrites a key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    private, public = folder / "private.pem", folder / "public.pem"
    existing = [p for p in (private, public) if p.exists()]
    if existing:
        raise SignatureError(f"{existing[0]} exists; a key is never overwritten: choose another "
                             f"--out folder, or remove it if you mean to replace the key")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(private) as tmp:
        tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          encryption))
    private.chmod(0o600)
    with atomic_path(public) as tmp:
        tmp.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _model_signing():
    try:
        import model_signing
    except ImportError as e:
        raise SignatureError(f"the model-signing package is not installed ({e}); {INSTALL_HINT}") from None
    return model_signing


def sign_build(manifest_path: Path, private_key: Path, password: str | None = None) -> Path:
    """Sign the build beside ``manifest_path`` with ``private_key`` (PEM, elliptic curve); write
    build.sig beside it (atomically) and return its path."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    if not Path(private_key).is_file():
        raise SignatureError(f"private key {private_key} does not exist; make a key pair with "
                             f"`attnvgg-export keygen --out DIR` (docs/edge.md, 'Signed builds')")
    signed = set(signed_files(manifest_path))
    missing = sorted(n for n in signed if not (root / n).is_file())
    if missing:
        raise SignatureError(f"{root} lacks {', '.join(missing)}, which its manifest lists: sign a "
                             f"whole build (after `make engine`)")
    others = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                    if (p.is_file() or p.is_symlink()) and p.relative_to(root).as_posix() not in signed)
    ms = _model_signing()
    hashing = ms.hashing.Config().set_ignored_paths(paths=others, ignore_git_paths=False)
    with tempfile.TemporaryDirectory() as scratch:
        unplaced = Path(scratch) / SIGNATURE
        try:
            ms.signing.Config().use_elliptic_key_signer(private_key=Path(private_key), password=password) \
                .set_hashing_config(hashing).sign(root, unplaced)
        except (ValueError, TypeError, OSError) as e:
            raise SignatureError(f"cannot sign {root} with {private_key}: {e}") from None
        with atomic_path(root / SIGNATURE) as tmp:
            tmp.write_bytes(unplaced.read_bytes())
    return root / SIGNATURE


def verify_signature(manifest_path: Path, public_key: Path) -> list[str]:
    """The build's signature checked with ``public_key``: every signed file is as signed, and the
    manifest and every file it lists are among them. Returns the signed files; SignatureError,
    naming the file, otherwise."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    signature = root / SIGNATURE
    if not Path(public_key).is_file():
        raise SignatureError(f"public key {public_key} does not exist; give the public key of the "
                             f"key pair the build was signed with (--require-signature KEY)")
    if not signature.is_file():
        raise SignatureError(f"{root} is not signed (no {SIGNATURE}); refusing it. Sign it where it "
                             f"was built: `attnvgg-export sign --manifest {manifest_path} --key ...`")
    ms = _model_signing()
    try:
        ms.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)) \
            .set_ignore_unsigned_files(True).verify(root.resolve(), signature)
    except Exception:  # model-signing raises ValueError and the crypto libraries' own errors
        raise SignatureError(f"{root} does not match its signature {signature} under {public_key}: "
                             f"{_named(root, signature)}; refusing it") from None
    signed = _signed_names(signature)
    unsigned = sorted(set(signed_files(manifest_path)) - set(signed))
    if unsigned:
        raise SignatureError(f"{signature} does not cover {', '.join(unsigned)}, which the manifest "
                             f"lists: refusing it; sign the build again")
    return signed


def _signed_resources(signature: Path) -> dict[str, str]:
    """name -> sha256 of the files a bundle lists (its in-toto statement's resources)."""
    envelope = json.loads(signature.read_text())["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    return {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}


def _signed_names(signature: Path) -> list[str]:
    return sorted(_signed_resources(signature))


def _named(root: Path, signature: Path) -> str:
    """What differs, for the message only (the refusal is model-signing's): the signed files
    whose bytes are not those signed, or else that the key is not the signer's."""
    try:
        resources = _signed_resources(signature)
    except (ValueError, KeyError, TypeError):
        return f"{SIGNATURE} is not a signature bundle model-signing wrote"
    changed = [name for name, digest in sorted(resources.items())
               if not (root / name).is_file() or sha256_file(root / name) != digest]
    if changed:
        return "changed or missing since it was signed: " + ", ".join(changed)
    return "its files are as signed, but the signature is not this key's"
