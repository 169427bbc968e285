"""
Tests for ekey, run with trial: C{python3 -m twisted.trial tests}.
"""
