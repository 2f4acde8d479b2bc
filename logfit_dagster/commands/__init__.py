"""The subcommands of ``logfit``, one module each; ``cli.py`` parses and dispatches."""
