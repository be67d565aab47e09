"""Bundle signatures as OPA writes and checks them (``.signatures.json``).

The file holds ``{"signatures": ["<JWT>"]}``: one compact JWS whose payload lists every file
of the bundle with its hash, ``{"files": [{"name", "hash", "algorithm"}], "keyid"?, "scope"?}``.
Structured files (``.manifest``, ``data.json``, ``data.yaml``) are hashed in OPA's canonical
form (parsed, object keys sorted, no spaces, numbers as written); other files byte for byte.
Verification refuses a bundle whose files and the signed list differ in any way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sidecar.policy.bundles.archive import ALGORITHMS, MANIFEST, SIGNATURES, BundleError, used

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512,
}
_EC_SIZES = {"256": 32, "384": 48, "512": 66}
_FILE_HASHES = {"SHA-256": hashlib.sha256, "SHA-384": hashlib.sha384, "SHA-512": hashlib.sha512,
                "SHA-224": hashlib.sha224, "SHA3-256": hashlib.sha3_256, "MD5": hashlib.md5,
                "SHA-1": hashlib.sha1}
_STRUCTURED = ("data.json", "data.yaml", "data.yml", MANIFEST)


class _Number(str):
    """A JSON number kept as written (OPA hashes numbers by their text)."""


# ------------------------------------------------------------------ canonical hashing

def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif code < 0x20 or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _float_text(value: float) -> str:
    """A float as Go's encoding/json writes it (YAML numbers go through it in OPA)."""
    if not math.isfinite(value):
        raise BundleError("a data document holds a number that is not finite")
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        sign = exponent[0] if exponent[0] in "+-" else "+"
        digits = exponent.lstrip("+-").lstrip("0") or "0"
        text = f"{mantissa}e{sign}{digits.zfill(2)}"
    return text


