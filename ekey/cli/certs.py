# -*- test-case-name: tests.test_certs -*-
"""
Make a small certificate authority and per-host certificates for relay
chains, with the C{cryptography} package.

    python3 -m ekey.cli.certs --out /etc/ekey/pki ca
    python3 -m ekey.cli.certs --out /etc/ekey/pki host keyhost.example.net
    python3 -m ekey.cli.certs --out /etc/ekey/pki host bastion.example.net

Each host gets C{NAME.crt} (certificate, usable by servers and clients) and
C{NAME.key} (its private key, mode 0600).  The CA's certificate is
C{ca.pem}: Twisted's C{tls:} client endpoint reads every C{*.pem} file of
its C{trustRoots=} directory as a CA, so a directory holding C{ca.pem} (and
host files named C{.crt}/C{.key}, which it skips) is a trust root as it is.
The CA's private key, C{ca.key}, stays where it was made (mode 0600): keep
it off the hosts.  Certificates carry the host name as a DNS subject
alternative name (and an IP address when the name is one), which is what
C{service_identity} checks.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from typing import Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ekey import __version__
from ekey.cli._args import ArgumentParser

DEFAULT_DAYS = 825

#: How the command is run, as its messages name it.
PROG = "python3 -m ekey.cli.certs"


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def makeCA(commonName: str = "ekey relay CA", days: int = DEFAULT_DAYS):
    """
    @return: C{(certificate, privateKey)} of a new self-signed CA.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(commonName))
        .issuer_name(_name(commonName))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def makeHost(hostname: str, ca: Tuple[x509.Certificate, object], days: int = DEFAULT_DAYS,
             notBefore: Optional[datetime.datetime] = None):
    """
    Make a certificate for C{hostname}, signed by C{ca}, for both TLS
    servers and clients.

    @param notBefore: the start of validity (default now); with C{days}
        negative or small this makes expired certificates for tests.
    @return: C{(certificate, privateKey)}.
    """
    caCertificate, caKey = ca
    key = ec.generate_private_key(ec.SECP256R1())
    start = notBefore or (_now() - datetime.timedelta(minutes=5))
    try:
        names = [x509.IPAddress(ipaddress.ip_address(hostname))]
    except ValueError:
        names = [x509.DNSName(hostname)]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(caCertificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    return certificate, key


def certificatePEM(certificate) -> bytes:
    """
    @return: a certificate in PEM.
    """
    return certificate.public_bytes(serialization.Encoding.PEM)


def keyPEM(key) -> bytes:
    """
    @return: a private key in unencrypted PKCS#8 PEM.
    """
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def writePrivate(path: str, data: bytes) -> None:
    """
    Write a secret: created with mode 0600, replaced atomically.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def writePublic(path: str, data: bytes) -> None:
    """
    Write a certificate (mode 0644).
    """
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)


def loadCA(directory: str):
    """
    @return: C{(certificate, privateKey)} of the CA in C{directory}.
    @raise OSError: if its files are missing.
    """
    with open(os.path.join(directory, "ca.pem"), "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(directory, "ca.key"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return certificate, key


def parser() -> ArgumentParser:
    """
    @return: the argument parser of C{python3 -m ekey.cli.certs}.
    """
    parser = ArgumentParser(
        prog=PROG,
        description="Make a CA and host certificates for ekey relays (mutual TLS).")
    parser.add_argument("--out", "-o", default=".", help="directory of the CA and certificates")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity in days")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="verb", required=True)
    ca = sub.add_parser("ca", help="make the CA (ca.pem, ca.key)")
    ca.add_argument("--name", default="ekey relay CA")
    host = sub.add_parser("host", help="make NAME.crt and NAME.key signed by the CA")
    host.add_argument("hostname")
    return parser


def main(argv=None) -> int:
    """
    The C{python3 -m ekey.cli.certs} command.
    """
    args = parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    try:
        if args.verb == "ca":
            if os.path.exists(os.path.join(args.out, "ca.key")):
                print(f"ekey.cli.certs: {args.out}/ca.key exists; not replacing a CA",
                      file=sys.stderr)
                return 2
            certificate, key = makeCA(args.name, args.days)
            writePrivate(os.path.join(args.out, "ca.key"), keyPEM(key))
            writePublic(os.path.join(args.out, "ca.pem"), certificatePEM(certificate))
            print(f"CA written to {args.out}/ca.pem (key {args.out}/ca.key, keep it safe)")
        else:
            certificate, key = makeHost(args.hostname, loadCA(args.out), args.days)
            base = os.path.join(args.out, args.hostname)
            writePrivate(base + ".key", keyPEM(key))
            writePublic(base + ".crt", certificatePEM(certificate))
            print(f"{args.hostname}: {base}.crt and {base}.key")
    except (OSError, ValueError) as e:
        print(f"ekey.cli.certs: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
