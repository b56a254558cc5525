"""The `deepserve` command line.

Length: the argparse tree with its help texts (the command's own documentation) and one thin
function per command that hands off to the store, the task registry or `bentoml serve`; `models
import` and `serve --model-dir` share their import options and the code that reads them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.core.settings import Settings
from service.tasks import registry

if TYPE_CHECKING:
    from service.store.specs import ModelSpec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepserve",
        description="deepserve: train, export and serve CNN, LSTM, CTC and captioning models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = commands.add_parser(
        "models", help="build, list and inspect models in the store", description="Model store."
    )
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="train, export, verify and register models (skips up-to-date ones)",
        description="Train, export to ONNX, verify (checker, symbolic dims, parity) and register "
        "models in the store. Models whose spec version is already stored are skipped.",
    )
    build.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"default: all ({', '.join(registry.builtin_models())})",
    )
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    listing = actions.add_parser("list", help="list stored models with versions and metrics")
    listing.add_argument(
        "--all", action="store_true", help="every stored version, not just the latest"
    )
    listing.add_argument(
        "--markdown", action="store_true", help="a Markdown table (the README's model table)"
    )
    importing = actions.add_parser(
        "import",
        help="store your own ONNX model as a new version (validated, I/O inferred)",
        description="Validate an ONNX file (parse, onnx.checker full check, an opset the "
        "installed onnxruntime supports, V2 datatypes), infer its inputs and outputs and store "
        "it as a new version, with its source path and SHA-256. image-classification graphs "
        "(float NCHW/NHWC input, logits or probabilities) are wrapped with in-graph "
        "preprocessing (uint8 NHWC image -> probabilities) and checked for parity; text and "
        "speech graphs must follow the built-in contract; generic graphs are stored as they are.",
    )
    importing.add_argument("path", metavar="PATH.onnx", help="the ONNX file")
    importing.add_argument(
        "--name", required=True, help="model name (lowercase letters, digits, . _ -)"
    )
    _add_import_options(importing)
    tune = actions.add_parser(
        "tune",
        help="choose batching settings for this device by measurement (held-out items)",
        description="Sweep max batch size, max wait, batch runs and intra-op threads with the "
        "model's real kernel and batcher on this device, within a time budget; record the "
        "fastest configuration that meets the p99 objective as the model's tuned settings for "
        "this device class (tuned.json next to the model, or --out FILE for "
        "DEEPSERVE_TUNED_FILE). See service/tasks/tuning.py.",
    )
    tune.add_argument("name", help="model name, or name:version")
    tune.add_argument("--slo-p99-ms", type=float, default=500.0, help="p99 objective (500)")
    tune.add_argument("--budget-s", type=float, default=60.0, help="time budget (60)")
    tune.add_argument("--clients", type=int, default=32, help="concurrent callers (32)")
    tune.add_argument("--out", type=Path, help="write into this settings file instead of the store")
    show = actions.add_parser("show", help="print one model's spec")
    show.add_argument("name", help="model name, or name:version")
    show.add_argument("--json", action="store_true", help="the full spec as JSON")
    serve = commands.add_parser(
        "serve",
        help="serve the models over HTTP (bentoml serve service.gateway:Gateway)",
        description="Start the BentoML gateway. Settings come from DEEPSERVE_* variables "
        "(see service/core/settings.py); --host/--port override DEEPSERVE_HOST/DEEPSERVE_PORT.",
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 3000)")
    own = serve.add_argument_group(
        "one model from a folder (a KServe custom runtime: --model-dir /mnt/models "
        "--model-name {{.Name}})",
        "Import the ONNX file in DIR at start, with the options of `models import`, into this "
        "server's own home (DEEPSERVE_RUNTIME_DIR, emptied at each start) and serve it alone; "
        "the store is not used.",
    )
    own.add_argument(
        "--model-dir",
        type=Path,
        metavar="DIR",
        help="a folder holding exactly one .onnx file (searched below it too), or the file",
    )
    own.add_argument(
        "--model-name", metavar="NAME", help="the name it is served under (required with DIR)"
    )
    _add_import_options(own)
    return parser


def _add_import_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How a file is imported: `models import` and `serve --model-dir` take the same options."""
    parser.add_argument(
        "--task",
        default="generic",
        help=f"one of {', '.join(registry.importable())} (default: generic)",
    )
    parser.add_argument("--labels", metavar="FILE", help="class labels, one per line")
    parser.add_argument("--vocab", metavar="FILE", help="vocabulary, one token per line")
    parser.add_argument(
        "--preprocess",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="repeatable; image-classification: size, layout (nchw|nhwc), scale, mean, std "
        "(comma lists), softmax (true|false), resize, channels (3|1), invert (true|false); "
        "text-classification: max_tokens",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="repeatable; this version's own serving settings (e.g. max_batch_size=32), stored "
        "next to it and validated like DEEPSERVE_MODEL_SETTINGS (which overrides them); "
        "VALUE is JSON, or a plain string",
    )
    parser.add_argument(
        "--domain-threshold",
        type=float,
        metavar="P",
        help="classifiers and recognisers: answers whose confidence is below P say "
        "in_domain=false (and reject_out_of_domain refuses them); default: no verdict",
    )


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in metrics.items() if not k.endswith("_size"))


