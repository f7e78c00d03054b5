"""Admin commands (accounts, keys, services, usage). Filled in by the platform-core work."""

import typer


def register(app: typer.Typer) -> None:
    pass
