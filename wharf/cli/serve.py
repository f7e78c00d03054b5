"""`wharf serve`."""

import typer


def register(app: typer.Typer) -> None:
    pass
