"""One dataclass per job, filled from defaults, then a YAML file, then the command line.

Every field ``foo_bar`` becomes ``--foo-bar``, listed under its metadata's ``group`` if it has one;
``--config FILE.yaml`` supplies values for any fields (unknown keys are an error, so typos are not
silently ignored).
Validation lives in each dataclass's ``__post_init__`` and raises ``ValueError``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


@dataclasses.dataclass
class CpuThreads:
    """The ``--threads`` option of every job that runs torch (a mixin of its config)."""
    threads: int = dataclasses.field(default=0, metadata={
        "group": "CPU", "help": "torch CPU threads (0 = torch's default, one per core); the results may differ "
                                "in rounding between thread counts"})

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"--threads must be >= 0, got {self.threads}")
        getattr(super(), "__post_init__", lambda: None)()  # the next mixin's checks, if any

    def apply_threads(self) -> None:
        if self.threads:
            import torch  # here, not at the top: the configs of jobs without torch (collect) import this module

            torch.set_num_threads(self.threads)


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _converter(tp):
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)

    def convert(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if text not in choices:
                raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
            return text
        if origin in (tuple, list):
            item = typing.get_args(tp)[0]
            values = [item(v) for v in text.split(",") if v.strip()]
            return tuple(values) if origin is tuple else values
        if tp is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{text!r} is not a boolean")
        return tp(text)

    convert.__name__ = getattr(tp, "__name__", str(tp))
    return convert


def _help(metadata, default) -> str:
    # A field whose default is resolved later (None = "the checkpoint's own") says so in
    # metadata["default_text"]; any other None means the option is simply not set.
    text, shown = metadata.get("help", ""), metadata.get("default_text", default)
    return text if shown is None else f"{text} (default: {shown})"


def build_parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="YAML file with values for any of the options below")
    add_fields(parser, cls)
    return parser


def add_fields(parser: argparse.ArgumentParser, cls) -> None:
    """An option for every field of the dataclass ``cls``; options not given stay out of the namespace."""
    hints = typing.get_type_hints(cls)
    groups = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        group = f.metadata.get("group")
        target = groups.setdefault(group, parser.add_argument_group(f"{group} options")) if group else parser
        if tp is bool:
            target.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f.metadata.get("help", ""))
            continue
        inner, _ = _unwrap_optional(tp)
        choices = typing.get_args(inner) if typing.get_origin(inner) is typing.Literal else None
        target.add_argument(flag, dest=f.name, type=_converter(tp), default=argparse.SUPPRESS,
                            metavar=f.name.upper() if not choices else "{" + ",".join(choices) + "}",
                            help=_help(f.metadata, default))


def from_args(cls, parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The dataclass ``cls`` from the options ``add_fields`` put on ``parser``: fields not given keep their
    defaults, and a value the dataclass rejects exits through ``parser.error``."""
    try:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
    except ValueError as error:
        parser.error(str(error))


def load_yaml(cls, path: Path) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"config file {path} has unknown options {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        inner, _ = _unwrap_optional(hints[key])
        if typing.get_origin(inner) is tuple and isinstance(value, list):
            values[key] = tuple(value)
    return values


def parse(cls, argv: list[str], prog: str, description: str):
    args = vars(build_parser(cls, prog, description).parse_args(argv))
    config_path = args.pop("config", None)
    values = load_yaml(cls, config_path) if config_path else {}
    values.update(args)
    return cls(**values)


def to_yaml(config) -> str:
    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    return yaml.safe_dump({k: plain(v) for k, v in dataclasses.asdict(config).items()}, sort_keys=False)


def open_run_log(path: Path, header: list[str], resume: bool, resumed_at: int):
    """Open a run's CSV log for appending; on resume, rows written after the restored checkpoint are
    dropped because those steps are trained again and would otherwise appear twice."""
    rows = []
    if resume and path.exists():
        with path.open(newline="") as existing:
            rows = [row for row in list(csv.reader(existing))[1:] if row and int(float(row[0])) <= resumed_at]
    log_file = path.open("w", newline="")
    writer = csv.writer(log_file)
    writer.writerow(header)
    writer.writerows(rows)
    log_file.flush()
    return log_file, writer
