"""components.services.storage against a real S3 endpoint (moto server on 127.0.0.1) and dead / wrong endpoints."""

import hashlib
import time

import boto3
import pytest

from components.services.storage import StorageError, download, is_s3, parse_s3, resolve_input, upload
from tests.integration.services import closed_port, create_bucket, use_s3

BUCKET = "idap-test"
SECRET = "s3cr3t-never-printed"  # moto accepts any key; a distinctive one shows it never reaches a message
FAST = 15  # seconds: every failure must be this quick (bounded retries, short connect timeout)


@pytest.fixture(scope="module")
def moto(moto_server):
    create_bucket(moto_server.url, BUCKET)
    return moto_server


@pytest.fixture
def s3_env(moto, monkeypatch):
    use_s3(monkeypatch, moto, AWS_SECRET_ACCESS_KEY=SECRET)
    return moto


@pytest.fixture
def s3(s3_env):
    return boto3.client("s3", endpoint_url=s3_env.url)


def make_tree(root):
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.bin").write_bytes(bytes(range(256)) * 10)
    (root / "sub" / "b.txt").write_text("hello")
    (root / "sub" / "deeper" / "c.json").write_text('{"x": 1}')
    return root


def tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_uris():
    assert is_s3("s3://b/k") and not is_s3("/tmp/x") and not is_s3("s3:/b")
    assert parse_s3("s3://bucket/some/key.bin") == ("bucket", "some/key.bin")
    assert parse_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(StorageError, match="no bucket"):
        parse_s3("s3:///key")
    with pytest.raises(StorageError, match="not an s3:// URI"):
        parse_s3("gs://bucket/key")


def test_file_round_trip_stores_and_checks_sha256(s3, tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\x00\x01" * 5000)
    uri = upload(src, f"s3://{BUCKET}/files/weights.bin")
    assert uri == f"s3://{BUCKET}/files/weights.bin"
    head = s3.head_object(Bucket=BUCKET, Key="files/weights.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    out = download(uri, tmp_path / "out" / "w.bin")
    assert out.read_bytes() == src.read_bytes()
    assert upload(src, f"s3://{BUCKET}/dir/") == f"s3://{BUCKET}/dir/weights.bin"  # trailing slash: keep the name


def test_directory_round_trip_and_cache(s3, tmp_path):
    src = make_tree(tmp_path / "bundle")
    assert upload(src, f"s3://{BUCKET}/models/m1") == f"s3://{BUCKET}/models/m1"
    got = download(f"s3://{BUCKET}/models/m1", tmp_path / "copy")
    assert tree(got) == tree(src)

    workdir = tmp_path / "work"
    cached = resolve_input(f"s3://{BUCKET}/models/m1", workdir)
    assert cached.is_relative_to(workdir) and tree(cached) == tree(src)
    stamp = (cached / "a.bin").stat().st_mtime_ns
    assert resolve_input(f"s3://{BUCKET}/models/m1", workdir) == cached
    assert (cached / "a.bin").stat().st_mtime_ns == stamp  # unchanged remote: the cache is reused
    (src / "sub" / "b.txt").write_text("changed")
    upload(src / "sub" / "b.txt", f"s3://{BUCKET}/models/m1/sub/b.txt")
    assert (resolve_input(f"s3://{BUCKET}/models/m1", workdir) / "sub" / "b.txt").read_text() == "changed"


def test_single_object_through_resolve_input(s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="data/plain.npz", Body=b"no sha256 metadata: the ETag MD5 is checked")
    path = resolve_input(f"s3://{BUCKET}/data/plain.npz", tmp_path)
    assert path.read_bytes().startswith(b"no sha256")


def test_corrupt_object_is_refused_and_the_old_copy_kept(s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="bad/blob", Body=b"payload", Metadata={"sha256": "0" * 64})
    dest = tmp_path / "blob"
    dest.write_bytes(b"previous good copy")
    with pytest.raises(StorageError, match=r"integrity check failed for s3://idap-test/bad/blob: sha256"):
        download(f"s3://{BUCKET}/bad/blob", dest)
    assert dest.read_bytes() == b"previous good copy"  # atomic: never half-replaced
    assert [p.name for p in tmp_path.iterdir()] == ["blob"]  # no temporary left behind


def test_missing_bucket(s3_env, tmp_path):
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x.*bucket 'no-such-bucket' does not exist"):
        download("s3://no-such-bucket/x", tmp_path / "x")
    assert time.monotonic() - started < FAST


def test_missing_key(s3_env, tmp_path):
    with pytest.raises(StorageError, match=r"cannot read s3://idap-test/nothing/here: no object"):
        resolve_input(f"s3://{BUCKET}/nothing/here", tmp_path)


def test_missing_credentials(s3_env, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://idap-test/k.*no S3 credentials found"):
        download(f"s3://{BUCKET}/k", tmp_path / "k")
    assert time.monotonic() - started < FAST


def test_unreachable_endpoint_fails_fast_without_leaking_secrets(s3_env, monkeypatch, tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        upload(make_tree(tmp_path / "t"), f"s3://{BUCKET}/t")
    elapsed = time.monotonic() - started
    assert f"cannot reach the S3 endpoint {endpoint} after 3 attempt(s)" in str(info.value)
    assert SECRET not in str(info.value)
    assert elapsed < FAST


def test_local_inputs(tmp_path):
    assert resolve_input(str(tmp_path), tmp_path / "w") == tmp_path
    with pytest.raises(StorageError, match=r"input .*missing.npz does not exist"):
        resolve_input(str(tmp_path / "missing.npz"), tmp_path)
    with pytest.raises(StorageError, match="does not exist"):
        upload(tmp_path / "missing", f"s3://{BUCKET}/x")
