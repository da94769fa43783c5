"""The ``homeward`` command. Each verb is a Python API function; its flags are that function's keyword arguments.

A verb function looks like ``def enrich(settings: Settings, *, limit: int | None = None) -> dict``. Parameters
without a default become positional arguments (keyword-only ones: required ``--flags``), the rest ``--flags`` typed
from their annotations, and the docstring's ``Args:`` lines become the flag help. The signature is read from the
module's source (:func:`verb_signature`), so ``--help`` imports no job; only the verb that runs is imported. The
returned dict is printed as one JSON object on the last line, so scripts (and ``eval``/``bench`` consumers) read the
figures without parsing prose.

Exit status: 0 done; 1 the verb ran but its work failed (its result carries ``error``, printed first as one
``homeward: error:`` line on stderr, the JSON still last on stdout); 2 bad input, configuration or store
(:class:`engine.errors.HomewardError`: one line, no JSON); 130 interrupted.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from engine.config import ConfigError, Settings, load_settings, parse_assignments
from engine.errors import RESULT_ERROR, HomewardError

#: verb → (``module:function``, one-line purpose). ``bench`` and ``watch`` nest one level.
VERBS: dict[str, Any] = {
    "crawl": ("ray_jobs.crawl:crawl", "Crawl one or more sources into LanceDB (sources fan out as Ray tasks)."),
    "sources": ("ray_jobs.schedule:sources", "List sources with last success, lag and error rate."),
    "schedule": ("ray_jobs.schedule:schedule", "Run every source at its cadence, recording runs in DuckDB."),
    "enrich": ("ray_jobs.enrich.job:enrich", "Detect, embed and caption photos not yet enriched (Ray actors)."),
    "match": ("ray_jobs.match:match", "Score every plausible lost x found pair and publish ranked matches."),
    "search": ("engine.search:search", "Find the listings most similar to a photo."),
    "report": ("dashboards.report:report", "Write shelter match reports (HTML, CSV, Parquet)."),
    "dashboard": ("dashboards.app:dashboard", "Serve the operator / shelter / analyst dashboard."),
    "train": ("engine.train:train", "Fine-tune the re-identification embedder on identity folders."),
    "eval": ("engine.eval:evaluate", "Measure re-identification quality on identity folders (JSON last line)."),
    "crops": ("engine.train.crops:crop_folders", "Cut identity folders as enrichment does, to train on the crops."),
    "bench": {
        "crawl": ("ray_jobs.bench.crawl:bench_crawl", "Crawl throughput vs `scrapy bench` (JSON last line)."),
        "enrich": ("ray_jobs.bench.enrich:bench_enrich", "Enrich pipeline efficiency vs each model alone."),
        "match": ("ray_jobs.bench.match:bench_match", "All-pairs scoring rate vs a plain torch matmul."),
        "search": ("ray_jobs.bench.search:bench_search", "Search through the vector index vs exact, p95 and recall."),
        "load": (
            "ray_jobs.bench.load:bench_load",
            "Synthetic region (200k listings): ingest -> match, per stage.",
        ),
    },
    "watch": {
        "add": ("engine.watches:add", "Save an owner's search: e-mail new listings that look like the photo."),
        "list": ("engine.watches:list_watches", "List saved searches (owner alerts)."),
        "remove": ("engine.watches:remove", "End a saved search and erase its e-mail address."),
        "notify": ("dashboards.alerts:deliver_watch_alerts", "E-mail owners the listings due since their last alert."),
    },
    "export": ("engine.analyst:export", "Write every table and analyst view as Parquet files for BI tools."),
    "demo": ("ray_jobs.demo:demo", "Run the whole job end to end on a local mirror with planted reunions."),
    "completion": ("ray_jobs.cli:completion", "Print a shell completion script (bash, zsh or tcsh)."),
}


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a verb function, read from its source."""

    name: str
    annotation: Any
    default: Any
    keyword_only: bool


