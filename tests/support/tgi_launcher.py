"""The entrypoint of the `kubetune-tgi-test` image: tests.support.tgi_server started the way
text-generation-launcher starts TGI in a ModelServe's pod.

The operator configures TGI through the environment (MODEL_ID, PORT, HOSTNAME, LORA_ADAPTERS: see
kubetune/render/modelserve.py) and passes launcher flags as arguments (``--json-output``,
``--max-input-tokens`` ...). The same variables and the flags that name them are read here; the other
flags tune TGI's batching and sharding, which a one-request-at-a-time CPU server has no use for, so they
are listed in the log and otherwise ignored.

    MODEL_ID=/mnt/pvc/models/result PORT=8080 LORA_ADAPTERS=support=/mnt/pvc/a python -m tests.support.tgi_launcher
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from tests.support.tgi_server import TGIServer


def parse_adapters(value: str | None) -> dict[str, str]:
    """TGI's LORA_ADAPTERS: comma separated ``NAME=PATH`` (or a bare id, named after itself)."""
    adapters: dict[str, str] = {}
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        adapters[name if sep else item] = path if sep else item
    return adapters


def parse(argv: Sequence[str], env: Mapping[str, str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="tgi-launcher", description=__doc__.splitlines()[0])
    parser.add_argument("--model-id", default=env.get("MODEL_ID"))
    parser.add_argument("--port", type=int, default=int(env.get("PORT") or 80))
    parser.add_argument("--hostname", default=env.get("HOSTNAME") or "0.0.0.0")
    parser.add_argument("--lora-adapters", default=env.get("LORA_ADAPTERS"))
    args, ignored = parser.parse_known_args(list(argv))
    if not args.model_id:
        parser.error("no model: set MODEL_ID or pass --model-id")
    return args, ignored


def main(argv: Sequence[str] | None = None) -> int:
    args, ignored = parse(sys.argv[1:] if argv is None else argv, os.environ)
    adapters = parse_adapters(args.lora_adapters)
    print(f"loading {args.model_id} with adapters {adapters or 'none'}; ignored flags: {ignored}", flush=True)
    server = TGIServer(args.model_id, adapters, host=args.hostname, port=args.port)
    stop = threading.Event()
    # The kubelet stops the pod with SIGTERM: answer it by closing the listener, as TGI drains and exits.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(f"serving {args.model_id} on {args.hostname}:{server.port}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
