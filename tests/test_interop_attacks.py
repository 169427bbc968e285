"""
The trust boundary, attacked as it was found (issue 11), end to end
against the real daemon (C{twistd ekey}, started by
L{tests.interop.processes.startDaemon}, reading a simulated key).  Each
attack must now fail.  This module is the index of the whole boundary:
the attacks that another test already replays are listed here with that
test, and not repeated.

  Attack (as found)                                  Replayed by
  -------------------------------------------------  -----------------------------------------
  world-writable C{--control unix:PATH}; uid 65534   L{ControlTests.test_otherUserKeptOut}
    lists, loads its own keyring, adds its own         (mode 0600; with the socket made 0666,
    socket key, removes the real key                   SO_PEERCRED refuses every command);
                                                       in-process: test_control_access
  C{ekeyctl keyring /root-only/file} echoes its      L{ControlTests.test_otherUserKeptOut};
    first field (file-read oracle)                     test_control_access (root too)
  C{--control tcp:PORT} accepted                     L{StartRefusalTests.test_controlTCPRefused}
  C{ekeyd}'s control protocol open to others         test_interop_ekeydctl.test_othersRefused
  C{--upstream ssl:...} unverified                   L{StartRefusalTests.test_sslUpstreamRefused}
  C{tls:} server with another CA's certificate       L{UpstreamTests.test_unverifiedServerNotServed}
  C{tls:} server certificate for another host        test_interop_relay.
                                                       test_upstreamCertificateNamesAnotherHost
  TLS 1.2 CBC-SHA1 suites on C{tls:} upstreams       L{UpstreamTests.test_cbcServerNotServed};
                                                       test_tlsclient.test_cbcServerRefused
  TLS 1.2 CBC-SHA1 suites on C{mtls:} listeners      test_mtls.CipherTests;
                                                       test_interop_relay.test_opensslRefused
  upstream bytes skip the health tests               L{UpstreamTests.test_failingUpstreamNotServed}
  7 bits a byte credited from plain TCP across a     L{UpstreamTests.test_unverifiedUpstreamNotCredited}
    network
  no TLS handshake time-out; 600 idle connections    test_interop_limits (both)
    under a 300-fd limit lock out mTLS and ekeyctl
  20 greedy connections take 95.6% beside a polite   L{FairShareTests.test_greedyIdentityBesidePolite}
    client of another identity
  Unix clients share one bucket                      test_server.IdentityTests.test_unixClientsByUser
  last CN of a two-CN certificate is the identity    L{FairShareTests.test_twoCommonNames};
    (takes another client's share)                     test_server.test_secondCommonNameIsNoIdentity
  keyring at 0666 used silently                      L{StartRefusalTests.test_keyringWritableByOthers}
  malformed keyring line echoes a field (a whole     L{StartRefusalTests.test_swappedKeyringColumns}
    long-term key with the columns swapped)
  C{Keyring.save()} resets owner, group and mode     test_keyring.test_saveKeepsOwnerAndGroup
  file sink takes and drops what a FIFO cannot take  test_sinks.test_slowFifoReader,
                                                       test_interop_kernel.FIFOSinkTests
  output file unbounded, opened without O_NOFOLLOW   test_sinks.test_capped, test_symbolicLinkRefused
  EGD Unix sockets world-accessible                  test_twistd.test_unixListenerPrivate
  shipped units do not fit together, no LimitNOFILE  test_units.ShippedUnitTests
  C{ekey-rekey --master-key} in /proc/*/cmdline      test_rekey.test_masterKeyOnCommandLine,
                                                       test_setkey.test_masterKeyOnCommandLine
  core dumps not disabled                            test_process.CoreDumpTests
  C{--kernel} with C{--uid} starts, then EPERM       L{StartRefusalTests.test_kernelWithUID}
  C{ekeyctl} prints control characters               L{ControlTests.test_otherUserKeptOut} (a key
                                                       path with an escape sequence);
                                                       test_control.PrintableTests
  a key that cannot be opened gives no reason        test_device.OpenFailureTests
  plain metrics on every interface                   test_interop_web.MutualTLSMetricsTests

Local users are uid 65534, in a child forked from the test that takes
that uid with C{os.setuid} and speaks raw AMP
(L{tests.test_control_access.askAsNow}): the interpreter may live where
nobody cannot read it.  The suite runs as root; elsewhere the tests that
need it skip, or fail under C{EKEY_REQUIRE_INTEROP=1}.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
from typing import List, Optional, Sequence

from twisted.trial.unittest import FailTest, TestCase

from tests.interop.egdsockets import BoundEGDSocket
from tests.interop.kernel import entropyAdditions, startTraced, stopTraced
from tests.interop.processes import (
    LONG_TERM_KEY_HEX,
    SERIAL,
    RunningProcess,
    assertNoTraceback,
    daemonLog,
    fileSize,
    freeTCPPort,
    isListeningTCP,
    makeTempDir,
    pythonEnvironment,
    startDaemon,
    startDaemonEGD,
    startRelay,
    startSimulator,
    twistdCommand,
    waitFor,
    waitForListening,
    waitForListeningTCP,
    waitForLog,
    writeKeyring,
)
from tests.interop.requirements import findPeer, skipUnlessRequired
from tests.interop.tlspeers import (
    mtlsServerEndpoint,
    tlsClientEndpoint,
    writeCertificateAuthority,
    writeHostCertificate,
)
from tests.test_control_access import NOBODY, SECRET, askAsNow, requireRoot

#: An escape sequence (clear the screen) in a key's path, which ekeyctl
#: must not print as it is.
ESCAPE = "\x1b[2J"


def shortDirectory(testCase) -> str:
    """
    @return: a new directory under the system's temporary directory (short
        enough for Unix socket paths), that others may traverse; removed
        at clean-up.
    """
    path = tempfile.mkdtemp(prefix="ekey-atk-")
    testCase.addCleanup(shutil.rmtree, path, True)
    os.chmod(path, 0o755)
    return path


def boundSocket(testCase, path: str) -> str:
    """
    Listen on a Unix socket at C{path} (closed at clean-up): something a
    daemon can be pointed at as a key.

    @return: C{path}.
    """
    listener = socket.socket(socket.AF_UNIX)
    testCase.addCleanup(listener.close)
    listener.bind(path)
    listener.listen(1)
    return path


# A fake EGD upstream -----------------------------------------------------------------------

def runFakeEGD(host: str, port: int, fill: str, certificate: Optional[str] = None,
               key: Optional[str] = None, ciphers: Optional[str] = None) -> None:
    """
    Be an EGD server on C{host:port} (over TLS with C{certificate} and
    C{key} if given; only TLS 1.2 with the OpenSSL cipher string C{ciphers}
    if given) that answers reads with C{fill}: C{"zeros"} or C{"random"}
    bytes.  Prints C{listening}, then C{connection N} for each
    client (and C{handshake failed} when its TLS handshake fails).  Runs
    until killed; run it in a subprocess (L{startFakeEGD}).
    """
    context = None
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        if ciphers is not None:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(ciphers)
    listener = socket.create_server((host, port))
    print("listening", flush=True)
    count = 0

    def payload(n):
        return bytes(n) if fill == "zeros" else os.urandom(n)

    def serve(conn):
        try:
            if context is not None:
                try:
                    conn = context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    print(f"handshake failed: {e}", flush=True)
                    return
            buffered = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buffered += data
                while buffered:
                    command = buffered[0]
                    if command == 0x00:
                        conn.sendall((4096 * 8).to_bytes(4, "big"))
                        buffered = buffered[1:]
                    elif command in (0x01, 0x02) and len(buffered) >= 2:
                        n = buffered[1]
                        reply = payload(n)
                        conn.sendall(bytes([n]) + reply if command == 0x01 else reply)
                        buffered = buffered[2:]
                    elif command in (0x01, 0x02):
                        break
                    else:
                        return
        except OSError:
            pass
        finally:
            conn.close()

    while True:
        conn, _ = listener.accept()
        count += 1
        print(f"connection {count}", flush=True)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def startFakeEGD(testCase, directory: str, host: str, fill: str,
                 certificate: Optional[str] = None, key: Optional[str] = None,
                 ciphers: Optional[str] = None, name: str = "fake-egd") -> RunningProcess:
    """
    Start L{runFakeEGD} in a subprocess on a free port and wait until it
    listens.

    @return: the process; its port is C{process.port}.
    """
    port = freeTCPPort(host)
    argv = [sys.executable, "-c",
            "from tests.test_interop_attacks import runFakeEGD; "
            f"runFakeEGD({host!r}, {port!r}, {fill!r}, {certificate!r}, {key!r}, {ciphers!r})"]
    process = RunningProcess(testCase, name, argv, directory, env=pythonEnvironment())
    process.port = port
    waitForListeningTCP(port, host, process=process)
    return process


def connectionsTo(fake: RunningProcess) -> int:
    """
    @return: how many connections the fake upstream has accepted.
    """
    return sum(1 for line in fake.stdout().splitlines() if line.startswith("connection "))


def nonLoopbackAddress() -> Optional[str]:
    """
    @return: an address of this machine that is not loopback (the source
        address of a route out), or C{None} if it has none.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# The attacks -------------------------------------------------------------------------------

