"""Command-line options derived from a ``params.yaml`` section, so a trainer's CLI and the pipeline stage that runs
the same trainer declare its settings once: the section's fields are the options (``foo_bar`` -> ``--foo-bar``),
its defaults the options' defaults, its validators the checks of what was typed.

    parser = argparse.ArgumentParser()
    add_section_options(parser, FastShapGridDetectorNetParams, exclude={"weights"})
    config = section_from_args(parser.parse_args(argv), FastShapGridDetectorNetParams, exclude={"weights"},
                               prog="fastshap_grid_detector_train")
"""
from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError


def _nullable(convert):
    """``convert`` that also reads ``null`` / ``none`` (any case) as None: an Optional field's option."""
    def read(text: str):
        return None if text.lower() in ("null", "none") else convert(text)
    read.__name__ = getattr(convert, "__name__", "value")      # argparse names the type in its errors
    return read


def _option_kind(annotation: Any) -> dict[str, Any]:
    """argparse keywords (type, nargs, choices) of a field's annotation: int / float / str (an Optional one also
    takes ``null``), a Literal (choices), a list (nargs '*') or a fixed-length tuple (nargs = its length) of one
    element type. Raises TypeError for any other (a nested section, a tuple of mixed types), naming it."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            kind = _option_kind(rest[0])
            if "nargs" not in kind and "choices" not in kind:        # 'null' / 'none' give the field's None
                kind["type"] = _nullable(kind["type"])
            return kind
    elif origin is Literal:
        choices = get_args(annotation)
        return {"type": type(choices[0]), "choices": choices}
    elif origin in (list, tuple):
        items = get_args(annotation)
        fixed = origin is tuple and items and Ellipsis not in items
        element = items[0] if items else str
        if element in (int, float, str) and all(i in (element, Ellipsis) for i in items):
            return {"type": element, "nargs": len(items) if fixed else "*"}
    elif annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"no command-line option for a field of type {annotation!r}")


def add_section_options(parser: argparse.ArgumentParser, section: type[BaseModel], *, exclude: Iterable[str] = (),
                        help: Mapping[str, str] | None = None) -> None:
    """One option per field of ``section`` (a pydantic model whose fields all have defaults) except ``exclude``:
    ``--field-name``, default the section's default (shown in ``--help``), typed by the field's annotation
    (:func:`_option_kind`; a bool field becomes ``--name / --no-name``). ``help``: text per field name."""
    defaults, help, skip = section(), help or {}, set(exclude)
    for name, field in section.model_fields.items():
        if name in skip:
            continue
        flag, default = "--" + name.replace("_", "-"), getattr(defaults, name)
        text = f"{help.get(name, '')} (default: {default!r})".strip()
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            parser.add_argument(flag, default=default, help=text, **_option_kind(field.annotation))


def section_from_args(args: argparse.Namespace, section: type[BaseModel], *, exclude: Iterable[str] = (),
                      prog: str = "") -> BaseModel:
    """The ``section`` the parsed options of :func:`add_section_options` state, validated as ``params.yaml`` is.
    Raises SystemExit naming the option and the value at fault for a value the section refuses."""
    skip = set(exclude)
    values = {name: getattr(args, name) for name in section.model_fields if name not in skip}
    try:
        return section(**values)
    except ValidationError as exc:
        faults = []
        for error in exc.errors():
            loc = error["loc"]
            where = "--" + str(loc[0]).replace("_", "-") if loc else "(options)"
            got = f" (got {values.get(loc[0])!r})" if loc else ""
            faults.append(f"{where}: {error['msg']}{got}")
        raise SystemExit(f"{prog + ': ' if prog else ''}{'; '.join(faults)}") from None
