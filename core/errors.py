"""User-facing errors and the one wrapper every command's `main` runs under."""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable


class UserError(Exception):
    """A mistake the user can fix: printed as one line `error: <what> — <what to do>`."""

    def __init__(self, what: str, todo: str = "", exit_code: int = 2):
        super().__init__(what)
        self.what = what
        self.todo = todo
        self.exit_code = exit_code

    def line(self) -> str:
        return f"error: {self.what}" + (f" — {self.todo}" if self.todo else "")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command's main(); user mistakes and Ctrl-C never show a traceback (unless --debug)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("QWEN_W4_DEBUG") == "1"
    try:
        code = main(args)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(e.line(), file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except Exception as e:  # noqa: BLE001 - last resort: one line, the detail behind --debug
        if debug:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} — "
              "re-run with --debug for the traceback", file=sys.stderr)
        code = 1
    sys.exit(code or 0)