class ControlTests(TestCase):
    """
    Another local user and the control channel.
    """

    def test_otherUserKeptOut(self):
        """
        C{--control unix:PATH} (no mode) makes a socket only its owner may
        open: uid 65534 is refused by the file system.  With the socket made
        world-writable by mistake, the daemon still refuses uid 65534 every
        command of the attack (load its own keyring, add a socket where its
        own seeded simulator listens, name a root-only file as the keyring,
        remove the real key, list), logging its uid, and leaks nothing of
        the file; the real key is still the only key, and root's
        C{ekeyctl list} shows its path without the escape sequence in it.
        """
        requireRoot()
        directory = shortDirectory(self)
        theirs = os.path.join(directory, "nobody")
        os.mkdir(theirs)
        os.chown(theirs, NOBODY, NOBODY)
        keyPath = os.path.join(directory, f"key{ESCAPE}.sock")
        startSimulator(self, directory, listen=keyPath)
        keyring = writeKeyring(os.path.join(directory, "keyring"))
        control = os.path.join(directory, "control.sock")
        daemon = startDaemon(self, directory, [keyPath], keyring, None,
                             extra=["--port", f"unix:{directory}/egd.sock",
                                    "--control", f"unix:{control}"])
        waitForListening(control, process=daemon)
        self.assertEqual(stat.S_IMODE(os.stat(control).st_mode), 0o600)
        error = self.assertRaises(FailTest, askAsNow, control, b"ListKeys", {}, NOBODY)
        self.assertIn("PermissionError", str(error))

        os.chmod(control, 0o666)
        theirKeyring = os.path.join(theirs, "keyring")
        with open(theirKeyring, "w") as f:
            f.write(f"{SERIAL} {base64.b64encode(bytes(32)).decode()}\n")
        theirKey = os.path.join(theirs, "sim.sock")
        startSimulator(self, directory, listen=theirKey, seed=b"predictable", name="their-sim")
        secret = os.path.join(directory, "root-only")
        with open(secret, "w") as f:
            f.write(f"{SECRET} not-a-key\n")
        os.chmod(secret, 0o600)
        attacks = [(b"ReloadKeyring", {b"path": theirKeyring.encode()}),
                   (b"AddKey", {b"path": theirKey.encode()}),
                   (b"ReloadKeyring", {b"path": secret.encode()}),
                   (b"RemoveKey", {b"identifier": b"1"}),
                   (b"ListKeys", {})]
        for command, arguments in attacks:
            box = askAsNow(control, command, arguments, NOBODY)
            self.assertEqual(box.get(b"_error_code"), b"NOT_PERMITTED", (command, box))
            self.assertNotIn(b"_answer", box)
            self.assertIn(b"uid 65534 may not control this daemon", box[b"_error_description"])
            self.assertNotIn(SECRET.encode(), box.serialize())
        log = daemonLog(daemon)
        self.assertGreaterEqual(log.count("uid 65534 may not control this daemon"),
                                len(attacks), log[-3000:])
        self.assertNotIn(SECRET, log)

        done = subprocess.run(
            [sys.executable, "-m", "ekey.cli.ekeyctl", "--control", f"unix:{control}",
             "--timeout", "10", "--json", "list"],
            env=pythonEnvironment(), cwd=directory, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual([k["path"] for k in json.loads(done.stdout)], [keyPath])
        done = subprocess.run(
            [sys.executable, "-m", "ekey.cli.ekeyctl", "--control", f"unix:{control}",
             "--timeout", "10", "list"],
            env=pythonEnvironment(), cwd=directory, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"key", done.stdout)
        self.assertNotIn(b"\x1b", done.stdout)
        assertNoTraceback(self, daemonLog(daemon), daemon.stderr())


class StartRefusalTests(TestCase):
    """
    Configurations that opened the boundary are refused at start, in one
    line naming the fix, with nothing served and no secret echoed.
    """

    def setUp(self):
        self.directory = shortDirectory(self)
        self.key = boundSocket(self, os.path.join(self.directory, "key.sock"))
        self.keyring = writeKeyring(os.path.join(self.directory, "keyring"))
        self.output = os.path.join(self.directory, "out")

    def assertRefused(self, daemon: RunningProcess, *fragments: str) -> str:
        """
        The daemon exits non-zero, printing one line on standard error that
        holds every fragment, no traceback, and writes no output.

        @return: the whole of what it printed and logged.
        """
        status = daemon.wait(30)
        err = daemon.stderr()
        text = daemon.stdout() + err + daemonLog(daemon)
        self.assertNotEqual(status, 0, daemon.describe())
        assertNoTraceback(self, text)
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, daemon.describe())
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        self.assertEqual(fileSize(self.output), 0)
        return text

    def daemon(self, extra: Sequence[str], keyring: Optional[str] = None) -> RunningProcess:
        return startDaemon(self, self.directory, [self.key], keyring or self.keyring,
                           self.output, extra=extra)

    def test_controlTCPRefused(self):
        """
        C{--control tcp:PORT} is refused, and nothing listens on the port.
        """
        port = freeTCPPort()
        self.assertRefused(self.daemon(["--control", f"tcp:{port}:interface=127.0.0.1"]),
                           "must be a local Unix socket")
        self.assertFalse(isListeningTCP(port))

    def test_sslUpstreamRefused(self):
        """
        C{--upstream ssl:HOST:PORT} (no trust root, no name check) is
        refused with the hint to use C{tls:} with C{trustRoots=}.
        """
        port = freeTCPPort()
        daemon = startRelay(self, self.directory, [f"ssl:127.0.0.1:{port}"], [], "relay",
                            extra=["--output-file", self.output])
        self.assertRefused(daemon, "ssl:", "tls:", "trustRoots=")

    def test_keyringWritableByOthers(self):
        """
        A keyring at mode 0666 is refused, saying how to fix it.
        """
        os.chmod(self.keyring, 0o666)
        self.assertRefused(self.daemon([]), self.keyring, "chmod go-w")

    def test_swappedKeyringColumns(self):
        """
        A keyring line with its columns swapped (the long-term key first)
        is refused naming the file and the line, and neither field is
        echoed anywhere.
        """
        secret = base64.b64encode(bytes.fromhex(LONG_TERM_KEY_HEX)).decode()
        with open(self.keyring, "w") as f:
            f.write(f"# swapped\n{secret} {SERIAL}\n")
        text = self.assertRefused(self.daemon([]), self.keyring, "line 2")
        self.assertNotIn(secret[:12], text)
        self.assertNotIn(SERIAL, text)

    def test_kernelWithUID(self):
        """
        C{twistd --uid 65534 ekey --kernel} is refused at start, pointing at
        the capability-based unit (it used to start and fail every feed with
        EPERM).
        """
        requireRoot()
        logPath = os.path.join(self.directory, "ekey.log")
        argv = twistdCommand() + [
            "-n", "--logfile", logPath, "--pidfile", os.path.join(self.directory, "ekey.pid"),
            "--uid", str(NOBODY), "--gid", str(NOBODY), "ekey",
            "--device", self.key, "--keyring", self.keyring, "--kernel",
            "--control", "none"]
        daemon = RunningProcess(self, "ekey", argv, self.directory, env=pythonEnvironment())
        daemon.logPath = logPath
        self.assertRefused(daemon, "--kernel", "ekey-feed-kernel.service")


