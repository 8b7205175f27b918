"""Text datasets: class folders tokenized once into token-id splits; bad input fails with a clear error."""


import pytest
import torch

from idap.data import DataError
from idap.data.text import check_tokenizer, encode, load_text_file, load_text_folder, read_text_folder
from tests.idap.text_fixtures import write_corpus

tokenizers = pytest.importorskip("tokenizers")

WORDS = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(60)]


def word_tokenizer(words=WORDS):
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return tok


def test_folder_becomes_disjoint_stratified_token_splits(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    data = load_text_folder(root, word_tokenizer(), max_length=16, calibration_size=8, validation_size=12, seed=0,
                            vocab_size=len(WORDS), pad_id=0)
    assert data.input_shape == (16,)
    assert data.train_x.dtype == torch.long and data.train_x.shape[1] == 16
    sizes = data.describe()["sizes"]
    assert sizes == {"train": 52, "calibration": 8, "validation": 12, "test": 18}
    assert data.classes == ("class0", "class1", "class2")
    assert sorted(data.test_y.tolist()).count(0) == 6  # 20 % of each class held out for test
    rows = {tuple(r) for split in (data.train_x, data.calib_x, data.val_x) for r in split.tolist()}
    assert not rows & {tuple(r) for r in data.test_x.tolist()}  # no test text leaks into the training pool
    assert int(data.train_x.max()) < len(WORDS) and (data.train_x == 0).any()  # padded with the pad id
    again = load_text_folder(root, word_tokenizer(), max_length=16, calibration_size=8, validation_size=12, seed=0)
    assert torch.equal(again.val_x, data.val_x) and again.content_hash == data.content_hash
    other = load_text_folder(root, word_tokenizer(), max_length=16, calibration_size=8, validation_size=12, seed=1)
    assert not torch.equal(other.val_x, data.val_x)


def test_encode_truncates_and_pads():
    ids = encode(word_tokenizer(), ["w1 w2 w3 w4 w5", "w7"], 3)
    assert ids.tolist() == [[3, 4, 5], [9, 0, 0]]


def test_class_folder_without_files_is_named(tmp_path):
    root = write_corpus(tmp_path / "corpus", classes=2, per_class=3)
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class: class folder without .txt files"):
        read_text_folder(root)


def test_empty_text_is_named(tmp_path):
    root = write_corpus(tmp_path / "corpus", classes=2, per_class=3)
    (root / "class1" / "blank.txt").write_text("  \n")
    with pytest.raises(DataError, match="blank.txt: empty text"):
        read_text_folder(root)


def test_missing_path_one_class_and_remote_uri_are_refused(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_text_folder(tmp_path / "nope")
    write_corpus(tmp_path / "one", classes=1, per_class=3)
    with pytest.raises(DataError, match="at least 2 class subfolders"):
        read_text_folder(tmp_path / "one")
    with pytest.raises(DataError, match="local paths"):
        read_text_folder("s3://bucket/corpus")


def test_tokenizer_of_another_model_is_refused(tmp_path):
    big = word_tokenizer(WORDS + [f"x{i}" for i in range(100)])
    with pytest.raises(DataError, match="tokenizer has 162 tokens but the model embeds only 62"):
        check_tokenizer(big, vocab_size=62)
    with pytest.raises(DataError, match="pads with id 0 but the model masks id 5"):
        check_tokenizer(word_tokenizer(), vocab_size=62, pad_id=5)
    root = write_corpus(tmp_path / "corpus", classes=2, per_class=5)
    with pytest.raises(DataError, match="another model"):
        load_text_folder(root, big, vocab_size=62)


def test_plain_text_file_becomes_contiguous_windows(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text(" ".join(f"w{i % 60}" for i in range(400)))
    parts = load_text_file(f, word_tokenizer(), block_size=20, test_fraction=0.1)
    assert {k: tuple(v.shape) for k, v in parts.items()} == {"train": (16, 20), "validation": (2, 20), "test": (2, 20)}
    assert parts["test"][-1, -1].item() == WORDS.index("w39")  # the text's last token ends the test part
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty text"):
        load_text_file(tmp_path / "empty.txt", word_tokenizer())
