"""URIs of the API (docs/api-reference.md): hf://, pvc://, s3://, https:// (datasets only) and file:// (local runs only).

Parsing is pure: no DNS, no network. The SSRF rule here looks at the literal host; the trainer checks the
resolved addresses again when it fetches (see ``kubetune_trainer.data``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Scheme = Literal["hf", "pvc", "s3", "https", "file"]
SCHEMES: tuple[str, ...] = ("hf", "pvc", "s3", "https", "file")

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


class URIError(ValueError):
    """A URI that does not follow the API's URI rules; the message says what a valid one looks like."""


@dataclass(frozen=True)
class ParsedURI:
    """A URI split into the parts the operator and the trainer need."""

    scheme: str
    authority: (
        str  # hf: org (or the repo when it has no org); pvc: claim; s3: bucket; https: host[:port]; file: ""
    )
    path: str  # hf: "org/name"; pvc/s3: path inside; https: path; file: absolute path
    raw: str

    @property
    def hf_repo_id(self) -> str:
        return self.path

    @property
    def claim(self) -> str:
        return self.authority

    @property
    def bucket(self) -> str:
        return self.authority


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
    if scheme == "https":
        host = check_public_https_url(uri)
        parts = urlsplit(uri)
        return ParsedURI("https", host, parts.path, uri)
    # file
    if not rest.startswith("/"):
        raise URIError(f"{uri!r}: a file URI needs an absolute path, file:///ABS/PATH")
    return ParsedURI("file", "", rest, uri)


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
        "https": "https://HOST/PATH",
        "file": "file:///ABS/PATH (local runs only)",
    }
    return ", ".join(shapes[s] for s in allowed)
