"""URIs of the API (docs/api-reference.md): hf://, pvc://, s3://, oci:// (OCI registries), https:// (datasets only) and
file:// (local runs only).

Parsing is pure: no DNS, no network. The SSRF rule here looks at the literal host; the trainer checks the
resolved addresses again when it fetches (see ``kubetune_trainer.data``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Scheme = Literal["hf", "pvc", "s3", "oci", "https", "file"]
SCHEMES: tuple[str, ...] = ("hf", "pvc", "s3", "oci", "https", "file")

# Host names that always mean "this machine" or a cloud metadata service.
FORBIDDEN_HOSTNAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "kubernetes",
        "kubernetes.default",
    }
)
FORBIDDEN_HOST_SUFFIXES = (".localhost", ".internal", ".local", ".svc", ".cluster.local")

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_PVC_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# OCI references as the distribution specification (and docker/containerd) write them: a registry host (a DNS
# name or an address, with an optional port), a repository of lowercase path components, then a tag and/or a
# digest. The same shapes go into the CRD as RE2 patterns (finetunejob._SCHEME_PATTERNS).
OCI_HOST = (
    r"([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])"
    r"(:[0-9]{1,5})?"
)
OCI_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
OCI_REPOSITORY = rf"{OCI_COMPONENT}(/{OCI_COMPONENT})*"
OCI_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
OCI_DIGEST = r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}"
OCI_NAME_MAX = 255  # registry/repository, as the distribution specification bounds it
_OCI_HOST = re.compile(rf"^{OCI_HOST}$")
_OCI_REPOSITORY = re.compile(rf"^{OCI_REPOSITORY}$")
_OCI_TAG = re.compile(rf"^{OCI_TAG}$")
_OCI_DIGEST = re.compile(rf"^({OCI_DIGEST})$")


class URIError(ValueError):
    """A URI that does not follow the API's URI rules; the message says what a valid one looks like."""


@dataclass(frozen=True)
class ParsedURI:
    """A URI split into the parts the operator and the trainer need."""

    scheme: str
    authority: (
        str  # hf: org (or the repo when it has no org); pvc: claim; s3: bucket; https: host[:port]; file: ""
    )
    path: str  # hf: "org/name"; pvc/s3: path inside; oci: repository; https: path; file: absolute path
    raw: str
    tag: str | None = None  # oci: the tag, if any
    digest: str | None = None  # oci: the manifest digest (sha256:HEX), if any

    @property
    def hf_repo_id(self) -> str:
        return self.path

    @property
    def claim(self) -> str:
        return self.authority

    @property
    def bucket(self) -> str:
        return self.authority

    @property
    def registry(self) -> str:
        """oci: the registry host[:port]."""
        return self.authority

    @property
    def repository(self) -> str:
        """oci: the repository inside the registry."""
        return self.path

    @property
    def reference(self) -> str:
        """oci: REGISTRY/REPO[:TAG][@DIGEST], as registry clients (oras, crane, docker) write it."""
        out = f"{self.authority}/{self.path}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_uri(uri: str, allowed: tuple[str, ...] = SCHEMES) -> ParsedURI:
    """Parse ``uri``; raise URIError naming the allowed schemes and the expected shape."""
    if not isinstance(uri, str) or "://" not in uri:
        raise URIError(f"{uri!r} is not a URI; use one of {_shapes(allowed)}")
    scheme, rest = uri.split("://", 1)
    if scheme not in allowed:
        raise URIError(f"scheme {scheme!r} is not allowed here; use one of {_shapes(allowed)}")
    if scheme == "hf":
        repo = rest.strip("/")
        if not _HF_REPO.match(repo):
            raise URIError(
                f"{uri!r} is not a Hub id; expected hf://ORG/NAME (for example hf://gpt2 or hf://meta-llama/Llama-3.1-8B)"
            )
        return ParsedURI("hf", repo.split("/")[0], repo, uri)
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not _PVC_NAME.match(claim) or len(claim) > 253:
            raise URIError(
                f"{uri!r}: {claim!r} is not a PersistentVolumeClaim name; expected pvc://CLAIM/PATH with a lowercase DNS name"
            )
        if ".." in path.split("/"):
            raise URIError(f"{uri!r}: the path inside the claim must not contain '..'")
        return ParsedURI("pvc", claim, path.strip("/"), uri)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _S3_BUCKET.match(bucket):
            raise URIError(f"{uri!r}: {bucket!r} is not an S3 bucket name; expected s3://BUCKET/PREFIX")
        return ParsedURI("s3", bucket, prefix.strip("/"), uri)
    if scheme == "oci":
        return parse_oci(uri, rest)
    if scheme == "https":
        host = check_public_https_url(uri)
        parts = urlsplit(uri)
        return ParsedURI("https", host, parts.path, uri)
    # file
    if not rest.startswith("/"):
        raise URIError(f"{uri!r}: a file URI needs an absolute path, file:///ABS/PATH")
    return ParsedURI("file", "", rest, uri)


