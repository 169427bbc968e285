"""
TLS peers: a CA and host certificates (made with L{ekey.cli.certs}, on
the C{cryptography} package), C{mtls:}/C{tls:} endpoint strings, and the
real C{stunnel} and C{openssl s_client}.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from typing import Optional, Sequence

from ekey.cli import certs
from tests.interop.processes import DEFAULT_TIMEOUT, RunningProcess, waitForListeningTCP
from tests.interop.requirements import findPeer


def quoteEndpointArgument(text: str) -> str:
    """
    @return: C{text} escaped for use as a value in an endpoint string
        (backslashes, colons and equals signs).
    """
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def writeCertificateAuthority(directory: str, commonName: str = "ekey relay CA"):
    """
    Make a CA with L{ekey.cli.certs.makeCA} and write C{ca.pem} and C{ca.key}
    in C{directory} (created if need be), as C{python3 -m ekey.cli.certs ca}
    does.  C{directory} is then a C{trustRoots=} directory for C{tls:}.

    @return: C{(certificate, privateKey)}, for L{writeHostCertificate}.
    """
    os.makedirs(directory, exist_ok=True)
    ca = certs.makeCA(commonName)
    certs.writePrivate(os.path.join(directory, "ca.key"), certs.keyPEM(ca[1]))
    certs.writePublic(os.path.join(directory, "ca.pem"), certs.certificatePEM(ca[0]))
    return ca


def writeHostCertificate(directory: str, hostname: str, ca, days: Optional[int] = None,
                         notBefore=None, name: Optional[str] = None):
    """
    Make a host certificate with L{ekey.cli.certs.makeHost} and write
    C{NAME.crt} and C{NAME.key} in C{directory}.

    @param name: the files' base name (default C{hostname}).
    @return: C{(certificatePath, keyPath)}.
    """
    kwargs = {} if days is None else {"days": days}
    certificate, key = certs.makeHost(hostname, ca, notBefore=notBefore, **kwargs)
    base = os.path.join(directory, name or hostname)
    certs.writePrivate(base + ".key", certs.keyPEM(key))
    certs.writePublic(base + ".crt", certs.certificatePEM(certificate))
    return base + ".crt", base + ".key"


def mtlsServerEndpoint(port: int, certificate: str, key: str, caCerts: str,
                       interface: str = "127.0.0.1") -> str:
    """
    @return: an C{mtls:} server endpoint string on loopback.
    """
    q = quoteEndpointArgument
    return (f"mtls:{port}:certKey={q(certificate)}:privateKey={q(key)}"
            f":caCerts={q(caCerts)}:interface={q(interface)}")


def tlsClientEndpoint(host: str, port: int, trustRoots: str,
                      certificate: Optional[str] = None, key: Optional[str] = None) -> str:
    """
    @return: a C{tls:} client endpoint string, with a client certificate
        if C{certificate} and C{key} are given.
    """
    q = quoteEndpointArgument
    text = f"tls:{host}:{port}:trustRoots={q(trustRoots)}"
    if certificate is not None:
        text += f":certificate={q(certificate)}:privateKey={q(key)}"
    return text


def startStunnel(testCase, directory: str, acceptPort: int, connectPort: int,
                 certificate: str, key: str, name: str = "stunnel",
                 timeout: float = DEFAULT_TIMEOUT) -> RunningProcess:
    """
    Run C{stunnel} in the foreground as a TLS server on
    C{127.0.0.1:acceptPort} forwarding to C{127.0.0.1:connectPort}, with a
    configuration file in C{directory}.

    @return: the running stunnel, once it listens.
    """
    stunnel = findPeer("stunnel4") if shutil.which("stunnel4") else findPeer("stunnel")
    config = os.path.join(directory, f"{name}.conf")
    with open(config, "w") as f:
        f.write("\n".join([
            "foreground = yes",
            "pid =",
            "debug = info",
            f"[{name}]",
            f"accept = 127.0.0.1:{acceptPort}",
            f"connect = 127.0.0.1:{connectPort}",
            f"cert = {certificate}",
            f"key = {key}",
        ]) + "\n")
    process = RunningProcess(testCase, name, [stunnel, config], directory)
    process.configPath = config
    waitForListeningTCP(acceptPort, timeout=timeout, process=process)
    return process


def runOpenSSLClient(testCase, port: int, arguments: Sequence[str], request: bytes,
                     expected: int, timeout: float = 10.0):
    """
    Run C{openssl s_client -quiet -connect 127.0.0.1:PORT ARGUMENTS}, send
    C{request}, and read its standard output until C{expected} bytes have
    come, it exits, or C{timeout} seconds pass; then kill it.

    @return: C{(returnCode, stdout, stderr)}; the return code is C{None}
        if it had to be killed.
    """
    openssl = findPeer("openssl")
    argv = [openssl, "s_client", "-quiet", "-connect", f"127.0.0.1:{port}"] + list(arguments)
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)

    def stop():
        if process.poll() is None:
            process.kill()
        process.wait(5)

    testCase.addCleanup(stop)
    returnCode = None
    output = bytearray()
    try:
        process.stdin.write(request)
        process.stdin.flush()
    except BrokenPipeError:
        pass
    deadline = time.monotonic() + timeout
    while len(output) < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([process.stdout], [], [], min(remaining, 0.2))
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    try:
        returnCode = process.wait(min(1.0, max(0.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        returnCode = None
    stop()
    stderr = process.stderr.read().decode("utf-8", "replace")
    for stream in (process.stdin, process.stdout, process.stderr):
        try:
            stream.close()
        except OSError:
            pass
    return returnCode, bytes(output), stderr

