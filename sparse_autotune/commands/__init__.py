"""The command line: one module per command group, options checked once. May import: every other subpackage."""
