"""Command line: ``icl-dynamics <command> ...``.

Every command is listed in :data:`COMMANDS`: its help line, ``configure(parser)`` and ``run(args) -> int``,
from the modules in ``commands/``. Bad input anywhere (arguments, configs, run directories) ends in one
line on stderr and exit code 2; other exit codes are listed in errors.py.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import NamedTuple

from .commands import analysis, config, evaluate, explore, run, sweep
from .errors import DivergenceError, StorageError, Terminated, UserError


class Command(NamedTuple):
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "train": Command("train the transformer and write a run directory", run.configure_train, run.train),
    "plot": Command("draw the figures of a run directory", run.configure_plot, run.plot),
    "phases": Command("detect the training phases of a run and write RUN_DIR/phases.json",
                      analysis.configure_phases, analysis.phases),
    "reproduce": Command("run the paper's experiments and write a report that checks each claim",
                         analysis.configure_reproduce, analysis.reproduce),
    "sweep": Command("run a grid of configs (vectorised; local workers or a Dask cluster) into a sweep table",
                     sweep.configure_sweep, sweep.sweep),
    "evaluate": Command("evaluate a run's trained parameters on another data distribution (--set ...)",
                        evaluate.configure, evaluate.run),
    "explore": Command("write one self-contained interactive HTML page of a run or a sweep (works offline)",
                       explore.configure, explore.run),
    "config": Command("print the resolved config with each key's meaning ('config show')", config.configure,
                      config.run),
    "plot-sweep": Command("draw a phase diagram (--x, --y) or a scaling plot with fitted exponent (--x) of a sweep",
                          sweep.configure_plot_sweep, sweep.plot_sweep),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="icl-dynamics", description="In-context learning dynamics of one-layer softmax "
                     "transformers (Huang, Cheng & Liang, ICML 2024).")
    parser.add_argument("--version", action="version", version=f"icl-dynamics {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


MAX_MESSAGE = 500  # characters of an error line; user input echoed in it is clipped shorter where it is made


def one_line(text: str) -> str:
    """Escape line breaks and other unprintables (user input may carry them) so an error stays one short
    line."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds like Ctrl-C: files get marked
        signal.signal(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:  # the usage on stdout, one error line on stderr
            build_parser().print_usage(sys.stdout)
            print("icl-dynamics: error: give a command (icl-dynamics --help lists them)", file=sys.stderr)
            return 2
        return COMMANDS[args.command].run(args)
    except (UserError, DivergenceError, StorageError) as e:
        print(f"icl-dynamics: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print("icl-dynamics: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except RecursionError:  # deeply nested input that slipped past every limit: still one line
        print("icl-dynamics: error: input nested too deeply", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
