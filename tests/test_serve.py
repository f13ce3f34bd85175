"""``michi-lite serve``: the page, the WebSocket protocol, bad clients, and a real browser talking to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from test_duplex import engine
from websockets.sync.client import connect

from michi_lite.serve import DuplexServer, FrameCutter, ProtocolError, read_start, run_server

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def served(tokenizer):
    """A server on a free port, in a thread of its own, with the tiny engine; yields (server, port)."""
    server = DuplexServer(engine(tokenizer, context_frames=8))
    loop = asyncio.new_event_loop()
    started = loop.create_future()
    task = loop.create_task(run_server(server, port=0, started=started))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(started), 30), loop).result()
    yield server, port

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def start_message(server: DuplexServer, **extra) -> str:
    return json.dumps({"type": "start", "sample_rate": server.engine.listener.cfg.audio.sample_rate, **extra})


def receive_frame(socket) -> tuple[np.ndarray, dict]:
    """One frame's answer: the model's samples, then the frame's words and time."""
    audio = socket.recv(timeout=30)
    assert isinstance(audio, bytes)
    return np.frombuffer(audio, dtype="<f4"), json.loads(socket.recv(timeout=30))


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_messages_are_cut_into_whole_frames_and_a_part_frame_waits():
    cutter = FrameCutter(4)
    samples = np.arange(10, dtype=np.float32) / 10
    assert cutter.push(samples[:3].tobytes()) == []
    frames = cutter.push(samples[3:].tobytes())
    assert [f.tolist() for f in frames] == [samples[:4].tolist(), samples[4:8].tolist()]
    assert cutter.pending.tolist() == samples[8:].tolist()


def test_audio_louder_than_full_scale_is_clipped_and_counted():
    cutter = FrameCutter(4)
    (frame,) = cutter.push(np.array([0.5, 3.0, -7.0, 1.0], dtype=np.float32).tobytes())
    assert frame.tolist() == [0.5, 1.0, -1.0, 1.0] and cutter.clipped == 2


@pytest.mark.parametrize("message, words", [
    (b"\x00" * 6, "4 bytes each"),
    (np.array([0.1, np.nan], dtype=np.float32).tobytes(), "NaN"),
    (np.array([np.inf], dtype=np.float32).tobytes(), "infinite"),
])
def test_what_is_not_finite_float32_samples_is_refused(message, words):
    with pytest.raises(ProtocolError, match=words):
        FrameCutter(4).push(message)


@pytest.mark.parametrize("message, words", [
    ('{"type": "start", "sample_rate": 44100}', "44100 Hz: the listener hears 16000 Hz"),
    ('{"type": "start", "sample_rate": 16000, "channels": 2}', "2 channels"),
    (b"\x00\x00\x00\x00", "audio before the start message"),
    ("hello", "not JSON"),
    ('{"type": "play"}', "not a start message"),
    ('{"type": "start", "sample_rate": 16000, "rag": 3}', "must be text"),
])
def test_a_start_the_engine_cannot_serve_is_refused_saying_what_it_expects(message, words):
    with pytest.raises(ProtocolError, match=words):
        read_start(message, 16000)


def test_the_page_is_served_with_the_listeners_rate_and_other_paths_are_not_found(served):
    server, port = served
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read().decode()
    assert f'content="{server.engine.listener.cfg.audio.sample_rate}"' in page and "new WebSocket" in page
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/elsewhere")


