"""
Tests for the manual pages in doc/man: there is one for every command, each
documents every option its command accepts and no option it does not, and
each renders without a warning.

An option is documented by a C{.TP} paragraph of the page's C{OPTIONS}
section whose tag line names it (C{\\fB\\-p\\fR, \\fB\\-\\-port\\fR
\\fIENDPOINT\\fR}); options named elsewhere (the synopsis, prose, twistd's
own options in C{TWISTD OPTIONS}) do not count.
"""

from __future__ import annotations

import configparser
import io
import os
import re
import shutil
import subprocess
from typing import Callable, Dict, List, Set

from twisted.trial.unittest import SkipTest, TestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN_DIR = os.path.join(REPO_ROOT, "doc", "man")

#: What C{ekey-convert-ekeyd-conf} accepts besides its file (it reads its
#: command line itself, without argparse; L{ConvertOptionsTests} checks
#: this against the command).
CONVERT_OPTIONS = frozenset({"-h", "--help", "--version"})

def _section(text: str, name: str) -> List[str]:
    """
    @return: the lines of the C{.SH name} section (up to the next C{.SH}).
    @raise ValueError: if the page has no such section.
    """
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if re.fullmatch(r'\.SH\s+"?' + re.escape(name) + r'"?\s*', line):
            end = next((i for i in range(start + 1, len(lines))
                        if lines[i].startswith(".SH")), len(lines))
            return lines[start + 1:end]
    raise ValueError(f"no .SH {name} section")


def _plain(line: str) -> str:
    """
    @return: a roff line without font changes and with C{\\-} as C{-}.
    """
    line = re.sub(r"\\f(?:\[[^\]]*\]|\(..|.)", "", line)
    line = line.replace("\\-", "-")
    return re.sub(r"^\.(?:B|I|BR|IR|RB|RI|BI|IB)\s+", "", line)


def documentedOptions(text: str) -> Set[str]:
    """
    @param text: a manual page in roff (man macros).
    @return: every option named in a C{.TP} tag line of its C{OPTIONS}
        section (its subsections included).
    @raise ValueError: if it has no C{OPTIONS} section.
    """
    lines = _section(text, "OPTIONS")
    options: Set[str] = set()
    for i, line in enumerate(lines[:-1]):
        if line.startswith(".TP"):
            options.update(re.findall(r"(?<![\w-])--?[A-Za-z0-9][\w-]*", _plain(lines[i + 1])))
    return options


def argparseOptions(parser) -> Set[str]:
    """
    @return: every option string of an C{argparse} parser and of its
        subcommands' parsers.
    """
    import argparse

    options: Set[str] = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= argparseOptions(sub)
    return options


def twistedOptions(optionsClass) -> Set[str]:
    """
    @return: every option a L{twisted.python.usage.Options} class accepts,
        long (from its parameters, flags and C{opt_} methods) and short.
    """
    instance = optionsClass()
    options = {"--" + name.rstrip("=") for name in instance.longOpt}
    options |= {"-" + letter for letter in instance.shortOpt.replace(":", "")}
    return options


def pageProblems(text: str, accepted: Set[str]) -> List[str]:
    """
    @param accepted: the options the command accepts.
    @return: one line per option the page lacks or documents wrongly;
        empty when the page and the command agree.
    """
    documented = documentedOptions(text)
    problems = [f"{option} is accepted but not documented"
                for option in sorted(accepted - documented)]
    problems += [f"{option} is documented but not accepted"
                 for option in sorted(documented - accepted)]
    return problems


def _parserOf(moduleName: str) -> Callable[[], Set[str]]:
    def options():
        import importlib

        module = importlib.import_module(moduleName)
        make = getattr(module, "parser", None) or getattr(module, "_parser")
        return argparseOptions(make())
    return options


def _twistd():
    from ekey.cli.twistd import Options

    return twistedOptions(Options)


#: Each page and the options of its command.
PAGES: Dict[str, Callable[[], Set[str]]] = {
    "twistd-ekey.8": _twistd,
    "ekeyctl.8": _parserOf("ekey.cli.ekeyctl"),
    "ekey-egd.1": _parserOf("ekey.cli.egd"),
    "ekey-sim.1": _parserOf("ekey.cli.sim"),
    "ekey-feed-kernel.8": _parserOf("ekey.cli.feedkernel"),
    "ekey-rekey.8": _parserOf("ekey.cli.rekey"),
    "ekey-setkey.8": _parserOf("ekey.cli.setkey"),
    "ekey-convert-ekeyd-conf.8": lambda: set(CONVERT_OPTIONS),
}


def readPage(name: str) -> str:
    with open(os.path.join(MAN_DIR, name), encoding="utf-8") as f:
        return f.read()


