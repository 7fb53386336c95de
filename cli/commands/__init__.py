"""One module per command (or per pair of commands on one subject); each parses its options, checks
what it will write, calls the library and reports. Shared options live in ``cli.options``, what
commands load in ``cli.loading``, errors in ``cli.errors``, output rules in ``cli.outputs``."""
