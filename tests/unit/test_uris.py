"""URI parsing per scheme and the SSRF rule for https datasets (pure: no DNS)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from kubetune.api.v1alpha1 import URIError, forbidden_address_reason, forbidden_host_reason, parse_uri
from kubetune.api.v1alpha1.finetunejob import _uri_pattern

ALL = ("hf", "pvc", "s3", "https", "file")


@pytest.mark.parametrize(
    ("uri", "scheme", "authority", "path"),
    [
        ("hf://gpt2", "hf", "gpt2", "gpt2"),
        ("hf://meta-llama/Llama-3.1-8B", "hf", "meta-llama", "meta-llama/Llama-3.1-8B"),
        ("hf://facebook/bart-large-cnn/", "hf", "facebook", "facebook/bart-large-cnn"),
        ("pvc://models/llama/run-1", "pvc", "models", "llama/run-1"),
        ("pvc://data", "pvc", "data", ""),
        ("s3://my-bucket/prefix/a", "s3", "my-bucket", "prefix/a"),
        ("https://huggingface.co/datasets/x/resolve/main/train.jsonl", "https", "huggingface.co", "/datasets/x/resolve/main/train.jsonl"),
        ("https://8.8.8.8/data.csv", "https", "8.8.8.8", "/data.csv"),
        ("file:///tmp/data.jsonl", "file", "", "/tmp/data.jsonl"),
    ],
)  # fmt: skip
def test_parse_valid(uri, scheme, authority, path):
    parsed = parse_uri(uri)
    assert (parsed.scheme, parsed.authority, parsed.path, parsed.raw) == (scheme, authority, path, uri)


@pytest.mark.parametrize(
    ("uri", "allowed", "words"),
    [
        ("gpt2", ALL, "not a URI"),
        ("ftp://host/x", ALL, "scheme 'ftp' is not allowed"),
        ("https://example.com/x", ("hf", "pvc", "s3"), "scheme 'https' is not allowed"),
        ("hf://a/b/c", ALL, "not a Hub id"),
        ("hf://has space", ALL, "not a Hub id"),
        ("hf://", ALL, "not a Hub id"),
        ("pvc://Upper/x", ALL, "not a PersistentVolumeClaim name"),
        ("pvc://claim_underscore/x", ALL, "not a PersistentVolumeClaim name"),
        ("pvc://data/a/../../etc", ALL, "'..'"),
        ("s3://ab/x", ALL, "not an S3 bucket name"),
        ("s3://Bucket/x", ALL, "not an S3 bucket name"),
        ("file://relative/path", ALL, "absolute path"),
        ("https://user:pw@example.com/x", ALL, "credentials"),
        ("https:///nohost", ALL, "no host"),
    ],
)  # fmt: skip
def test_parse_invalid(uri, allowed, words):
    with pytest.raises(URIError, match=re.escape(words)):
        parse_uri(uri, allowed)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x", "https://127.1.2.3/x", "https://10.0.0.1/x", "https://172.16.5.4/x",
        "https://192.168.0.1/x", "https://169.254.169.254/latest/meta-data/", "https://100.64.0.1/x",
        "https://0.0.0.0/x", "https://224.0.0.1/x", "https://[::1]/x", "https://[::]/x", "https://[fe80::1]/x",
        "https://[fc00::1]/x", "https://[fd12:3456::1]/x", "https://[::ffff:127.0.0.1]/x",
        "https://[::ffff:169.254.169.254]/x", "https://[::ffff:10.1.2.3]/x", "https://[0:0:0:0:0:ffff:7f00:1]/x",
        "https://localhost/x", "https://LOCALHOST./x", "https://api.localhost/x", "https://metadata.google.internal/x",
        "https://metadata/x", "https://instance-data/x", "https://kubernetes.default/x",
        "https://minio.storage.svc.cluster.local/x", "https://svc.namespace.svc/x", "https://printer.local/x",
        "https://2130706433/x", "https://0x7f000001/x", "https://017700000001/x", "https://127.1/x", "https://0x7f.1/x",
    ],
)  # fmt: skip
def test_ssrf_rejected(url):
    with pytest.raises(URIError, match="public address"):
        parse_uri(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://huggingface.co/x",
        "https://8.8.8.8/x",
        "https://[2606:4700:4700::1111]/x",
        "https://example.com:8443/a?b=c",
    ],
)
def test_public_https_accepted(url):
    assert parse_uri(url).scheme == "https"


def test_address_reasons_name_the_kind():
    assert "loopback" in forbidden_address_reason(ipaddress.ip_address("127.0.0.1"))
    assert "link-local" in forbidden_address_reason(ipaddress.ip_address("169.254.169.254"))
    assert "private" in forbidden_address_reason(ipaddress.ip_address("10.1.1.1"))
    assert "loopback" in forbidden_address_reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert forbidden_address_reason(ipaddress.ip_address("1.1.1.1")) is None
    assert forbidden_host_reason("[::1]") is not None
    assert forbidden_host_reason("huggingface.co") is None


@pytest.mark.parametrize(
    ("allowed", "uri"),
    [
        (("hf", "pvc", "s3", "file"), u)
        for u in ("hf://gpt2", "hf://a/b", "pvc://c/p/q", "s3://bkt/p", "file:///x")
    ]
    + [(("hf", "pvc", "s3", "https", "file"), "https://example.com/data.jsonl")],
)
def test_crd_pattern_accepts_what_python_accepts(allowed, uri):
    parse_uri(uri, allowed)
    assert re.search(_uri_pattern(allowed), uri)


@pytest.mark.parametrize(
    "uri", ["hf://a b", "hf://a/b/c", "pvc://Up/x", "s3://ab/x", "ftp://x/y", "file://rel", "https://"]
)
def test_crd_pattern_rejects_what_python_rejects(uri):
    with pytest.raises(URIError):
        parse_uri(uri)
    assert not re.search(_uri_pattern(("hf", "pvc", "s3", "https", "file")), uri)
