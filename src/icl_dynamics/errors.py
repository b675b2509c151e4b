"""Exceptions that the CLI turns into one line on stderr and an exit code, never a traceback."""


class UserError(Exception):
    """Bad input from the user (config, CLI argument, run directory). Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config value or key is invalid."""


class RunDirError(UserError):
    """A run directory is missing, damaged, or would be overwritten."""


class DivergenceError(Exception):
    """Training produced a non-finite value. Exit code 3."""

    exit_code = 3
