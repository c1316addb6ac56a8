"""`python -m apga.sweep`: see apga/sweep/__init__.py."""
from apga.sweep import entry_point

entry_point()
