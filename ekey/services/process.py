# -*- test-case-name: tests.test_process -*-
"""
The daemon process's own hardening: no core dumps, and whether the
capabilities it needs survive C{twistd --uid}.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from typing import Optional

#: prctl(2) options.
_PR_SET_DUMPABLE = 4
_PR_GET_SECUREBITS = 27

#: securebits(7): capabilities are not cleared when the uids change.
_SECBIT_NO_SETUID_FIXUP = 1 << 2


def _prctl(option: int, argument: int = 0) -> Optional[int]:
    """
    @return: what prctl(2) returns, or C{None} where it cannot be called.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        result = ctypes.CDLL(name, use_errno=True).prctl(option, argument, 0, 0, 0)
    except (OSError, AttributeError):
        return None
    return None if result < 0 else result


def disableCoreDumps() -> None:
    """
    Make this process write no core file: C{RLIMIT_CORE} to 0 and, on
    Linux, C{PR_SET_DUMPABLE} to 0 (which also keeps other users' ptrace
    and C{/proc/PID/mem} out), so that session keys and pool bytes never
    reach a disk.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(_PR_SET_DUMPABLE, 0)


def capabilitiesSurvive(uid: int) -> bool:
    """
    Whether this process keeps its capabilities (C{CAP_SYS_ADMIN} for the
    kernel feed) after switching to C{uid}, as C{twistd --uid} does: only
    if the uid does not change, or the securebits say
    C{SECBIT_NO_SETUID_FIXUP}.
    """
    if uid == os.geteuid():
        return True
    bits = _prctl(_PR_GET_SECUREBITS)
    return bits is not None and bool(bits & _SECBIT_NO_SETUID_FIXUP)
