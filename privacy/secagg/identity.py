"""Site identity in secure aggregation: round keys bound to the federation's credentials.

The coordinator relays every public key a site ever sees, so a key is only worth what binds it
to a site the coordinator cannot impersonate. That binding is the federation's CA
(``fedvlm credentials``): each site holds ``<site>.key`` (its long-term EC P-384 key, the one
its SuperNode authenticates with), ``<site>.crt`` (the CA's certificate binding the site name
to that key) and ``ca.crt``. In every round a site signs its fresh Ed25519 round signing key
with its long-term key (``messages.identity_message``: round id, node id, round key) and sends
the certificate along. A peer accepts a round key only if the certificate chains to *its own*
copy of ``ca.crt`` and the signature verifies; the round key in turn signs the site's other
round keys and, later, the survivor set. A coordinator that fabricates keys for node ids it
answers for itself therefore needs a certified site's long-term key: with none, it is refused;
with a colluding site's, that site's identity can stand for only one node id in a round
(sites refuse a repeated identity), so it is one colluder, as the threat model counts.

Where a site's files are: the node settings below (``fedvlm node`` fills them from
``--private-key`` and ``--ca-cert``). A simulated federation, whose sites are one operator's
processes, gets a CA and per-site credentials made on the fly in the run folder
(``simulation_identity``); tests use ``ephemeral_federation`` (in memory).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvlm.credentials import (
    CA_CERT,
    CredentialsError,
    certify_site,
    make_credentials,
    make_site_key,
    new_ca,
    site_certificate,
)
from fedvlm.errors import FedVLMError
from fedvlm.settings_registry import Scope, setting

from .errors import AuthenticationError, MalformedPayloadError

IDENTITY_KEY = setting(
    "secagg-identity-key",
    str,
    "",
    "This site's long-term private key (`<site>.key` from `fedvlm credentials`): signs its "
    "secure-aggregation round keys. Empty: `fedvlm node` sets it from `--private-key`; a "
    "simulated site gets one made on the fly in the run folder.",
    scope=Scope.NODE,
)
IDENTITY_CERT = setting(
    "secagg-identity-cert",
    str,
    "",
    "This site's certificate (`<site>.crt`, the CA binding the site name to its key), sent "
    "to its peers with every round's keys. Empty: `<site>.crt` next to the key.",
    scope=Scope.NODE,
)
CA_CERT_PATH = setting(
    "secagg-ca-cert",
    str,
    "",
    "The federation's `ca.crt`: a peer's round key counts only if its certificate chains to "
    "it. Empty: `ca.crt` next to the key.",
    scope=Scope.NODE,
)

SIMULATION_FOLDER = "secagg-identities"  # under the run folder of a simulated federation


@dataclass(frozen=True)
class SiteIdentity:
    """A site's long-term key, its certificate and the CA it trusts (DER bytes).

    Never stored in ``context.state`` or sent: only ``cert`` and signatures leave the site.
    """

    key: ec.EllipticCurvePrivateKey
    cert: bytes
    ca: bytes

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of this site's public key: what identifies it to its peers."""
        return certified_key(self.ca, self.cert).fingerprint

    def sign(self, message: bytes) -> bytes:
        """Return the ECDSA-SHA384 signature of ``message`` with the long-term key."""
        return self.key.sign(message, ec.ECDSA(hashes.SHA384()))

    @classmethod
    def from_files(cls, key_path: Path, cert_path: Path, ca_path: Path) -> SiteIdentity:
        """Load and cross-check the three files; errors name the file (and setting) at fault.

        Raises
        ------
        FedVLMError
            If a file is missing or unreadable, the certificate is not the CA's, or the key is
            not the certificate's.
        """
        key = _load(key_path, IDENTITY_KEY.key, _private_key)
        cert = _load(cert_path, IDENTITY_CERT.key, x509.load_pem_x509_certificate)
        ca = _load(ca_path, CA_CERT_PATH.key, x509.load_pem_x509_certificate)
        identity = cls(key, cert.public_bytes(_DER), ca.public_bytes(_DER))
        try:
            certified = certified_key(identity.ca, identity.cert)
        except AuthenticationError as err:
            raise FedVLMError(f"{IDENTITY_CERT.key}: {cert_path}: {err} ({ca_path})") from err
        if _fingerprint(key.public_key()) != certified.fingerprint:
            raise FedVLMError(
                f"{IDENTITY_KEY.key}: {key_path} is not the key certified by {cert_path}"
            )
        return identity


@dataclass(frozen=True)
class CertifiedKey:
    """What a valid certificate says: the site's name and long-term public key."""

    name: str
    fingerprint: bytes
    public_key: ec.EllipticCurvePublicKey


_DER = serialization.Encoding.DER


