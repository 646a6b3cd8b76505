"""Credentials of a federation: a CA, the SuperLink's TLS certificate, per-site node keys.

Flower needs three kinds of files for a secure deployment (docs/architecture.md, "Flower 1.42"):

- a CA certificate (``ca.crt``) that every site uses to verify the SuperLink (and the
  operator's ``flwr`` CLI uses for the Control API);
- the SuperLink's certificate and key (``server.crt`` / ``server.key``), signed by that CA,
  whose subject alternative names must cover every host name or IP the sites dial;
- per site, an EC P-384 key pair in OpenSSH format (``<site>.key`` / ``<site>.pub``): the
  SuperNode signs with the private key (``load_ssh_private_key`` in flower-supernode) and
  the operator registers the public key (``load_ssh_public_key`` in ``flwr supernode
  register``).

fedvlm adds one file per site, ``<site>.crt``: a certificate, signed by the CA, binding the
site name to that same public key. Secure aggregation needs it because the coordinator relays
every key a site sees: a site signs each round's keys with its long-term key and sends its
certificate along, and its peers accept only keys that chain to ``ca.crt``
(``privacy/secagg/identity.py``), so a coordinator cannot answer for a site it does not hold
the key of.

Private keys are written with mode 0600 from the moment the file exists (never chmod'ed
afterwards), and nothing is overwritten unless ``force`` is given: silently replacing a CA
or a site key would lock every site out of a running federation.
"""

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvlm.errors import FedVLMError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CERT_DAYS = 365


class CredentialsError(FedVLMError):
    """Credentials cannot be made or read (existing files, bad names, bad hosts)."""


@dataclass(frozen=True)
class Credentials:
    """Paths of everything `make_credentials` wrote (or found) in one folder."""

    folder: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    site_keys: dict[str, tuple[Path, Path]]  # site -> (private key, public key)
    site_certs: dict[str, Path]  # site -> certificate of its public key, signed by the CA


