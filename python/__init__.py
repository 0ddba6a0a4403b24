"""Build tooling used by setup.py; never shipped with the package."""
