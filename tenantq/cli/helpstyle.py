"""Help pages in the usual Unix style: ``tenantq tenant create [OPTIONS] NAME``, and no type on a flag.

typer (0.2x) prints a required argument as ``{name}`` and every flag, ``--help`` included, with
``<bool>``, which reads like a value the flag expects. Its parameter classes are not pluggable (typer
builds them itself), so these three display hooks are replaced once, when the CLI is imported; parsing
is untouched. tests/tenants/test_cli.py checks the help output, so a typer upgrade that moves these
hooks fails there rather than silently.
"""

from __future__ import annotations

from typing import Any

from typer import core


def _argument_name(self: Any) -> str:
    return str(self.metavar or (self.name or "").upper())


def _argument_usage(self: Any) -> str:
    name = _argument_name(self)
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


_option_type = core.TyperOption.display_type_rich


def _option_display_type(self: Any, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None  # a flag takes no value: nothing to show
    return _option_type(self, ctx)


def install() -> None:
    core.TyperArgument.display_name_raw = property(_argument_name)  # type: ignore[assignment,method-assign]
    core.TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]
    core.TyperOption.display_type_rich = _option_display_type  # type: ignore[method-assign]
