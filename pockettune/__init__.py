"""The ``pockettune`` command line: one entry point, one subcommand per product part."""
