# -*- test-case-name: tests.test_skein -*-
"""
Skein-256 as the Entropy Key speaks it: version 1.1 of the algorithm (2009),
and ekeyd's "prepared" states.

No maintained library implements Skein v1.1; every Skein package on PyPI
implements v1.3, whose key-schedule parity constant and rotation constants
differ and which therefore gives different answers.  This module is the one
piece of cryptography the project writes by hand.

Speed matters: a key sends about 125 frames a second and each costs four
Threefish blocks (two for the MAC, two for the entropy pad).  The 72 rounds of
Threefish-256 are therefore unrolled into straight-line code, generated once
at import time from the round constants below, with the word permutation done
by renaming variables rather than by moving values.  Prepared states are
copied cheaply, so a personalised, keyed state is built once per session key
and reused for every frame.
"""

from __future__ import annotations

import struct

__all__ = [
    "SkeinState",
    "skein256",
    "prepared",
    "PERSONALISATIONS",
    "TYPE_KEY",
    "TYPE_CFG",
    "TYPE_PERS",
    "TYPE_MSG",
    "TYPE_OUT",
]

_MASK = 0xFFFFFFFFFFFFFFFF

# Skein v1.1 constants (the 2009 submission).  v1.2 and later changed both.
_KEY_SCHEDULE_PARITY = 0x5555555555555555
_ROTATIONS = ((5, 56), (36, 28), (13, 46), (58, 44), (26, 20), (53, 35), (11, 42), (59, 50))
_ROUNDS = 72

BLOCK_BYTES = 32

TYPE_KEY = 0
TYPE_CFG = 4
TYPE_PERS = 8
TYPE_MSG = 48
TYPE_OUT = 63

_FLAG_FIRST = 1 << 62
_FLAG_FINAL = 1 << 63

_WORDS = struct.Struct("<4Q")
_ZERO_CHAIN = (0, 0, 0, 0)

# Configuration block: schema "SHA3", version 1, 256 output bits, sequential.
_CONFIG_256 = _WORDS.pack(0x0000000133414853, 256, 0, 0)

#: The personalisation strings ekeyd uses, by the short names of the
#: protocol description.  Each is padded with spaces to 96 bytes.
PERSONALISATIONS = {
    name: text.ljust(96).encode("ascii")
    for name, text in [
        ("RS", "20090609 support@simtec.co.uk EntropyKey/v1/ReKeyingState"),
        ("PMS", "20090609 support@simtec.co.uk EntropyKey/v1/MessageAuthenticationCodeState"),
        ("EES", "20090609 support@simtec.co.uk EntropyKey/v1/EntropyEncryptionState"),
        ("LRS", "20090609 support@simtec.co.uk EntropyKey/v1/LongTermReKeyingState"),
        (
            "LKMS",
            "20090609 support@simtec.co.uk "
            "EntropyKey/v1/MessageAuthenticationCodeStateForLongTermReKeying",
        ),
    ]
}