class UpstreamTests(TestCase):
    """
    Only verified, tested upstream bytes are served or credited.
    """

    def setUp(self):
        self.directory = shortDirectory(self)
        self.output = os.path.join(self.directory, "out")

    def relay(self, upstream: str, extra: Sequence[str] = ()) -> RunningProcess:
        return startRelay(self, self.directory, [upstream], [], "relay",
                          extra=["--output-file", self.output] + list(extra))

    def assertNothingServed(self, relay: RunningProcess, fake: RunningProcess) -> None:
        """
        Once the relay has come back to the fake upstream (the second
        connection, after its back-off), nothing it received has been
        written out.
        """
        waitFor(lambda: connectionsTo(fake) >= 2, 20, "the relay to try again", relay)
        self.assertEqual(fileSize(self.output), 0, relay.describe())
        self.assertIsNone(relay.poll(), relay.describe())
        assertNoTraceback(self, daemonLog(relay), relay.stderr())

    def test_unverifiedServerNotServed(self):
        """
        A C{tls:} upstream whose server's certificate (for the right name)
        comes from another CA, serving random bytes, is not talked to: the
        handshake fails, the reason is logged, nothing is written out.
        """
        ours = os.path.join(self.directory, "ours")
        writeCertificateAuthority(ours)
        theirs = os.path.join(self.directory, "theirs")
        certificate, key = writeHostCertificate(
            theirs, "localhost", writeCertificateAuthority(theirs, "another CA"))
        fake = startFakeEGD(self, self.directory, "127.0.0.1", "random", certificate, key)
        relay = self.relay(tlsClientEndpoint("localhost", fake.port, ours))
        waitForLog(relay, "certificate verify failed")
        self.assertNothingServed(relay, fake)

    def test_cbcServerNotServed(self):
        """
        A C{tls:} upstream that the trust roots verify but that offers only
        TLS 1.2 with a CBC-SHA1 suite (C{ECDHE-ECDSA-AES128-SHA}: the test
        certificates are ECDSA), serving random bytes, is refused: the
        handshake fails, nothing is written out.
        """
        ours = os.path.join(self.directory, "ours")
        certificate, key = writeHostCertificate(ours, "localhost",
                                                writeCertificateAuthority(ours))
        fake = startFakeEGD(self, self.directory, "127.0.0.1", "random", certificate, key,
                            ciphers="ECDHE-ECDSA-AES128-SHA")
        relay = self.relay(tlsClientEndpoint("localhost", fake.port, ours))
        waitForLog(relay, "TLS handshake failed")
        self.assertNothingServed(relay, fake)

    def test_failingUpstreamNotServed(self):
        """
        An upstream serving zeros (a relay used to serve 64 of them) is
        disconnected when its bytes fail the health tests, the failure is
        logged, and none of its bytes is written out.
        """
        fake = startFakeEGD(self, self.directory, "127.0.0.1", "zeros")
        relay = self.relay(f"tcp:127.0.0.1:{fake.port}")
        waitForLog(relay, "failed the health tests")
        self.assertNothingServed(relay, fake)

    def test_unverifiedUpstreamNotCredited(self):
        """
        C{twistd ekey --kernel} with a plain C{tcp:} upstream on an address
        that is not loopback says in its start line that it credits 0 bits
        a byte, and every C{RNDADDENTROPY} it makes credits 0 (it used to
        credit 7 bits a byte).
        """
        requireRoot()
        findPeer("strace")
        if not os.access("/dev/random", os.W_OK):
            skipUnlessRequired("/dev/random is not writable here")
        address = nonLoopbackAddress()
        if address is None:
            skipUnlessRequired("this machine has no address other than loopback")
        fake = startFakeEGD(self, self.directory, address, "random")
        upstream = f"tcp:{address}:{fake.port}"
        logPath = os.path.join(self.directory, "kernel.log")
        argv = twistdCommand() + [
            "-n", "--logfile", logPath, "--pidfile", os.path.join(self.directory, "k.pid"),
            "ekey", "--upstream", upstream, "--kernel", "--kernel-interval", "1",
            "--control", "none"]
        daemon = startTraced(self, "ekey-kernel", argv, self.directory, env=pythonEnvironment())
        daemon.logPath = logPath
        # strace's child too, if the test fails before it is stopped.
        self.addCleanup(stopTraced, daemon)
        line = waitForLog(daemon, "feeding the kernel")
        self.assertIn(f"crediting 0 bits a byte (no credit by default: {upstream} is not "
                      "verified", line)

        def fed():
            return len([a for a in entropyAdditions(daemon.tracePath)
                        if a.size and a.result == 0]) >= 2

        waitFor(fed, 20, "two additions to the kernel", daemon)
        stopTraced(daemon)
        additions = [a for a in entropyAdditions(daemon.tracePath) if a.size]
        self.assertTrue(additions)
        for addition in additions:
            self.assertEqual(addition.bits, 0, addition.line[:200])


