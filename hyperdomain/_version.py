"""The package version: read by setup.cfg (attr:) and by every file we write."""
__version__ = "0.1.0"
