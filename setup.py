"""
The metadata and options are in setup.cfg; this file only adds the optional
C accelerator of the statistical tests, C{ekey.core._stattests}.  It is
optional: where it cannot be compiled (no compiler, no Python headers),
C{pip install} still succeeds and ekey runs the same tests in pure Python
(C{ekey.core.stattests.ACCELERATED} says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("ekey.core._stattests", ["ekey/core/_stattests.c"], optional=True),
    ],
)
