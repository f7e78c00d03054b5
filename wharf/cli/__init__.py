"""The `wharf` command: `serve`, plus the platform's admin commands."""

import typer

# keys_lifecycle adds to `keys`, content to `accounts` and `requests`
from wharf.cli import admin, audit, content, keys_lifecycle, requests, serve  # noqa: F401

app = typer.Typer(help="Wharf: serve open language models behind the APIs people already use.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


@app.callback()
def main() -> None:
    """Wharf: serve open language models behind the APIs people already use."""


serve.register(app)
admin.register(app)
requests.register(app)
audit.register(app)