def writeTwoNameCertificate(directory: str, names: Sequence[str], ca) -> tuple:
    """
    Write a client certificate from C{ca} whose subject holds every common
    name in C{names}, in order, as C{twocn.crt} and C{twocn.key}.

    @return: C{(certificatePath, keyPath)}.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from ekey.cli import certs

    caCertificate, caKey = ca
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)
                                 for name in names]))
        .issuer_name(caCertificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(caKey, hashes.SHA256())
    )
    base = os.path.join(directory, "twocn")
    certs.writePrivate(base + ".key", certs.keyPEM(key))
    certs.writePublic(base + ".crt", certs.certificatePEM(certificate))
    return base + ".crt", base + ".key"


class FairShareTests(TestCase):
    """
    Fair shares are per identity, not per connection.
    """

    def test_twoCommonNames(self):
        """
        A client whose certificate holds two common names, the second being
        another client's (C{alice}), is not taken for that client: the
        daemon knows the two connections as two identities (by their
        certificates' fingerprints), and shows both names of the second.
        The last CN used to be the identity, so both were C{alice} and
        shared one share and one rate bucket.
        """
        directory = shortDirectory(self)
        startSimulator(self, directory, listen=os.path.join(directory, "key.sock"))
        pki = os.path.join(directory, "pki")
        ca = writeCertificateAuthority(pki)
        caPath = os.path.join(pki, "ca.pem")
        server = writeHostCertificate(pki, "localhost", ca)
        alice = writeHostCertificate(pki, "alice", ca)
        mallory = writeTwoNameCertificate(pki, ["mallory", "alice"], ca)
        port = freeTCPPort()
        control = os.path.join(directory, "control.sock")
        daemon = startDaemon(self, directory, [os.path.join(directory, "key.sock")],
                             writeKeyring(os.path.join(directory, "keyring")), None,
                             extra=["--port", mtlsServerEndpoint(port, *server, caPath),
                                    "--control", f"unix:{control}"])
        waitForListeningTCP(port, process=daemon)
        connections = []
        for certificate, key in (alice, mallory):
            context = ssl.create_default_context(cafile=caPath)
            context.load_cert_chain(certificate, key)
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            tls = context.wrap_socket(raw, server_hostname="localhost")
            self.addCleanup(tls.close)
            tls.sendall(b"\x02\x20")
            data = b""
            while len(data) < 32:
                chunk = tls.recv(32 - len(data))
                self.assertTrue(chunk, daemon.describe())
                data += chunk
            connections.append(tls)
        done = subprocess.run(
            [sys.executable, "-m", "ekey.cli.ekeyctl", "--control", f"unix:{control}",
             "--timeout", "10", "--json", "clients"],
            env=pythonEnvironment(), cwd=directory, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        identities = sorted(c["identity"] for c in json.loads(done.stdout))
        self.assertEqual(len(identities), 2, identities)
        self.assertTrue(identities[0].startswith("alice sha256:"), identities)
        self.assertTrue(identities[1].startswith("mallory+alice sha256:"), identities)
        self.assertNotEqual(identities[0].split()[-1], identities[1].split()[-1])

    #: Bytes counted, once every client has been served once.
    COUNTED = 16000

    def test_greedyIdentityBesidePolite(self):
        """
        Twenty greedy connections from 127.0.0.2, each with two 255-byte
        blocking reads always in flight, beside one polite connection from
        127.0.0.3 reading 32 bytes at a time, on a key slower than their
        demand: the polite one gets at least 40% of the bytes (per
        connection it got 4.4%).
        """
        directory = makeTempDir(self)
        keyPath = os.path.join(shortDirectory(self), "key.sock")
        startSimulator(self, directory, listen=keyPath, rate=125)
        daemon = startDaemonEGD(self, directory, [keyPath],
                                writeKeyring(os.path.join(directory, "keyring")),
                                extra=["--control", "none"])
        counts = {"greedy": 0, "polite": 0}
        errors: List[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def greedy():
            selector = selectors.DefaultSelector()
            sockets = []
            try:
                for _ in range(20):
                    client = BoundEGDSocket("127.0.0.2", daemon.egdHost, daemon.egdPort)
                    sockets.append(client)
                    client.send(b"\x02\xff" * 2)
                    client.sock.setblocking(False)
                    selector.register(client.sock, selectors.EVENT_READ, [client, 0])
                while not stop.is_set():
                    for selected, _ in selector.select(0.2):
                        client, received = selected.data
                        data = client.sock.recv(65536)
                        if not data:
                            errors.append("a greedy connection was closed")
                            return
                        before = received // 255
                        received += len(data)
                        selected.data[1] = received
                        with lock:
                            counts["greedy"] += len(data)
                        more = received // 255 - before
                        if more:
                            client.sock.setblocking(True)
                            client.send(b"\x02\xff" * more)
                            client.sock.setblocking(False)
            except OSError as e:
                errors.append(f"greedy: {e!r}")
            finally:
                selector.close()
                for client in sockets:
                    client.close()

        def polite():
            try:
                client = BoundEGDSocket("127.0.0.3", daemon.egdHost, daemon.egdPort,
                                        timeout=30)
                while not stop.is_set():
                    client.send(b"\x02\x20")
                    data = client.recvExactly(32)
                    with lock:
                        counts["polite"] += len(data)
                client.close()
            except Exception as e:
                errors.append(f"polite: {e}"[:300])

        threads = [threading.Thread(target=greedy, daemon=True),
                   threading.Thread(target=polite, daemon=True)]
        for thread in threads:
            thread.start()
        try:
            waitFor(lambda: errors or (counts["greedy"] and counts["polite"]), 30,
                    "both identities to be served", daemon)
            with lock:
                start = dict(counts)

            def counted():
                return errors or sum(counts.values()) - sum(start.values()) >= self.COUNTED

            waitFor(counted, 60, f"{self.COUNTED} more bytes served", daemon)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        self.assertEqual(errors, [])
        with lock:
            got = {who: counts[who] - start[who] for who in counts}
        share = got["polite"] / sum(got.values())
        print(f"\npolite identity {got['polite']} bytes, greedy identity (20 connections) "
              f"{got['greedy']} bytes: polite share {100 * share:.1f}%")
        self.assertGreater(got["greedy"], 0)
        self.assertGreaterEqual(share, 0.4, got)
