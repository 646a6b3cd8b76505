"""Credentials: what Flower's own loaders accept, 0600 secrets, no silent overwrite."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from cryptography.x509.oid import NameOID
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from cli.main import main
from fedvlm.credentials import CredentialsError, make_credentials, make_site_key


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_flower_accepts_the_keys_and_the_server_certificate_covers_the_hosts(tmp_path):
    made = make_credentials(
        tmp_path, hosts=["fl.example.org", "10.1.2.3", "localhost"], sites=["a", "b"]
    )
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if not signed by the CA
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    for private_path, public_path in made.site_keys.values():
        # The exact loaders flower-supernode and `flwr supernode register` use.
        private = load_ssh_private_key(private_path.read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert try_load_public_key(public_path) == public_key_to_bytes(private.public_key())
        assert _mode(private_path) == 0o600
    assert _mode(made.server_key) == 0o600 and _mode(tmp_path / "ca.key") == 0o600
    assert made.site_keys["a"][1].read_bytes() != made.site_keys["b"][1].read_bytes()


def test_existing_credentials_are_never_overwritten_silently(tmp_path):
    made = make_credentials(tmp_path, sites=["a"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CredentialsError, match="refusing to overwrite.*--force"):
        make_credentials(tmp_path, sites=["a"])
    with pytest.raises(CredentialsError, match="a.key"):
        make_site_key(tmp_path, "a")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    make_site_key(tmp_path, "c")  # a new site touches only its own files
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.stem != "c"} == before
    make_credentials(tmp_path, sites=["a"], force=True)
    assert made.site_keys["a"][0].read_bytes() != before["a.key"]


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(CredentialsError, match="site name"):
        make_site_key(tmp_path, "../evil")
    with pytest.raises(CredentialsError, match="neither an IP address nor a DNS name"):
        make_credentials(tmp_path, hosts=["bad host"])


def test_cli_makes_credentials_and_refuses_a_second_time(tmp_path, capsys):
    out = tmp_path / "creds"
    assert main(["credentials", "--out", str(out), "--host", "fl.example.org", "--site", "a"]) == 0
    assert "site a gets: ca.crt, a.crt and a.key" in capsys.readouterr().out
    assert main(["credentials", "--out", str(out), "--site", "a"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    ca = (out / "ca.crt").read_bytes()
    assert main(["credentials", "--out", str(out), "--sites-only", "--site", "b"]) == 0
    assert (out / "b.key").is_file() and (out / "ca.crt").read_bytes() == ca
    assert not (out / "b.crt").exists()  # its own key pair; the CA's folder certifies it
    assert main(["credentials", "--out", str(out), "--certify", "b"]) == 0
    assert "site b gets" in capsys.readouterr().out
    assert main(["credentials", "--out", str(out), "--certify", "b"]) == 2  # no silent overwrite
    assert main(["credentials", "--out", str(out), "--certify", "nobody"]) == 2
    assert "nobody.pub does not exist" in capsys.readouterr().err


def test_each_site_gets_a_certificate_binding_its_name_to_its_key(tmp_path):
    made = make_credentials(tmp_path, sites=["a", "b"])
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    for site, cert_path in made.site_certs.items():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == site
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        private = load_ssh_private_key(made.site_keys[site][0].read_bytes(), None)
        assert cert.public_key() == private.public_key()
        assert _mode(cert_path) == 0o644


def test_a_new_site_makes_its_key_pair_in_a_folder_that_does_not_exist_yet(tmp_path):
    """`--sites-only --out NEWDIR` used to crash with FileNotFoundError."""
    out = tmp_path / "new" / "site-c"
    assert main(["credentials", "--out", str(out), "--sites-only", "--site", "c"]) == 0
    assert (out / "c.key").stat().st_mode & 0o777 == 0o600 and (out / "c.pub").is_file()
