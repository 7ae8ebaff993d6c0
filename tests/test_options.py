"""The features options: one dataclass from either command line, validated, passed on to array tasks."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import pytest

from preprocess import driver, slurm
from preprocess.errors import FeaturesError
from preprocess.options import FeatureOptions, add_plan_arguments, add_run_arguments
from preprocess.recipe import RECIPES
from shards.errors import FmaGenreError


def _features_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    return parser


def _parse(*argv: str) -> FeatureOptions:
    return FeatureOptions.from_args(_features_parser().parse_args(["--out", "o", *argv]))


def test_defaults_from_the_command_line_equal_the_dataclass_defaults():
    assert _parse() == FeatureOptions(Path("data"), Path("o"))


def test_every_flag_reaches_its_field():
    options = _parse(
        "--fma-dir",
        "/d",
        "--subset",
        "small",
        "--recipe",
        "fixed22050",
        "--shard-size",
        "7",
        "--min-duration",
        "-1",
        "--no-skip-known-bad",
        "--track-timeout",
        "0",
        "--compression",
        "lzf",
        "--max-failure-fraction",
        "0.25",
        "--jobs",
        "3",
        "--task-index",
        "2",
        "--num-tasks",
        "5",
        "--force",
        "--backend",
        "dask",
        "--scheduler",
        "tcp://h:1",
        "--no-finalize",
        "--no-progress",
        "--keep-silence",
        "--audio-zip",
        "/z.zip",
        "--target",
        "genres_all",
    )
    assert options == FeatureOptions(
        Path("/d"),
        Path("o"),
        subset="small",
        recipe=RECIPES["fixed22050"],
        shard_size=7,
        min_duration=None,
        skip_known_bad=False,
        track_timeout=None,
        compression="lzf",
        max_failure_fraction=0.25,
        jobs=3,
        task_index=2,
        num_tasks=5,
        force=True,
        backend="dask",
        scheduler="tcp://h:1",
        finalize=False,
        progress=False,
        keep_silence=True,
        audio_zip=Path("/z.zip"),
        target="genres_all",
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"recipe": RECIPES["fixed22050"]},
        {"shard_size": 3},
        {"min_duration": None},
        {"min_duration": 12.5},
        {"skip_known_bad": False},
        {"track_timeout": None},
        {"track_timeout": 7.5},
        {"compression": "gzip"},
        {"max_failure_fraction": 0.9},
        {"keep_silence": True},
        {"audio_zip": Path("/fma/fma_large.zip")},
        {"fine": RECIPES["fine"]},
        {"target": "genres_all"},
    ],
)
def test_array_tasks_get_the_same_plan_options(changes):
    """What the SLURM submitter passes to each task parses back to the same plan options."""
    options = FeatureOptions(Path("/fma"), Path("/out"), subset="medium", **changes)
    argv = ["--fma-dir", "/fma", "--subset", "medium", "--out", "/out", *options.plan_argv()]
    assert FeatureOptions.from_args(_features_parser().parse_args(argv)) == options


def test_plan_options_are_the_same_for_features_and_slurm():
    """Both commands take the plan options from one function, so they cannot drift apart."""
    submit = argparse.ArgumentParser()
    slurm.add_arguments(submit)
    argv = ["--out", "o", "--recipe", "fixed22050", "--shard-size", "9", "--no-skip-known-bad"]
    assert FeatureOptions.from_args(submit.parse_args(argv)) == _parse(*argv[2:])
    plan_only, run_only = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_plan_arguments(plan_only)
    add_run_arguments(run_only)
    dests = set(vars(plan_only.parse_args(["--out", "o"]))) | set(vars(run_only.parse_args([])))
    # --recipes gives two fields: the image's recipe and the fine one
    assert dests - {"recipes"} | {"recipe", "fine"} == {f.name for f in dataclasses.fields(FeatureOptions)}


@pytest.mark.parametrize(
    "text, problem",
    [("reference,nope", "nope"), ("reference,fine,fixed22050", "two"), ("fine,fine", "two")],
)
def test_bad_recipes_are_refused_naming_the_flag(text, problem):
    with pytest.raises(FeaturesError, match=f"--recipes.*{problem}"):
        _parse("--recipes", text)


def test_the_fine_image_must_come_from_the_same_decode():
    assert _parse("--recipes", "reference,fine").fine == RECIPES["fine"]
    with pytest.raises(FeaturesError, match="--recipes.*same decoded samples"):
        _parse("--recipes", "reference,fixed22050")


def test_old_flag_names_still_work_and_warn(caplog):
    with caplog.at_level(logging.WARNING):
        options = _parse("--shard-index", "1", "--num-shards", "3")
    assert (options.task_index, options.num_tasks) == (1, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("--shard-index is deprecated" in w and "--task-index" in w for w in warnings), warnings
    assert any("--num-shards is deprecated" in w and "--num-tasks" in w for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _parse("--task-index", "1", "--num-tasks", "3")
    assert not caplog.records


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"task_index": 3, "num_tasks": 3}, "--task-index"),
        ({"shard_size": 0}, "--shard-size"),
        ({"max_failure_fraction": 1.5}, "--max-failure-fraction"),
        ({"subset": "huge"}, "--subset"),
        ({"backend": "dask"}, "--scheduler"),
        ({"backend": "spark"}, "--backend"),
        ({"track_timeout": -1.0}, "--track-timeout"),
        ({"compression": "zstd"}, "--compression"),
        ({"target": "genres"}, "--target"),
    ],
)
def test_bad_options_are_refused_up_front_naming_the_flag(changes, flag):
    with pytest.raises(FeaturesError, match=flag) as info:
        FeatureOptions(Path("d"), Path("o"), **changes)
    assert isinstance(info.value, FmaGenreError)
    with pytest.raises(FeaturesError, match=flag):
        FeatureOptions(Path("d"), Path("o")).replace(**changes)
