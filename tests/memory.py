"""
In-memory fixtures shared by the tests of the daemon's parts: a keyring
file with the vectors' key, a started L{KeyManager} on a fake reactor, Unix
sockets that count as keys' paths, and keys connected in memory that replay
the vectors' transcript.
"""

import socket

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from ekey.core.keyring import Keyring
from ekey.services.keys import KeyManager
from tests.vectors import HOST_NONCE, VECTORS, deviceFrames


def writeKeyring(testCase) -> str:
    """
    @return: the path of a new keyring file holding the vectors' key.
    """
    path = testCase.mktemp()
    with open(path, "w") as f:
        f.write(VECTORS["keyring_line_text"] + "\n")
    return path


def startKeyManager(testCase, reactor, pool, keyringPath: str) -> KeyManager:
    """
    @return: a started L{KeyManager} using the keyring at C{keyringPath},
        stopped when the test ends.
    """
    manager = KeyManager(Keyring.load(keyringPath), pool, reactor=reactor)
    manager.startService()
    testCase.addCleanup(manager.stopService)
    return manager


def startMemoryDaemon(testCase) -> None:
    """
    Give C{testCase} a daemon's parts on a L{MemoryReactorClock}: C{reactor},
    C{keyringPath} (the test vectors' keyring), C{pool}, C{keys} (a started
    L{KeyManager}), C{daemon} (a L{Daemon}) and C{shutdowns} (one entry per
    shutdown asked of it).
    """
    from twisted.internet.testing import MemoryReactorClock

    from ekey.core.pool import EntropyPool
    from ekey.services.daemon import Daemon

    testCase.reactor = MemoryReactorClock()
    testCase.keyringPath = writeKeyring(testCase)
    testCase.pool = EntropyPool(1 << 16)
    testCase.keys = startKeyManager(testCase, testCase.reactor, testCase.pool,
                                    testCase.keyringPath)
    testCase.shutdowns = []
    testCase.daemon = Daemon(testCase.keys, testCase.pool, testCase.reactor,
                             lambda: testCase.shutdowns.append(True))


def boundSocket(testCase, path: str) -> str:
    """
    Bind a Unix socket at C{path} (closed when the test ends), so that the
    path counts as a key's.

    @return: C{path}.
    """
    listener = socket.socket(socket.AF_UNIX)
    testCase.addCleanup(listener.close)
    listener.bind(path)
    return path


def connectKey(testCase, reactor, manager: KeyManager, number: int, frames: int):
    """
    Connect the key last asked to connect on C{reactor} in memory and replay
    the transcript's first C{frames} frames to it (4 reach C{Running OK}).
    A function that loses the connection (once) is appended to
    C{testCase.keyConnections}; it is called when the test ends.

    @return: key C{number}'s L{ekey.services.device.KeyProtocol}.
    """
    factory = reactor.unixClients[-1][1]
    wrapper = factory.buildProtocol(None)
    wrapper.makeConnection(StringTransport())
    lost = []

    def lose():
        if not lost:
            lost.append(True)
            wrapper.connectionLost(Failure(ConnectionDone()))

    # The key's service waits for the connection to close when it stops.
    testCase.addCleanup(lose)
    if not hasattr(testCase, "keyConnections"):
        testCase.keyConnections = []
    testCase.keyConnections.append(lose)
    protocol = manager._keys[number].factory.connection
    protocol.pipeline.session._randomBytes = lambda n: HOST_NONCE[4:]
    for frame in deviceFrames()[:frames]:
        protocol.dataReceived(frame)
    return protocol
