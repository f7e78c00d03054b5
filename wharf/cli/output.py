"""What the admin commands print for scripts: `--json` in the admin API's field names, and
the exit codes (README, "CLI exit codes").

Every record goes through the admin API's own response schema before it is printed as
JSON, whether it came from the local store or from a server, so the fields a script reads
are the same either way and change only when the admin API's do.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from wharf.errors import AuthError, NotFound, PermissionDenied, WharfError

# Exit codes. 2 is also what Typer/Click give an unknown option or an out-of-range value.
EXIT_OK = 0
EXIT_FAILED = 1          # the store or server refused (a bad value, a conflict) or failed
EXIT_USAGE = 2           # bad usage: an unknown option, a value out of range or malformed
EXIT_NOT_FOUND = 3       # no such account, credential, service, request
EXIT_UNREACHABLE = 4     # --server cannot be reached (connection refused, timeout, DNS)
EXIT_DENIED = 5          # the admin key was refused (401) or may not do this (403)

Json = Annotated[bool, typer.Option("--json", help="Print JSON (the admin API's field names) instead of a table.")]


def exit_code_for(err: WharfError) -> int:
    if isinstance(err, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(err, (AuthError, PermissionDenied)):
        return EXIT_DENIED
    return EXIT_FAILED


def exit_code_for_status(status: int) -> int:
    """A server's HTTP error status as an exit code."""
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (401, 403):
        return EXIT_DENIED
    return EXIT_FAILED           # 400 / 422 too: the local store refuses the same values with 1


def _schema(name: str) -> type[BaseModel]:
    # Imported when JSON is asked for only: the API layer costs every other command's start-up.
    from wharf.api import admin, admin_content, admin_keys

    for module in (admin, admin_keys, admin_content):
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(name)


def shaped(schema: str, value: Any) -> Any:
    """`value` (a dict, or a list of them) in the fields of the admin API's response schema
    named `schema` (AccountOut, CredentialOut, ...), as plain JSON values."""
    model = _schema(schema)
    if isinstance(value, list):
        return [model.model_validate(v).model_dump(mode="json") for v in value]
    return model.model_validate(value).model_dump(mode="json")


def print_json(value: Any) -> None:
    """One JSON document on one line (non-ASCII as is: Chinese stays readable)."""
    print(json.dumps(value, ensure_ascii=False, default=str))
