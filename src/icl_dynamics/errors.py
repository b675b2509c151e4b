"""Every exception the package raises on purpose, and its exit code. The CLI turns each into one line on
stderr and this exit code, never a traceback.

| exit | exception        | meaning                                                              |
|------|------------------|----------------------------------------------------------------------|
| 2    | UserError        | bad input: a config, CLI argument, sweep spec or damaged run directory |
| 3    | DivergenceError  | training produced a non-finite value                                 |
| 4    | StorageError     | the operating system refused a read or write (full disk, read-only)  |
| 128+s| Interrupted      | SIGINT / SIGTERM in the training loop, after a checkpoint (trainer.py) |
| 128+s| Terminated       | SIGTERM anywhere else (130 for SIGINT, as KeyboardInterrupt)          |
"""


class UserError(Exception):
    """Bad input from the user (config, CLI argument, run directory). Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config value or key is invalid."""


class RunDirError(UserError):
    """A run directory is missing, damaged, or would be overwritten."""


class SweepError(UserError):
    """A sweep spec or sweep directory problem."""


class DivergenceError(Exception):
    """Training produced a non-finite value. Exit code 3."""

    exit_code = 3


class StorageError(Exception):
    """The operating system refused a file operation (no space, read-only, permission). Exit code 4: the
    input was fine, the machine was not."""

    exit_code = 4


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; training stopped at a chunk boundary (after saving a checkpoint, if it had
    somewhere to save one). Exit code 128 + signal number, as a shell reports a signal."""

    def __init__(self, signum: int, step: int, saved: bool):
        import signal

        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.saved = signum, step, saved
        self.exit_code = 128 + signum


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (the CLI turns the signal into this exception, so a run directory
    being set up is marked "interrupted" instead of being left "running"). Exit code 143."""

    exit_code = 143
