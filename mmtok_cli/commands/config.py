"""`--config FILE.yaml`: option defaults for any command from one YAML file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """`--config FILE.yaml`: option defaults from a YAML mapping; flags on the command line still win.

    Keys are option names (`batch_size` or `batch-size`). A key another command uses is fine here
    (one file can serve ask and batch); a key no command knows is an error, so typos do not pass.
    """
    if value is None or ctx.resilient_parsing:
        return value
    import yaml

    try:
        if value.stat().st_size > CONFIG_MAX_BYTES:
            raise typer.BadParameter(f"{value} is over {CONFIG_MAX_BYTES // 1024} KB; a config file holds a few options")
        text = value.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {value}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(f"{value} is not UTF-8 text (byte {exc.start})") from None
    try:
        # Aliases are refused before anything is built: a few hundred bytes of nested ones expand to gigabytes.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise typer.BadParameter(f"{value} uses a YAML alias (line {mark.line + 1}); write the values out")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise typer.BadParameter(f"{value} is not valid YAML{line}") from None
    if data is None:
        return value
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value} must hold a mapping of option names to values")
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    mine = _option_names(ctx.command)
    group = ctx.parent.command if ctx.parent else None
    known = {k for c in getattr(group, "commands", {}).values() for k in _option_names(c)} | set(mine)
    unknown = sorted(set(options) - known)
    if unknown:
        raise typer.BadParameter(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {value}; "
            f"known: {', '.join(sorted(known))}"
        )
    params = {p.name: p for p in ctx.command.params}
    for key, given in options.items():
        if key in mine:
            _check_config_type(value, key, given, params[mine[key]])
    ctx.default_map = {**(ctx.default_map or {}), **{mine[k]: v for k, v in options.items() if k in mine}}
    return value


CONFIG_MAX_BYTES = 64 * 1024


def _check_config_type(path: Path, key: str, given: Any, param: Any) -> None:
    """Strict types for config values: YAML's `true` is not the integer 1, nor is `[1]` a string."""
    import typing

    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    kinds = [a for a in typing.get_args(annotation) or (annotation,) if a is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else None
    if kind is Path:
        kind = str
    allowed = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(kind)
    if given is None or allowed is None:
        return
    if isinstance(given, bool) and bool not in allowed or not isinstance(given, allowed):
        shown = json.dumps(given) if isinstance(given, (bool, int, float, str)) else f"a {type(given).__name__}"
        want = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
        raise typer.BadParameter(f"'{key}' in {path} must be {want}, not {shown}")


def _option_names(command: Any) -> dict[str, str]:
    """Config keys a command accepts (its long flags, `json` for --json, and parameter names) -> parameter."""
    names = {}
    # Typer ships its own copy of click, so ask the parameter what it is rather than isinstance.
    for p in command.params:
        if p.param_type_name == "option" and p.name not in ("config", "help"):
            names[p.name] = p.name
            names.update({o.lstrip("-").replace("-", "_"): p.name for o in p.opts if o.startswith("--")})
    return names


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of option defaults, e.g. 'model: /models/llava' and 'tokens: 32' on separate lines; "
        "options given on the command line win.",
        callback=_load_config,
        is_eager=True,
        exists=False,
    ),
]

