"""The kubetune-tgi-test image's entrypoint reads TGI's configuration the way a ModelServe's pod sets it."""

from __future__ import annotations

import pytest

from tests.support.tgi_launcher import parse, parse_adapters


def test_the_environment_of_a_modelserve_pod_configures_the_server():
    env = {"MODEL_ID": "/mnt/pvc/models/result", "PORT": "8080", "HOSTNAME": "0.0.0.0",
           "LORA_ADAPTERS": "support=/mnt/pvc/a/adapter,sales=/models/adapter-sales"}  # fmt: skip
    args, ignored = parse(["--json-output", "--max-input-tokens", "256"], env)
    assert (args.model_id, args.port, args.hostname) == ("/mnt/pvc/models/result", 8080, "0.0.0.0")
    assert parse_adapters(args.lora_adapters) == {
        "support": "/mnt/pvc/a/adapter",
        "sales": "/models/adapter-sales",
    }
    # TGI's batching and sharding flags mean nothing to a one-request-at-a-time CPU server: kept aside.
    assert ignored == ["--json-output", "--max-input-tokens", "256"]


def test_flags_override_the_environment_and_defaults_follow_tgi():
    args, _ = parse(["--model-id", "/m", "--port", "9000"], {"MODEL_ID": "/other"})
    assert (args.model_id, args.port, args.hostname, args.lora_adapters) == ("/m", 9000, "0.0.0.0", None)
    assert parse([], {"MODEL_ID": "/m"})[0].port == 80  # TGI's image listens on 80 unless PORT says otherwise
    assert parse_adapters("org/adapter, ,name=/p") == {"org/adapter": "org/adapter", "name": "/p"}


def test_no_model_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse([], {})
    assert "set MODEL_ID or pass --model-id" in capsys.readouterr().err
