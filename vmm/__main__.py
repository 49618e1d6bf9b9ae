"""`python -m vmm` runs the command line."""

from vmm.cli import entry_point

entry_point()
