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
