# -*- test-case-name: tests.test_keyring -*-
"""
The keyring: long-term keys by serial number, in ekeyd's file format.

One key per line, C{<16-char PEM serial> <44-char PEM long-term key>};
blank lines and lines starting with C{#} are comments.  The file holds
secrets: it is refused if others could have written it, it is written
atomically (a temporary file renamed over the old one) keeping the old
file's owner, group and mode (0600 for a new file), and comments survive a
rewrite.  No error ever quotes a line of it.
"""

from __future__ import annotations

import base64
import binascii
import os
import pwd
import stat
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
        Read a keyring file, as ssh's C{StrictModes} would: a file that
        someone other than its owner may write, or that belongs to a user
        other than root or this process's, is refused.  Group-readable is
        fine (a C{root:ekey 0640} keyring for a daemon that runs as
        C{ekey}).

        @raise KeyringError: if it cannot be read, is not safe, or a line is
            malformed; the message names the file, the line number and the
            fix, never the contents of a line.
        """
        keyring = cls(path)
        try:
            with open(path, "rb") as f:
                _checkSafe(path, os.fstat(f.fileno()))
                data = f.read()
        except OSError as e:
            raise KeyringError(f"cannot read keyring {path}: {_reason(e)}") from None
        seen: Dict[bytes, int] = {}  # the line each serial was read from
        for number, raw in enumerate(data.splitlines(), 1):
            where = f"keyring {path}, line {number}"
            try:
                line = raw.decode("ascii")
            except UnicodeDecodeError:
                raise KeyringError(f"{where}: not ASCII text") from None
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                keyring._lines.append((None, line))
                continue
            fields = stripped.split()
            if len(fields) != 2:
                raise KeyringError(
                    f"{where}: expected '<serial> <long-term key>' (16 and 44 base64 "
                    f"characters), found {len(fields)} field(s)")
            try:
                serial = parseSerial(fields[0])
            except ValueError:
                raise KeyringError(
                    f"{where}: the first field is not a serial number (16 base64 characters)"
                ) from None
            try:
                key = parseSecret(fields[1])
            except ValueError:
                raise KeyringError(
                    f"{where}: the second field is not a long-term key (44 base64 characters)"
                ) from None
            if serial in keyring._keys:
                raise KeyringError(f"{where}: the serial number of line {seen[serial]} again")
            keyring._keys[serial] = key
            seen[serial] = number
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
        Write the keyring atomically: a temporary file in the same
        directory, given the old file's owner, group and mode (0600 for a
        new file) before anything is written to it, flushed to disk and
        renamed over the old file.  A keyring reached through a symbolic
        link is written where the link points, and the link stays.

        @raise KeyringError: if it cannot be written (or its owner and group
            cannot be kept); the old file is then left as it was.
        """
        path = path or self.path
        if path is None:
            raise ValueError("no path to save the keyring to")
        target = os.path.realpath(path)
        try:
            old = os.stat(target)
        except FileNotFoundError:
            old = None
        except OSError as e:
            raise KeyringError(f"cannot write keyring {path}: {_reason(e)}") from None
        try:
            fd, temporary = tempfile.mkstemp(prefix=".keyring.", dir=os.path.dirname(target))
        except OSError as e:
            raise KeyringError(f"cannot write keyring {path}: {_reason(e)}") from None
        try:
            mine = os.fstat(fd)
            if old is not None and (old.st_uid, old.st_gid) != (mine.st_uid, mine.st_gid):
                os.fchown(fd, old.st_uid, old.st_gid)
            os.fchmod(fd, stat.S_IMODE(old.st_mode) if old is not None else 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(self.serialise())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except OSError as e:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise KeyringError(f"cannot write keyring {path}: {_reason(e)}") from None
        self.path = path


def _checkSafe(path: str, status: os.stat_result) -> None:
    """
    Refuse a keyring that others could have written.

    @param status: the open file's C{fstat}.
    @raise KeyringError: naming the fix, if it is writable by group or
        others or owned by a user other than root or this process's.
    """
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise KeyringError(
            f"keyring {path} is writable by group or others (mode {mode:04o}): "
            f"chmod go-w {path} (640 or 600)")
    me = os.getuid()
    if status.st_uid not in (0, me):
        raise KeyringError(
            f"keyring {path} is owned by {_userName(status.st_uid)}, not by root or "
            f"{_userName(me)} who runs this: chown root {path}")


def _userName(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
