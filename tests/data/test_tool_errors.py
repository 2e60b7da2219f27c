"""Bad inputs and options: one line on stderr, exit 2, no traceback, existing output untouched;
``--verify`` of an existing output without INPUT; the old ``--input/--output`` spellings.

Most cases call the CLI's ``main()`` in this process (each subprocess costs seconds of imports
on 2 cores); two go through a real subprocess to show what a user sees.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

from tests.data.helpers import load_cli, run_tool, tree_snapshot, write_fineweb_parquet

cli = load_cli()


@pytest.fixture
def good(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real jsonl input and a finished output made from it."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(shared_data / "web" / "cc_en_head-0174.jsonl", src / "cc.jsonl")
    out = tmp_path / "out"
    assert cli.main([str(src), "--out", str(out), "--no-progress"]) == 0
    return src, out


def refused(
    argv: list[str], capsys: pytest.CaptureFixture[str], out: Path, match: str, scope: Path | None = None
) -> None:
    """Run the CLI, expect one error line containing ``match`` and ``scope`` (default: the
    output's parent, so no staging either) unchanged."""
    scope = scope or out.parent
    before = tree_snapshot(scope)
    capsys.readouterr()
    with pytest.raises(SystemExit) if any(a.startswith("--bogus") for a in argv) else _nullcontext():
        code = cli.main([*argv, "--no-progress"])
        assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("shard_dataset: error: ") and match in lines[0], lines[0]
    assert "Traceback" not in err
    assert tree_snapshot(scope) == before  # nothing written, nothing removed


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.timeout(600)
def test_each_bad_input_is_one_line_and_leaves_output_untouched(
    good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = good
    bad = tmp_path / "bad"
    bad.mkdir()
    args = ["--out", str(out)]

    refused([str(bad / "missing.jsonl"), *args], capsys, out, "no such file or directory")
    refused([str(bad / "*.parquet"), *args], capsys, out, "the glob matches no supported file")
    (bad / "notes.csv").write_text("a,b\n")
    refused([str(bad / "notes.csv"), *args], capsys, out, "unsupported file type")

    write_fineweb_parquet(bad / "ok.parquet", ["real text is elsewhere; this file only lacks a column"])
    import pyarrow.parquet as pq

    table = pq.read_table(bad / "ok.parquet").drop_columns(["text"])
    pq.write_table(table, bad / "no_text.parquet")
    refused([str(bad / "no_text.parquet"), *args], capsys, out, "parquet has no 'text' column")

    (bad / "no_text.jsonl").write_text('{"content": "a record without the text field"}\n')
    refused([str(bad / "no_text.jsonl"), *args], capsys, out, "record has no string 'text' field")

    (bad / "broken.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n')[:-12])  # truncated gzip
    refused([str(bad / "broken.jsonl.gz"), *args], capsys, out, "broken.jsonl.gz")

    import zstandard

    whole = zstandard.ZstdCompressor().compress((src / "cc.jsonl").read_bytes())
    (bad / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])  # zstandard alone would read 0 bytes
    refused([str(bad / "cut.jsonl.zst"), *args], capsys, out, "truncated zstd frame")

    if os.geteuid() != 0:  # root reads anything, so permissions cannot make a file unreadable
        locked = bad / "locked.jsonl"
        shutil.copy(src / "cc.jsonl", locked)
        locked.chmod(0)
        refused([str(locked), *args], capsys, out, "not readable")

    # A different setting on an existing output, without --overwrite.
    refused([str(src), *args, "--sample-bytes", "4097"], capsys, out, "written with other settings")
    # An existing directory that is not a shard output.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused([str(src), "--out", str(foreign)], capsys, foreign, "not a shard_dataset output")


@pytest.mark.timeout(600)
def test_invalid_options(good: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src, out = good
    base = [str(src), "--out", str(out)]
    refused([*base, "--sample-bytes", "1"], capsys, out, "--sample-bytes 1: must be >= 2")
    refused([*base, "--val-fraction", "1.5"], capsys, out, "--val-fraction 1.5: must be in [0, 1)")
    refused([*base, "--workers", "0"], capsys, out, "--workers 0: must be >= 1")
    refused([*base, "--min-chars", "-3"], capsys, out, "--min-chars -3: must be >= 0")
    refused([*base, "--bogus-flag"], capsys, out, "unrecognized arguments: --bogus-flag")


@pytest.mark.timeout(600)
def test_bad_record_mid_file_keeps_old_output(
    good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found only while sharding (line 7): the run fails, the old output is still whole."""
    src, out = good
    lines = (src / "cc.jsonl").read_text().splitlines()
    lines[6] = '{"text": "cut off'
    (src / "cc.jsonl").write_text("\n".join(lines) + "\n")
    refused([str(src), "--out", str(out), "--overwrite"], capsys, out, "line 7: not valid JSON", out)
    # The failed attempt stays in staging (a rerun resumes or discards it), never in the output.
    assert (tmp_path / ".out.partial").is_dir()


@pytest.mark.timeout(600)
def test_real_subprocess_errors_and_overwrite(
    good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = good
    before = tree_snapshot(out)
    res = run_tool(tmp_path / "nope.parquet", "--out", out)  # what a user sees
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"shard_dataset: error: input '{tmp_path / 'nope.parquet'}': no such file or directory"
    ]
    refused([str(src), "--out", str(out), "--min-chars", "100"], capsys, out, "min_chars 0 -> 100")
    # Same command as the one that made it: up to date, untouched.
    assert cli.main([str(src), "--out", str(out), "--no-progress"]) == 0
    assert "up to date" in capsys.readouterr().err and tree_snapshot(out) == before
    # --overwrite replaces it with the new settings (a real subprocess again).
    res = run_tool(src, "--out", out, "--min-chars", "100", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert '"min_chars": 100' in (out / "manifest.json").read_text()
    # No staging, old copy or lock file left behind.
    assert [p.name for p in out.parent.glob(".out.*")] == []


@pytest.mark.timeout(600)
def test_output_inside_an_input_directory_is_not_read_back(
    good: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = good
    argv = [str(src), "--out", str(src / "shards"), "--no-progress"]
    assert cli.main(argv) == 0
    before = tree_snapshot(src / "shards")
    assert cli.main(argv) == 0  # its index.json / manifest.json are not taken for jsonl inputs
    assert "up to date" in capsys.readouterr().err
    assert tree_snapshot(src / "shards") == before


@pytest.mark.timeout(120)
def test_verify_an_existing_output_without_input(
    good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out DIR --verify`` re-hashes what is there: 0 when it matches, 1 (a failed check) naming the
    bad shard, 2 when DIR is no shard output; and nothing is written either way."""
    _, out = good
    before = tree_snapshot(tmp_path)
    assert cli.main(["--out", str(out), "--verify"]) == 0
    assert "all shard hashes match" in capsys.readouterr().err
    assert tree_snapshot(tmp_path) == before
    shard = next((out / "train").rglob("shard.*.mds*"))
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    assert cli.main(["--out", str(out), "--verify"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shard_dataset: error: verify: ") and str(shard) in err[0], err
    assert cli.main(["--out", str(tmp_path / "nothing"), "--verify"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # no INPUT and no --verify: a usage error
        cli.main(["--out", str(out)])
    assert exc.value.code == 2 and "give INPUT" in capsys.readouterr().err
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


@pytest.mark.timeout(120)
def test_old_flag_spellings_still_work(good: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src, out = good
    assert cli.main(["--input", str(src), "--output", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--input is deprecated" in err and "--output is deprecated, use --out" in err and "up to date" in err


def test_output_lock_excludes_a_second_run_and_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run per output: a second one is refused while the first holds the lock; the lock file is
    gone when the run ends, and a stale one (a killed run's) is taken over and removed."""
    from data_pipeline import sharding
    from data_pipeline.errors import DataPipelineError

    monkeypatch.setattr(sharding, "_LOCK_WAIT_S", 0.3)
    out = tmp_path / "out"
    lock = sharding.lock_path(out)
    with sharding._exclusive(out):
        assert lock.exists()
        with (
            pytest.raises(DataPipelineError, match="another shard_dataset run is writing it"),
            sharding._exclusive(out),
        ):
            pass
    assert not lock.exists()
    lock.write_text("")  # left by a SIGKILLed run: no process holds its flock
    with sharding._exclusive(out):
        pass
    assert not lock.exists() and not list(tmp_path.glob(".out*"))
