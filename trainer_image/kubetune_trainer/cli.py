"""`kubetune-trainer`: the trainer image's entrypoint.

- ``kubetune-trainer train``: run the training in this process from $KUBETUNE_CONFIG.
- ``kubetune-trainer train --local``: the same for a config written by ``kubetune train --local
  --processes N`` (file:// URIs allowed).
- ``kubetune-trainer launch``: start one process per GPU (accelerate/torchrun) that each run ``train``.
- ``kubetune-trainer fetch URI DEST``: copy an s3:// model or adapter, or pull an oci:// ModelPack artifact,
  into DEST (the init container of a ModelServe's serving pods), with the same download the training uses.
"""

from __future__ import annotations

import argparse
import logging
import sys


def train_main(config_path: str | None = None, local: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kubetune.api.v1alpha1 import TARGET_CLUSTER, TARGET_LOCAL

    from .config import load_config
    from .errors import Preempted, TrainerError
    from .train import run

    try:
        config = load_config(config_path, TARGET_LOCAL if local else TARGET_CLUSTER)
        result = run(config)
    except Preempted as stop:
        logging.getLogger("kubetune_trainer").warning("%s", stop)
        return Preempted.exit_code
    except TrainerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    logging.getLogger("kubetune_trainer").info(
        "done: %s", result.get("uri") if result else "(not the main process)"
    )
    return 0


def fetch_main(uri: str, dest: str, field: str = "model.uri") -> int:
    from pathlib import Path

    from .errors import TrainerError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if uri.startswith("oci://"):
            from . import oci

            pulled = oci.pull(uri, Path(dest), auth_path=oci.auth_file("model"), field=field)
            print(
                f"fetched {uri} ({pulled.digest}: {pulled.files} files, {pulled.size} bytes) to {dest}",
                flush=True,
            )
            return 0
        from .sources import download_s3

        path = download_s3(uri, Path(dest))
    except (TrainerError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"fetched {uri} to {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="kubetune-trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train in this process from the rendered config")
    train.add_argument(
        "--config", default=None, help="config path (default: $KUBETUNE_CONFIG or /etc/kubetune/config.yaml)"
    )
    train.add_argument(
        "--local",
        action="store_true",
        help="the config is a local run's (kubetune train --local --processes N)",
    )
    fetch = sub.add_parser(
        "fetch",
        help="copy an s3:// prefix or pull an oci:// model into a folder (serving pods' init container)",
    )
    fetch.add_argument("uri", help="s3://BUCKET/PREFIX or oci://REGISTRY/REPOSITORY:TAG[@sha256:DIGEST]")
    fetch.add_argument("dest", help="local folder")
    fetch.add_argument("--field", default="model.uri", help="the spec field that named URI (for messages)")
    sub.add_parser("launch", help="start the training processes for this pod's GPUs", add_help=False)
    if argv and argv[0] == "launch":
        from . import launch

        return launch.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return fetch_main(args.uri, args.dest, args.field)
    return train_main(args.config, local=args.local)


if __name__ == "__main__":
    sys.exit(main())
