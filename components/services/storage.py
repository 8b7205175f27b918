"""s3:// locations for datasets and models, through boto3: bounded retries, integrity checks, atomic files.

The endpoint and the credentials come from the environment only: boto3's own credential chain (env keys,
profile, web identity / IRSA, instance role) and ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` /
``MLFLOW_S3_ENDPOINT_URL`` for a MinIO or moto endpoint. Nothing here logs or formats a credential.

* Retries: botocore ``standard`` mode (throttling, 5xx and connection errors, exponential backoff with
  jitter), ``AWS_MAX_ATTEMPTS`` attempts in all (default 3), connect timeout 3 s, read timeout 60 s, so an
  unreachable endpoint fails in seconds instead of hanging.
* Integrity: every upload stores the file's sha256 in the object metadata (``x-amz-meta-sha256``); a
  download checks the size, then that sha256, or else the MD5 in the ETag of a single-part object.
* Atomicity: a download is written to a temporary name and renamed into place; a directory is staged
  whole and swapped in, so a reader never sees half a dataset.
* Errors: every failure is a ``StorageError`` naming the URI and what to fix (missing bucket, missing key,
  missing or rejected credentials, unreachable endpoint).

Example:
    >>> upload("runs/model", "s3://models/cnn/v1")                    # doctest: +SKIP
    's3://models/cnn/v1'
    >>> resolve_input("s3://models/cnn/v1", ".idap")                  # doctest: +SKIP
    PosixPath('.idap/s3-cache/models/cnn/v1')
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from idap.atomic import replace_directory, write_file

__all__ = ["StorageError", "download", "fetch_by_content", "is_s3", "parse_s3", "resolve_input", "upload"]

CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 60
DEFAULT_MAX_ATTEMPTS = 3
SHA256_META = "sha256"  # object metadata key (x-amz-meta-sha256)
CACHE_DIR = "s3-cache"
_MANIFEST = ".idap-s3-manifest.json"
_CHUNK = 1 << 20


class StorageError(ValueError):
    """An s3:// (or local) location cannot be read or written; the message names it and the cause."""


# --- URIs ---------------------------------------------------------------------------------------------------


def is_s3(uri: str | os.PathLike) -> bool:
    """True for ``s3://bucket[/key]`` strings."""
    return isinstance(uri, str) and uri.startswith("s3://")