_EMPTY = inspect.Parameter.empty
_NOT_LITERAL = object()  # a default computed in code: the function applies it, help names none
#: Names an annotation may use; anything else reads as ``str`` (the flag then takes text).
_ANNOTATION_NAMES = {t.__name__: t for t in (str, int, float, bool, list, dict, tuple)} | {
    "None": None,
    "Any": Any,
    "Literal": typing.Literal,
    "Optional": typing.Optional,
}


def _source_path(module: str) -> Path:
    """The source file of ``module``, found without importing it or its parent packages (``engine.train``'s
    ``__init__`` imports torch)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"no package {top!r}")
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _annotation(node: ast.expr | None) -> Any:
    if node is None:
        return str
    try:
        return eval(compile(ast.Expression(node), "<annotation>", "eval"), {"__builtins__": {}}, _ANNOTATION_NAMES)
    except Exception:  # a project type (Settings, Path, ...): the flag takes text
        return str


def verb_signature(target: str) -> tuple[list[Param], str]:
    """A verb's parameters (after ``settings``) and docstring, read from its module's source with :mod:`ast`.

    Why not :func:`inspect.signature`: that needs the module imported, and the jobs import torch, Ray and Scrapy
    (3-7 s) before a single line of ``--help`` is shown. The source gives the same names, annotations and literal
    defaults; a verb runs through the real function, so a default that is not a literal only shows unlabelled.
    """
    module, _, name = target.partition(":")
    tree = ast.parse(_source_path(module).read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = [(a, d, False) for a, d in zip(positional, defaults, strict=True)]
    params += [(a, d, True) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    out = []
    for arg, default, kw in params[1:]:
        try:
            value = _EMPTY if default is None else ast.literal_eval(default)
        except ValueError:
            value = _NOT_LITERAL
        out.append(Param(arg.arg, _annotation(arg.annotation), value, kw))
    return out, ast.get_docstring(fn) or ""


def _arg_help(doc: str) -> dict[str, str]:
    helps: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            in_args = True
            continue
        if in_args:
            m = re.match(r"\s+(\w+):\s*(.*)", line)
            if m:
                helps[m.group(1)] = m.group(2)
            elif line.strip() and not line.startswith((" ", "\t")):
                in_args = False
    return helps


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _add_params(parser: argparse.ArgumentParser, target: str) -> None:
    """Flags from the verb's signature. Lists accumulate (``--source a --source b`` or ``--source a b``); a keyword
    without a default is a required option; a bool gets only the form that changes something (``--flag`` when it
    defaults to False, ``--no-flag`` when True, both when its default is None)."""
    params, doc = verb_signature(target)
    helps = _arg_help(doc)
    for p in params:
        tp = _unwrap_optional(p.annotation)
        # Absent flags stay absent, so the function applies its own default (a list default is not extended).
        kwargs: dict[str, Any] = {"help": helps.get(p.name, ""), "default": argparse.SUPPRESS}
        if p.default not in (_EMPTY, _NOT_LITERAL, None, False, True) and kwargs["help"]:
            kwargs["help"] += f" (default: {p.default})"
        if typing.get_origin(tp) is list:
            kwargs.update(action="extend", nargs="+", type=typing.get_args(tp)[0])
            kwargs["help"] += " (repeatable)"
        elif typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
            kwargs.update(choices=list(choices), type=type(choices[0]))
        elif tp in (int, float, str):
            kwargs["type"] = tp
        if p.default is _EMPTY and not p.keyword_only:
            del kwargs["default"]
            parser.add_argument(p.name, metavar=p.name.upper(), **kwargs)
        elif p.default is _EMPTY:
            parser.add_argument(_flag(p.name), dest=p.name, required=True, **kwargs)
        elif tp is bool and p.default is True:
            kwargs["help"] = f"turn off (on by default): {kwargs['help']}"
            parser.add_argument(f"--no-{p.name.replace('_', '-')}", dest=p.name, action="store_false", **kwargs)
        elif tp is bool and p.default is False:
            parser.add_argument(_flag(p.name), dest=p.name, action="store_true", **kwargs)
        elif tp is bool:
            parser.add_argument(_flag(p.name), dest=p.name, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(_flag(p.name), dest=p.name, **kwargs)


def _global_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("configuration (defaults ← --config file ← HOMEWARD_* env ← these flags)")
    g.add_argument("--config", default=argparse.SUPPRESS, help="YAML config file")
    g.add_argument("--data-dir", default=argparse.SUPPRESS, help="root of LanceDB, DuckDB and photos")
    g.add_argument("--address", default=argparse.SUPPRESS, help="Ray cluster to join (default: start locally)")
    g.add_argument("--num-cpus", type=int, default=argparse.SUPPRESS, help="CPUs for a local Ray")
    g.add_argument("--models-dir", default=argparse.SUPPRESS, help="local weights folder (HOMEWARD_MODELS_DIR)")
    g.add_argument(
        "--set",
        action="append",
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set match.top_k=20 (repeatable)",
    )
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return common


def _add_verbs(
    subparsers: Any, table: dict[str, Any], common: argparse.ArgumentParser, argv: Sequence[str], every: bool = False
) -> None:
    # Only the verb that runs gets its flags (`homeward --help` stays fast, and `bench match` does not import the
    # `match` job): the first word of argv naming a verb of this level, then the next level after it. ``every``:
    # all of them (a completion script; flags come from the sources' syntax trees, nothing is imported).
    argv = list(argv)
    chosen = next((a for a in argv if a in table), None)
    for verb, entry in table.items():
        if isinstance(entry, dict):
            p = subparsers.add_parser(verb, help=f"{verb}: {', '.join(entry)}")
            rest = argv[argv.index(verb) + 1 :] if verb == chosen else []
            subs = p.add_subparsers(dest=f"{verb}_verb", metavar="WHAT", required=True)
            _add_verbs(subs, entry, common, rest, every)
            continue
        target, purpose = entry
        p = subparsers.add_parser(verb, help=purpose, description=purpose, parents=[common])
        p.set_defaults(_target=target)
        if verb == chosen or every:
            _add_params(p, target)


def _version() -> str:
    try:
        return importlib.metadata.version("homeward")
    except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "unknown (not installed)"


def build_parser(argv: Sequence[str] = (), every: bool = False) -> argparse.ArgumentParser:
    common = _global_flags()
    parser = argparse.ArgumentParser(
        prog="homeward",
        description="Homeward reunites lost pets with their families: crawl listings, enrich photos, match "
        "lost x found pairs, report to shelters.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_verbs(parser.add_subparsers(dest="verb", metavar="VERB", required=True), VERBS, common, argv, every)
    return parser


def completion(settings: Settings, shell: Literal["bash", "zsh", "tcsh"]) -> None:
    """Print a completion script for SHELL: every verb, sub-verb and flag (shtab, from the same parser).

    Args:
        shell: bash, zsh or tcsh (e.g. `homeward completion bash > ~/.local/share/bash-completion/completions/homeward`)
    """
    import shtab

    print(shtab.complete(build_parser(every=True), shell=shell), end="")


def settings_from_args(ns: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = parse_assignments(getattr(ns, "set", []))
    for flag, key in (("data_dir", "data_dir"), ("models_dir", "models_dir")):
        if flag in ns:
            overrides[key] = getattr(ns, flag)
    ray_overrides = {k: getattr(ns, k) for k in ("address", "num_cpus") if k in ns}
    if ray_overrides:
        overrides.setdefault("ray", {}).update(ray_overrides)
    return load_settings(getattr(ns, "config", None), overrides)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(ns, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        settings = settings_from_args(ns)
        fn = _resolve(ns._target)
        names = list(inspect.signature(fn).parameters)[1:]
        result = fn(settings, **{n: getattr(ns, n) for n in names if n in ns})
    except (HomewardError, ConfigError) as exc:
        print(f"homeward: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("homeward: interrupted", file=sys.stderr)
        return 130
    failure = result.get(RESULT_ERROR) if isinstance(result, dict) else None
    if failure:
        print(f"homeward: error: {failure}", file=sys.stderr, flush=True)
    if isinstance(result, dict):
        print(json.dumps(result, default=str, sort_keys=True), flush=True)  # before any slow interpreter exit
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
