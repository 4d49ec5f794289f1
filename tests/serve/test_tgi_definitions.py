"""The TGI pods the operator renders, held to TGI's own definitions (tests/serve/tgi_definitions.py: TGI 3.3.4's
launcher and router, read from its source): every flag and environment variable is one the launcher has, with
a value it accepts; none is given twice; the launcher's and the shards' start-time rules hold; LORA_ADAPTERS
is in a form the launcher reads (Hub adapters downloaded); and the API's value sets are TGI's.

A property test renders every combination of spec.tgi settings the API accepts and checks the launcher would
start; the settings the launcher refuses are refused by the API (tests/data/invalid, tests/cluster/test_crds.py).
"""

from __future__ import annotations

import re
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kubetune.api.v1alpha1 import ModelServe
from kubetune.api.v1alpha1.modelserve import TGI_RESERVED_FLAGS, TGIQuantize, TGISpec
from kubetune.engines import tgi as engine
from kubetune.reconcile.sources import resolve_sources
from kubetune.render import modelserve as r

from . import tgi_definitions as tgi

# Environment the pod sets that TGI reads but its launcher's clap does not: the Hub token (huggingface_hub in
# the shards and the launcher's download) and the pod's user (caches under ~/.cache).
NOT_LAUNCHER_ENV = {"HF_TOKEN", "HOME", "USER"}


class Refused(Exception):
    """The launcher (or a shard) would refuse to start: its message."""


def launcher_config(container: dict) -> dict[str, str | bool | list[str]]:
    """What TGI's launcher would read from CONTAINER: its args (clap flags), else their env variables.
    Raises Refused where clap would (unknown flag, bad value, an argument given twice)."""
    config: dict[str, str | bool | list[str]] = {}
    args = list(container.get("args") or [])
    i = 0
    while i < len(args):
        flag, eq, inline = args[i].partition("=")
        flag = tgi.SHORT_FLAGS.get(flag, flag)
        if flag not in tgi.LAUNCHER_FLAGS:
            raise Refused(f"error: unexpected argument '{flag}' found")
        kind, choices = tgi.LAUNCHER_FLAGS[flag]
        if flag in config and kind != "str-multi":
            raise Refused(f"error: the argument '{flag}' cannot be used multiple times")
        if kind == "bool":
            if eq:
                raise Refused(f"error: unexpected value '{inline}' for '{flag}' found; no more were expected")
            config[flag] = True
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(args):
                raise Refused(f"error: a value is required for '{flag}' but none was supplied")
            value = args[i + 1]
            i += 2
        check_value(flag, value, kind, choices)
        config[flag] = [*typing.cast(list, config.get(flag, [])), value] if kind == "str-multi" else value
    env = {e["name"]: e for e in container.get("env") or []}
    for name, entry in env.items():
        if name in NOT_LAUNCHER_ENV:
            continue
        assert name in tgi.LAUNCHER_ENV, f"{name} is no variable of TGI's launcher (its clap `env` names)"
        flag = next(f for f in tgi.LAUNCHER_FLAGS if tgi.env_name(f) == name)
        if flag in config:
            continue  # clap: the argument wins over its variable
        assert "value" in entry, f"{name}: the operator sets launcher variables as values"
        kind, choices = tgi.LAUNCHER_FLAGS[flag]
        check_value(flag, entry["value"], kind, choices)
        config[flag] = entry["value"]
    return config


def check_value(flag: str, value: str, kind: str, choices: frozenset[str] | None) -> None:
    ok = {
        "int": lambda v: re.fullmatch(r"\d+", v) is not None,
        "float": lambda v: re.fullmatch(r"-?\d+(\.\d+)?", v) is not None,
        "bool-value": lambda v: v in ("true", "false"),
        "int-list": lambda v: re.fullmatch(r"\d+(,\d+)*", v) is not None,
    }.get(kind, lambda v: True)(value)
    if not ok or (choices is not None and value not in choices):
        raise Refused(f"error: invalid value '{value}' for '{flag}'")


