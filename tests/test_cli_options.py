"""tasks.cli_options: a trainer's command-line options read from its params.yaml section."""
from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import BaseModel, Field, model_validator

from tasks.cli_options import add_section_options, section_from_args
from tasks.params import FastShapGridDetectorNetParams, FastShapGridNetParams


class Recipe(BaseModel):
    weights: str | None = None
    images: int = Field(default=12, ge=3)
    heldout: int = 2
    grid: tuple[int, int] = (6, 8)
    layers: list[int] = [0, 1]
    scenes: int | None = None
    lr: float = 1e-3
    kind: Literal["mean", "blur"] = "mean"
    mirror: bool = False

    @model_validator(mode="after")
    def _inside(self):
        if self.heldout >= self.images:
            raise ValueError(f"heldout ({self.heldout}) must be below images ({self.images})")
        return self


def parse(argv, section=Recipe):
    parser = argparse.ArgumentParser()
    add_section_options(parser, section, exclude={"weights"})
    return section_from_args(parser.parse_args(argv), section, exclude={"weights"}, prog="train")


def test_no_option_gives_the_sections_defaults():
    assert parse([]) == Recipe()
    assert parse([], FastShapGridDetectorNetParams) == FastShapGridDetectorNetParams()
    assert parse([], FastShapGridNetParams) == FastShapGridNetParams()


def test_options_are_typed_by_the_fields():
    got = parse(["--images", "20", "--grid", "4", "5", "--layers", "2", "--lr", "0.01", "--kind", "blur",
                 "--mirror", "--scenes", "7"])
    assert got == Recipe(images=20, grid=(4, 5), layers=[2], lr=0.01, kind="blur", mirror=True, scenes=7)
    assert parse(["--layers"]).layers == []
    assert parse(["--no-mirror"]).mirror is False
    assert parse(["--scenes", "7"]).scenes == 7 and parse(["--scenes", "null"]).scenes is None    # Optional


def test_the_excluded_field_is_no_option():
    with pytest.raises(SystemExit):
        parse(["--weights", "x.pt"])


@pytest.mark.parametrize("argv, fault", [(["--images", "2"], r"--images: .*greater than or equal to 3 \(got 2\)"),
                                         (["--heldout", "12"], r"train: \(options\): .*heldout \(12\) must be below")])
def test_a_value_the_section_refuses_exits_naming_it(argv, fault):
    with pytest.raises(SystemExit, match=fault):
        parse(argv)


def test_argparse_refuses_what_the_type_refuses(capsys):
    for argv in (["--kind", "pink"], ["--grid", "4"], ["--images", "many"]):
        with pytest.raises(SystemExit):
            parse(argv)
    assert "invalid choice: 'pink'" in capsys.readouterr().err


def test_a_field_without_an_option_type_is_named():
    class Nested(BaseModel):
        inner: Recipe = Recipe()

    class Mixed(BaseModel):
        pair: tuple[int, float] = (1, 2.0)

    for section in (Nested, Mixed):
        with pytest.raises(TypeError, match="no command-line option"):
            add_section_options(argparse.ArgumentParser(), section)
