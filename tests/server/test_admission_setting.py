"""The server's engine settings for live streams (the admission policy, the short windows' lengths, the packed
encoder): validated, admitting at every step by default, and passed to the engines it builds (``voxserve serve
--admit-wait-steps/--admit-ratio/--packed-encoder/--packed-prefill/--overlap-admissions``)."""

from __future__ import annotations

import pytest

pytest.importorskip("pydantic_settings")

from pydantic import ValidationError  # noqa: E402

from voxserve.server.context import ServerContext  # noqa: E402
from voxserve.server.settings import ServerSettings  # noqa: E402


def test_defaults_and_validation():
    s = ServerSettings()
    assert (s.engine_admit_wait_steps, s.engine_admit_ratio, s.engine_packed_encoder) == (0, 2.0, False)
    assert s.engine_packed_prefill is False and s.engine_overlap_admissions is True
    for bad in ({"engine_admit_wait_steps": -1}, {"engine_admit_ratio": 0}):
        with pytest.raises(ValidationError):
            ServerSettings(**bad)


def _engine_config(tmp_path, **settings):
    """The engine configuration a server built with ``settings`` gives its engines."""
    ctx = ServerContext.build(
        ServerSettings(
            preload=False, jobs_db=tmp_path / "jobs.sqlite3", jobs_dir=tmp_path / "jobs", **settings
        )
    )
    try:
        return ctx.registry.engine_config
    finally:
        ctx.pool.shutdown(wait=False)


def test_the_engines_get_the_policy(tmp_path):
    config = _engine_config(
        tmp_path,
        engine_admit_wait_steps=24,
        engine_admit_ratio=3.5,
        engine_packed_encoder=True,
        engine_packed_prefill=True,
        engine_overlap_admissions=True,
    )
    assert (config.admit_wait_steps, config.admit_ratio, config.packed_encoder) == (24, 3.5, True)
    assert config.packed_prefill and config.overlap_admissions


def test_overlapped_admissions_can_be_turned_off(tmp_path, monkeypatch):
    """On by default (stop 27); off through the setting (which reaches the engines), its environment variable,
    or `voxserve serve --no-overlap-admissions`."""
    import argparse

    from voxserve.cli import serve

    assert _engine_config(tmp_path, engine_overlap_admissions=False).overlap_admissions is False
    monkeypatch.setenv("VOXSERVE_ENGINE_OVERLAP_ADMISSIONS", "0")
    assert ServerSettings().engine_overlap_admissions is False
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["serve", "--no-overlap-admissions"]).overlap_admissions is False
    assert parser.parse_args(["serve"]).overlap_admissions is None  # the setting's default applies


def test_where_live_log_mels_are_made_is_a_setting():
    from voxserve.server.realtime import live_options

    assert live_options(ServerSettings()).mels == "engine"
    assert live_options(ServerSettings(realtime_mels="host")).mels == "host"
    with pytest.raises(ValidationError):
        ServerSettings(realtime_mels="gpu")


def test_short_window_lengths_reach_the_engine_warm_up(tmp_path):
    config = _engine_config(tmp_path, realtime_short_windows=True, realtime_window_buckets_s=(2.0, 8.0))
    assert config.short_window_frames == (200, 800)
