"""
Tests for examples/udev: the helper run as udev runs it, with a stand-in
C{ekeyctl} that records its arguments, and the rules checked by a parser
of udev's rule syntax (C{udevadm verify} needs systemd 253; C{udevadm
test} applies the rules to a real device, so it is not used).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence

from twisted.trial import unittest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UDEV = os.path.join(REPO_ROOT, "examples", "udev")
RULES = os.path.join(UDEV, "60-ekey.rules")
HELPER = os.path.join(UDEV, "ekey-udev-helper")
SERIAL = "NwBvBlg3OTBJORFD"


# A checker of udev rules ---------------------------------------------------------

#: Keys that only match, that only assign, and that do either; with whether
#: they take an C{{attribute}}: C{True} required, C{None} optional.
_MATCH = {"ACTION": False, "DEVPATH": False, "KERNEL": False, "KERNELS": False,
          "SUBSYSTEM": False, "SUBSYSTEMS": False, "DRIVER": False, "DRIVERS": False,
          "ATTRS": True, "TAGS": False, "TEST": None, "RESULT": False, "CONST": True,
          "SYSCTL": True}
_ASSIGN = {"OWNER": False, "GROUP": False, "MODE": False, "RUN": None, "LABEL": False,
           "GOTO": False, "IMPORT": True, "OPTIONS": False, "SECLABEL": True,
           "WAIT_FOR": False}
_BOTH = {"ENV": True, "ATTR": True, "NAME": False, "SYMLINK": False, "TAG": False,
         # PROGRAM="..." runs as PROGRAM=="..." does (systemd's own rules use it).
         "PROGRAM": False}
_MATCH_OPS = ("==", "!=")
_ASSIGN_OPS = ("=", "+=", "-=", ":=")
_TOKEN = re.compile(
    r'\s*([A-Z_]+)(?:\{([^{}"]+)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


class RuleError(ValueError):
    """
    A rule is malformed; the message names the line.
    """


def parseRule(text: str, number: int = 1) -> List[tuple]:
    """
    Parse one rule: comma-separated C{KEY[{attr}]OP"value"} pairs.

    @return: C{(key, attribute, operator, value)} for each pair.
    @raise RuleError: if a pair is malformed, a key unknown, an operator
        wrong for its key, or an attribute missing or extra.
    """
    pairs = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise RuleError(f"line {number}: cannot parse {text[position:]!r}")
        key, attribute, operator, value = match.groups()
        if key in _MATCH:
            allowed, needs = _MATCH_OPS, _MATCH[key]
        elif key in _ASSIGN:
            allowed, needs = _ASSIGN_OPS, _ASSIGN[key]
        elif key in _BOTH:
            allowed, needs = _MATCH_OPS + _ASSIGN_OPS, _BOTH[key]
        else:
            raise RuleError(f"line {number}: unknown key {key}")
        if operator not in allowed:
            raise RuleError(f"line {number}: operator {operator} is wrong for {key}")
        if needs is True and not attribute:
            raise RuleError(f"line {number}: {key} needs an {{attribute}}")
        if needs is False and attribute:
            raise RuleError(f"line {number}: {key} takes no {{attribute}}")
        if key == "MODE" and not re.fullmatch(r"0?[0-7]{3,4}", value):
            raise RuleError(f"line {number}: MODE {value!r} is not octal")
        pairs.append((key, attribute, operator, value))
        position = match.end()
        if position < len(text):
            if text[position] != ",":
                raise RuleError(f"line {number}: expected ',' at {text[position:]!r}")
            position += 1
    if not pairs:
        raise RuleError(f"line {number}: empty rule")
    return pairs


def parseRules(text: str) -> List[List[tuple]]:
    """
    Parse a rules file: one rule a line (a trailing backslash continues
    it), C{#} comments and blank lines skipped; every C{GOTO} must have its
    C{LABEL}.

    @return: the rules, each as from L{parseRule}.
    @raise RuleError: for the first malformed rule.
    """
    rules, labels, gotos = [], set(), []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        rule = parseRule(pending + line, start)
        pending = ""
        rules.append(rule)
        for key, _, _, value in rule:
            if key == "LABEL":
                labels.add(value)
            elif key == "GOTO":
                gotos.append((start, value))
    if pending:
        raise RuleError(f"line {start}: the rule ends with a backslash")
    for number, label in gotos:
        if label not in labels:
            raise RuleError(f"line {number}: GOTO {label!r} has no LABEL")
    return rules


class RuleCheckerTests(unittest.TestCase):
    """
    The checker rejects what udev rejects, so that its passing the shipped
    rules means something.
    """

    def test_accepts(self):
        """
        Well-formed rules parse into their pairs, continuation lines too.
        """
        rules = parseRules('# comment\n\nACTION=="add", KERNEL=="tty*", \\\n'
                           '  ENV{X}="1", MODE="0660", RUN+="helper"\n')
        self.assertEqual(rules, [[("ACTION", None, "==", "add"), ("KERNEL", None, "==", "tty*"),
                                  ("ENV", "X", "=", "1"), ("MODE", None, "=", "0660"),
                                  ("RUN", None, "+=", "helper")]])

    def test_rejects(self):
        """
        Unknown keys, wrong operators, unquoted values, missing commas or
        attributes, a bad mode and a dangling GOTO are each refused, naming
        the line.
        """
        bad = [
            'ACTION=="add", FOO=="bar"',          # unknown key (udev: Invalid key 'FOO')
            'ACTION="add"',                       # assignment to a match key
            'GROUP=="ekey"',                      # match on an assignment key
            'ACTION==add',                        # unquoted
            'ACTION=="add" KERNEL=="tty*"',       # no comma
            'ACTION=="add", ATTRS=="x"',          # no {attribute}
            'ACTION=="add", MODE{x}="0660"',      # an {attribute} where none is taken
            'ACTION=="add", MODE="rw"',           # not octal
            'ACTION=="add", GOTO="nowhere"',      # no such LABEL
            'ACTION=="add", BOGUS',               # not a pair
            'ACTION=="add", RUN+="unterminated',  # unbalanced quote
            'ACTION=="add", \\',                 # a dangling continuation
        ]
        for text in bad:
            error = self.assertRaises(RuleError, parseRules, "# x\n" + text + "\n")
            self.assertIn("line 2", str(error), text)

    def test_systemRules(self):
        """
        The rules files this machine's udev ships (and ekeyd's, if
        installed) all pass, so that the checker refuses only what udev
        would.
        """
        import glob

        files = sorted(glob.glob("/usr/lib/udev/rules.d/*.rules")
                       + glob.glob("/lib/udev/rules.d/60-ekeyd.rules"))
        if not files:
            raise unittest.SkipTest("no udev rules installed to compare with")
        for path in files:
            with open(path) as f:
                parseRules(f.read())


# The shipped rules ------------------------------------------------------------------


class RulesTests(unittest.TestCase):
    """
    examples/udev/60-ekey.rules.
    """

    def setUp(self):
        with open(RULES) as f:
            self.rules = parseRules(f.read())

    def assignments(self, key):
        return [(attribute, operator, value) for rule in self.rules
                for k, attribute, operator, value in rule if k == key]

    def test_parses(self):
        """
        Every rule is well-formed, and each matches Entropy Keys' ttys only
        (the USB vendor and product of ekeyd's rules) or keys already
        marked with their serial.
        """
        self.assertTrue(self.rules)
        for rule in self.rules:
            matches = {(k, a): v for k, a, op, v in rule if op in _MATCH_OPS}
            self.assertEqual(matches.get(("SUBSYSTEM", None)), "tty", rule)
            if ("ENV", "ENTROPY_KEY_SERIAL") not in matches:
                self.assertEqual(matches[("ATTRS", "idVendor")], "20df", rule)
                self.assertEqual(matches[("ATTRS", "idProduct")], "0001", rule)

    def test_linkGroupMode(self):
        """
        The key gets the link /dev/entropykey/<serial> as with ekeyd's
        rules, the daemon's group and mode 0660.
        """
        self.assertIn((None, "+=", "entropykey/$env{ENTROPY_KEY_SERIAL}"),
                      self.assignments("SYMLINK"))
        self.assertIn(("ENTROPY_KEY_SERIAL", "=", "$env{ID_SERIAL_SHORT}"),
                      self.assignments("ENV"))
        self.assertEqual(self.assignments("GROUP"), [(None, "=", "ekey")])
        self.assertEqual(self.assignments("MODE"), [(None, "=", "0660")])

    def test_helper(self):
        """
        The program the rules run is the helper shipped beside them (udev
        looks for a relative name in /usr/lib/udev), executable, on add,
        change and remove.
        """
        runs = self.assignments("RUN")
        self.assertEqual(len(runs), 1)
        program = runs[0][2].split()[0]
        self.assertNotIn("/", program)
        self.assertTrue(os.path.isfile(os.path.join(UDEV, program)), program)
        self.assertTrue(os.access(os.path.join(UDEV, program), os.X_OK), program)
        for rule in self.rules:
            if any(k == "RUN" for k, _, _, _ in rule):
                actions = dict(((k, op), v) for k, _, op, v in rule)[("ACTION", "==")]
                self.assertEqual(set(actions.split("|")), {"add", "change", "remove"})


# The helper -------------------------------------------------------------------------


FAKE_EKEYCTL = """#!/bin/sh
for argument in "$@"; do printf '%s\\n' "$argument"; done >> "$EKEYCTL_LOG"
printf -- '--\\n' >> "$EKEYCTL_LOG"
exit ${EKEYCTL_STATUS:-0}
"""


class HelperTests(unittest.TestCase):
    """
    examples/udev/ekey-udev-helper, run with the environment udev gives it
    (as it gives ekeyd's entropykey.sh) and a stand-in C{ekeyctl} first on
    C{PATH}.
    """

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="ekey-udev-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        bin = os.path.join(self.directory, "bin")
        os.mkdir(bin)
        fake = os.path.join(bin, "ekeyctl")
        with open(fake, "w") as f:
            f.write(FAKE_EKEYCTL)
        os.chmod(fake, 0o755)
        self.bin = bin
        self.log = os.path.join(self.directory, "calls")

    def runHelper(self, action: str, serial: Optional[str] = SERIAL,
                  extra: Optional[Dict[str, str]] = None) -> List[Sequence[str]]:
        """
        Run the helper as udev does for C{action} on a key's tty.

        @return: the argument lists C{ekeyctl} was called with.
        """
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "ACTION": action,
            "SUBSYSTEM": "tty",
            "DEVNAME": "/dev/ttyACM0",
            "DEVPATH": "/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/tty/ttyACM0",
            "MAJOR": "166",
            "MINOR": "0",
            "SEQNUM": "4242",
            "ID_VENDOR_ID": "20df",
            "ID_MODEL_ID": "0001",
            "EKEYCTL_LOG": self.log,
        }
        if serial is not None:
            env["ID_SERIAL_SHORT"] = serial
            env["ENTROPY_KEY_SERIAL"] = serial
        env.update(extra or {})
        result = subprocess.run(["/bin/sh", HELPER], env=env, capture_output=True, text=True,
                                timeout=30, cwd="/")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        try:
            with open(self.log) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        os.unlink(self.log)
        return [call.strip("\n").split("\n") for call in text.split("--\n") if call]

    def expected(self, verb, control="unix:/run/ekey/control.sock"):
        return [["--control", control, "--timeout", "5", verb, f"/dev/entropykey/{SERIAL}"]]

    def test_add(self):
        """
        On add, the daemon is told to serve the key's link.
        """
        self.assertEqual(self.runHelper("add"), self.expected("add"))

    def test_change(self):
        """
        On change (C{udevadm trigger}), too: a daemon that serves the key
        refuses harmlessly.
        """
        self.assertEqual(self.runHelper("change"), self.expected("add"))

    def test_remove(self):
        """
        On remove, the daemon is told to forget the key by its link.
        """
        self.assertEqual(self.runHelper("remove"), self.expected("remove"))

    def test_controlEndpoint(self):
        """
        C{EKEY_CONTROL} (set by a rule's C{ENV{EKEY_CONTROL}}) chooses the
        daemon's control endpoint.
        """
        self.assertEqual(self.runHelper("add", extra={"EKEY_CONTROL": "unix:/x/c.sock"}),
                         self.expected("add", "unix:/x/c.sock"))

    def test_notAKey(self):
        """
        Without a serial, or with one that would name a path outside
        /dev/entropykey, or for another action, nothing is called.
        """
        self.assertEqual(self.runHelper("add", serial=None), [])
        for serial in ("", ".", "..", "../../etc/passwd", "a/b"):
            self.assertEqual(self.runHelper("add", serial=serial), [], serial)
        self.assertEqual(self.runHelper("bind"), [])

    def test_noDaemon(self):
        """
        When C{ekeyctl} fails (no daemon), the helper still exits 0, so
        that udev does not count the event as failed.
        """
        self.assertEqual(self.runHelper("add", extra={"EKEYCTL_STATUS": "1"}),
                         self.expected("add"))

    def test_dash(self):
        """
        The helper is plain POSIX sh: C{dash -n} (or C{sh -n}) accepts it.
        """
        shell = shutil.which("dash") or "/bin/sh"
        result = subprocess.run([shell, "-n", HELPER], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
