"""moe-swarm-prepare's sharded mode: every input kind, determinism, skipping finished shards, SIGTERM
resume, a trained BPE, and bad input named by file and line (nothing half-written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe_swarm.data.prepare import prepare
from moe_swarm.data.shards import MANIFEST, ShardError, load_shards, read_manifest, token_dtype
from moe_swarm.data.sources import SourceError


def write_inputs(root: Path) -> dict[str, Path]:
    """One source of each kind, with known documents."""
    root.mkdir(parents=True, exist_ok=True)
    jsonl = root / "web.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"web doc {i} ✓", "id": i}) + "\n" for i in range(40)))
    texts = root / "notes"
    (texts / "sub").mkdir(parents=True)
    (texts / "a.txt").write_text("note a\nsecond line")
    (texts / "sub" / "b.md").write_text("note b ü")
    parquet = root / "books.parquet"
    pq.write_table(pa.table({"text": [f"book row {i}" for i in range(30)]}), parquet, row_group_size=7)
    arrow = root / "saved"
    arrow.mkdir()
    table = pa.table({"text": [f"arrow row {i}" for i in range(25)], "label": list(range(25))})
    with (
        pa.OSFile(str(arrow / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    (arrow / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    (arrow / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}))
    return {"web": jsonl, "notes": texts, "books": parquet, "saved": arrow}


def documents(out: Path, source: str) -> list[str]:
    manifest = read_manifest(out)
    texts = []
    for shard in load_shards(out, manifest):
        if shard.source == source:
            tokens = shard.tokens()
            texts += [
                bytes(tokens[a:b].astype(np.uint8)).decode()
                for a, b in zip(shard.offsets[:-1], shard.offsets[1:])
            ]
    return texts


def test_every_input_kind_round_trips_with_byte_tokens(tmp_path):
    inputs = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    result = prepare([(k, str(v)) for k, v in inputs.items()], out, unit_bytes=200)
    m = result.manifest
    assert m["dtype"] == "<u2" and m["tokenizer"]["vocab_size"] == 264 and m["tokenizer"]["eos_id"] == 258
    assert documents(out, "web") == [f"web doc {i} ✓" for i in range(40)]
    assert documents(out, "notes") == ["note a\nsecond line", "note b ü"]
    assert documents(out, "books") == [f"book row {i}" for i in range(30)]
    assert documents(out, "saved") == [f"arrow row {i}" for i in range(25)]
    by_name = {s["name"]: s for s in m["sources"]}
    assert by_name["web"]["documents"] == 40 and by_name["books"]["kind"] == "parquet"
    assert by_name["saved"]["kind"] == "arrow" and by_name["notes"]["kind"] == "text"
    assert by_name["web"]["files"][0]["size"] == inputs["web"].stat().st_size
    assert by_name["web"]["files"][0]["mtime_ns"] == inputs["web"].stat().st_mtime_ns
    assert m["documents"] == 40 + 2 + 30 + 25 and m["tokens"] == sum(s["tokens"] for s in m["sources"])
    assert len([s for s in m["shards"] if s["source"] == "web"]) > 1, (
        "the JSONL file was cut into several units"
    )


def test_same_inputs_give_the_same_bytes_and_rerun_skips_finished_shards(tmp_path):
    inputs = [(k, str(v)) for k, v in write_inputs(tmp_path / "in").items()]
    a = prepare(inputs, tmp_path / "a", unit_bytes=150)
    b = prepare(inputs, tmp_path / "b", unit_bytes=150, workers=2)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and a.written == b.written == len(a.manifest["shards"])
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    shard = tmp_path / "a" / "shards" / f"{a.manifest['shards'][0]['name']}.tokens"
    before = shard.stat().st_mtime_ns
    again = prepare(inputs, tmp_path / "a", unit_bytes=150)
    assert again.written == 0 and again.skipped == len(a.manifest["shards"])
    assert shard.stat().st_mtime_ns == before
    # A changed input re-plans: its shards are written again.
    Path(inputs[0][1]).write_text(json.dumps({"text": "changed"}) + "\n")
    changed = prepare(inputs, tmp_path / "a", unit_bytes=150)
    assert changed.written > 0 and documents(tmp_path / "a", "web") == ["changed"]


def test_sigterm_mid_prepare_then_rerun_resumes_to_identical_output(tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(3000)))
    args = ["--input", f"big={big}", "--shard-mb", "0.01"]

    def run(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "moe_swarm.cli.prepare", *args, "--out-dir", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    ref = run(tmp_path / "ref")
    assert ref.wait(timeout=120) == 0, ref.stderr.read()
    out = tmp_path / "out"
    proc = run(out)
    deadline = time.monotonic() + 60
    while len(list((out / "shards").glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143, proc.stderr.read()
    assert not (out / MANIFEST).exists(), "the manifest is written only when every shard is"
    done = len(list((out / "shards").glob("*.json")))
    total = len(json.loads((tmp_path / "ref" / MANIFEST).read_text())["shards"])
    assert 3 <= done < total
    again = run(out)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"{total - done} written, {done} already done" in stdout
    for ref_file in (tmp_path / "ref").rglob("*"):
        if ref_file.is_file():
            assert (out / ref_file.relative_to(tmp_path / "ref")).read_bytes() == ref_file.read_bytes()
    assert not list(out.rglob("*.tmp"))


def test_bpe_trained_here_is_saved_beside_the_data_and_loads(tmp_path):
    from moe_swarm.data.tokenizer import load_tokenizer

    inputs = [(k, str(v)) for k, v in write_inputs(tmp_path / "in").items()]
    result = prepare(inputs, tmp_path / "out", tokenizer="bpe:300")
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    m = result.manifest
    assert (
        m["tokenizer"]["fingerprint"] == tok.fingerprint() and m["tokenizer"]["vocab_size"] == tok.vocab_size
    )
    assert m["tokenizer"]["eos_id"] == tok.eos_id is not None
    shard = next(s for s in load_shards(tmp_path / "out", m) if s.source == "books")
    first = shard.tokens()[shard.offsets[0] : shard.offsets[1]]
    assert tok.decode([int(i) for i in first]) == "book row 0"
    assert m["tokens"] < prepare(inputs, tmp_path / "bytes").manifest["tokens"], "the BPE merges bytes"
    # A second run reuses the trained tokenizer and every shard.
    assert prepare(inputs, tmp_path / "out", tokenizer="bpe:300").written == 0


def test_token_dtype_widens_past_65536_ids():
    assert token_dtype(65_536) == np.dtype("<u2") and token_dtype(65_537) == np.dtype("<u4")


def _bad(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.jsonl", b'{"text": "ok"}\n{"body": "no text"}\n', "x.jsonl:2: no field 'text'"),
        ("x.jsonl", b'{"text": "ok"}\n{"text": "a\xff"}\n', "x.jsonl:2: invalid UTF-8"),
        ("x.jsonl", b'{"text": "ok"}\n{"text": \n', "x.jsonl:2: not valid JSON"),
        ("x.txt", b"fine\nbad \xc3\x28 here\n", "x.txt:2: invalid UTF-8 at byte 4"),
        ("x.jsonl", b"", "is empty (no documents)"),
        ("x.jsonl", b"\n\n", "has no non-empty documents"),
        ("x.parquet", b"PAR1 this is not parquet PAR1", "x.parquet: not a readable Parquet file"),
    ],
)
def test_bad_input_names_the_file_and_line_and_writes_no_manifest(tmp_path, name, content, message):
    path = _bad(tmp_path, name, content)
    with pytest.raises(SourceError, match="x\\.|empty|no non-empty") as err:
        prepare([("x", str(path))], tmp_path / "out", unit_bytes=8)
    assert message in str(err.value)
    assert str(path) in str(err.value) or "source 'x'" in str(err.value)
    assert not (tmp_path / "out" / MANIFEST).exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_parquet_without_the_column_lists_the_columns(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(SourceError, match=r"p\.parquet: no column 'text' \(columns: body\)"):
        prepare([("p", str(path))], tmp_path / "out")


def test_missing_or_mismatched_shards_are_named(tmp_path):
    inputs = [(k, str(v)) for k, v in write_inputs(tmp_path / "in").items()]
    out = tmp_path / "out"
    m = prepare(inputs, out, unit_bytes=200).manifest
    first = m["shards"][0]["name"]
    tokens = out / "shards" / f"{first}.tokens"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(ShardError, match=rf"shards\[0\] \({first}\).*manifest says"):
        load_shards(out, m)
    tokens.unlink()
    with pytest.raises(ShardError, match=rf"{first}\.tokens is missing"):
        load_shards(out, m)
    (out / MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ShardError, match="key 'format'"):
        read_manifest(out)
    os.remove(out / MANIFEST)
    with pytest.raises(ShardError, match="no manifest"):
        read_manifest(out)


def test_cli_prints_the_training_command_and_exits_1_on_bad_input(tmp_path):
    inputs = write_inputs(tmp_path / "in")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe_swarm.cli.prepare",
            "--input",
            f"web={inputs['web']}",
            "--out-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"data=tokens data.path={tmp_path / 'o'}" in proc.stdout and "40 documents" in proc.stdout
    assert "prepare:" in proc.stderr and "tokens/s" in proc.stderr and "ETA" in proc.stderr
    bad = _bad(tmp_path, "b.jsonl", b'{"t": 1}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe_swarm.cli.prepare",
            "--input",
            str(bad),
            "--out-dir",
            str(tmp_path / "o2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "b.jsonl:1: no field 'text'" in proc.stderr


def test_each_source_reads_its_own_field(tmp_path, capsys):
    from moe_swarm.cli.prepare import main

    web = tmp_path / "web.jsonl"
    web.write_text("".join(json.dumps({"content": f"web {i}", "text": "no"}) + "\n" for i in range(5)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"body": f"chat {i}"}) + "\n" for i in range(3)))
    books = tmp_path / "books.parquet"
    pq.write_table(pa.table({"text": [f"book {i}" for i in range(4)]}), books)
    out = tmp_path / "out"
    args = ["--input", f"web={web}", f"chat={chat}", f"books={books}", "--out-dir", str(out)]
    main([*args, "--field", "web=content", "--field", "chat=body"])  # books keeps the default, text
    assert documents(out, "web") == [f"web {i}" for i in range(5)]
    assert documents(out, "chat") == [f"chat {i}" for i in range(3)]
    assert documents(out, "books") == [f"book {i}" for i in range(4)]
    fields = {s["name"]: s["field"] for s in read_manifest(out)["sources"]}
    assert fields == {"web": "content", "chat": "body", "books": "text"}
    with pytest.raises(SystemExit):
        main([*args, "--field", "blog=content"])
    assert "--field names source(s) ['blog'] that no --input has" in capsys.readouterr().err