def _write_secret(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 before any byte of the secret is in it."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _split_hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """Subject alternative names: IP addresses as IPAddress, everything else as DNSName."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
                raise CredentialsError(
                    f"--host {host!r} is neither an IP address nor a DNS name"
                ) from None
            names.append(x509.DNSName(host))
    if not names:
        raise CredentialsError("at least one --host (DNS name or IP of the SuperLink) is needed")
    return names


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name | None,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool,
    san: list[x509.GeneralName] | None = None,
    days: int = CERT_DAYS,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(san or []), critical=False
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(signing_key, hashes.SHA384())


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise CredentialsError(
            "refusing to overwrite existing credentials: "
            + ", ".join(existing)
            + " (replacing them locks out nodes that use them; pass --force if you mean it)"
        )


def make_site_key(folder: Path, site: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write `<site>.key` (OpenSSH EC P-384, 0600) and `<site>.pub`; return both paths.

    Raises
    ------
    CredentialsError
        If the site name is unsafe as a file name, or the files exist and not `force`.
    """
    if not SITE_NAME.match(site):
        raise CredentialsError(
            f"site name {site!r}: use letters, digits, '.', '_' or '-' (at most 64)"
        )
    private_path, public_path = folder / f"{site}.key", folder / f"{site}.pub"
    _refuse_existing([private_path, public_path], force)
    folder.mkdir(parents=True, exist_ok=True)  # a new site's own folder, on its own machine
    key = ec.generate_private_key(ec.SECP384R1())
    _write_secret(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_public(public_path, public + f" fedvlm-{site}\n".encode())
    return private_path, public_path


def new_ca(days: int = CERT_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Return a fresh CA key and its self-signed certificate."""
    key = ec.generate_private_key(ec.SECP384R1())
    return key, _certificate("fedvlm CA", key.public_key(), None, key, is_ca=True, days=days)


def site_certificate(
    site: str,
    public_key: ec.EllipticCurvePublicKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int = CERT_DAYS,
) -> x509.Certificate:
    """Return the CA's certificate binding `site` (its common name) to `public_key`."""
    return _certificate(
        site,
        public_key,
        ca_cert.subject,
        ca_key,
        is_ca=False,
        days=days,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )


def certify_site(folder: Path, site: str, *, force: bool = False, days: int = CERT_DAYS) -> Path:
    """Write `<site>.crt` for `<site>.pub` in `folder`, signed with the CA there; return it.

    For a site that made its own key pair (``--sites-only``) and sent the operator its
    ``.pub``: the CA's folder issues the certificate its peers will check.

    Raises
    ------
    CredentialsError
        If the CA or the site's public key is missing, or the certificate exists and not
        `force`.
    """
    ca_cert_path, ca_key_path = folder / CA_CERT, folder / CA_KEY
    public_path, cert_path = folder / f"{site}.pub", folder / f"{site}.crt"
    for needed in (ca_cert_path, ca_key_path, public_path):
        if not needed.is_file():
            raise CredentialsError(f"--certify {site}: {needed} does not exist")
    _refuse_existing([cert_path], force)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    public = serialization.load_ssh_public_key(public_path.read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or not isinstance(
        public, ec.EllipticCurvePublicKey
    ):
        raise CredentialsError(f"--certify {site}: {ca_key_path} and {public_path} must be EC keys")
    cert = site_certificate(site, public, ca_cert, ca_key, days)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def make_credentials(
    folder: str | Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    sites: Sequence[str] = (),
    force: bool = False,
    days: int = CERT_DAYS,
) -> Credentials:
    """Create a CA, a SuperLink certificate for `hosts`, one key pair and certificate per site.

    Any existing file is refused unless `force` is given, so running the command twice
    never silently invalidates what the sites already hold (``force`` makes a new CA too).
    New sites can be added later with `make_site_key`, which touches only that site's
    files.

    Parameters
    ----------
    folder : str or Path
        Where to write the files (created with mode 0700 if absent).
    hosts : sequence of str
        DNS names and IP addresses the sites use to reach the SuperLink (its SAN).
    sites : sequence of str
        Site names; each gets ``<site>.key`` / ``<site>.pub`` and ``<site>.crt``.
    force : bool
        Overwrite existing files.
    days : int
        Validity of the certificates.

    Returns
    -------
    Credentials
        Paths of everything written.
    """
    out = Path(folder).expanduser()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    san = _split_hosts(hosts)
    if len(set(sites)) != len(sites):
        raise CredentialsError(f"site names must be unique, got {list(sites)}")
    targets = [out / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)]
    targets += [out / f"{s}.{ext}" for s in sites for ext in ("key", "pub", "crt")]
    _refuse_existing(targets, force)

    ca_key, ca_cert = new_ca(days)
    server_key = ec.generate_private_key(ec.SECP384R1())
    first_host = next((h for h in hosts if h.strip()), "superlink")
    server_cert = _certificate(
        first_host,
        server_key.public_key(),
        ca_cert.subject,
        ca_key,
        is_ca=False,
        san=san,
        days=days,
    )
    _write_secret(out / CA_KEY, _pem_key(ca_key))
    _write_public(out / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_secret(out / SERVER_KEY, _pem_key(server_key))
    _write_public(out / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM))
    site_keys = {s: make_site_key(out, s, force=force) for s in sites}
    site_certs = {s: certify_site(out, s, force=force, days=days) for s in sites}
    return Credentials(
        out, out / CA_CERT, out / SERVER_CERT, out / SERVER_KEY, site_keys, site_certs
    )


def require_private(path: Path, flag: str) -> None:
    """Refuse a secret key file that others may read (the SuperLink's and a site's alike).

    Raises
    ------
    FedVLMError
        Naming the flag and the file, with the fix.
    """
    if path.stat().st_mode & 0o077:
        raise FedVLMError(f"{flag}: {path} is readable by others; chmod 600 it")
