"""The ``homeward`` command. Each verb is a Python API function; its flags are that function's keyword arguments.

A verb function looks like ``def enrich(settings: Settings, *, limit: int | None = None) -> dict``. Parameters
without a default become positional arguments, the rest ``--flags`` typed from their annotations, and the docstring's
``Args:`` lines become the flag help. The returned dict is printed as one JSON object on the last line, so scripts
(and ``eval``/``bench`` consumers) read the figures without parsing prose.

Exit status: 0 done; 1 the verb ran but its work failed (its result carries ``error``, printed first as one
``homeward: error:`` line on stderr, the JSON still last on stdout); 2 bad input, configuration or store
(:class:`engine.errors.HomewardError`: one line, no JSON); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from engine.config import ConfigError, Settings, load_settings, parse_assignments
from engine.errors import RESULT_ERROR, HomewardError

#: verb → (``module:function``, one-line purpose). ``bench`` nests one level.
VERBS: dict[str, Any] = {
    "crawl": ("ray_jobs.crawl:crawl", "Crawl one or more sources into LanceDB (sources fan out as Ray tasks)."),
    "sources": ("ray_jobs.schedule:sources", "List sources with last success, lag and error rate."),
    "schedule": ("ray_jobs.schedule:schedule", "Run every source at its cadence, recording runs in DuckDB."),
    "enrich": ("ray_jobs.enrich:enrich", "Detect, embed and caption photos not yet enriched (Ray actors)."),
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
        "load": (
            "ray_jobs.bench.load:bench_load",
            "Synthetic region (200k listings): ingest -> match, per stage.",
        ),
    },
    "export": ("engine.analyst:export", "Write every table and analyst view as Parquet files for BI tools."),
    "demo": ("ray_jobs.demo:demo", "Run the whole job end to end on a local mirror with planted reunions."),
}


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


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


def _add_params(parser: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    hints = typing.get_type_hints(fn)
    helps = _arg_help(inspect.getdoc(fn) or "")
    for name, param in list(inspect.signature(fn).parameters.items())[1:]:
        tp = _unwrap_optional(hints.get(name, str))
        kwargs: dict[str, Any] = {"help": helps.get(name, "")}
        if typing.get_origin(tp) is list:
            item = typing.get_args(tp)[0]
            kwargs.update(nargs="+", type=item)
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif typing.get_origin(tp) is typing.Literal:
            kwargs.update(choices=list(typing.get_args(tp)), type=type(typing.get_args(tp)[0]))
        if param.default is inspect.Parameter.empty and param.kind is inspect.Parameter.KEYWORD_ONLY:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, **kwargs)
        elif param.default is inspect.Parameter.empty:
            parser.add_argument(name, metavar=name.upper(), **kwargs)
        else:
            kwargs["default"] = param.default
            if kwargs["help"] and param.default not in (None, False):
                kwargs["help"] += f" (default: {param.default})"
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, **kwargs)


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


def _add_verbs(subparsers: Any, table: dict[str, Any], common: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    # Only the verb that runs has its module imported (`homeward --help` stays fast, and `bench match` does not
    # import the `match` job): the first word of argv naming a verb of this level, then the next level after it.
    argv = list(argv)
    chosen = next((a for a in argv if a in table), None)
    for verb, entry in table.items():
        if isinstance(entry, dict):
            p = subparsers.add_parser(verb, help=f"benchmarks: {', '.join(entry)}")
            rest = argv[argv.index(verb) + 1 :] if verb == chosen else []
            _add_verbs(p.add_subparsers(dest=f"{verb}_verb", metavar="WHAT", required=True), entry, common, rest)
            continue
        target, purpose = entry
        p = subparsers.add_parser(verb, help=purpose, description=purpose, parents=[common])
        p.set_defaults(_target=target)
        if verb == chosen:
            _add_params(p, _resolve(target))


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    common = _global_flags()
    parser = argparse.ArgumentParser(
        prog="homeward",
        description="Homeward reunites lost pets with their families: crawl listings, enrich photos, match "
        "lost x found pairs, report to shelters.",
        parents=[common],
    )
    _add_verbs(parser.add_subparsers(dest="verb", metavar="VERB", required=True), VERBS, common, argv)
    return parser


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