def _fingerprint(public_key: ec.EllipticCurvePublicKey) -> bytes:
    der = public_key.public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def _private_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Read an OpenSSH (what ``fedvlm credentials`` writes) or PEM EC private key."""
    if data.lstrip().startswith(b"-----BEGIN OPENSSH"):
        key: Any = serialization.load_ssh_private_key(data, None)
    else:
        key = serialization.load_pem_private_key(data, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def _load(path: Path, flag: str, parse: Any) -> Any:
    try:
        return parse(Path(path).expanduser().read_bytes())
    except (OSError, ValueError, TypeError) as err:
        raise FedVLMError(f"{flag}: cannot read {path}: {err}") from err


def fingerprint_of(cert: bytes) -> bytes:
    """Return the identity fingerprint a certificate claims (unchecked: the coordinator's
    listing of the committed set; sites check it against the CA themselves).

    Raises
    ------
    MalformedPayloadError
        If ``cert`` is not a DER certificate with an EC key.
    """
    try:
        public_key = x509.load_der_x509_certificate(cert).public_key()
    except ValueError as err:
        raise MalformedPayloadError(f"not a DER certificate ({err})") from err
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise MalformedPayloadError("the certificate's key is not an EC key")
    return _fingerprint(public_key)


@functools.lru_cache(maxsize=4096)
def certified_key(ca: bytes, cert: bytes) -> CertifiedKey:
    """Return the name and key a certificate binds, checked against the trusted CA.

    Cached by the exact bytes: a site checks each peer's certificate once per process, not
    once per signature.

    Raises
    ------
    AuthenticationError
        If the certificate is malformed, not signed by ``ca``, a CA itself, outside its
        validity period, or not for an EC key.
    """
    try:
        anchor = x509.load_der_x509_certificate(ca)
        parsed = x509.load_der_x509_certificate(cert)
        parsed.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise AuthenticationError(f"certificate not issued by the federation's CA ({err})") from err
    try:
        constraints = parsed.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as err:
        raise AuthenticationError(f"not a site certificate ({err})") from err
    if constraints.ca:
        raise AuthenticationError("a CA certificate cannot be a site's identity")
    # The coordinator holds the SuperLink's server.key under the same CA: only a site
    # certificate (client authentication, never server) may vouch for a site.
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage or ExtendedKeyUsageOID.SERVER_AUTH in usage:
        raise AuthenticationError("not a site certificate: the SuperLink's cannot vouch for a site")
    now = datetime.datetime.now(datetime.UTC)
    if not parsed.not_valid_before_utc <= now <= parsed.not_valid_after_utc:
        raise AuthenticationError(
            f"certificate valid {parsed.not_valid_before_utc} to {parsed.not_valid_after_utc}"
        )
    public_key = parsed.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise AuthenticationError("the certified key is not an EC key")
    names = parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    return CertifiedKey(name, _fingerprint(public_key), public_key)


def verify(ca: bytes, cert: bytes, signature: bytes, message: bytes, who: str) -> CertifiedKey:
    """Return the certified identity that signed ``message``, or raise naming ``who``.

    Raises
    ------
    AuthenticationError
        If the certificate does not chain to ``ca`` or the signature does not verify.
    """
    try:
        certified = certified_key(ca, cert)
    except AuthenticationError as err:
        raise AuthenticationError(f"{who}: {err}") from err
    try:
        certified.public_key.verify(signature, message, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError) as err:
        raise AuthenticationError(
            f"{who}: round key not signed by the certified site {certified.name!r}"
        ) from err
    return certified


def identity_from_node_config(node_config: Mapping[str, Any]) -> SiteIdentity | None:
    """Return the identity the node settings point at, or None when none is configured.

    ``secagg-identity-cert`` and ``secagg-ca-cert`` default to ``<key stem>.crt`` and
    ``ca.crt`` next to the key (the layout ``fedvlm credentials`` writes).
    """
    key = IDENTITY_KEY.read(node_config)
    if not key:
        return None
    key_path = Path(key).expanduser()
    cert = IDENTITY_CERT.read(node_config) or str(key_path.with_suffix(".crt"))
    ca = CA_CERT_PATH.read(node_config) or str(key_path.with_name(CA_CERT))
    return SiteIdentity.from_files(key_path, Path(cert), Path(ca))


def simulation_identity(folder: Path, site: str) -> SiteIdentity:
    """Return ``site``'s identity in a simulated federation, making it on first use.

    The CA is made once for the run in ``folder`` (built aside and renamed into place, so
    concurrent sites agree on one CA); each site then makes and certifies only its own key.
    The CA key lies in the run folder: right for one operator's simulation, never for a
    deployment.
    """
    if not (folder / CA_CERT).is_file():
        staging = folder.with_name(f"{folder.name}.{os.getpid()}.{os.urandom(4).hex()}")
        make_credentials(staging)
        try:
            os.rename(staging, folder)
        except OSError:  # another site won the race: use its CA
            shutil.rmtree(staging, ignore_errors=True)
    key_path = folder / f"{site}.key"
    if not key_path.is_file():
        try:
            make_site_key(folder, site)
            certify_site(folder, site)
        except CredentialsError as err:
            raise FedVLMError(f"simulated site {site}: {err}") from err
    return SiteIdentity.from_files(key_path, folder / f"{site}.crt", folder / CA_CERT)


def ephemeral_federation(names: Iterable[Any]) -> dict[Any, SiteIdentity]:
    """Return one identity per name under a fresh in-memory CA (tests, benchmarks)."""
    ca_key, ca_cert = new_ca(days=1)
    out = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        cert = site_certificate(f"site-{name}", key.public_key(), ca_cert, ca_key, days=1)
        out[name] = SiteIdentity(key, cert.public_bytes(_DER), ca_cert.public_bytes(_DER))
    return out
