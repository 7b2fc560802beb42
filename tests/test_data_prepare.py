"""moe-swarm-prepare, run as a real child process, writes .bin files that the bin corpus reads back."""

import subprocess
import sys

import pytest
import torch

from moe_swarm.cli.prepare import main
from moe_swarm.data import load_corpus, split_train_val


def run_prepare(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "moe_swarm.cli.prepare", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_prepare_files_with_val_split_round_trips(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("first document, ünïcode ✓\n" * 20, encoding="utf-8")
    (docs / "sub" / "b.md").write_text("second document\n" * 30, encoding="utf-8")
    out = tmp_path / "out" / "corpus.bin"
    proc = run_prepare("--corpus", "files", "--paths", str(docs), "--out", str(out), "--val-fraction", "0.2")
    assert proc.returncode == 0, proc.stderr
    expected = load_corpus("files", [str(docs)])
    train, val = split_train_val(expected, 0.2)
    assert f"tokens: {expected.numel()}" in proc.stdout
    assert str(out) in proc.stdout and str(tmp_path / "out" / "corpus.val.bin") in proc.stdout
    assert torch.equal(load_corpus("bin", [str(out)]).long(), train.long())
    assert torch.equal(load_corpus("bin", [str(tmp_path / "out" / "corpus.val.bin")]).long(), val.long())
    # It prints the training command, and that command composes and passes validation as printed.
    (hint,) = [line for line in proc.stdout.splitlines() if line.startswith("train on it: moe-swarm-train ")]
    overrides = hint.split("moe-swarm-train ", 1)[1].split()
    assert f"data.val_bin_path={tmp_path / 'out' / 'corpus.val.bin'}" in overrides
    from conftest import compose_cfg

    from moe_swarm.config import validate_run_config

    cfg = compose_cfg("train", overrides, tmp_path)
    validate_run_config(cfg)
    assert cfg.data.bin_path == str(out)


def test_prepare_pydoc_single_file(tmp_path):
    out = tmp_path / "pydoc.bin"
    proc = run_prepare("--corpus", "pydoc", "--out", str(out), "--max-bytes", "10000")
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == 20_000
    assert not (tmp_path / "pydoc.val.bin").exists()
    assert torch.equal(load_corpus("bin", [str(out)]).long(), load_corpus("pydoc", max_bytes=10_000).long())


def test_prepare_reports_bad_input_and_exits_nonzero(tmp_path, capsys):
    proc = run_prepare(
        "--corpus", "files", "--paths", str(tmp_path / "missing"), "--out", str(tmp_path / "x.bin")
    )
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and not (tmp_path / "x.bin").exists()
    for argv, message in [
        (["--corpus", "pydoc", "--out", str(tmp_path / "x.txt")], "--out must end in .bin"),
        (["--corpus", "wiki", "--out", str(tmp_path / "x.bin")], "invalid choice: 'wiki'"),
        (["--corpus", "pydoc", "--out", str(tmp_path / "x.bin"), "--val-fraction", "1"], "--val-fraction"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.bin").exists()