def _walk(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for index, key in enumerate(sorted(value)):
            if index:
                out.append(",")
            out.append(_string(str(key)))
            out.append(":")
            _walk(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _walk(item, out)
        out.append("]")
    elif isinstance(value, _Number):
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_float_text(value))
    else:
        raise BundleError(f"a data document holds a {type(value).__name__}, which is not JSON")


def _as_go_yaml(value: Any) -> Any:
    """YAML integers past 64 bits become floats, as OPA's YAML reader (Go) makes them."""
    if isinstance(value, dict):
        return {key: _as_go_yaml(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_go_yaml(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


def canonical_bytes(name: str, raw: bytes) -> bytes:
    """What OPA hashes for a file: structured files canonicalised, others as they are."""
    base = posixpath.basename(name)
    if base not in _STRUCTURED:
        return raw
    try:
        if base.endswith((".yaml", ".yml")):
            document = _as_go_yaml(yaml.safe_load(raw.decode("utf-8")))
        else:
            document = json.loads(raw.decode("utf-8"), parse_int=_Number, parse_float=_Number)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise BundleError(f"{name}: cannot be parsed to hash it ({type(exc).__name__})") from None
    out: list[str] = []
    _walk(document, out)
    return "".join(out).encode("utf-8")


def file_hash(name: str, raw: bytes, algorithm: str = "SHA-256") -> str:
    function = _FILE_HASHES.get(algorithm.upper())
    if function is None:
        raise BundleError(f"{SIGNATURES}: unknown file hash algorithm {algorithm!r}")
    return function(canonical_bytes(name, raw)).hexdigest()


# ------------------------------------------------------------------ keys

@dataclass(frozen=True)
class VerificationConfig:
    """How bundles are verified: the key (PEM public key, or the HMAC secret), its algorithm,
    the key id a signature must name (empty: any) and the scope it must carry (empty: none)."""

    key: bytes
    algorithm: str = "RS256"
    key_id: str = ""
    scope: str = ""

    @classmethod
    def from_file(cls, path: str, algorithm: str, key_id: str = "", scope: str = "") -> VerificationConfig:
        try:
            key = Path(path).read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read the bundle verification key {path}: {exc.strerror}") from None
        config = cls(key=key.strip() if algorithm.startswith("HS") else key, algorithm=algorithm,
                     key_id=key_id, scope=scope)
        config.public_key()  # refuse an unusable key at start, not at the first bundle
        return config

    def public_key(self) -> Any:
        if self.algorithm.startswith("HS"):
            if not self.key:
                raise BundleError("the bundle verification key (HMAC secret) is empty")
            return self.key
        try:
            key = serialization.load_pem_public_key(self.key)
        except ValueError:
            try:  # a certificate is fine too
                from cryptography import x509

                key = x509.load_pem_x509_certificate(self.key).public_key()
            except ValueError:
                raise BundleError(
                    f"the bundle verification key is not a PEM public key (algorithm {self.algorithm})"
                ) from None
        expected = ec.EllipticCurvePublicKey if self.algorithm.startswith("ES") else rsa.RSAPublicKey
        if not isinstance(key, expected):
            raise BundleError(f"the bundle verification key does not fit algorithm {self.algorithm}")
        return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise BundleError(f"{SIGNATURES}: the signature is not valid base64url") from None


def _verify_jws(algorithm: str, key: Any, signing_input: bytes, signature: bytes) -> bool:
    family, bits = algorithm[:2], algorithm[2:]
    digest = _HASHES[bits]()
    try:
        if family == "HS":
            expected = hmac.new(key, signing_input, getattr(hashlib, f"sha{bits}")).digest()
            return hmac.compare_digest(expected, signature)
        if family == "RS":
            key.verify(signature, signing_input, padding.PKCS1v15(), digest)
        elif family == "PS":
            key.verify(signature, signing_input,
                       padding.PSS(mgf=padding.MGF1(_HASHES[bits]()), salt_length=padding.PSS.DIGEST_LENGTH),
                       digest)
        else:
            size = _EC_SIZES[bits]
            if len(signature) != 2 * size:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                       int.from_bytes(signature[size:], "big"))
            key.verify(der, signing_input, ec.ECDSA(digest))
    except InvalidSignature:
        return False
    return True


# ------------------------------------------------------------------ verify

def verify_bundle(files: dict[str, bytes], config: VerificationConfig) -> dict[str, Any]:
    """Check ``.signatures.json`` against ``files``; return the JWT payload or raise BundleError."""
    raw = files.get(SIGNATURES)
    if raw is None:
        raise BundleError(
            f"the bundle is not signed (no {SIGNATURES}) and policy.bundle_verification_key_file is set; refused"
        )
    try:
        signatures = json.loads(raw)["signatures"]
    except (ValueError, KeyError, TypeError):
        raise BundleError(f'{SIGNATURES} must be {{"signatures": ["<JWT>"]}}') from None
    if not isinstance(signatures, list) or len(signatures) != 1 or not isinstance(signatures[0], str):
        raise BundleError(f"{SIGNATURES} must hold exactly one signature (a JWT)")
    parts = signatures[0].split(".")
    if len(parts) != 3:
        raise BundleError(f"{SIGNATURES}: the signature is not a compact JWT")
    try:
        header = json.loads(_unb64(parts[0]))
        payload = json.loads(_unb64(parts[1]))
    except ValueError:
        raise BundleError(f"{SIGNATURES}: the JWT header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise BundleError(f"{SIGNATURES}: the JWT header and payload must be objects")
    algorithm = header.get("alg")
    if algorithm != config.algorithm:
        raise BundleError(
            f"the bundle is signed with {algorithm!r}, policy.bundle_verification_algorithm is "
            f"{config.algorithm!r}; refused"
        )
    key_id = header.get("kid") or payload.get("keyid") or ""
    if config.key_id and key_id and key_id != config.key_id:
        raise BundleError(
            f"the bundle is signed with key id {key_id!r}, policy.bundle_verification_key_id is "
            f"{config.key_id!r}; refused"
        )
    if not _verify_jws(config.algorithm, config.public_key(), f"{parts[0]}.{parts[1]}".encode("ascii"),
                       _unb64(parts[2])):
        raise BundleError("the bundle's signature does not verify with the configured key; refused")
    if (payload.get("scope") or "") != config.scope:
        raise BundleError(
            f"the bundle's signature has scope {payload.get('scope') or ''!r}, expected {config.scope!r}; refused"
        )
    _check_files(files, payload.get("files"))
    return payload


def _check_files(files: dict[str, bytes], signed: Any) -> None:
    if not isinstance(signed, list) or not signed:
        raise BundleError(f"{SIGNATURES}: the signed payload lists no files")
    listed: dict[str, dict[str, Any]] = {}
    for entry in signed:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BundleError(f"{SIGNATURES}: each signed file needs a name")
        listed[posixpath.normpath(entry["name"].lstrip("/"))] = entry
    present = {name for name in files if name != SIGNATURES}
    for name in sorted(present):
        entry = listed.get(name)
        if entry is None:
            if not used(name):
                continue  # a file the engine never reads (a README): it cannot change a decision
            raise BundleError(f"{name} is in the bundle but not in its signature (added after signing); refused")
        if not hmac.compare_digest(
            str(entry.get("hash", "")).lower(), file_hash(name, files[name], str(entry.get("algorithm", "SHA-256")))
        ):
            raise BundleError(f"{name} does not match its signed hash (changed after signing); refused")
    missing = sorted(set(listed) - present)
    if missing:
        raise BundleError(f"the signature lists files the bundle lacks: {', '.join(missing[:5])}; refused")


# ------------------------------------------------------------------ sign

def sign_files(
    files: dict[str, bytes], key_pem: bytes, algorithm: str = "RS256", key_id: str = "", scope: str = "",
) -> bytes:
    """The ``.signatures.json`` content for ``files`` (as ``opa sign`` writes it)."""
    entries = [
        {"name": name, "hash": file_hash(name, raw), "algorithm": "SHA-256"}
        for name, raw in sorted(files.items()) if name != SIGNATURES and used(name)
    ]
    payload: dict[str, Any] = {"files": entries}
    header: dict[str, Any] = {"alg": algorithm, "typ": "JWT"}
    if key_id:
        payload["keyid"] = key_id
        header["kid"] = key_id
    if scope:
        payload["scope"] = scope
    signing_input = (_b64(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64(json.dumps(payload, separators=(",", ":")).encode()))
    signature = _sign(algorithm, key_pem, signing_input.encode("ascii"))
    return json.dumps({"signatures": [f"{signing_input}.{_b64(signature)}"]}).encode()


def _sign(algorithm: str, key_pem: bytes, signing_input: bytes) -> bytes:
    if algorithm not in ALGORITHMS:
        raise BundleError(f"unknown signing algorithm {algorithm!r} (allowed: {', '.join(ALGORITHMS)})")
    family, bits = algorithm[:2], algorithm[2:]
    if family == "HS":
        return hmac.new(key_pem.strip(), signing_input, getattr(hashlib, f"sha{bits}")).digest()
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise BundleError("the signing key is not an unencrypted PEM private key") from None
    digest = _HASHES[bits]()
    if family == "RS" and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, padding.PKCS1v15(), digest)
    if family == "PS" and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, padding.PSS(mgf=padding.MGF1(_HASHES[bits]()),
                                                   salt_length=padding.PSS.DIGEST_LENGTH), digest)
    if family == "ES" and isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        size = _EC_SIZES[bits]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise BundleError(f"the signing key does not fit algorithm {algorithm}")
