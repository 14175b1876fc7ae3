#!/usr/bin/env python3
"""Throw-away test PKI for lowband's loopback end-to-end tests.

    mkcert.py ca CA_DIR
        Create CA_DIR/ca.pem and CA_DIR/ca.key (self-signed ECDSA P-256 CA) unless both exist.
    mkcert.py leaf CA_DIR OUT_PREFIX [DNS_NAME ...]
        Issue OUT_PREFIX.crt (leaf certificate followed by the CA certificate, PEM) and
        OUT_PREFIX.key (PKCS#8 PEM, unencrypted) for the DNS names (default: localhost)
        plus the IP addresses 127.0.0.1 and ::1, signed by the CA in CA_DIR.

Uses the `cryptography` package, which Synapse already depends on. Only for tests on loopback.
"""
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc


def save_key(path, key):
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(path + ".tmp", path)


def save_pem(path, certs):
    with open(path + ".tmp", "wb") as f:
        for c in certs:
            f.write(c.public_bytes(serialization.Encoding.PEM))
    os.replace(path + ".tmp", path)


def key_usage(cert_sign):
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def load_or_make_ca(ca_dir):
    os.makedirs(ca_dir, exist_ok=True)
    key_path = os.path.join(ca_dir, "ca.key")
    cert_path = os.path.join(ca_dir, "ca.pem")
    if os.path.exists(key_path) and os.path.exists(cert_path):
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lowband test CA")])
    now = datetime.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    save_key(key_path, key)
    save_pem(cert_path, [cert])
    return key, cert


def issue_leaf(ca_dir, prefix, names):
    ca_key, ca_cert = load_or_make_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    alt = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    save_key(prefix + ".key", key)
    save_pem(prefix + ".crt", [cert, ca_cert])


def main(argv):
    if len(argv) == 3 and argv[1] == "ca":
        load_or_make_ca(argv[2])
    elif len(argv) >= 4 and argv[1] == "leaf":
        issue_leaf(argv[2], argv[3], argv[4:] or ["localhost"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
