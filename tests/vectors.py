"""
The protocol's test vectors, shipped with the tests (C{entropykey-v0.json},
cross-checked against the C code shipped with ekeyd and a running ekeyd).
"""

import json
import os

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "entropykey-v0.json")

with open(_PATH) as _f:
    VECTORS = json.load(_f)

SESSION = VECTORS["session"]
SERIAL = bytes.fromhex(SESSION["serial"])
LONG_TERM_KEY = bytes.fromhex(SESSION["long_term_key"])
HOST_NONCE = bytes.fromhex(SESSION["host_nonce"])


def deviceFrames():
    """
    @return: the device's frames from the session transcript, as bytes.
    """
    return [e["bytes_text"].encode("ascii") for e in SESSION["events"] if e["from"] == "device"]


SESSION_KEY = bytes.fromhex(SESSION["session_key"])


def transcriptSession(**options):
    """
    A host session that has replayed the transcript's first four device
    frames (serial, information, re-key request, re-key reply) with the
    transcript's nonce, so that it holds the transcript's session key.

    @param options: passed to L{ekey.core.session.KeySession}.
    """
    from ekey.core.keyring import Keyring
    from ekey.core.session import KeySession

    ring = Keyring("/etc/entropykey/keyring")
    ring.set(SERIAL, LONG_TERM_KEY)
    session = KeySession(ring, randomBytes=lambda n: HOST_NONCE[4:], **options)
    session.connectionMade()
    session.dataToSend()
    for frame in deviceFrames()[:4]:
        session.receiveData(frame)
    session.dataToSend()
    return session


def entropyFrame(sequence, plaintext, key=SESSION_KEY):
    """
    An entropy frame carrying C{plaintext} at C{sequence}, encrypted and
    MAC'd under C{key} (the transcript's session key by default).
    """
    from ekey.core.frames import binaryPayload, buildContent, buildFrame, encodeSubcode
    from ekey.core.skein import prepared

    pad = prepared("EES", SERIAL, key).update(encodeSubcode(sequence)).final()
    ciphertext = bytes(a ^ b for a, b in zip(plaintext, pad))
    content = buildContent("E", binaryPayload(sequence, ciphertext), True)
    return buildFrame(content, prepared("PMS", SERIAL, key))
