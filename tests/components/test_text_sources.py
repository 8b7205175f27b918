"""Text and language-model dataset specs whose texts or tokenizer are on S3 (a moto server on 127.0.0.1):
fetched once by content, read exactly as a local copy would be; a missing prefix is named."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from components.services.sources import resolve_dataset
from components.services.storage import upload
from idap.data import load_dataset
from tests.idap.test_lm_task import write_book
from tests.idap.text_fixtures import word_tokenizer, write_corpus
from tests.integration.services import create_bucket, use_s3

BUCKET = "text-data"


@pytest.fixture
def s3(moto_server, monkeypatch, tmp_path):
    create_bucket(moto_server.url, BUCKET)
    use_s3(monkeypatch, moto_server)
    monkeypatch.setenv("IDAP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tok").mkdir()
    word_tokenizer().save(str(tmp_path / "tok" / "tokenizer.json"))
    return tmp_path


def _mtimes(directory: Path) -> dict[str, int]:
    return {p.relative_to(directory).as_posix(): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def test_a_text_spec_on_s3_reads_as_its_local_copy_and_is_fetched_once(s3):
    tmp = s3
    corpus = write_corpus(tmp / "corpus")
    local = tmp / "local.yaml"
    local.write_text(yaml.safe_dump({"kind": "text", "path": "corpus", "tokenizer": "tok", "max_length": 16,
                                     "name": "news"}))
    assert resolve_dataset(str(local), tmp / "work") == str(local)  # local paths only: read as it is
    expected = load_dataset(str(local), calibration_size=8, validation_size=8)
    upload(corpus, f"s3://{BUCKET}/v1/corpus")
    upload(tmp / "tok", f"s3://{BUCKET}/v1/tok")
    remote = tmp / "remote.yaml"  # a local spec naming S3 prefixes ...
    remote.write_text(yaml.safe_dump({"kind": "text", "path": f"s3://{BUCKET}/v1/corpus",
                                      "tokenizer": f"s3://{BUCKET}/v1/tok", "max_length": 16, "name": "news"}))
    upload(local, f"s3://{BUCKET}/v1/spec.yaml")  # ... and a spec on S3 whose paths are relative to it
    for spec in (str(remote), f"s3://{BUCKET}/v1/spec.yaml"):
        resolved = resolve_dataset(spec, tmp / "work")
        written = json.loads(Path(resolved).read_text())
        assert Path(written["path"]).is_relative_to(tmp / "cache" / "s3") and written["name"] == "news"
        data = load_dataset(resolved, calibration_size=8, validation_size=8)
        assert data.content_hash == expected.content_hash and torch.equal(data.val_x, expected.val_x)
    before = _mtimes(tmp / "cache")
    resolve_dataset(str(remote), tmp / "work")
    assert _mtimes(tmp / "cache") == before  # unchanged content is never downloaded again
    remote.write_text(yaml.safe_dump({"kind": "text", "path": f"s3://{BUCKET}/v1/no-such-corpus",
                                      "tokenizer": f"s3://{BUCKET}/v1/tok"}))
    with pytest.raises(ValueError, match="no-such-corpus"):
        resolve_dataset(str(remote), tmp / "work")


def test_a_language_model_spec_with_its_book_on_s3(s3):
    tmp = s3
    upload(write_book(tmp / "book.txt"), f"s3://{BUCKET}/v1/book.txt")
    spec = tmp / "lm.yaml"
    spec.write_text(yaml.safe_dump({"kind": "lm", "path": f"s3://{BUCKET}/v1/book.txt",
                                    "tokenizer": str(tmp / "tok" / "tokenizer.json"), "block_size": 8}))
    path = resolve_dataset(str(spec), tmp / "work")
    resolved = json.loads(Path(path).read_text())
    assert Path(resolved["path"]).read_text() == (tmp / "book.txt").read_text()
    assert resolved["tokenizer"] == str(tmp / "tok" / "tokenizer.json")  # a local path stays as it was
    spec.write_text(yaml.safe_dump({**resolved, "path": str(tmp / "book.txt")}))
    data, local = (load_dataset(p, calibration_size=4, validation_size=4) for p in (path, str(spec)))
    assert data.input_shape == (8,) and data.content_hash == local.content_hash
    assert torch.equal(data.test_x, local.test_x) and torch.equal(data.val_y, local.val_y)
