"""The `wharf` command: `serve`, plus the platform's admin commands."""

import typer

from wharf.cli import admin, audit, keys_lifecycle, requests, serve  # noqa: F401  (keys_lifecycle adds to `keys`)

app = typer.Typer(help="Wharf: serve open language models behind the APIs people already use.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


@app.callback()
def main() -> None:
    """Wharf: serve open language models behind the APIs people already use."""


serve.register(app)
admin.register(app)
requests.register(app)
audit.register(app)
