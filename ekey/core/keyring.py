# -*- test-case-name: tests.test_keyring -*-
"""
The keyring: long-term keys by serial number, in ekeyd's file format.

One key per line, C{<16-char PEM serial> <44-char PEM long-term key>};
blank lines and lines starting with C{#} are comments.  The file holds
secrets: it is written atomically (a private temporary file renamed over
the old one) with mode 0600, and comments survive a rewrite.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple

DEFAULT_KEYRING = "/etc/entropykey/keyring"

SERIAL_LENGTH = 12
KEY_LENGTH = 32


class KeyringError(Exception):
    """
    A keyring file could not be read or written.  The message names the
    file and, for a malformed line, its number.
    """


def parseSecret(text: str, what: str = "key") -> bytes:
    """
    Parse a 32-byte secret given by a person: 44 characters of PEM (as in
    the keyring and on the key's card, spaces allowed) or 64 hex digits.

    @param text: the secret as typed.
    @param what: what to call it in an error message.
    @return: 32 bytes.
    @raise ValueError: with a message fit for the user, if it is neither.
    """
    compact = "".join(text.split())
    if len(compact) == 2 * KEY_LENGTH:
        try:
            return bytes.fromhex(compact)
        except ValueError:
            pass
    try:
        secret = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != KEY_LENGTH:
        raise ValueError(
            f"{what} must be {KEY_LENGTH} bytes as 44 base64 characters or 64 hex digits"
        )
    return secret


def formatSerial(serial: bytes) -> str:
    """
    @return: a 12-byte serial number as the 16 PEM characters ekeyd shows.
    """
    return base64.b64encode(serial).decode("ascii")


def parseSerial(text: str) -> bytes:
    """
    @param text: 16 PEM characters (or 24 hex digits).
    @return: the 12-byte serial.
    @raise ValueError: if it is neither.
    """
    text = text.strip()
    try:
        serial = bytes.fromhex(text) if len(text) == 24 else base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        serial = b""
    if len(serial) != SERIAL_LENGTH:
        raise ValueError(f"{text!r} is not a serial number (16 base64 characters)")
    return serial


class Keyring:
    """
    Long-term keys by serial number.

    @ivar path: the file it was read from and is saved to, if any.
    """

    def __init__(self, path: Optional[str] = None):
        self.path = path
        self._keys: Dict[bytes, bytes] = {}
        # Lines as read, so that comments survive a rewrite; keys are
        # stored as (serial, None) placeholders.
        self._lines: List[Tuple[Optional[bytes], str]] = []

    @classmethod
    def load(cls, path: str) -> "Keyring":
        """
        Read a keyring file.

        @raise KeyringError: if it cannot be read or a line is malformed.
        """
        keyring = cls(path)
        try:
            with open(path, "r", encoding="ascii") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise KeyringError(f"cannot read keyring {path}: {_reason(e)}") from None
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                keyring._lines.append((None, line))
                continue
            fields = stripped.split()
            try:
                if len(fields) != 2:
                    raise ValueError("expected '<serial> <long-term key>'")
                serial = parseSerial(fields[0])
                key = parseSecret(fields[1], "long-term key")
            except ValueError as e:
                raise KeyringError(f"{path}, line {number}: {e}") from None
            if serial in keyring._keys:
                raise KeyringError(
                    f"{path}, line {number}: serial {fields[0]} appears twice"
                )
            keyring._keys[serial] = key
            keyring._lines.append((serial, ""))
        return keyring

    def get(self, serial: bytes) -> Optional[bytes]:
        """
        @return: the long-term key of a serial, or C{None} if unknown.
        """
        return self._keys.get(serial)

    def __contains__(self, serial: bytes) -> bool:
        return serial in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def set(self, serial: bytes, key: bytes) -> None:
        """
        Add or replace the long-term key of a serial (in memory; see
        L{save}).

        @raise ValueError: if either has the wrong length.
        """
        if len(serial) != SERIAL_LENGTH or len(key) != KEY_LENGTH:
            raise ValueError("a serial is 12 bytes and a long-term key 32")
        if serial not in self._keys:
            self._lines.append((serial, ""))
        self._keys[serial] = key

    def serialise(self) -> str:
        """
        @return: the file's text.
        """
        out = []
        for serial, line in self._lines:
            if serial is None:
                out.append(line)
            else:
                out.append(f"{formatSerial(serial)} {formatSerial(self._keys[serial])}")
        return "".join(line + "\n" for line in out)

    def save(self, path: Optional[str] = None) -> None:
        """
        Write the keyring atomically with mode 0600: a temporary file in the
        same directory, flushed to disk, renamed over the old file.

        @raise KeyringError: if it cannot be written; the old file is then
            left as it was.
        """
        path = path or self.path
        if path is None:
            raise ValueError("no path to save the keyring to")
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, temporary = tempfile.mkstemp(prefix=".keyring.", dir=directory)
        except OSError as e:
            raise KeyringError(f"cannot write keyring {path}: {_reason(e)}") from None
        try:
            # mkstemp creates the file 0600 already; say so explicitly.
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(self.serialise())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError as e:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise KeyringError(f"cannot write keyring {path}: {_reason(e)}") from None
        self.path = path


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