def _import(args: argparse.Namespace, path: str | Path, name: str) -> ModelSpec:
    """Import `path` as `name` with the import options in `args` (ImportRefused when refused)."""
    from service.store.importing.importer import ImportRefused

    options = {}
    for item in args.preprocess:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ImportRefused(f"--preprocess {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    settings = {}
    for item in args.setting:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ImportRefused(f"--setting {item!r}: expected KEY=VALUE")
        try:
            settings[key.strip()] = json.loads(value)
        except ValueError:
            settings[key.strip()] = value.strip()
    return registry.import_model(
        path,
        name,
        args.task,
        args.labels,
        args.vocab,
        options,
        settings=settings,
        domain_threshold=args.domain_threshold,
    )


def cmd_import(args: argparse.Namespace) -> int:
    """`deepserve models import`: exit 2 with the reason when the file is refused."""
    from service.store.importing.importer import ImportRefused

    try:
        spec = _import(args, args.path, args.name)
    except ImportRefused as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    graph = spec.graphs["model"]
    print(f"imported {spec.tag} ({spec.task})")
    print(f"  from {spec.data['source']} (sha256 {spec.data['source_sha256']})")
    adapted = spec.data.get("adapted", {})
    if "opset" in adapted:
        opset = adapted["opset"]
        print(
            f"  converted: opset {opset['source']} -> {opset['stored']} (onnxruntime's newest; "
            f"max |diff| vs the original {opset['max_abs_diff']:.1e} on generated inputs)"
        )
    if "ir_version" in adapted:
        ir = adapted["ir_version"]
        print(
            f"  stored with IR version {ir['stored']} (the file has {ir['source']}; the graph "
            "uses nothing newer, and onnxruntime reads up to this one)"
        )
    for kind, tensors in (("in ", graph.inputs), ("out", graph.outputs)):
        for t in tensors:
            print(f"  {kind} {t.name:<14} {t.datatype:<6} {t.shape}")
    if spec.extra.get("batchable"):
        print("  batchable: yes (rows of concurrent requests share adaptive batches)")
    else:
        print(f"  batchable: no ({spec.extra.get('batching_reason')})")
    if "wrapped" in spec.extra:
        print(f"  wrapped: {spec.extra['wrapped']}")
    if graph.parity.get("cases"):
        print(
            f"  parity with the original graph: max |diff| {graph.parity['max_abs_diff']:.1e} "
            f"over {len(graph.parity['cases'])} cases"
        )
    if spec.labels:
        print(f"  labels: {len(spec.labels)}")
    if spec.vocabulary:
        print(f"  vocabulary: {len(spec.vocabulary)} entries")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from service.store import specs

    if args.action == "import":
        return cmd_import(args)
    if args.action == "build":
        from export.pipeline import build_all

        builtin = registry.builtin_models()
        unknown = [n for n in args.names if n not in builtin]
        if unknown:
            print(
                f"unknown model(s): {', '.join(unknown)}; known: {', '.join(builtin)}",
                file=sys.stderr,
            )
            return 2
        build_all(args.names or None, force=args.force, seed=args.seed)
        return 0
    if args.action == "tune":
        return cmd_tune(args)
    if args.action == "list":
        found = specs.list_specs() if args.all else list(specs.latest_specs().values())
        if not found:
            print("no models in the store; run `deepserve models build`")
            return 1
        if args.markdown:
            print("| model | version | task | held-out metrics | parity max abs diff | build s |")
            print("|---|---|---|---|---|---|")
            for spec in found:
                parity = max(g.parity.get("max_abs_diff", 0.0) for g in spec.graphs.values())
                print(
                    f"| `{spec.name}` | {spec.version} | {spec.task} | "
                    f"{_format_metrics(spec.metrics)} | {parity:.1e} | "
                    f"{spec.training.get('build_seconds', '-')} |"
                )
            return 0
        width = max(len(s.tag) for s in found)
        for spec in found:
            print(f"{spec.tag:<{width}}  {spec.task:<22} {_format_metrics(spec.metrics)}")
        return 0
    spec = specs.load_spec(args.name)
    if args.json:
        print(spec.model_dump_json(indent=2))
        return 0
    print(f"{spec.tag}  ({spec.task}, spec version {spec.spec_version}, created {spec.created})")
    print(f"  metrics: {_format_metrics(spec.metrics)}")
    for name, graph in spec.graphs.items():
        print(
            f"  graph {name}: {graph.file} (opset {graph.opset}, parity max |diff| "
            f"{graph.parity.get('max_abs_diff', float('nan')):.1e})"
        )
        for kind, tensors in (("in ", graph.inputs), ("out", graph.outputs)):
            for t in tensors:
                print(f"    {kind} {t.name:<14} {t.datatype:<6} {t.shape}")
    if spec.labels:
        print(
            f"  labels: {len(spec.labels)} ({', '.join(spec.labels[:5])}"
            f"{', ...' if len(spec.labels) > 5 else ''})"
        )
    if spec.vocabulary:
        print(f"  vocabulary: {len(spec.vocabulary)} entries")
    print(f"  preprocessing: {json.dumps(spec.preprocessing)}")
    if spec.settings:
        print(f"  own settings: {json.dumps(spec.settings)}")
    print(f"  data: {json.dumps(spec.data)}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import asyncio

    from service.store import specs
    from service.tasks import tuning

    if args.budget_s <= 0 or args.clients < 1 or args.slo_p99_ms <= 0:
        print("--budget-s and --slo-p99-ms must be > 0, --clients >= 1", file=sys.stderr)
        return 2
    settings = Settings(use_tuned=False)
    spec = specs.load_spec(args.name)
    config = settings.for_model(spec.name, spec.settings)  # what it would serve with, untuned
    try:
        entry = asyncio.run(
            tuning.search(
                spec,
                config,
                args.slo_p99_ms,
                args.budget_s,
                args.clients,
                gateway_workers=settings.gateway_workers_in_force(),
            )
        )
    except tuning.TuningFailed as error:
        print(f"not tuned: {error}", file=sys.stderr)
        return 1
    try:
        where = tuning.record(spec, entry, args.out)
    except (OSError, ValueError) as error:
        print(
            f"cannot write the tuned settings ({error}); use --out FILE and "
            f"DEEPSERVE_TUNED_FILE=FILE. The entry: {json.dumps(entry['settings'])}",
            file=sys.stderr,
        )
        return 1
    print(f"{spec.tag} [{entry['device_class']}]: {json.dumps(entry['settings'])} -> {where}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Replace this process with `bentoml serve` so signals reach the server directly."""
    import os

    from service.core.settings import PROJECT_ROOT
    from service.runners.service import REMOTE_MODELS_ENV, remote_models
    from service.store import runtime_home

    if (args.model_dir is None) != (args.model_name is None):
        print("deepserve serve: --model-dir and --model-name go together", file=sys.stderr)
        return 2
    import_options = (args.labels, args.vocab, args.preprocess, args.setting)
    if args.model_dir is None and (
        any(import_options) or args.task != "generic" or args.domain_threshold is not None
    ):
        print("deepserve serve: the import options go with --model-dir", file=sys.stderr)
        return 2
    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    os.environ["DEEPSERVE_HOST"], os.environ["DEEPSERVE_PORT"] = host, str(port)
    folder = settings.runtime_dir or runtime_home.default_home(port)
    if args.model_dir is None:
        # the store is only read: BentoML's runtime state goes to this server's own home
        store = Path(os.environ.get("BENTOML_HOME") or settings.store)
        home = runtime_home.prepare(store, folder)
        os.environ["DEEPSERVE_STORE"] = str(store.resolve())
    else:
        home = runtime_home.prepare(None, folder)
        os.environ["DEEPSERVE_STORE"] = str(home)
    os.environ["BENTOML_HOME"], os.environ["DEEPSERVE_RUNTIME_DIR"] = str(home), str(home)
    if args.model_dir is not None:
        status = serve_model_dir(args, home)
        if status:
            return status
    # NOTE: which models get a runner service is fixed here, once, for every process the server
    # starts (a runner respawned later must find its own service even if the store changed)
    os.environ.pop(REMOTE_MODELS_ENV, None)
    os.environ[REMOTE_MODELS_ENV] = json.dumps(remote_models(Settings()))
    os.chdir(PROJECT_ROOT)
    command = [sys.executable, "-m", "bentoml", "serve", "service.gateway:Gateway"]
    # NOTE: BentoML's default waits for in-flight HTTP requests without limit (and circus for
    # a day); bound it so SIGTERM finishes inside the orchestrator's grace period
    grace = str(max(1, int(settings.shutdown_grace_s)))
    os.execv(
        sys.executable,
        [*command, "--host", host, "--port", str(port), "--timeout-graceful-shutdown", grace],
    )


def serve_model_dir(args: argparse.Namespace, home: Path) -> int:
    """`serve --model-dir`: import the folder's ONNX file into `home`'s own models/ (BENTOML_HOME
    points there already, before anything in this process has opened a store)."""
    from service.store.importing.importer import ImportRefused, find_model_file

    try:
        source = find_model_file(args.model_dir)
        spec = _import(args, source, args.model_name)
    except ImportRefused as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    if not (home / "models" / spec.name).is_dir():  # a store opened earlier would take it
        raise RuntimeError(f"{spec.tag} was not stored in {home / 'models'}")
    print(f"imported {spec.tag} ({spec.task}) from {source}; serving it alone", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `deepserve` command. A user's error (an unknown model or tag, a bad setting) is one
    line on stderr and exit status 2, never a traceback; a bug still shows its traceback."""
    args = _parser().parse_args(argv)
    try:
        Settings().apply_store()
        if args.command == "models":
            return cmd_models(args)
        return cmd_serve(args)
    except Exception as error:  # narrowed to user errors just below
        message = user_error(error)
        if message is None:
            raise
        print(f"deepserve: {message}", file=sys.stderr)
        return 2


def user_error(error: Exception) -> str | None:
    """The one-line message of an error the user caused, or None for anything else."""
    from bentoml.exceptions import BentoMLException, NotFound
    from pydantic import ValidationError

    if isinstance(error, NotFound):
        return f"{error}; `deepserve models list` shows what the store holds"
    if isinstance(error, ValidationError):  # Settings from DEEPSERVE_* variables
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        return f"invalid setting ({problems})"
    if isinstance(error, BentoMLException):  # e.g. "Invalid Tag a:b:c"
        return f"{error} (a model is NAME or NAME:VERSION)"
    return None


if __name__ == "__main__":
    sys.exit(main())
