# -*- test-case-name: tests.test_tap -*-
"""
C{twistd ekey}: the daemon, assembled from services under one
L{MultiService}.

    twistd -n ekey --device /dev/entropykey/XXXX --keyring /etc/entropykey/keyring \\
        --output-file /var/lib/ekey/entropy

Every option is checked in L{Options.postOptions}, so that bad
configuration stops C{twistd} at start-up with a one-line message.
"""

from __future__ import annotations

from typing import List

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from ekey.device import KeyPathError, KeyService, checkKeyPath
from ekey.keyring import DEFAULT_KEYRING, Keyring, KeyringError
from ekey.sinks import FileSink, SinkError

log = Logger()


class Options(usage.Options):
    """
    Command-line options of C{twistd ekey}.
    """

    synopsis = "[options]"
    longdesc = (
        "Read verified entropy from Entropy Keys and hand it on. "
        "Every key must be in the keyring."
    )

    optParameters = [
        ["keyring", "k", DEFAULT_KEYRING, "The keyring of long-term keys (ekeyd's format)."],
        ["output-file", "o", None, "Append verified entropy to this file or FIFO."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["devices"]: List[str] = []

    def opt_device(self, path):
        """
        A key: a serial device (such as /dev/entropykey/...) or a Unix
        socket path. Repeatable.
        """
        self["devices"].append(path)

    opt_d = opt_device

    def postOptions(self):
        if not self["devices"]:
            raise usage.UsageError("give at least one key with --device")
        for path in self["devices"]:
            if self["devices"].count(path) > 1:
                raise usage.UsageError(f"key {path} is given more than once")
            try:
                checkKeyPath(path)
            except KeyPathError as e:
                raise usage.UsageError(str(e)) from None
        try:
            self["keyringObject"] = Keyring.load(self["keyring"])
        except KeyringError as e:
            raise usage.UsageError(str(e)) from None
        if not self["output-file"]:
            raise usage.UsageError("nothing to do with the entropy: give --output-file")
        try:
            self["sinks"] = [FileSink(self["output-file"])]
        except SinkError as e:
            raise usage.UsageError(str(e)) from None


class EntropyDispatcher:
    """
    Hand each verified block to every sink, in arrival order.
    """

    def __init__(self, sinks):
        self.sinks = list(sinks)

    def __call__(self, block: bytes) -> None:
        for sink in self.sinks:
            sink.write(block)


def makeService(options, reactor=None):
    """
    Build the daemon's services from parsed L{Options}.

    @return: a L{MultiService}.
    """
    top = MultiService()
    keyring = options["keyringObject"]
    dispatcher = EntropyDispatcher(options["sinks"])
    top.dispatcher = dispatcher
    for path in options["devices"]:
        KeyService(path, lambda: keyring, dispatcher, reactor=reactor).setServiceParent(top)
    log.info("ekey starting with {count} key(s) and keyring {keyring}",
             count=len(options["devices"]), keyring=options["keyring"])
    return top