def launcher_rules(config: dict) -> None:
    """The launcher's fn main checks and the shards' dtype rule, on CONFIG; raises Refused as they do."""
    m_in, m_len, m_total = (
        config.get(f) for f in ("--max-input-tokens", "--max-input-length", "--max-total-tokens")
    )
    if m_in is not None and m_len is not None:
        raise Refused(tgi.REFUSALS["input-vs-input-length"].format(a=m_in, b=m_len))
    m_in = m_in if m_in is not None else m_len
    if m_in is not None and m_total is not None and int(m_in) >= int(m_total):
        raise Refused(tgi.REFUSALS["input-vs-total"].format(a=m_in, b=m_total))
    batch_total = config.get("--max-batch-total-tokens")
    if m_total is not None and batch_total is not None and int(m_total) > int(batch_total):
        raise Refused(tgi.REFUSALS["total-vs-batch-total"].format(a=m_total, b=batch_total))
    if config.get("--quantize") == "exl2" and int(str(config.get("--num-shard") or 1)) > 1:
        raise Refused(tgi.REFUSALS["exl2-sharded"])
    if config.get("--dtype") is not None and config.get("--quantize") not in tgi.DTYPE_WITH_QUANTIZE:
        raise Refused(tgi.DTYPE_QUANTIZE_REFUSAL)
    adapters = str(config.get("--lora-adapters") or "")
    for entry in filter(None, (a.strip() for a in adapters.split(","))):
        if not re.match(tgi.LORA_ADAPTER_ENTRY, entry) or entry.count("=") > 1 or entry.count("@") > 1:
            raise Refused(f"Invalid LoRA adapter format: {entry}")


def tgi_container(spec: dict, jobs: dict | None = None) -> tuple[dict, dict]:
    ms = ModelServe.model_validate({"metadata": {"name": "bot", "namespace": "team"}, "spec": spec})
    res = resolve_sources(ms, jobs or {})
    assert res.ok, res.message
    tpl = r.render_pod_template(ms, res, image="tgi", trainer_image="trainer", revision_hash_="x")
    (container,) = tpl["spec"]["containers"]
    return container, tpl["spec"]


def test_the_apis_value_sets_are_tgis():
    assert set(typing.get_args(TGIQuantize)) == tgi.QUANTIZE
    dtype = TGISpec.model_fields["dtype"].annotation
    assert set(typing.get_args(typing.get_args(dtype)[0])) == tgi.DTYPE
    assert tgi.TGI_VERSION in engine.DEFAULT_IMAGE  # the facts are the default image's version's


def test_a_full_pod_reads_as_the_launcher_reads_it():
    container, _ = tgi_container({
        "model": {"uri": "pvc://models/base"},
        "adapters": [{"name": "support", "uri": "pvc://models/support"}, {"name": "legal", "uri": "s3://bucket/legal"}],
        "resources": {"gpus": 2},
        "tgi": {"quantize": "bitsandbytes-nf4", "numShard": 2, "dtype": "bfloat16", "maxInputTokens": 4096,
                "maxTotalTokens": 8192, "maxBatchPrefillTokens": 8192, "maxConcurrentRequests": 64,
                "extraArgs": ["--max-best-of", "1"]},
    })  # fmt: skip
    config = launcher_config(container)
    launcher_rules(config)
    assert config["--model-id"] == "/mnt/pvc/models/base" and config["--port"] == str(engine.CONTAINER_PORT)
    assert config["--hostname"] == "0.0.0.0" and config["--json-output"] is True
    assert (
        config["--lora-adapters"]
        == "support=/mnt/pvc/models/support,legal=/mnt/kubetune/models/adapter-legal"
    )