SAMPLE = r"""
.TH X 1
.SH SYNOPSIS
\fB\-\-synopsis\-only\fR
.SH OPTIONS
Prose naming \fB\-\-prose\fR.
.TP
\fB\-p\fR, \fB\-\-port\fR \fIENDPOINT\fR
Serve on it; see \-\-also\-prose.
.SS More
.TP
.B \-\-flag
A flag, range 0\-8.
.SH TWISTD OPTIONS
.TP
\fB\-\-uid\fR \fIUSER\fR
Not this command's.
"""


class CheckerTests(TestCase):
    """
    The checker finds what a page documents, and rejects a page that lacks
    an option or documents one that does not exist.
    """

    def test_documentedOptions(self):
        """
        Only the tag lines of C{.TP} paragraphs in C{OPTIONS} count.
        """
        self.assertEqual(documentedOptions(SAMPLE), {"-p", "--port", "--flag"})

    def test_noOptionsSection(self):
        """
        A page without an C{OPTIONS} section is refused, not read as
        documenting nothing.
        """
        self.assertRaises(ValueError, documentedOptions, ".TH X 1\n.SH NAME\nx\n")

    def test_missingOption(self):
        """
        An option the command accepts and the page lacks is reported.
        """
        self.assertEqual(pageProblems(SAMPLE, {"-p", "--port", "--flag", "--json"}),
                         ["--json is accepted but not documented"])

    def test_nonexistentOption(self):
        """
        An option the page documents and the command lacks is reported.
        """
        self.assertEqual(pageProblems(SAMPLE, {"-p", "--port"}),
                         ["--flag is documented but not accepted"])

    def test_argparseOptionsWalksSubcommands(self):
        """
        Options of subcommands count as the command's.
        """
        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--top")
        sub = parser.add_subparsers()
        sub.add_parser("verb").add_argument("-x", "--inner")
        self.assertEqual(argparseOptions(parser), {"-h", "--help", "--top", "-x", "--inner"})

    def test_twistedOptions(self):
        """
        Parameters, flags, C{opt_} methods and their short forms all count.
        """
        from twisted.python import usage

        class Options(usage.Options):
            optParameters = [["port", "p", None, ""]]
            optFlags = [["kernel", None, ""]]

            def opt_device(self, path):
                pass

            opt_d = opt_device

        self.assertEqual(twistedOptions(Options),
                         {"--port", "-p", "--kernel", "--device", "-d", "--help",
                          "--version"})


class ConvertOptionsTests(TestCase):
    """
    L{CONVERT_OPTIONS} is what C{ekey-convert-ekeyd-conf} accepts.
    """

    def test_accepted(self):
        """
        Each option in L{CONVERT_OPTIONS} is accepted (status 0, no file read).
        """
        from ekey.cli.convert import main

        for option in CONVERT_OPTIONS:
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual((main([option], out=out, err=err), err.getvalue()), (0, ""),
                             option)

    def test_othersRefused(self):
        """
        Any other option is refused.
        """
        from ekey.cli.convert import main

        for option in ("--json", "-v", "--config"):
            self.assertEqual(main([option], out=io.StringIO(), err=io.StringIO()), 2, option)


class PageTests(TestCase):
    """
    The pages as shipped.
    """

    def test_everyCommandHasAPage(self):
        """
        Every console script of setup.cfg, and C{twistd ekey}, has a page,
        and every page is checked here.
        """
        config = configparser.ConfigParser()
        config.read(os.path.join(REPO_ROOT, "setup.cfg"))
        scripts = [line.split("=")[0].strip() for line in
                   config["options.entry_points"]["console_scripts"].splitlines()
                   if line.strip()]
        pages = {os.path.splitext(name)[0] for name in os.listdir(MAN_DIR)
                 if re.search(r"\.[18]$", name)}
        self.assertEqual(sorted(pages), sorted(scripts + ["twistd-ekey"]))
        self.assertEqual(sorted(PAGES), sorted(os.listdir(MAN_DIR)))

    def test_optionsDocumented(self):
        """
        Every page documents exactly its command's options.
        """
        problems = []
        for name, accepted in PAGES.items():
            problems += [f"{name}: {p}" for p in pageProblems(readPage(name), accepted())]
        self.assertEqual(problems, [])

    def test_rendersWithoutWarnings(self):
        """
        groff renders every page with all warnings on and says nothing.
        """
        groff = shutil.which("groff")
        if groff is None:
            raise SkipTest("groff is not installed: apt-get install groff-base")
        for name in PAGES:
            result = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z",
                                     os.path.join(MAN_DIR, name)],
                                    capture_output=True, text=True, timeout=60)
            self.assertEqual((result.returncode, result.stderr), (0, ""), name)

    def test_nameMatchesFile(self):
        """
        Each page's C{.TH} names the file's command and section.
        """
        for name in PAGES:
            command, section = os.path.splitext(name)
            th = next(l for l in readPage(name).splitlines() if l.startswith(".TH "))
            words = _plain(th).split()
            self.assertEqual((words[1].lower(), words[2]), (command, section[1:]), name)
