"""Corpora: built-in corpora are what they claim, user paths resolve deterministically, errors are clear."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from moe_swarm.data import load_corpus, read_bin, split_train_val, write_bin
from moe_swarm.data.corpora import _stdlib_files


def test_pydoc_is_the_bundled_topics_in_sorted_key_order():
    from pydoc_data.topics import topics

    expected = b"\n\n".join(topics[k].encode("utf-8") for k in sorted(topics))
    tokens = load_corpus("pydoc")
    assert tokens.dtype == torch.uint8 and tokens.dim() == 1
    assert bytes(tokens.tolist()) == expected
    assert torch.equal(tokens, load_corpus("pydoc"))
    assert bytes(load_corpus("pydoc", max_bytes=1000).tolist()) == expected[:1000]


def test_stdlib_files_exclude_tests_and_site_packages_and_are_sorted():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_files()
    assert len(files) > 100
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel)
    assert "os.py" in rel and "json/decoder.py" in rel
    for r in rel:
        parts = r.split("/")
        assert r.endswith(".py")
        assert not {"site-packages", "dist-packages", "test", "tests", "idle_test"} & set(parts[:-1]), r
        assert not parts[-1].startswith("test_"), r


def test_stdlib_corpus_starts_with_first_file_and_respects_max_bytes():
    first = _stdlib_files()[0].read_bytes()
    tokens = load_corpus("stdlib", max_bytes=50_000)
    assert tokens.numel() == 50_000
    head = bytes(tokens[: min(len(first), 50_000)].tolist())
    assert head == first[:50_000]
    assert torch.equal(tokens, load_corpus("stdlib", max_bytes=50_000))


@pytest.fixture
def text_tree(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("ay ä\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("sea\n", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden\n", encoding="utf-8")
    (tmp_path / "blob.dat").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return tmp_path


def as_text(tokens):
    return bytes(tokens.tolist()).decode("utf-8")


def test_files_single_file_and_order_given(text_tree):
    assert as_text(load_corpus("files", [str(text_tree / "b.txt")])) == "bee\n"
    both = load_corpus("files", [str(text_tree / "b.txt"), str(text_tree / "a.md")])
    assert as_text(both) == "bee\n\n\nay ä\n"


def test_files_folder_is_recursive_sorted_and_skips_binary_and_hidden(text_tree):
    text = as_text(load_corpus("files", [str(text_tree)]))
    assert text == "ay ä\n\n\nbee\n\n\nsea\n"
    assert torch.equal(load_corpus("files", [str(text_tree)]), load_corpus("files", [str(text_tree)]))


def test_files_glob_and_duplicates_read_once(text_tree):
    text = as_text(load_corpus("files", [str(text_tree / "**" / "*.txt"), str(text_tree / "b.txt")]))
    assert text == "bee\n\n\nsea\n"  # latin1.txt is not UTF-8, b.txt appears once


def test_files_errors_say_what_is_wrong(text_tree):
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus("files", [str(text_tree / "nope.txt")])
    with pytest.raises(ValueError, match="matched nothing"):
        load_corpus("files", [str(text_tree / "*.nothing")])
    with pytest.raises(ValueError, match="not UTF-8 text.*corpus='bin'"):
        load_corpus("files", [str(text_tree / "blob.dat")])
    with pytest.raises(ValueError, match="needs paths"):
        load_corpus("files")
    (text_tree / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_corpus("files", [str(text_tree / "empty.txt")])
    empty_dir = text_tree / "void"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no UTF-8 text files"):
        load_corpus("files", [str(empty_dir)])


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="unknown corpus 'wiki'.*pydoc, stdlib, files, bin"):
        load_corpus("wiki")
    with pytest.raises(ValueError, match="takes no paths"):
        load_corpus("pydoc", ["x.txt"])
    with pytest.raises(ValueError, match="max_bytes"):
        load_corpus("pydoc", max_bytes=0)


def test_bin_round_trip_is_a_lazy_uint16_map(tmp_path):
    ids = torch.tensor([0, 1, 255, 256, 257, 258, 65535], dtype=torch.long)
    path = tmp_path / "t.bin"
    assert write_bin(ids, path) == 7
    assert path.stat().st_size == 14
    assert np.array_equal(np.fromfile(path, dtype="<u2"), ids.numpy())  # raw little-endian, no header
    back = read_bin(path)
    assert back.dtype == torch.uint16
    assert torch.equal(back.long(), ids)
    via_corpus = load_corpus("bin", [str(path)], max_bytes=3)
    assert via_corpus.long().tolist() == [0, 1, 255]


def test_bin_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*moe-swarm-prepare"):
        read_bin(tmp_path / "missing.bin")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not a whole number of uint16"):
        read_bin(odd)
    with pytest.raises(ValueError, match="fit in uint16"):
        write_bin([1, 70000], tmp_path / "big.bin")
    with pytest.raises(ValueError, match="fit in uint16"):
        write_bin([-1], tmp_path / "neg.bin")
    with pytest.raises(ValueError, match="empty"):
        write_bin([], tmp_path / "empty.bin")
    with pytest.raises(ValueError, match="exactly one file"):
        load_corpus("bin", [str(odd), str(odd)])


def test_split_train_val_is_contiguous_and_disjoint():
    tokens = torch.arange(1000)
    train, val = split_train_val(tokens, 0.1)
    assert train.numel() == 900 and val.numel() == 100
    assert torch.equal(torch.cat([train, val]), tokens)  # val is the tail
    assert not set(train.tolist()) & set(val.tolist())
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            split_train_val(tokens, bad)
    with pytest.raises(ValueError, match="empty train or val"):
        split_train_val(torch.arange(3), 0.01)