def test_hub_adapters_are_in_the_form_the_launcher_downloads():
    """An ID=PATH entry is never downloaded (the launcher skips entries with '='): a Hub adapter must be its
    bare id, and clients (the smoke test too) then ask for it by that id."""
    spec = {"model": {"uri": "hf://org/base"},
            "adapters": [{"name": "hub", "uri": "hf://org/some-lora"}, {"name": "local", "uri": "pvc://m/l"}]}  # fmt: skip
    container, _ = tgi_container(spec)
    config = launcher_config(container)
    launcher_rules(config)
    entries = str(config["--lora-adapters"]).split(",")
    downloaded = [e for e in entries if "=" not in e]
    local = dict(e.split("=", 1) for e in entries if "=" in e)
    assert downloaded == ["org/some-lora"]
    assert local == {"local": "/mnt/pvc/m/l"} and all(p.startswith("/") for p in local.values())
    ms = ModelServe.model_validate({"metadata": {"name": "bot"}, "spec": spec})
    assert engine.TGI().adapter_ids(ms) == ("org/some-lora", "local")


def test_extra_args_cannot_repeat_what_the_operator_sets():
    """Every flag the operator renders (or sets through the environment) is reserved: TGI's launcher refuses
    an argument given twice, so the API refuses it first."""
    container, _ = tgi_container({"model": {"uri": "hf://org/base"}, "adapters": [{"name": "a", "uri": "pvc://m/a"}],
                                  "tgi": {"quantize": "awq", "numShard": 1, "maxInputTokens": 1, "maxTotalTokens": 2,
                                          "maxBatchPrefillTokens": 2, "maxConcurrentRequests": 2}})  # fmt: skip
    rendered = {a for a in container["args"] if a.startswith("--")}
    from_env = {f for f in tgi.LAUNCHER_FLAGS if tgi.env_name(f) in {e["name"] for e in container["env"]}}
    assert (rendered | from_env) - {"--dtype"} <= set(TGI_RESERVED_FLAGS) and "--dtype" in TGI_RESERVED_FLAGS
    for flag in TGI_RESERVED_FLAGS:
        try:
            ModelServe.model_validate({"metadata": {"name": "bot"},
                                       "spec": {"model": {"uri": "hf://o/m"}, "tgi": {"extraArgs": [flag, "1"]}}})  # fmt: skip
        except ValidationError as error:
            assert "tgi.extraArgs" in str(error)
        else:
            raise AssertionError(f"extraArgs {flag} was accepted")


def test_no_kubernetes_service_link_can_set_a_launcher_variable():
    """The kubelet gives every container <SERVICE>_PORT=tcp://IP:PORT for each Service of the namespace; a
    Service named "prometheus" or "master" would set PROMETHEUS_PORT / MASTER_PORT, which the launcher
    reads as numbers and refuses. The pods turn service links off."""
    _, pod = tgi_container({"model": {"uri": "hf://org/base"}})
    assert pod.get("enableServiceLinks") is False
    clash = {n for n in tgi.LAUNCHER_ENV if n.endswith(("_PORT", "_HOST"))}
    assert {"PROMETHEUS_PORT", "MASTER_PORT"} <= clash  # what links would break if they were on


TGI_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "quantize": st.sampled_from(sorted(tgi.QUANTIZE)),
        "numShard": st.integers(1, 4),
        "dtype": st.sampled_from(sorted(tgi.DTYPE)),
        "maxInputTokens": st.integers(1, 9000),
        "maxTotalTokens": st.integers(1, 9000),
        "maxBatchPrefillTokens": st.integers(1, 9000),
        "maxConcurrentRequests": st.integers(1, 512),
        "extraArgs": st.lists(st.sampled_from(["--max-best-of", "--speculate", "--trust-remote-code", "--port",
                                               "--dtype", "--cuda-memory-fraction"]), max_size=2).map(
            lambda flags: [x for f in flags for x in ((f,) if f == "--trust-remote-code" else (f, "1"))]),
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(settings_=TGI_SETTINGS, gpus=st.integers(0, 4))
def test_every_tgi_setting_the_api_accepts_starts_the_launcher(settings_, gpus):
    spec = {"model": {"uri": "hf://org/base"}, "resources": {"gpus": gpus}, "tgi": settings_,
            "adapters": [{"name": "a", "uri": "pvc://m/a"}, {"name": "b", "uri": "hf://org/b"}]}  # fmt: skip
    try:
        container, _ = tgi_container(spec)
    except ValidationError:
        return  # refused by the API: nothing reaches the launcher
    launcher_rules(launcher_config(container))  # raises Refused where TGI would not start
