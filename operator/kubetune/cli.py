"""The `kubetune` command: crds, validate, train --local, operator, api.

One function per subcommand. ``train`` and ``operator`` import their implementations when they run, so
``kubetune validate`` and ``kubetune crds`` start fast and need neither torch nor kopf loaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TextIO

import yaml

DEFAULT_CRDS_DIR = "crds"  # relative to the working directory: run it in the repository root
DEFAULT_CHART_CRDS_DIR = "charts/kubetune/templates/crds"
DEFAULT_DOCS_DIR = "docs"


def cmd_crds(args: argparse.Namespace) -> int:
    """Write the CRDs and the API reference from the models, or (--check) report where the committed ones
    differ."""
    from kubetune import crdgen

    targets = [(args.output_dir, crdgen.rendered_files())]
    if args.chart_dir:
        targets.append((args.chart_dir, crdgen.chart_files()))
    if args.docs_dir:
        targets.append((args.docs_dir, crdgen.reference_files()))
    if args.check:
        problems = [line for folder, files in targets for line in crdgen.check_crds(folder, files)]
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(
                "CRDs or the API reference are out of date: run `kubetune crds` (or `make crds`) and commit "
                "the result",
                file=sys.stderr,
            )
            return 1
        print(f"CRDs and API reference in {', '.join(folder for folder, _ in targets)} match the models")
        return 0
    for folder, files in targets:
        for path in crdgen.write_crds(folder, files):
            print(f"wrote {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate FineTuneJob/ModelServe manifests offline; one line per problem, exit 1 when any.

    Documents of other kinds (a Namespace, a Secret, ...) are skipped with a note on stderr, so a
    whole GitOps folder can be checked; a file without any kubetune object is an error.
    """
    try:
        fit = _fit_options(args)
    except ValueError as error:
        print(f"kubetune validate: {error}", file=sys.stderr)
        return 2
    checked, failed = validate_files(_expand(args.files), local=args.local, out=sys.stdout, fit=fit)
    print(f"{checked} object(s) checked, {failed} with problems", file=sys.stderr)
    return 1 if failed else 0


def _fit_options(args: argparse.Namespace):
    from kubetune.cli_fit import FitOptions, parse_memory

    memory = parse_memory(args.gpu_memory) if args.gpu_memory else None
    return FitOptions(model_config=args.model_config, gpu_memory=memory, fetch=args.fetch_config)


def validate_files(names: list[str], *, local: bool, out: TextIO, fit: Any = None) -> tuple[int, int]:
    """Check the kubetune objects in NAMES, writing ``FILE: KIND/NAME: PATH: MESSAGE`` lines to OUT; with FIT
    (cli_fit.FitOptions) also the fit estimate of each FineTuneJob (a job that cannot fit is a problem).
    Returns (objects checked, files or objects with problems)."""
    from kubetune.api.v1alpha1 import (
        GROUP,
        KINDS,
        TARGET_CLUSTER,
        TARGET_LOCAL,
        FineTuneJob,
        validate_document,
    )

    target = TARGET_LOCAL if local else TARGET_CLUSTER
    failed = checked = 0
    for name in names:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
            docs = list(yaml.safe_load_all(text))
        except OSError as error:
            print(f"{name}: cannot read: {error.strerror or error}", file=out)
            failed += 1
            continue
        except yaml.YAMLError as error:
            print(f"{name}: not valid YAML: {' '.join(str(error).split())}", file=out)
            failed += 1
            continue
        ours = 0
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            where = f"{name} (document {index + 1})" if len(docs) > 1 else name
            if isinstance(doc, dict) and not _is_kubetune(doc, GROUP, KINDS):
                print(
                    f"{where}: skipped {doc.get('kind', '?')} {_name(doc)} (not a kubetune object)",
                    file=sys.stderr,
                )
                continue
            ours += 1
            result = validate_document(doc, target)
            for problem in result.problems:
                print(f"{name}: {result.kind}/{result.name}: {problem}", file=out)
            for warning in result.warnings:  # valid: a note on stderr, the exit code stays 0
                print(f"{name}: {result.kind}/{result.name}: warning: {warning}", file=sys.stderr)
            refused = (
                fit is not None
                and isinstance(result.obj, FineTuneJob)
                and _fit_refused(name, result.obj, fit, out)
            )
            failed += bool(result.problems) or refused
            checked += 1
        if ours == 0:
            print(f"{name}: no FineTuneJob or ModelServe in this file", file=out)
            failed += 1
    return checked, failed


