"""``voxserve transcribe`` end to end: every output format, several files, word timestamps, beam search, the
progress bar, and bad input or options ending in one clear line (never a traceback).

The model is a seeded random TINY checkpoint written to a temporary Hugging Face directory (with its
``.tiktoken`` file beside it), so every run loads it the way a user's checkpoint loads. What the command writes
is compared with what the library returns for the same options, so the files are right, not merely present.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ASSETS, ROOT, TINY
from tests.support import decisive_model
from voxserve.api import load_model
from voxserve.cli import main
from voxserve.formats import format_result
from voxserve.model.load import hf_config, save_hf
from voxserve.results import Transcription
from voxserve.tokenizer import Tokenizer

# Every run decodes at temperature 0 in English: no fallback retries, no language detection, so each file is
# decoded once and the runs take seconds.
FAST = ["--temperature", "0", "--language", "en"]


def write_wav(path: Path, seconds: float, freq: float, seed: int) -> Path:
    t = np.arange(round(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * noise
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((x * 32767).astype(np.int16).tobytes())
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def model_dir(workdir: Path) -> Path:
    tok = Tokenizer.from_tiktoken(ASSETS / "multilingual.tiktoken")
    # Decisive weights end sequences at varied lengths and cut windows into several segments.
    model = decisive_model(TINY, tok, std=0.2, eot_boost=3.0, seed=0)
    out = workdir / "tiny-random"
    save_hf(model, out, config=hf_config(TINY, eot=tok.eot, sot=tok.sot), generation={})
    shutil.copy(ASSETS / "multilingual.tiktoken", out)
    return out


@pytest.fixture(scope="module")
def clips(workdir: Path) -> list[Path]:
    return [
        write_wav(workdir / "first.wav", 2.0, 440.0, seed=0),
        write_wav(workdir / "second.wav", 3.5, 660.0, seed=1),
    ]


@pytest.fixture(scope="module")
def library(model_dir: Path):
    return load_model(model_dir, device="cpu")


def expected(library, path: Path, **options) -> Transcription:
    segments, info = library.transcribe(path, temperature=0.0, language="en", **options)
    return Transcription.from_segments(list(segments), info)


@pytest.fixture(scope="module")
def greedy(library, clips) -> dict[str, Transcription]:
    return {p.stem: expected(library, p) for p in clips}


def transcribe(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = main(["transcribe", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------- formats

CHECKS = {
    "text": lambda s: s.strip() != "",
    "json": lambda s: set(json.loads(s)) >= {"text"},
    "verbose_json": lambda s: {"text", "segments", "language", "duration"} <= set(json.loads(s)),
    "srt": lambda s: s.startswith("1\n") and " --> " in s,
    "vtt": lambda s: s.startswith("WEBVTT") and " --> " in s,
    "tsv": lambda s: s.startswith("start\tend\ttext\n"),
}
EXT = {"text": "txt", "json": "json", "verbose_json": "json", "srt": "srt", "vtt": "vtt", "tsv": "tsv"}


@pytest.mark.parametrize("fmt", list(CHECKS))
def test_each_format_is_written_per_file_as_the_library_renders_it(
    capsys, tmp_path, model_dir, clips, greedy, fmt
):
    code, out, err = transcribe(capsys, *clips, "--model", model_dir, *FAST, "-f", fmt, "-o", tmp_path)
    assert code == 0, err
    assert out == ""  # with --output-dir nothing goes to stdout
    for clip in clips:
        written = tmp_path / f"{clip.stem}.{EXT[fmt]}"
        assert f"wrote {written}" in err
        content = written.read_text(encoding="utf-8")
        assert CHECKS[fmt](content), content[:200]
        want = format_result(greedy[clip.stem], fmt)
        assert content == (want if want.endswith("\n") else want + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c.stem}.{EXT[fmt]}" for c in clips)


def test_without_output_dir_each_file_is_printed_in_order(capsys, model_dir, clips, greedy):
    code, out, err = transcribe(capsys, *clips, "--model", model_dir, *FAST, "-q")
    assert code == 0, err
    assert out == "".join(greedy[c.stem].text.strip() + "\n" for c in clips)
    assert err == ""  # --quiet, a TTY-less stderr and a real checkpoint: nothing to say


def test_format_all_writes_every_kind_of_file(capsys, tmp_path, model_dir, clips, greedy):
    code, _, err = transcribe(capsys, clips[0], "--model", model_dir, *FAST, "-f", "all", "-o", tmp_path)
    assert code == 0, err
    stem = clips[0].stem
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{stem}.{e}" for e in ("txt", "json", "srt", "vtt", "tsv")
    )
    # json and verbose_json share the extension: the .json file is the verbose one.
    assert "segments" in json.loads((tmp_path / f"{stem}.json").read_text())


def test_word_timestamps(capsys, tmp_path, model_dir, clips, library):
    words_args = ["--word-timestamps", "-f", "verbose_json", "-o", tmp_path]
    code, _, err = transcribe(capsys, clips[0], "--model", model_dir, *FAST, *words_args)
    assert code == 0, err
    content = (tmp_path / f"{clips[0].stem}.json").read_text()
    words = json.loads(content).get("words")
    assert words, content
    for w in words:
        assert 0 <= w["start"] <= w["end"]
    assert content == format_result(expected(library, clips[0], word_timestamps=True), "verbose_json") + "\n"


def test_beam_size_is_used(capsys, model_dir, clips, library, greedy):
    beam = {c.stem: expected(library, c, beam_size=2) for c in clips}
    # The test means something only if beam search changes the result on these inputs.
    assert any(beam[k].segments != greedy[k].segments for k in beam)
    code, out, err = transcribe(capsys, *clips, "--model", model_dir, *FAST, "--beam-size", "2", "-f", "tsv")
    assert code == 0, err
    assert out == "".join(format_result(beam[c.stem], "tsv") for c in clips)


# ------------------------------------------------------------------------------------------- progress


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def long_clip(workdir: Path) -> Path:
    return write_wav(workdir / "long.wav", 45.0, 330.0, seed=2)


@pytest.mark.parametrize(
    ("tty", "quiet", "shown"), [(True, False, True), (True, True, False), (False, False, False)]
)
def test_progress_bar_over_seconds_of_long_audio_on_a_terminal_only(
    monkeypatch, capsys, model_dir, long_clip, tty, quiet, shown
):
    stderr = TTY() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    args = ["transcribe", str(long_clip), "--model", str(model_dir), *FAST, "--without-timestamps"]
    assert main(args + (["-q"] if quiet else [])) == 0
    err = stderr.getvalue()
    assert ("transcribing" in err) == shown, err
    if shown:
        assert "45.0/45.0 s of audio" in err  # counted in seconds, and it reaches the end
        assert "100%" in err


def test_no_progress_bar_for_one_window_on_a_terminal(monkeypatch, capsys, model_dir, clips):
    stderr = TTY()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["transcribe", str(clips[0]), "--model", str(model_dir), *FAST]) == 0
    assert "transcribing" not in stderr.getvalue()


# ------------------------------------------------------------------------------------------ bad input


def flac_bytes(seconds: float) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="flac") as c:
        s = c.add_stream("flac", rate=16000, layout="mono")
        t = np.arange(round(16000 * seconds)) / 16000
        frame = av.AudioFrame.from_ndarray(
            (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="flt", layout="mono"
        )
        frame.sample_rate = 16000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return out.getvalue()


BAD = {
    "missing": None,
    "empty": b"",
    "not-audio": b"this is a text file, not a recording\n" * 40,
    "corrupt": "truncated flac",
}


def bad_file(kind: str, directory: Path) -> Path:
    path = directory / f"{kind}.flac"
    data = BAD[kind]
    if data == "truncated flac":
        whole = flac_bytes(4.0)
        data = whole[: len(whole) // 3]
    if data is not None:
        path.write_bytes(data)
    return path


def assert_one_error_line(err: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("voxserve transcribe: error: "), err
    assert str(path) in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_exits_non_zero_with_one_line(capsys, tmp_path, model_dir, kind):
    path = bad_file(kind, tmp_path)
    code, out, err = transcribe(capsys, path, "--model", model_dir, *FAST, "-q")
    assert code == 1
    assert out == ""
    assert_one_error_line(err, path)


def test_good_files_are_still_transcribed_beside_a_bad_one(capsys, tmp_path, model_dir, clips, greedy):
    bad = bad_file("not-audio", tmp_path)
    code, out, err = transcribe(capsys, clips[0], bad, clips[1], "--model", model_dir, *FAST, "-q")
    assert code == 1
    assert out == "".join(greedy[c.stem].text.strip() + "\n" for c in clips)
    assert_one_error_line(err, bad)


def test_missing_model_is_one_line(capsys, tmp_path, clips):
    code, _, err = transcribe(capsys, clips[0], "--model", tmp_path / "no-such-model", "-q")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "model not found" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["--format", "xml"],
        ["--task", "dance"],
        ["--device", "tpu"],
        ["--beam-size", "two"],
        ["--no-such-option"],
    ],
    ids=["format", "task", "device", "beam-not-int", "unknown"],
)
def test_bad_options_exit_2_from_the_parser(capsys, clips, args):
    with pytest.raises(SystemExit) as info:
        main(["transcribe", str(clips[0]), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err.splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--beam-size", "0"], "beam_size must be >= 1"),
        (["--temperature", "9"], "temperatures must be in [0, 5]"),
        (["--beam-size", "3", "--best-of", "2"], "cannot be given together"),
        (["--format", "all"], "--format all needs --output-dir"),
        (["--max-duration", "-1"], "--max-duration must be positive"),
    ],
)
def test_invalid_option_values_exit_2_with_one_line_before_loading_the_model(capsys, clips, args, words):
    # The model does not exist: options are refused before it would be looked for.
    code, _, err = transcribe(capsys, clips[0], "--model", "/nonexistent/model", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err


def test_unknown_language_exits_2_with_one_line(capsys, model_dir, clips):
    code, out, err = transcribe(capsys, clips[0], "--model", model_dir, "--language", "klingon")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "unknown language 'klingon'" in err


def test_installed_command_one_line_on_corrupt_audio(tmp_path, model_dir):
    """The real entry point in a fresh process: exit status and stderr exactly as a user sees them."""
    exe = Path(sys.executable).with_name("voxserve")
    if not exe.is_file():
        pytest.skip("voxserve console script not installed next to this Python")
    path = bad_file("corrupt", tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(exe), "transcribe", str(path), "--model", str(model_dir), *FAST],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, path)


def test_help_lists_every_command_without_importing_torch():
    code = (
        "import sys; from voxserve.cli import build_parser, COMMANDS; h = build_parser().format_help(); "
        "assert all(c in h for c in COMMANDS), h; assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_voxserve_transcribe_is_the_function_after_the_package_is_imported(model_dir, clips):
    """``voxserve.transcribe`` is also the name of the package voxserve/transcribe/; in a fresh interpreter, the
    public function must win whichever is touched first."""
    code = (
        "import sys, voxserve\n"
        "model = voxserve.load_model(sys.argv[1], device='cpu')\n"
        "import voxserve.transcribe.alignment\n"
        "result = voxserve.transcribe(model, sys.argv[2], language='en', temperature=0.0)\n"
        "print(type(result).__name__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), str(clips[0])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Transcription"
