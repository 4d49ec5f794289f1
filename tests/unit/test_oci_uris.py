"""oci:// URIs: what parses (registry, repository, tag, digest), what does not and why, and the CRD's RE2
pattern agreeing with the Python parser on both sides."""

from __future__ import annotations

import re

import pytest

from kubetune.api.v1alpha1 import URIError, parse_uri
from kubetune.api.v1alpha1.finetunejob import OUTPUT_SCHEMES, _uri_pattern
from kubetune.api.v1alpha1.uris import oci_uri

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("uri", "registry", "repository", "tag", "digest"),
    [
        ("oci://registry.example.com/team/llama:v1", "registry.example.com", "team/llama", "v1", None),
        ("oci://10.245.0.1:5000/e2e/capitals:run-1", "10.245.0.1:5000", "e2e/capitals", "run-1", None),
        ("oci://localhost:5000/a/b/c:1.0_rc", "localhost:5000", "a/b/c", "1.0_rc", None),
        ("oci://registry/x@" + DIGEST, "registry", "x", None, DIGEST),
        ("oci://ghcr.io/org/my.model__x-y:latest@" + DIGEST, "ghcr.io", "org/my.model__x-y", "latest", DIGEST),
        ("oci://[::1]:5000/x:t", "[::1]:5000", "x", "t", None),
    ],
)  # fmt: skip
def test_parse_valid(uri, registry, repository, tag, digest):
    parsed = parse_uri(uri)
    assert (parsed.scheme, parsed.registry, parsed.repository, parsed.tag, parsed.digest) == (
        "oci", registry, repository, tag, digest
    )  # fmt: skip
    assert parsed.reference == uri.removeprefix("oci://")
    assert oci_uri(registry, repository, tag, digest) == uri


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("oci://registry.example.com/team/llama", "neither a tag nor a digest"),
        ("oci://registry.example.com/Team/llama:v1", "not a repository name"),
        ("oci://registry.example.com/team//llama:v1", "not a repository name"),
        ("oci://registry.example.com/team/llama-:v1", "not a repository name"),
        ("oci://registry.example.com:5000", "names no repository"),
        ("oci://registry.example.com/:v1", "names no repository"),
        ("oci://reg_istry/x:v1", "not a registry host"),
        ("oci:///x:v1", "not a registry host"),
        ("oci://registry/x:-v1", "not a tag"),
        ("oci://registry/x:" + "a" * 129, "not a tag"),
        ("oci://registry/x@sha256:abc", "not a digest"),
        ("oci://registry/x@md5:" + "0" * 32, "not a digest"),
        ("oci://registry/" + "a" * 250 + ":v1", "longer than 255"),
    ],
)  # fmt: skip
def test_parse_invalid_says_why(uri, words):
    with pytest.raises(URIError, match=re.escape(words)):
        parse_uri(uri)


def test_oci_is_refused_where_it_does_not_apply():
    with pytest.raises(URIError, match="scheme 'oci' is not allowed"):
        parse_uri("oci://registry/x:v1", ("hf", "pvc", "s3", "https", "file"))  # datasets


@pytest.mark.parametrize(
    "uri",
    [
        "oci://registry.example.com/team/llama:v1",
        "oci://10.245.0.1:5000/e2e/capitals:run-1",
        "oci://registry/x@" + DIGEST,
        "oci://ghcr.io/org/my.model__x-y:latest@" + DIGEST,
    ],
)
def test_crd_pattern_accepts_what_python_accepts(uri):
    parse_uri(uri, OUTPUT_SCHEMES)
    assert re.search(_uri_pattern(OUTPUT_SCHEMES), uri)


@pytest.mark.parametrize(
    "uri",
    [
        "oci://registry.example.com/team/llama",
        "oci://registry.example.com/Team/llama:v1",
        "oci://reg_istry/x:v1",
        "oci://registry/x:-v1",
        "oci://registry/x@sha256:abc",
    ],
)
def test_crd_pattern_rejects_what_python_rejects(uri):
    with pytest.raises(URIError):
        parse_uri(uri, OUTPUT_SCHEMES)
    assert not re.search(_uri_pattern(OUTPUT_SCHEMES), uri)