def _fit_refused(name: str, job: Any, fit: Any, out: TextIO) -> bool:
    """Print JOB's fit estimate (stderr); True when it cannot fit and does not skip the check (a problem, on OUT)."""
    from kubetune.cli_fit import check

    found, message = check(job, fit)
    where = f"{name}: FineTuneJob/{job.metadata.name}"
    if found is not None and found.fits is False and not job.spec.resources.skip_fit_check:
        print(f"{where}: spec.resources: does not fit: {message} (or set resources.skipFitCheck)", file=out)
        return True
    print(f"{where}: fit: {message}", file=sys.stderr)
    return False


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _expand(names: list[str]) -> list[str]:
    """Files as given; a folder becomes its manifests (.yaml, .yml, .json), sorted, like `kubectl apply -f DIR`."""
    files: list[str] = []
    for name in names:
        path = Path(name)
        if name != "-" and path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            files.extend(found or [name])  # an empty folder is reported as unreadable
        else:
            files.append(name)
    return files


def _is_kubetune(doc: dict[str, Any], group: str, kinds: dict[str, Any]) -> bool:
    api_version = str(doc.get("apiVersion") or "")
    return api_version.startswith(f"{group}/") or doc.get("kind") in kinds


def _name(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata")
    return str(metadata.get("name") or "?") if isinstance(metadata, dict) else "?"


def cmd_train(args: argparse.Namespace) -> int:
    """Run a FineTuneJob's training on this machine with the trainer code the pods run."""
    if not args.local:
        print("kubetune train runs training on this machine only: add --local "
              "(in a cluster, `kubectl apply -f` the manifest instead)", file=sys.stderr)  # fmt: skip
        return 2
    # The manifest is checked first, with the same messages as `kubetune validate --local`.
    _, failed = validate_files([args.file], local=True, out=sys.stderr)
    if failed:
        print(f"{args.file}: fix the problems above (`kubetune validate --local -f {args.file}` checks "
              "again without training)", file=sys.stderr)  # fmt: skip
        return 1
    if args.dry_run:
        return _dry_run(args)
    run_local = _local_command("train")
    if run_local is None:
        return 1
    return run_local(args.file, args.output, processes=args.processes)


def _dry_run(args: argparse.Namespace) -> int:
    """`train --dry-run`: what would run and the fit estimate on its GPUs; nothing is trained."""
    from kubetune.api.v1alpha1 import TARGET_LOCAL, FineTuneJob, validate_document
    from kubetune.cli_fit import check

    try:
        fit = _fit_options(args)
    except ValueError as error:
        print(f"kubetune train: {error}", file=sys.stderr)
        return 2
    for doc in yaml.safe_load_all(Path(args.file).read_text()):
        job = validate_document(doc, TARGET_LOCAL).obj if isinstance(doc, dict) else None
        if not isinstance(job, FineTuneJob):
            continue
        spec = job.spec
        print(f"FineTuneJob/{job.metadata.name}: {spec.model.task} {spec.method.type}/{spec.objective.type} of "
              f"{spec.model.uri or spec.model.fine_tune_job_ref} on {spec.dataset.uri}")  # fmt: skip
        gpus = f"{spec.resources.nodes} node(s) x {spec.resources.gpus_per_node} GPU(s)"
        print(f"  resources: {gpus}, distributed.strategy {spec.distributed.strategy}")
        _found, message = check(job, fit)
        print(f"  fit: {message}")
        if spec.evaluation is not None:
            gates = ", ".join(g.metric for g in spec.evaluation.gates) or "none"
            print(f"  evaluation: metrics {', '.join(spec.evaluation.metrics) or '-'}; gates on {gates}")
    print("dry run: nothing was trained")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate an existing result against the FineTuneJob's spec.evaluation on this machine."""
    if not args.local:
        print("kubetune eval runs on this machine only: add --local (in a cluster the trainer evaluates "
              "after training)", file=sys.stderr)  # fmt: skip
        return 2
    _, failed = validate_files([args.file], local=True, out=sys.stderr)
    if failed:
        return 1
    run_eval = _local_command("eval")
    if run_eval is None:
        return 1
    return run_eval(args.file, args.result)


LOCAL_COMMANDS = "kubetune.local"
"""Entry points the trainer plugs its local commands into (pyproject.toml): the operator's packages never
import the trainer, which imports kubetune.api (a loop the import rules could not see)."""


def _local_command(name: str) -> Callable[..., int] | None:
    """The trainer's implementation of `kubetune NAME --local`, or None after saying what to install."""
    if importlib.util.find_spec("torch") is None:
        print(f"kubetune {name} --local needs the trainer's dependencies: pip install 'kubetune[trainer]'",
              file=sys.stderr)  # fmt: skip
        return None
    found = entry_points(group=LOCAL_COMMANDS, name=name)
    if not found:
        print(f"kubetune {name} --local: the trainer is not installed (no {LOCAL_COMMANDS} entry point "
              f"{name!r}): pip install 'kubetune[trainer]'", file=sys.stderr)  # fmt: skip
        return None
    command: Callable[..., int] = next(iter(found)).load()
    return command


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the operator (kopf) against the current kubeconfig or in-cluster."""
    from kubetune.leader_election import ElectionError
    from kubetune.manager import run_operator

    namespaces = None if args.all_namespaces or not args.namespace else list(args.namespace)
    try:
        run_operator(
            namespaces=namespaces,
            standalone=args.standalone,
            leader_elect=args.leader_elect,
            leader_election_id=args.leader_election_id,
            leader_election_namespace=args.leader_election_namespace,
        )
    except ElectionError as exc:
        print(f"kubetune operator: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show (or with -w follow) a FineTuneJob's or ModelServe's status (kubetune.cli_status)."""
    from kubetune import cli_status

    return cli_status.run("status", args)


def cmd_logs(args: argparse.Namespace) -> int:
    """Print (or follow) the logs of a FineTuneJob's trainer pods (kubetune.cli_status)."""
    from kubetune import cli_status

    return cli_status.run("logs", args)


def _fit_arguments(parser: argparse.ArgumentParser) -> None:
    """The fit check's options (validate, train --dry-run): where config.json and the GPU memory come from."""
    parser.add_argument(
        "--model-config",
        metavar="FILE",
        help="the model's config.json (or model folder) for the fit estimate, instead of reading the model's",
    )
    parser.add_argument(
        "--gpu-memory",
        metavar="SIZE",
        help="memory of one GPU to check the fit against, e.g. 24Gi or 80G "
        "(default: from resources.nodeSelector's nvidia.com/gpu.memory or gpu.product)",
    )
    parser.add_argument(
        "--fetch-config",
        action="store_true",
        help="read hf:// models' config.json from the Hub (default: only from the local Hugging Face cache)",
    )


def cmd_api(args: argparse.Namespace) -> int:
    """Run the OpenAI-compatible fine-tuning gateway (kubetune.gateway; docs/openai-api.md)."""
    from pydantic import ValidationError

    from kubetune.gateway.server import run
    from kubetune.gateway.settings import GatewaySettings

    try:
        settings = GatewaySettings(**({"port": args.port} if args.port else {}))
    except ValidationError as error:
        print(f"kubetune api: bad KUBETUNE_API_* setting: {error}", file=sys.stderr)
        return 2
    run(settings, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description="Fine-tune and serve language models on Kubernetes, declaratively."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = sub.add_parser(
        "crds", help="write the CRDs and the API reference from the models (or --check them)"
    )
    crds.add_argument("--check", action="store_true", help="exit 1 when the files differ from the models")
    crds.add_argument(
        "--output-dir", default=DEFAULT_CRDS_DIR, help="folder of the CRD files (default: %(default)s)"
    )
    crds.add_argument(
        "--chart-dir",
        default=DEFAULT_CHART_CRDS_DIR,
        help="folder of the Helm chart's CRD templates; empty to skip (default: %(default)s)",
    )
    crds.add_argument(
        "--docs-dir",
        default=DEFAULT_DOCS_DIR,
        help="folder of the generated API reference (api-reference.md); empty to skip (default: %(default)s)",
    )
    crds.set_defaults(func=cmd_crds)

    validate = sub.add_parser("validate", help="check FineTuneJob/ModelServe manifests offline")
    validate.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="extend",
        nargs="+",
        required=True,
        metavar="FILE",
        help="manifest files or folders (multi-document YAML; - for stdin)",
    )
    validate.add_argument(
        "--local",
        action="store_true",
        help="check for `kubetune train --local` (file:// URIs allowed, output optional)",
    )
    _fit_arguments(validate)
    validate.set_defaults(func=cmd_validate)

    train = sub.add_parser("train", help="run a FineTuneJob's training on this machine")
    train.add_argument(
        "-f", "--filename", dest="file", required=True, metavar="FILE", help="the FineTuneJob manifest"
    )
    train.add_argument("--local", action="store_true", help="train here, not in a cluster (required)")
    train.add_argument(
        "--output", metavar="DIR", default=None, help="where artifacts go (default: spec.output.uri)"
    )
    train.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="training processes through the pods' launch code: DDP over N GPUs, or on the CPU with gloo "
        "(default: %(default)s, in this process)",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="check the manifest and print the fit estimate (GPU memory per GPU); train nothing",
    )
    _fit_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "eval", help="evaluate an existing result against a FineTuneJob's spec.evaluation on this machine"
    )
    evaluate.add_argument(
        "-f", "--filename", dest="file", required=True, metavar="FILE", help="the FineTuneJob manifest"
    )
    evaluate.add_argument("--local", action="store_true", help="evaluate here, not in a cluster (required)")
    evaluate.add_argument(
        "--result",
        metavar="DIR",
        default=None,
        help="the result to evaluate (default: where train --local wrote it)",
    )
    evaluate.set_defaults(func=cmd_eval)

    operator = sub.add_parser(
        "operator", help="run the operator against the current kubeconfig or in-cluster"
    )
    operator.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NS",
        help="watch this namespace (repeatable; default: all namespaces)",
    )
    operator.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    operator.add_argument(
        "--standalone", action="store_true", help="no peering with other operator instances"
    )
    operator.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the controllers only while holding the leader Lease, so several replicas can run "
        "(default: $KUBETUNE_LEADER_ELECT, else off)",
    )
    operator.add_argument(
        "--leader-election-id",
        metavar="NAME",
        help="name of the leader Lease (default: $KUBETUNE_LEADER_ELECTION_ID, else kubetune-operator)",
    )
    operator.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        help="namespace of the leader Lease (default: the pod's namespace; required outside a cluster)",
    )
    operator.set_defaults(func=cmd_operator)

    api = sub.add_parser(
        "api", help="serve the OpenAI-compatible fine-tuning API (files, fine_tuning.jobs, models)"
    )
    api.add_argument("--port", type=int, default=None, help="port (default: $KUBETUNE_API_PORT, else 8000)")
    api.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    api.set_defaults(func=cmd_api)

    from kubetune.cli_status import add_arguments

    status = sub.add_parser(
        "status", help="a FineTuneJob's (or ModelServe's) progress and conditions; -w follows"
    )
    logs = sub.add_parser(
        "logs", help="the logs of a FineTuneJob's trainer pods (current attempt); -f follows"
    )
    add_arguments(status, logs)
    status.set_defaults(func=cmd_status)
    logs.set_defaults(func=cmd_logs)
    return parser  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "operator" and args.all_namespaces and args.namespace:
        build_parser().error("--namespace and --all-namespaces are exclusive")
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