def parse_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; the key may be empty (the bucket's root)."""
    if not is_s3(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI (expected s3://bucket/key)")
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket (expected s3://bucket/key)")
    return bucket, key


# --- public operations --------------------------------------------------------------------------------------


def resolve_input(path_or_uri: str | os.PathLike, workdir: str | os.PathLike) -> Path:
    """A local path for an input: s3:// objects / prefixes are downloaded into ``<workdir>/s3-cache``.

    A cached copy is reused only when its manifest (ETag and size of every object) still matches the
    bucket; otherwise it is downloaded again. A local path is returned as is once it exists.
    """
    text = os.fspath(path_or_uri)
    if not is_s3(text):
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.exists():
            raise StorageError(f"input {text} does not exist (give an existing file, directory or s3:// URI)")
        return path
    bucket, key = parse_s3(text)
    dest = Path(workdir) / CACHE_DIR / bucket / (key.rstrip("/") or "_bucket_root")
    client = _client()
    listing = _listing(client, text)
    if _cache_matches(dest, listing):
        return dest
    _download_listing(client, text, listing, dest, manifest=True)
    if listing["kind"] == "file":
        _file_marker(dest).write_text(listing["objects"][""]["etag"])
    return dest


def fetch_by_content(uri: str, cache: str | os.PathLike) -> Path:
    """Download an object or prefix once into ``<cache>/<content key>/`` and return the local copy.

    The key is a sha256 over the listing (relative keys, sizes, ETags): unchanged content is never downloaded
    again, changed content lands in a new folder, and the same content under two URIs is fetched once.
    """
    client = _client()
    listing = _listing(client, uri)
    entries = sorted((rel, obj["size"], obj["etag"]) for rel, obj in listing["objects"].items())
    key = hashlib.sha256(json.dumps([listing["kind"], entries]).encode()).hexdigest()[:16]
    name = Path(parse_s3(uri)[1].rstrip("/")).name or "bucket"
    dest = Path(cache) / key / name
    if dest.exists():  # files are renamed into place whole, directories swapped in whole
        return dest
    return _download_listing(client, uri, listing, dest)


def download(uri: str, dest: str | os.PathLike) -> Path:
    """Download an object to the file ``dest``, or every object under a prefix into the directory ``dest``.

    ``s3://b/k`` is an object when one exists under exactly that key, else the prefix ``k/``.
    """
    client = _client()
    return _download_listing(client, uri, _listing(client, uri), Path(dest))


def upload(src: str | os.PathLike, uri: str) -> str:
    """Upload a file to the key ``uri`` (or ``uri/<name>`` when it ends with ``/``), or a directory's files
    under the prefix ``uri``; each object carries its sha256. Returns the URI written."""
    src = Path(src)
    bucket, key = parse_s3(uri)
    if not src.exists():
        raise StorageError(f"cannot upload {src} to {uri}: {src} does not exist")
    client = _client()
    if src.is_file():
        if not key or key.endswith("/"):
            key = f"{key}{src.name}"
        _put(client, src, bucket, key)
        return f"s3://{bucket}/{key}"
    prefix = key.rstrip("/")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.name != _MANIFEST)
    if not files:
        raise StorageError(f"cannot upload {src} to {uri}: the directory holds no files")
    for path in files:
        rel = path.relative_to(src).as_posix()
        _put(client, path, bucket, f"{prefix}/{rel}" if prefix else rel)
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


# --- boto3 --------------------------------------------------------------------------------------------------


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (None = AWS's own)."""
    from components.services.settings import load_settings

    return os.environ.get("AWS_ENDPOINT_URL_S3") or load_settings().s3_endpoint


def _max_attempts() -> int:
    raw = os.environ.get("AWS_MAX_ATTEMPTS") or ""
    try:
        return max(1, min(int(raw), 10)) if raw else DEFAULT_MAX_ATTEMPTS
    except ValueError:
        raise StorageError(f"AWS_MAX_ATTEMPTS must be an integer, got {raw!r}") from None


def _client():
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": _max_attempts(), "mode": os.environ.get("AWS_RETRY_MODE") or "standard"},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url(), config=config)


def _error(uri: str, action: str, error: Exception) -> StorageError:
    """Translate a boto3 / botocore exception into a StorageError that says what to fix."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        why = ("no S3 credentials found: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a "
               "workload identity")
    elif isinstance(error, EndpointConnectionError | ConnectionError):
        why = (f"cannot reach the S3 endpoint {_safe_endpoint()} after {_max_attempts()} attempt(s) "
               f"({type(error).__name__}); check AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL and the network")
    elif isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket = parse_s3(uri)[0]
        why = {
            "NoSuchBucket": f"bucket {bucket!r} does not exist",
            "NoSuchKey": "no object at that key",
            "AccessDenied": "access denied: the credentials may not use this bucket / key",
            "InvalidAccessKeyId": "the S3 credentials were rejected (unknown access key id)",
            "SignatureDoesNotMatch": "the S3 credentials were rejected (wrong secret key)",
            "ExpiredToken": "the S3 credentials have expired",
            "SlowDown": (f"S3 throttled the request (503 SlowDown) on all {_max_attempts()} attempts; retry later or "
                         "raise AWS_MAX_ATTEMPTS (botocore's standard mode backs off between attempts)"),
        }.get(code, f"S3 answered {status} {code}: {error.response.get('Error', {}).get('Message', '')}".strip())
    else:
        why = f"{type(error).__name__}: {error}"
    return StorageError(f"cannot {action} {uri}: {why}")


def _call(uri: str, action: str, fn, *args, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except (BotoCoreError, ClientError) as error:
        raise _error(uri, action, error) from error


def _safe_endpoint() -> str:
    """The endpoint without any user:password part, for messages."""
    url = endpoint_url()
    if not url:
        return "(AWS default)"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


# --- listing, download, upload ------------------------------------------------------------------------------


def _listing(client, uri: str) -> dict:
    """``{"kind": "file" | "dir", "objects": {relative path: {"key", "size", "etag"}}}`` for a URI."""
    from botocore.exceptions import ClientError

    bucket, key = parse_s3(uri)
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            return {"kind": "file", "objects": {"": {"key": key, "size": head["ContentLength"],
                                                     "etag": head["ETag"].strip('"')}}}
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise _error(uri, "read", error) from error
        except Exception as error:
            raise _translate(uri, "read", error) from error
    prefix = f"{key.rstrip('/')}/" if key else ""
    objects = {}
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if rel and not rel.endswith("/"):  # skip "directory marker" objects
                    objects[rel] = {"key": obj["Key"], "size": obj["Size"], "etag": obj["ETag"].strip('"')}
    except Exception as error:
        raise _translate(uri, "list", error) from error
    if not objects:
        raise StorageError(f"cannot read {uri}: no object at that key and no objects under the prefix {prefix!r} "
                           f"in bucket {bucket!r}")
    return {"kind": "dir", "objects": objects}


def _translate(uri: str, action: str, error: Exception) -> Exception:
    from botocore.exceptions import BotoCoreError, ClientError

    return _error(uri, action, error) if isinstance(error, BotoCoreError | ClientError) else error


def _download_listing(client, uri: str, listing: dict, dest: Path, *, manifest: bool = False) -> Path:
    bucket, _ = parse_s3(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if listing["kind"] == "file":
        if dest.is_dir():
            raise StorageError(f"cannot download {uri} to {dest}: it is a directory; give a file path")
        _get(client, bucket, listing["objects"][""], dest, uri)
        return dest
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for rel, obj in sorted(listing["objects"].items()):
            target = staging / rel
            if not target.resolve().is_relative_to(staging.resolve()):
                raise StorageError(f"cannot download {uri}: object key {obj['key']!r} escapes the target directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            _get(client, bucket, obj, target, f"s3://{bucket}/{obj['key']}")
        if manifest:  # the cache's record of what it holds (resolve_input)
            (staging / _MANIFEST).write_text(json.dumps({"uri": uri, "objects": listing["objects"]}, sort_keys=True))
        replace_directory(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _get(client, bucket: str, obj: dict, dest: Path, uri: str) -> None:
    """Download one object to ``dest`` through a temporary file; verify size and checksum, then rename."""
    head = _call(uri, "read", client.head_object, Bucket=bucket, Key=obj["key"])

    def fetch(tmp: Path) -> None:
        _call(uri, "download", client.download_file, bucket, obj["key"], str(tmp))
        _verify(tmp, head, uri)

    write_file(dest, fetch)


def _verify(path: Path, head: dict, uri: str) -> None:
    size = path.stat().st_size
    if size != head["ContentLength"]:
        raise StorageError(f"integrity check failed for {uri}: got {size} bytes, the object has {head['ContentLength']}")
    expected = (head.get("Metadata") or {}).get(SHA256_META)
    if expected:
        got = _digest(path, "sha256")
        if got != expected:
            raise StorageError(f"integrity check failed for {uri}: sha256 {got} differs from the stored {expected}")
        return
    etag = head.get("ETag", "").strip('"')
    # A single-part, non-KMS object's ETag is the MD5 of its bytes; multipart ETags look like "<hex>-<n>".
    if len(etag) == 32 and "-" not in etag and not head.get("SSEKMSKeyId"):
        got = _digest(path, "md5")
        if got != etag:
            raise StorageError(f"integrity check failed for {uri}: MD5 {got} differs from the ETag {etag}")


def _put(client, path: Path, bucket: str, key: str) -> None:
    uri = f"s3://{bucket}/{key}"
    sha = _digest(path, "sha256")
    _call(uri, "upload to", client.upload_file, str(path), bucket, key, ExtraArgs={"Metadata": {SHA256_META: sha}})
    head = _call(uri, "check", client.head_object, Bucket=bucket, Key=key)
    if head["ContentLength"] != path.stat().st_size or (head.get("Metadata") or {}).get(SHA256_META) != sha:
        raise StorageError(f"integrity check failed after uploading {path} to {uri}: size or sha256 differ")


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _cache_matches(dest: Path, listing: dict) -> bool:
    """True when ``dest`` holds exactly the listed objects (same ETags, same sizes)."""
    if listing["kind"] == "file":
        marker = _file_marker(dest)
        obj = listing["objects"][""]
        ok = dest.is_file() and marker.is_file() and marker.read_text() == obj["etag"] and dest.stat().st_size == obj["size"]
        return ok
    manifest = dest / _MANIFEST
    try:
        recorded = json.loads(manifest.read_text())["objects"]
    except (OSError, ValueError, KeyError):
        return False
    if recorded != listing["objects"]:
        return False
    return all((dest / rel).is_file() and (dest / rel).stat().st_size == obj["size"] for rel, obj in recorded.items())


def _file_marker(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.etag")
