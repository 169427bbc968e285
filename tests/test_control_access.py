"""
The control channel's trust boundary, attacked as it was found (issue 11):
a daemon's control socket left world-writable (Twisted's default mode
0666, as C{--control unix:PATH} made it), and a local user (uid 65534)
who connects to it.  Each attack runs in a child process forked from the
test that becomes uid 65534 with C{os.setuid} and speaks AMP over the
real Unix socket; the daemon's side (a real L{KeyManager}, L{Daemon} and
L{ControlFactory}) runs in the test's reactor.

On the code before the fix every attack here succeeded: the user listed
and removed the keys, loaded a keyring of their own, added a socket they
listen on as a key, and read the first field of a root-only file through
the keyring error.

The suite runs as root (it must, to become another user); elsewhere these
tests are skipped, or fail under C{EKEY_REQUIRE_INTEROP=1}.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import tempfile
from typing import Dict, Optional, Sequence, Tuple

from twisted.internet import threads
from twisted.logger import Logger, formatEvent
from twisted.protocols import amp
from twisted.trial.unittest import FailTest, SkipTest, TestCase

from ekey.core.keyring import Keyring
from ekey.core.pool import EntropyPool
from ekey.services.control import ControlFactory, checkControlEndpoint, controlService
from ekey.services.daemon import Daemon
from ekey.services.keys import KeyManager
from tests.interop.requirements import interopRequired
from tests.vectors import VECTORS

#: The user the attacks run as.
NOBODY = 65534
#: A control group (it need not exist in /etc/group: the kernel reports
#: the peer's groups by number).
CONTROL_GROUP = 4242
#: The first field of the root-only file: it must never come back.
SECRET = "SECRETFIELDeKeyRootOnly0123"


def requireRoot() -> None:
    """
    @raise SkipTest: if not root (or L{FailTest} under
        C{EKEY_REQUIRE_INTEROP=1}): only root can act as another user.
    """
    if os.getuid() != 0:
        reason = "needs root, to connect to the control socket as uid 65534"
        if interopRequired():
            raise FailTest(reason + " (EKEY_REQUIRE_INTEROP=1)")
        raise SkipTest(reason)


def _readExactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("the daemon closed the connection")
        data += chunk
    return data


def readBox(sock: socket.socket) -> amp.AmpBox:
    """
    Read one AMP box from a blocking socket.
    """
    box = amp.AmpBox()
    while True:
        (length,) = struct.unpack("!H", _readExactly(sock, 2))
        if length == 0:
            return box
        key = _readExactly(sock, length)
        (length,) = struct.unpack("!H", _readExactly(sock, 2))
        box[key] = _readExactly(sock, length)


def _forkAsk(path: str, command: bytes, arguments: Dict[bytes, bytes], uid: Optional[int],
             gid: Optional[int], groups: Sequence[int]) -> Tuple[int, int]:
    """
    Fork a child that takes the given user and groups, connects to the
    control socket at C{path}, sends one command, writes the answer box
    (or C{CHILD-ERROR} and what went wrong) to a pipe and exits.

    @return: the child's pid and the pipe's reading end.
    """
    readFD, writeFD = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        status = 1
        try:
            os.close(readFD)
            if uid is not None:
                os.setgroups(list(groups))
                os.setgid(gid if gid is not None else uid)
                os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(amp.AmpBox(_command=command, _ask=b"1", **{
                k.decode(): v for k, v in arguments.items()}).serialize())
            os.write(writeFD, readBox(sock).serialize())
            status = 0
        except BaseException as e:
            os.write(writeFD, b"CHILD-ERROR " + repr(e).encode())
        finally:
            os._exit(status)
    os.close(writeFD)
    return pid, readFD


def _collect(pid: int, readFD: int) -> amp.AmpBox:
    """
    Wait for a child of L{_forkAsk}.

    @return: the answer box.
    @raise FailTest: with what went wrong in the child.
    """
    os.waitpid(pid, 0)
    with os.fdopen(readFD, "rb") as f:
        data = f.read()
    if data.startswith(b"CHILD-ERROR"):
        raise FailTest(data.decode("utf-8", "replace"))
    return amp.parseString(data)[0]


def askAs(path: str, command: bytes, arguments: Dict[bytes, bytes], uid: Optional[int],
          gid: Optional[int] = None, groups: Sequence[int] = ()):
    """
    Ask the control socket at C{path} one command as another user, from a
    child process, while this process's reactor runs (the daemon's side
    in this process answers).

    @param uid: the child's user, or C{None} to stay root.
    @return: a L{Deferred} firing with the answer's L{amp.AmpBox}.
    """
    pid, readFD = _forkAsk(path, command, arguments, uid, gid, groups)
    return threads.deferToThread(_collect, pid, readFD)


def askAsNow(path: str, command: bytes, arguments: Dict[bytes, bytes], uid: Optional[int],
             gid: Optional[int] = None, groups: Sequence[int] = ()) -> amp.AmpBox:
    """
    L{askAs}, blocking, for a daemon in another process.

    @return: the answer's L{amp.AmpBox}.
    @raise FailTest: if the child could not ask (such as C{PermissionError}
        connecting to the socket).
    """
    return _collect(*_forkAsk(path, command, arguments, uid, gid, groups))


class _AttackedDaemonMixin:
    """
    A daemon's key manager with one key (a socket, given on its command
    line), its configured keyring, and its control socket at mode 0666
    (as C{--control unix:PATH} left it), all in a short temporary
    directory others may traverse.
    """

    controlGroup: Optional[int] = None

    def setUp(self):
        requireRoot()
        from twisted.internet import reactor

        self.directory = tempfile.mkdtemp(prefix="ekey-acl-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        os.chmod(self.directory, 0o755)
        self.keyringPath = self.path("keyring")
        with open(self.keyringPath, "w") as f:
            f.write(VECTORS["keyring_line_text"] + "\n")
        os.chmod(self.keyringPath, 0o600)
        # The attacker's own directory, where they put their keyring and
        # the socket their seeded simulator listens on.
        self.theirs = self.path("nobody")
        os.mkdir(self.theirs)
        os.chown(self.theirs, NOBODY, NOBODY)
        self.keys = KeyManager(Keyring.load(self.keyringPath), EntropyPool(4096), reactor=reactor)
        self.realKey = self.path("real-key.sock")
        self.bound(self.realKey)
        self.keys.add(self.realKey)
        self.keys.startService()
        self.addCleanup(self.keys.stopService)
        self.daemon = Daemon(self.keys, self.keys.pool, reactor, lambda: None)
        self.factory = ControlFactory(self.daemon, controlGroup=self.controlGroup)
        self.events = []
        self.factory.controller.log = Logger(observer=self.events.append)
        self.control = self.path("control.sock")
        port = reactor.listenUNIX(self.control, self.factory, mode=0o666)
        self.addCleanup(port.stopListening)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def bound(self, path: str) -> str:
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(path)
        listener.listen(1)
        return path

    def ask(self, command: bytes, uid: Optional[int] = NOBODY, gid: Optional[int] = None,
            groups: Sequence[int] = (), **arguments: str):
        """
        @return: a L{Deferred} firing with the answer box.
        """
        return askAs(self.control, command,
                     {k.encode(): v.encode() for k, v in arguments.items()}, uid, gid, groups)

    def assertRefused(self, box: amp.AmpBox, code: bytes, *fragments: str) -> str:
        """
        Assert that C{box} is one error of kind C{code}, on one line.

        @return: its description.
        """
        self.assertNotIn(b"_answer", box, box)
        self.assertEqual(box[b"_error_code"], code, box)
        description = box[b"_error_description"].decode("utf-8")
        self.assertNotIn("\n", description)
        for fragment in fragments:
            self.assertIn(fragment, description)
        return description

    def logged(self) -> str:
        return "\n".join(formatEvent(event) for event in self.events)


class NobodyTests(_AttackedDaemonMixin, TestCase):
    """
    Uid 65534 reaches the world-writable socket, and is refused every
    command in one line, and logged with its uid.
    """

    async def test_listRefused(self):
        """
        Listing the keys is refused, saying who may; the log says uid
        65534 was refused.
        """
        box = await self.ask(b"ListKeys")
        self.assertRefused(box, b"NOT_PERMITTED", "permission denied: uid 65534",
                           "only root")
        self.assertIn("uid 65534 may not control this daemon", self.logged())
        self.assertTrue(any(event.get("uid") == NOBODY for event in self.events))

    async def test_removeRealKeyRefused(self):
        """
        The real key cannot be removed: it is still served.
        """
        box = await self.ask(b"RemoveKey", identifier="1")
        self.assertRefused(box, b"NOT_PERMITTED")
        self.assertEqual(self.keys.numbers(), [1])

    async def test_ownKeyringRefused(self):
        """
        A keyring of the attacker's own is not loaded: the configured one
        stays in force.
        """
        theirs = os.path.join(self.theirs, "keyring")
        with open(theirs, "w") as f:
            f.write(VECTORS["keyring_line_text"] + "\n")
        old = self.keys.keyring
        box = await self.ask(b"ReloadKeyring", path=theirs)
        self.assertRefused(box, b"NOT_PERMITTED")
        self.assertIs(self.keys.keyring, old)
        self.assertEqual(self.keys.keyring.path, self.keyringPath)

    async def test_ownSocketKeyRefused(self):
        """
        A socket where the attacker's seeded simulator would listen is not
        added as a key.
        """
        box = await self.ask(b"AddKey", path=self.bound(os.path.join(self.theirs, "sim.sock")))
        self.assertRefused(box, b"NOT_PERMITTED")
        self.assertEqual(self.keys.numbers(), [1])

    async def test_fileReadOracleGone(self):
        """
        Naming a root-only file as a keyring does not give back any of its
        contents.
        """
        secret = self.path("root-only")
        with open(secret, "w") as f:
            f.write(f"{SECRET} not-a-key\n")
        os.chmod(secret, 0o600)
        box = await self.ask(b"ReloadKeyring", path=secret)
        self.assertRefused(box, b"NOT_PERMITTED")
        self.assertNotIn(SECRET.encode(), box.serialize())


class PermittedTests(_AttackedDaemonMixin, TestCase):
    """
    Root and the control group's members may control the daemon; even
    they cannot load another keyring, add a socket key at run time, or
    read a file through an error.
    """

    controlGroup = CONTROL_GROUP

    async def test_rootAndControlGroupOnly(self):
        """
        Root is let in, and so is uid 65534 with the control group as a
        supplementary group or as its group; without it, it is refused.
        """
        box = await self.ask(b"ListKeys", uid=None)
        self.assertIn(self.realKey.encode(), box[b"result"])
        for gid, groups in ((NOBODY, [CONTROL_GROUP]), (CONTROL_GROUP, [])):
            box = await self.ask(b"ListKeys", gid=gid, groups=groups)
            self.assertIn(b"result", box, (gid, groups, box))
        box = await self.ask(b"ListKeys", gid=NOBODY, groups=[NOBODY + 1])
        self.assertRefused(box, b"NOT_PERMITTED", f"members of group {CONTROL_GROUP}")

    async def test_otherKeyringRefused(self):
        """
        Another keyring file is refused even to root; the configured one
        reloads.
        """
        other = self.path("other-keyring")
        with open(other, "w") as f:
            f.write("# empty\n")
        old = self.keys.keyring
        box = await self.ask(b"ReloadKeyring", uid=None, path=other)
        self.assertRefused(box, b"BAD_KEYRING", "only the daemon's own keyring can be reloaded")
        self.assertIs(self.keys.keyring, old)
        box = await self.ask(b"ReloadKeyring", uid=None)
        self.assertIn(b"result", box, box)

    async def test_socketKeyRefusedAtRunTime(self):
        """
        A member of the control group cannot add a Unix socket as a key at
        run time.
        """
        box = await self.ask(b"AddKey", gid=CONTROL_GROUP,
                             path=self.bound(os.path.join(self.theirs, "sim.sock")))
        self.assertRefused(box, b"BAD_KEY_PATH", "not added at run time")
        self.assertEqual(self.keys.numbers(), [1])

    async def test_fileReadOracleGone(self):
        """
        Even root, naming a root-only file as the keyring, gets none of its
        contents back.
        """
        secret = self.path("root-only")
        with open(secret, "w") as f:
            f.write(f"{SECRET} not-a-key\n")
        os.chmod(secret, 0o600)
        box = await self.ask(b"ReloadKeyring", uid=None, path=secret)
        self.assertRefused(box, b"BAD_KEYRING")
        self.assertNotIn(SECRET.encode(), box.serialize())


class ControlEndpointTests(TestCase):
    """
    The control endpoint is a Unix socket, owner-only, or shared with the
    control group only.
    """

    def setUp(self):
        requireRoot()
        self.directory = tempfile.mkdtemp(prefix="ekey-acl-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def listen(self, description: str, group: Optional[int]) -> Tuple[int, int]:
        """
        Start the control service on C{description}.

        @return: the socket's mode and group.
        """
        from twisted.internet import reactor

        service = controlService(description, Daemon(None, EntropyPool(16), reactor, id),
                                 controlGroup=group, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        st = os.stat(os.path.join(self.directory, "control.sock"))
        return stat.S_IMODE(st.st_mode), st.st_gid

    def test_ownerOnly(self):
        """
        Without a control group the socket is 0600, whatever the umask.
        """
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        mode, gid = self.listen(f"unix:{self.directory}/control.sock", None)
        self.assertEqual(mode, 0o600)

    def test_controlGroup(self):
        """
        With a control group the socket is 0660 and the group's.
        """
        mode, gid = self.listen(f"unix:{self.directory}/control.sock", CONTROL_GROUP)
        self.assertEqual((mode, gid), (0o660, CONTROL_GROUP))

    def test_refused(self):
        """
        A TCP control endpoint, or a Unix one whose mode lets others in, is
        refused in one line before anything listens.
        """
        from twisted.internet import reactor

        daemon = Daemon(None, EntropyPool(16), reactor, id)
        for description in ("tcp:7777", f"unix:{self.directory}/control.sock:mode=666"):
            error = self.assertRaises(ValueError, controlService, description, daemon,
                                      reactor=reactor)
            self.assertNotIn("\n", str(error))
        self.assertIn("must be a local Unix socket",
                      str(self.assertRaises(ValueError, checkControlEndpoint, "tcp:7777")))
        self.assertEqual(os.listdir(self.directory), [])

    def test_failedBindStopsStart(self):
        """
        A socket that cannot be bound fails the service's start, as any
        C{strports} listener does, so that the daemon does not start.
        """
        from twisted.internet import reactor

        service = controlService(f"unix:{self.directory}/missing/control.sock",
                                 Daemon(None, EntropyPool(16), reactor, id), reactor=reactor)
        self.assertRaises(Exception, service.privilegedStartService)