def test_a_conversation_answers_every_80_ms_with_80_ms_and_its_words(served):
    server, port = served
    frame = server.engine.samples_in
    audio = (0.1 * np.random.default_rng(0).standard_normal(2 * frame + frame // 2)).astype(np.float32)
    with connect(f"ws://127.0.0.1:{port}/ws") as socket:
        socket.send(start_message(server))
        ready = json.loads(socket.recv(timeout=30))
        assert ready["type"] == "ready" and ready["frame_samples"] == frame
        for part in np.array_split(audio, 3):  # message boundaries need not be frame boundaries
            socket.send(part.tobytes())
        answers = [receive_frame(socket) for _ in range(2)]
        socket.send(json.dumps({"type": "played", "frames": 2, "rms": 0.1}))
        socket.send(json.dumps({"type": "stop"}))
    assert all(len(out) == ready["output_frame_samples"] and out.dtype == np.float32 for out, _ in answers)
    assert [info["index"] for _, info in answers] == [0, 1]
    assert all(info["type"] == "frame" and info["step_ms"] > 0 for _, info in answers)
    wait_for(lambda: server.sessions[-1].ended == "stopped")
    session = server.sessions[-1]
    assert session.frames == 2 and session.played == {"frames": 2, "rms": 0.1}
    assert session.user_rms == pytest.approx(float(np.sqrt(np.mean(audio[:2 * frame] ** 2))), rel=1e-5)


def test_a_second_client_is_told_the_model_is_busy_and_the_first_goes_on(served):
    server, port = served
    with connect(f"ws://127.0.0.1:{port}/ws") as first:
        first.send(start_message(server))
        assert json.loads(first.recv(timeout=30))["type"] == "ready"
        with connect(f"ws://127.0.0.1:{port}/ws") as second:
            assert json.loads(second.recv(timeout=30))["type"] == "busy"
        first.send(np.zeros(server.engine.samples_in, dtype=np.float32).tobytes())
        out, info = receive_frame(first)
        assert info["index"] == 0


@pytest.mark.parametrize("bad", ["rate", "nan", "leaves_mid_frame", "unknown_text"])
def test_a_bad_client_gets_a_clear_error_and_the_server_serves_the_next(served, bad):
    server, port = served
    frame = server.engine.samples_in
    with connect(f"ws://127.0.0.1:{port}/ws") as socket:
        if bad == "rate":
            socket.send(json.dumps({"type": "start", "sample_rate": 8000}))
        else:
            socket.send(start_message(server))
            assert json.loads(socket.recv(timeout=30))["type"] == "ready"
            if bad == "nan":
                socket.send(np.full(frame, np.nan, dtype=np.float32).tobytes())
            elif bad == "unknown_text":
                socket.send("what now?")
            else:  # half a frame, then gone
                socket.send(np.zeros(frame // 2, dtype=np.float32).tobytes())
        if bad != "leaves_mid_frame":
            error = json.loads(socket.recv(timeout=30))
            assert error["type"] == "error" and {"rate": "8000 Hz", "nan": "NaN",
                                                 "unknown_text": "unknown text message"}[bad] in error["message"]
    wait_for(lambda: not server.busy.locked())
    assert server.sessions[-1].frames == 0
    with connect(f"ws://127.0.0.1:{port}/ws") as socket:  # the next client is served
        socket.send(start_message(server))
        assert json.loads(socket.recv(timeout=30))["type"] == "ready"
        socket.send(np.zeros(frame, dtype=np.float32).tobytes())
        assert receive_frame(socket)[1]["index"] == 0


def test_loud_audio_is_clipped_and_counted_in_the_session(served):
    server, port = served
    frame = server.engine.samples_in
    with connect(f"ws://127.0.0.1:{port}/ws") as socket:
        socket.send(start_message(server))
        socket.recv(timeout=30)
        socket.send(np.full(frame, 5.0, dtype=np.float32).tobytes())
        receive_frame(socket)
    wait_for(lambda: not server.busy.locked())
    assert server.sessions[-1].clipped_samples == frame and server.sessions[-1].user_rms == pytest.approx(1.0)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (scripts/setup.sh installs it as root)")
def test_a_headless_browser_talks_through_its_microphone_and_plays_the_answer(served, tmp_path):
    """Chromium's fake microphone plays a file into the page; the page sends it, plays what comes back and
    reports it; the server's session shows both."""
    server, port = served
    rate = server.engine.listener.cfg.audio.sample_rate
    t = np.arange(3 * rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(tmp_path / "microphone.wav", tone, rate, subtype="PCM_16")
    before = len(server.sessions)
    browser = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={tmp_path / 'microphone.wav'}",
         "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
         f"http://127.0.0.1:{port}/?autostart"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(server.sessions) > before and server.sessions[-1].played.get("frames", 0) >= 20, 90)
    finally:
        browser.kill()
        browser.wait(30)
    session = server.sessions[-1]
    assert session.frames >= 20 and session.played["rms"] > 0  # the model's audio came back and was played
    # what the server heard is the file, through the browser's capture (its level within a few dB)
    assert 0.5 < session.user_rms / float(np.sqrt(np.mean(tone ** 2))) < 1.5
    wait_for(lambda: not server.busy.locked())