def _generateThreefish():
    """
    Build the unrolled Threefish-256 block function.

    The generated function is C{threefish(k0, k1, k2, k3, t0, t1, p0, p1,
    p2, p3)} and returns the encryption of the plaintext words C{p*} under
    the key words C{k*} and tweak words C{t*}, XORed with the plaintext
    (the UBI feed-forward), as a tuple of four words.

    @return: the compiled function.
    """
    lines = [
        "def threefish(k0, k1, k2, k3, t0, t1, p0, p1, p2, p3):",
        f"    k4 = k0 ^ k1 ^ k2 ^ k3 ^ {_KEY_SCHEDULE_PARITY:#x}",
        "    t2 = t0 ^ t1",
        "    x0 = p0; x1 = p1; x2 = p2; x3 = p3",
    ]
    # names[i] is the variable that currently holds logical word i.
    names = ["x0", "x1", "x2", "x3"]
    keys = ["k0", "k1", "k2", "k3", "k4"]
    tweaks = ["t0", "t1", "t2"]

    def inject(s):
        w = names
        lines.append(f"    {w[0]} = ({w[0]} + {keys[s % 5]}) & {_MASK:#x}")
        lines.append(
            f"    {w[1]} = ({w[1]} + {keys[(s + 1) % 5]} + {tweaks[s % 3]}) & {_MASK:#x}"
        )
        lines.append(
            f"    {w[2]} = ({w[2]} + {keys[(s + 2) % 5]} + {tweaks[(s + 1) % 3]}) & {_MASK:#x}"
        )
        lines.append(f"    {w[3]} = ({w[3]} + {keys[(s + 3) % 5]} + {s}) & {_MASK:#x}")

    def mix(a, b, r):
        # Addition and XOR give the same low 64 bits whatever lies above
        # them, so words may carry junk above bit 63 between key
        # injections; only rotation needs an exact 64-bit input.  Masking
        # just there saves one operation in seven.
        lines.append(f"    {a} += {b}; {b} &= {_MASK:#x}")
        lines.append(f"    {b} = ({b} << {r} | {b} >> {64 - r}) ^ {a}")

    for d in range(_ROUNDS):
        if d % 4 == 0:
            inject(d // 4)
        r0, r1 = _ROTATIONS[d % 8]
        mix(names[0], names[1], r0)
        mix(names[2], names[3], r1)
        # Threefish-256 permutation: words 1 and 3 swap places.
        names = [names[0], names[3], names[2], names[1]]
    inject(_ROUNDS // 4)
    w = names
    lines.append(f"    return ({w[0]} ^ p0, {w[1]} ^ p1, {w[2]} ^ p2, {w[3]} ^ p3)")
    namespace: dict = {}
    exec(compile("\n".join(lines), "<ekey.core.skein threefish256>", "exec"), namespace)
    return namespace["threefish"]


_threefish = _generateThreefish()


class SkeinState:
    """
    A Skein-256 hashing state, with the UBI block types exposed as ekeyd's
    C{PrepareSkein} uses them.

    Like the reference implementation, the state keeps the last block of
    input buffered until more input (or the end) arrives, and
    L{startType} throws that buffer away.  That quirk is what makes
    ekeyd's personalisation strings count only their first 64 bytes, and it
    is reproduced on purpose.

    @ivar chain: the chaining value, four 64-bit words.
    @ivar position: bytes processed so far in the current UBI (tweak word 0).
    @ivar flags: tweak word 1 without the position: type and FIRST flag.
    """

    __slots__ = ("chain", "position", "flags", "buffer")

    def __init__(self, chain=_ZERO_CHAIN, position=0, flags=0, buffer=b""):
        self.chain = chain
        self.position = position
        self.flags = flags
        self.buffer = buffer

    def copy(self) -> "SkeinState":
        """
        @return: an independent copy of this state, cheap enough to make for
            every frame.
        """
        return SkeinState(self.chain, self.position, self.flags, self.buffer)

    def startType(self, blockType: int) -> "SkeinState":
        """
        Begin a new UBI of the given type, discarding any buffered input
        (as C{Skein_Start_New_Type} does).

        @param blockType: one of the C{TYPE_*} constants.
        @return: this state, for chaining.
        """
        self.position = 0
        self.flags = (blockType << 56) | _FLAG_FIRST
        self.buffer = b""
        return self

    def _process(self, block: bytes, byteCount: int, final: bool = False) -> None:
        self.position += byteCount
        flags = self.flags | _FLAG_FINAL if final else self.flags
        self.chain = _threefish(*self.chain, self.position, flags, *_WORDS.unpack(block))
        self.flags &= ~_FLAG_FIRST

    def update(self, data: bytes) -> "SkeinState":
        """
        Feed input to the current UBI.

        @param data: the bytes to hash.
        @return: this state, for chaining.
        """
        buffered = self.buffer + data
        # Keep at least one byte (and at most one block) back for the end.
        if len(buffered) > BLOCK_BYTES:
            full = (len(buffered) - 1) // BLOCK_BYTES * BLOCK_BYTES
            for offset in range(0, full, BLOCK_BYTES):
                self._process(buffered[offset : offset + BLOCK_BYTES], BLOCK_BYTES)
            buffered = buffered[full:]
        self.buffer = buffered
        return self

    def _finishUBI(self) -> None:
        count = len(self.buffer)
        self._process(self.buffer.ljust(BLOCK_BYTES, b"\0"), count, final=True)
        self.buffer = b""

    def finalPad(self) -> bytes:
        """
        Finish the current UBI and return the chaining value itself, with no
        output stage (the reference code's C{Skein_256_Final_Pad}).  Used for
        MACs and for absorbing a key.

        @return: 32 bytes.
        """
        self._finishUBI()
        return _WORDS.pack(*self.chain)

    def final(self) -> bytes:
        """
        Finish the current UBI and run Skein's output stage for a 256-bit
        result.

        @return: 32 bytes.
        """
        self._finishUBI()
        self.startType(TYPE_OUT)
        self._process(bytes(BLOCK_BYTES), 8, final=True)
        return _WORDS.pack(*self.chain)


def _initialised(key: bytes = b"") -> SkeinState:
    """
    @return: a state after the optional key and the configuration block,
        ready for a new UBI.
    """
    state = SkeinState()
    if key:
        state.startType(TYPE_KEY).update(key)
        state.chain = _WORDS.unpack(state.finalPad())
    state.startType(TYPE_CFG)
    state._process(_CONFIG_256, len(_CONFIG_256), final=True)
    return state


_PLAIN = _initialised()


def skein256(message: bytes) -> bytes:
    """
    Skein-256-256, version 1.1, of a message.

    @param message: the bytes to hash.
    @return: the 32-byte digest.
    """
    return _PLAIN.copy().startType(TYPE_MSG).update(message).final()


def prepared(personalisation: str, serial: bytes, secret: bytes) -> SkeinState:
    """
    Build a state as ekeyd's C{PrepareSkein} does: Skein-256 keyed with the
    serial number followed by the secret, the personalisation string fed in
    as a PERS UBI, then switched to MSG, which discards the string's last
    buffered 32 bytes.

    @param personalisation: a key of L{PERSONALISATIONS} (C{"PMS"}, ...).
    @param serial: the key's 12-byte serial number.
    @param secret: the 32-byte secret (session, long-term or master key).
    @return: a state ready for message input; copy it before use if it is
        to be reused.
    @raise ValueError: if the serial or secret has the wrong length.
    @raise KeyError: if the personalisation name is unknown.
    """
    if len(serial) != 12:
        raise ValueError(f"serial must be 12 bytes, not {len(serial)}")
    if len(secret) != 32:
        raise ValueError(f"secret must be 32 bytes, not {len(secret)}")
    state = _initialised(serial + secret)
    state.startType(TYPE_PERS).update(PERSONALISATIONS[personalisation])
    return state.startType(TYPE_MSG)
