"""
Finding real peers (C{ekeyd}, C{stunnel}, C{strace}...), and what a test
does when one is missing: skip with a reason naming the package, except
under C{EKEY_REQUIRE_INTEROP=1} (as in C{.ci/run}), where it fails.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

from twisted.trial.unittest import FailTest, SkipTest

PACKAGES = {
    "ekeyd": "ekeyd",
    "ekeydctl": "ekeyd",
    "ekey-setkey": "ekeyd",
    "ekeyd-egd-linux": "ekeyd-egd-linux",
    "socat": "socat",
    "openssl": "openssl",
    "stunnel4": "stunnel4",
    "stunnel": "stunnel4",
    "strace": "strace",
}


def interopRequired() -> bool:
    """
    @return: whether a missing peer must fail tests rather than skip them.
    """
    return os.environ.get("EKEY_REQUIRE_INTEROP") == "1"


#: Where Debian's packages install their commands.
SYSTEM_DIRECTORIES = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def findPeer(name: str, package: Optional[str] = None, system: bool = False) -> str:
    """
    Find a real peer's executable on C{PATH}, C{/usr/sbin} or C{/sbin}.

    @param name: the executable's name.
    @param package: the Debian package providing it (guessed from
        L{PACKAGES} if not given).
    @param system: look only where Debian's packages install commands
        (for ekeyd's C{ekey-setkey} and C{ekey-rekey}, which ekey's own
        commands of the same names shadow on C{PATH}).
    @return: its path.
    @raise SkipTest: if it is not installed.
    @raise FailTest: instead, if C{EKEY_REQUIRE_INTEROP=1}.
    """
    package = package or PACKAGES.get(name, name)
    searchPath = os.pathsep.join(
        SYSTEM_DIRECTORIES if system else
        [os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    )
    found = shutil.which(name, path=searchPath)
    if found:
        return found
    skipUnlessRequired(f"{name} is not installed: apt-get install {package}")


def skipUnlessRequired(reason: str) -> None:
    """
    Give up on a test whose environment lacks something it needs.

    @param reason: what is missing and how to provide it.
    @raise SkipTest: normally.
    @raise FailTest: instead, if C{EKEY_REQUIRE_INTEROP=1}: CI promises
        every interop test runs.
    """
    if interopRequired():
        raise FailTest(f"{reason} (EKEY_REQUIRE_INTEROP=1 requires every interop test to run)")
    raise SkipTest(reason)
