"""The stream profile's host-only mode still runs against the live code it instruments (a development script, so
nothing else would notice when the bench or the service change under it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ASSETS, AUDIO, ROOT


@pytest.mark.slow
def test_profile_streams_host_only_runs() -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "profile_streams.py"),
        "--dims", "tiny", "--device", "cpu", "--precision", "fp32", "--host-only", "20",
        "--seconds", "4", "--streams", "4",
        "--audio", str(AUDIO / "hifitts-6097"), "--tiktoken", str(ASSETS / "multilingual.tiktoken"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "{'streams': 4, 'p50_ms'" in done.stdout
