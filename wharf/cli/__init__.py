"""The `wharf` command: `serve`, plus the platform's admin commands."""

import typer

from wharf.cli import admin, serve

app = typer.Typer(help="Wharf: serve open language models behind the APIs people already use.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


@app.callback()
def main() -> None:
    """Wharf: serve open language models behind the APIs people already use."""


serve.register(app)
admin.register(app)
