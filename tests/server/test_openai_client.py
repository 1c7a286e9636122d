"""The official ``openai`` client, unchanged, against a live loopback server: every response format,
translations, streaming, the model list and errors (each raising the client's own exception class)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.server.conftest import LiveServer, tone, wav_bytes
from voxserve.server.app import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    from voxserve.server.settings import ServerSettings

    tmp = tmp_path_factory.mktemp("live")
    settings = ServerSettings(
        models={"tiny": str(tiny_model_dir), "other": str(tiny_model_dir)},
        default_model="tiny",
        device="cpu",
        engine_slots=4,
        jobs_db=tmp / "jobs.db",
        jobs_dir=tmp / "jobs",
        api_keys=["sk-test"],
        max_upload_bytes=2_000_000,
    )
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def audio():
    return ("call.wav", wav_bytes(tone(2.0)), "audio/wav")


def _create(client, audio, **kw):
    # temperature 0: one decode per window (no fallback ladder), so the tests stay fast on random weights
    return client.audio.transcriptions.create(
        file=audio, model="whisper-1", temperature=0, language="en", **kw
    )


def test_json_and_text_agree(client, audio):
    as_json = _create(client, audio)
    as_text = _create(client, audio, response_format="text")
    assert isinstance(as_json.text, str) and as_json.text
    assert as_text.strip() == as_json.text  # greedy decoding: the same audio gives the same text


def test_verbose_json_with_words(client, audio):
    r = _create(client, audio, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert r.language == "english"
    assert r.duration == pytest.approx(2.0)
    assert r.segments and all(s.end >= s.start for s in r.segments)
    assert r.words and all(w.end >= w.start for w in r.words)
    assert "".join(s.text for s in r.segments).strip() == r.text


@pytest.mark.parametrize("fmt,head", [("srt", "1\n00:00:"), ("vtt", "WEBVTT\n")])
def test_subtitles(client, audio, fmt, head):
    body = _create(client, audio, response_format=fmt)
    assert isinstance(body, str) and body.startswith(head)
    assert "-->" in body


def test_translation(client, audio):
    r = client.audio.translations.create(file=audio, model="whisper-1", temperature=0)
    assert isinstance(r.text, str)


def test_streaming_deltas_add_up_to_the_text(client, audio):
    events = list(_create(client, audio, stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas and len(done) == 1 and events[-1] is done[0]
    assert "".join(d.delta for d in deltas).strip() == done[0].text
    assert done[0].text == _create(client, audio).text


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert ids == {"tiny", "other"}


def test_hotwords_and_priority_are_accepted(client, audio):
    r = _create(client, audio, extra_body={"hotwords": ["voxserve:3"], "priority": "batch"})
    assert isinstance(r.text, str)


def test_errors_raise_the_clients_exceptions(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        _create(client, ("bad.wav", b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\x00" * 64, "audio/wav"))
    assert "file" == e.value.body["param"] and e.value.body["message"]
    with pytest.raises(openai.APIStatusError) as e:
        _create(client, ("notes.txt", b"just some text, not audio at all" * 10, "text/plain"))
    assert e.value.status_code == 415
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.audio.transcriptions.create(file=("a.wav", wav_bytes(tone(1.0)), "audio/wav"), model="nope")
    with pytest.raises(openai.BadRequestError, match="verbose_json"):
        _create(client, ("a.wav", wav_bytes(tone(1.0)), "audio/wav"), timestamp_granularities=["word"])
    with pytest.raises(openai.APIStatusError) as e:
        _create(client, ("big.wav", wav_bytes(tone(70.0)), "audio/wav"))
    assert e.value.status_code == 413
    wrong_key = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.models.list()


def test_error_body_is_openais_shape(server):
    import httpx

    r = httpx.post(server.url + "/v1/audio/transcriptions", headers={"Authorization": "Bearer sk-test"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert "file" in err["message"] and "model" in err["message"]
    assert json.loads(httpx.get(server.url + "/health").text)["status"] == "ok"