def parse_oci(uri: str, rest: str) -> ParsedURI:
    """oci://REGISTRY/REPO:TAG, oci://REGISTRY/REPO@sha256:DIGEST or both (the digest is what is read then)."""
    shape = "expected oci://REGISTRY/REPOSITORY:TAG or oci://REGISTRY/REPOSITORY@sha256:DIGEST"
    host, _, name = rest.partition("/")
    if not host or not _OCI_HOST.match(host):
        raise URIError(
            f"{uri!r}: {host!r} is not a registry host (a DNS name or address, optional :PORT); {shape}"
        )
    name, _, digest = name.partition("@")
    repository, tag = name, None
    if ":" in name:
        repository, _, tag = name.rpartition(":")
    if not repository:
        raise URIError(f"{uri!r} names no repository; {shape}")
    if not _OCI_REPOSITORY.match(repository):
        raise URIError(
            f"{uri!r}: {repository!r} is not a repository name (lowercase letters, digits and . _ - between them, "
            f"path components separated by /); {shape}"
        )
    if len(f"{host}/{repository}") > OCI_NAME_MAX:
        raise URIError(f"{uri!r}: registry and repository are longer than {OCI_NAME_MAX} characters")
    if tag is not None and not _OCI_TAG.match(tag):
        raise URIError(
            f"{uri!r}: {tag!r} is not a tag (letters, digits, _ . -, not starting with . or -, at most 128)"
        )
    if digest and not _OCI_DIGEST.match(digest):
        raise URIError(f"{uri!r}: {digest!r} is not a digest; write @sha256: and 64 lowercase hex digits")
    if tag is None and not digest:
        raise URIError(f"{uri!r} has neither a tag nor a digest; {shape}")
    return ParsedURI("oci", host, repository, uri, tag=tag, digest=digest or None)


def oci_uri(registry: str, repository: str, tag: str | None = None, digest: str | None = None) -> str:
    """The oci:// URI of a registry, repository, tag and digest."""
    out = f"oci://{registry}/{repository}"
    if tag:
        out += f":{tag}"
    if digest:
        out += f"@{digest}"
    return out


def check_public_https_url(url: str) -> str:
    """Return the host of an https URL, or raise URIError when it points at a non-public address.

    Rejects loopback, private, link-local, shared (CGNAT), multicast, reserved and unspecified
    addresses, cloud metadata names, and names that only resolve inside a cluster or a host.
    """
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise URIError(f"{url!r}: only https:// URLs are allowed")
    if parts.username or parts.password:
        raise URIError(f"{url!r}: credentials in the URL are not allowed; use dataset.secretRef")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise URIError(f"{url!r}: the URL has no host")
    reason = forbidden_host_reason(host)
    if reason:
        raise URIError(f"{url!r}: {reason}; datasets over https must come from a public address")
    return host


def forbidden_host_reason(host: str) -> str | None:
    """Why ``host`` (a name or a literal address) must not be fetched, or None when it may be."""
    host = host.strip("[]").rstrip(".").lower()
    if host in FORBIDDEN_HOSTNAMES or host.endswith(FORBIDDEN_HOST_SUFFIXES):
        return f"host {host!r} is a local, cluster-internal or metadata name"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Like the WHATWG URL parser: a host whose last label is a number (decimal, octal or 0x-hex)
        # is an IPv4 address in some form (2130706433, 0x7f000001, 0x7f.1, 127.1), never a DNS name.
        if re.fullmatch(r"[0-9]+|0x[0-9a-f]*", host.rsplit(".", 1)[-1]):
            return f"host {host!r} is an address written in an unusual form"
        return None
    return forbidden_address_reason(address)


def forbidden_address_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an IP address is not public, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return forbidden_address_reason(address.ipv4_mapped)
    checks = (
        ("loopback", address.is_loopback),
        ("link-local (cloud metadata lives here)", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("unspecified", address.is_unspecified),
        ("shared address space", address in ipaddress.ip_network("100.64.0.0/10")),
    )
    for name, hit in checks:
        if hit:
            return f"address {address} is {name}"
    return None


def _shapes(allowed: tuple[str, ...]) -> str:
    shapes = {
        "hf": "hf://ORG/NAME",
        "pvc": "pvc://CLAIM/PATH",
        "s3": "s3://BUCKET/PREFIX",
        "oci": "oci://REGISTRY/REPOSITORY:TAG",
        "https": "https://HOST/PATH",
        "file": "file:///ABS/PATH (local runs only)",
    }
    return ", ".join(shapes[s] for s in allowed)
