"""Fetch a dataset or model URI to something ``datasets`` / ``transformers`` can open.

hf:// stays a Hub id; pvc:// is a mounted path; file:// is a local path; s3:// is downloaded with
fsspec/s3fs (credentials from AWS_* env); https:// is downloaded after checking that every address
the host resolves to is public, and the connection goes to the checked address (no DNS rebinding).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import tempfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from kubetune.api.v1alpha1 import forbidden_address_reason, parse_uri, pvc_local_path
from kubetune.api.v1alpha1.trainerconfig import WORK_DIR

from .errors import DataError, TrainerError

MAX_REDIRECTS = 5
MAX_DOWNLOAD_BYTES = 20 * 1024**3


def writable_dir(preferred: str, *parts: str) -> Path:
    """PREFERRED/PARTS (a pod's emptyDir) when it can be written, else the same under a temp folder."""
    try:
        base = Path(preferred)
        base.mkdir(parents=True, exist_ok=True)
        if not os.access(base, os.W_OK):
            raise PermissionError(preferred)
        path = base.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir(), "kubetune-work", *parts)
        path.mkdir(parents=True, exist_ok=True)
    return path


def work_dir(*parts: str) -> Path:
    """A scratch folder: WORK_DIR in a pod, a temp folder elsewhere."""
    return writable_dir(WORK_DIR, *parts)


def local_path(uri: str) -> Path:
    """The local path of a pvc:// or file:// URI."""
    parsed = parse_uri(uri)
    if parsed.scheme == "pvc":
        return Path(pvc_local_path(uri))
    if parsed.scheme == "file":
        return Path(parsed.path)
    raise ValueError(f"{uri} is not a local URI")


def s3_options() -> dict:
    """s3fs options from the pod's env (secrets arrive as env, never in the config)."""
    options: dict = {}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        options["key"] = os.environ["AWS_ACCESS_KEY_ID"]
        options["secret"] = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["token"] = os.environ["AWS_SESSION_TOKEN"]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
        options["endpoint_url"] = endpoint
    if os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        options.setdefault("client_kwargs", {})["region_name"] = os.environ.get(
            "AWS_REGION"
        ) or os.environ.get("AWS_DEFAULT_REGION")
    return options


def s3_filesystem():
    import fsspec

    options = s3_options()
    options.pop("endpoint_url", None)
    return fsspec.filesystem("s3", **options)


def download_s3(uri: str, dest: Path) -> Path:
    """Copy s3://BUCKET/PREFIX (one object or a prefix) to dest; returns the local path."""
    parsed = parse_uri(uri, ("s3",))
    remote = f"{parsed.bucket}/{parsed.path}".rstrip("/")
    fs = s3_filesystem()
    try:
        if fs.isdir(remote):
            fs.get(remote + "/", str(dest) + "/", recursive=True)
            return dest
        target = dest / Path(parsed.path).name
        dest.mkdir(parents=True, exist_ok=True)
        fs.get(remote, str(target))
        return target
    except FileNotFoundError:
        raise TrainerError(f"{uri} does not exist (or the credentials cannot see it)") from None
    except Exception as error:  # botocore errors carry their own detail
        raise TrainerError(f"cannot download {uri}: {error}") from None


def resolve_public(host: str, port: int) -> str:
    """Resolve host and return one address; raise when ANY resolved address is not public (SSRF rule)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise DataError(f"cannot resolve {host}: {error}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # IPv6 may carry a %zone
        reason = forbidden_address_reason(address)
        if reason:
            raise DataError(
                f"https dataset host {host} resolves to {address}: {reason}; datasets over https must come from a public address"
            )
        addresses.append(str(address))
    if not addresses:
        raise DataError(f"{host} has no addresses")
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to an address checked beforehand, verifying the certificate for the host name."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        self._ssl_context = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._ssl_context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)


def download_https(url: str, dest_dir: Path, timeout: float = 60.0) -> Path:
    """Download a public https URL to dest_dir, re-checking the SSRF rule on every hop's resolved addresses."""
    for _ in range(MAX_REDIRECTS + 1):
        host = parse_uri(url, ("https",)).authority  # the literal-host rule (raises URIError)
        parts = urlsplit(url)
        port = parts.port or 443
        address = resolve_public(host, port)
        connection = _PinnedHTTPSConnection(host, address, port, timeout)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            connection.request("GET", path, headers={"User-Agent": "kubetune-trainer", "Host": parts.netloc})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                connection.close()
                if not location:
                    raise DataError(f"{url}: redirect without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise DataError(f"{url}: HTTP {response.status} {response.reason}")
            name = Path(parts.path).name or "data"
            dest_dir.mkdir(parents=True, exist_ok=True)
            target = dest_dir / name
            total = 0
            with open(target, "wb") as out:
                while chunk := response.read(1 << 20):
                    total += len(chunk)
                    if total > MAX_DOWNLOAD_BYTES:
                        raise DataError(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
                    out.write(chunk)
            return target
        except (OSError, http.client.HTTPException) as error:
            raise DataError(f"cannot download {url}: {error}") from None
        finally:
            connection.close()
    raise DataError(f"{url}: more than {MAX_REDIRECTS} redirects")
