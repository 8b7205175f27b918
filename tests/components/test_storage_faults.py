"""S3 throttling and a full disk: transfers recover within their bounded retries or fail clearly, and
nothing half-written is left where a good copy was.

A small HTTP proxy on 127.0.0.1 stands in front of a real moto server and answers ``503 SlowDown`` (what
S3 sends when a prefix is over its request rate) for the requests a test chooses; everything else is
forwarded unchanged.
"""

import errno
import http.client
import http.server
import threading
import time
from urllib.parse import urlsplit

import pytest

import idap.bundle.store
from components.services.storage import StorageError, resolve_input, upload
from idap.bundle import load_bundle, save_bundle
from idap.models import create_model
from tests.components.test_storage import BUCKET, make_tree, moto, tree  # noqa: F401  (fixture)
from tests.integration.services import MOTO_CREDENTIALS

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class ThrottlingProxy:
    """Forwards to ``upstream``; ``throttle(n)`` decides whether request number n gets a 503 SlowDown."""

    def __init__(self, upstream: str, throttle):
        self.upstream, self.throttle, self.count, self.throttled = urlsplit(upstream), throttle, 0, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size_line = self.rfile.readline()
                        chunks.append(size_line)
                        size = int(size_line.split(b";")[0].strip() or b"0", 16)
                        data = self.rfile.read(size + 2)
                        chunks.append(data)
                        if size == 0:
                            break
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self):
                body = self._body()
                with threading.Lock():
                    proxy.count += 1
                    n = proxy.count
                if proxy.throttle(n):
                    proxy.throttled += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                head = self.command == "HEAD"  # no body, but the object's length in the header
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection") and (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def env(moto, monkeypatch):  # noqa: F811
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in MOTO_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.moto_url = moto.url
    return monkeypatch


def test_occasional_slow_down_is_retried_and_the_transfer_is_whole(env, tmp_path):
    src = make_tree(tmp_path / "src")
    with ThrottlingProxy(env.moto_url, throttle=lambda n: n % 2 == 1) as proxy:  # every first attempt
        env.setenv("AWS_ENDPOINT_URL", proxy.url)
        upload(src, f"s3://{BUCKET}/throttled/tree")
        got = resolve_input(f"s3://{BUCKET}/throttled/tree", tmp_path / "work")
    assert proxy.throttled >= 5  # puts, heads, lists and gets were all refused once
    assert tree(got) == tree(src)


def test_persistent_slow_down_fails_clearly_and_keeps_the_cached_copy(env, tmp_path):
    src = make_tree(tmp_path / "src")
    env.setenv("AWS_ENDPOINT_URL", env.moto_url)
    upload(src, f"s3://{BUCKET}/kept/tree")
    cached = resolve_input(f"s3://{BUCKET}/kept/tree", tmp_path / "work")
    before = tree(cached)
    (src / "a.bin").write_bytes(b"changed")
    upload(src, f"s3://{BUCKET}/kept/tree")  # the bucket moved on: the cache is stale and must be refreshed
    with ThrottlingProxy(env.moto_url, throttle=lambda n: n > 1) as proxy:  # the listing passes, then nothing
        env.setenv("AWS_ENDPOINT_URL", proxy.url)
        env.setenv("AWS_MAX_ATTEMPTS", "2")
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"kept/tree.*(SlowDown|throttl)"):
            resolve_input(f"s3://{BUCKET}/kept/tree", tmp_path / "work")
    assert time.monotonic() - started < 30
    assert tree(cached) == before  # the previous copy, whole; no staging directory left beside it
    assert [p.name for p in cached.parent.iterdir() if p.name.startswith(".")] == []


def test_a_full_disk_while_saving_keeps_the_previous_bundle(tmp_path, monkeypatch):
    model = create_model("cnn_small", 10, 1, 8)
    path = save_bundle(model, tmp_path / "bundle", input_shape=(1, 8, 8), recipe={"v": 1})
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    real = idap.bundle.store.save_file

    def full_disk(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(idap.bundle.store, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_bundle(create_model("cnn_small", 10, 1, 8), path, input_shape=(1, 8, 8), recipe={"v": 2})
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging directory left
    assert load_bundle(path) is not None
