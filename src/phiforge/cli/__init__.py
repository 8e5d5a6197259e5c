"""The `phiforge` command line: a thin typer app, one subcommand per stage, each calling a library function.

Bad input (missing files, bad config fields, over-long prompts) ends with one line on stderr and exit
code 1; `phiforge --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    help="phiforge: raw corpus -> textbook-quality data -> Phi model -> eval -> quantized model you can chat with.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def _add_subapps() -> None:
    # one module per command group, each with register(app); this order is --help's order
    from . import data, deploy, eval, extend, infer, model, pts, rag, safety, serve, speedrun, train

    for mod in (model, infer, speedrun, train, extend, pts, eval, deploy, serve, rag, data, safety):
        mod.register(app)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug


_add_subapps()


def main() -> None:
    try:
        app(standalone_mode=False)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 — every failure becomes one line unless --debug
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        if _state["debug"]:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
