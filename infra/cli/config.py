"""``lakesight config``: the effective settings, or the reference of every setting."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.cli._output import out, print_json


def register(app: typer.Typer) -> None:
    app.command()(config)


def config(
    reference: Annotated[bool, typer.Option("--reference", help="Print every setting as a Markdown table")] = False,
) -> None:
    """Print the effective settings (secrets masked), or the reference of every setting."""
    from infra.settings import get_settings
    from infra.settings_reference import reference_markdown

    if reference:
        out.print(reference_markdown(), markup=False, highlight=False, soft_wrap=True)
        return
    print_json(get_settings().public_dict())
