"""Talk to the model in a browser: a web page and a WebSocket carrying 80 ms frames both ways.

``michi-lite serve`` serves ``web/index.html`` at ``/`` and a WebSocket at
``/ws``. The page captures the microphone, sends it as it comes and plays what
comes back; the server turns every 80 ms of it into 80 ms of the model with a
``DuplexEngine`` step. The protocol, all of it:

- the client opens with a text message ``{"type": "start", "sample_rate": R}``
  (R must be the listener's rate; the page records at it), optionally with
  ``"rag"``: facts the model reads first;
- the server answers ``{"type": "ready", ...}`` with the rates and frame sizes;
- then the client sends binary messages of mono float32 samples
  (little-endian, any length up to 1 MiB: the server cuts them into frames;
  a longer message closes the connection with code 1009) and the
  server sends, for every frame, 80 ms of the model's audio (binary, float32
  at ``output_sample_rate``) and a text message ``{"type": "frame", "index",
  "user", "model", "step_ms"}``: the words each side added on that frame and
  what the step took;
- the client may send ``{"type": "played", "frames": N, "rms": X}`` (how much
  of the model's audio it has played, and how loud), which the server keeps
  in the session's record, and ``{"type": "stop"}``.

What the server does with bad input (each session's fault stays its own;
the server goes on serving):

- a start message with another rate, more than one channel or no start at
  all: an ``{"type": "error"}`` message saying what was expected, and the
  connection closed;
- binary messages whose length is not a whole number of float32 samples, or
  samples that are NaN or infinite: the same;
- samples beyond [-1, 1] (audio far louder than speech): clipped to it, and
  counted in the session's record (``clipped_samples``);
- a client that leaves mid-frame: the part-frame is dropped and the engine
  is free for the next;
- silence, for as long as it lasts: the engine's state has a fixed size
  (``duplex``); its log grows by one small record a frame;
- a second client while one is talking: ``{"type": "busy"}`` and closed (two
  CPU cores run one conversation in real time, not two).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .duplex import DuplexEngine

logger = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "web" / "index.html"
MAX_MESSAGE_BYTES = 1 << 20  # a client's message: about 16 s of float32 samples at 16 kHz


class ProtocolError(ValueError):
    """A client broke the protocol: what it did, in words the client is sent."""


@dataclass
class Session:
    """One conversation as the server saw it."""

    started: float = field(default_factory=time.time)
    frames: int = 0  # engine steps taken
    user_rms: float = 0.0  # of the audio the engine heard
    clipped_samples: int = 0  # samples beyond [-1, 1], clipped
    played: dict = field(default_factory=dict)  # the client's last "played" report
    user_said: str = ""
    model_said: str = ""
    ended: str = ""  # why it ended: "closed", "stopped" or the error sent


class FrameCutter:
    """Binary messages of float32 samples -> whole frames of ``frame_samples``; a part-frame waits for more.

    Refuses what is not float32 samples or not finite (``ProtocolError``),
    clips what is beyond [-1, 1] and counts it in ``clipped``.
    """

    def __init__(self, frame_samples: int) -> None:
        self.frame_samples = frame_samples
        self.pending = np.zeros(0, dtype=np.float32)
        self.clipped = 0

    def push(self, message: bytes) -> list[np.ndarray]:
        if len(message) % 4:
            raise ProtocolError(f"a binary message must be float32 samples, 4 bytes each: {len(message)} bytes "
                                "is not a whole number of them")
        samples = np.frombuffer(message, dtype="<f4")
        if not np.isfinite(samples).all():
            raise ProtocolError("the audio holds NaN or infinite samples")
        loud = np.abs(samples) > 1
        if loud.any():
            self.clipped += int(loud.sum())
            samples = np.clip(samples, -1, 1)
        self.pending = np.concatenate([self.pending, samples.astype(np.float32)])
        whole = len(self.pending) // self.frame_samples * self.frame_samples
        frames = list(self.pending[:whole].reshape(-1, self.frame_samples))
        self.pending = self.pending[whole:]
        return frames


def read_start(message: str | bytes, sample_rate: int) -> dict:
    """A client's first message -> its start request; ``ProtocolError`` unless it is one the engine can serve."""
    expected = (f'open with a text message {{"type": "start", "sample_rate": {sample_rate}}}, then send mono '
                "float32 samples at that rate")
    if isinstance(message, bytes):
        raise ProtocolError(f"audio before the start message: {expected}")
    try:
        start = json.loads(message)
    except json.JSONDecodeError:
        raise ProtocolError(f"the first message is not JSON: {expected}") from None
    if not isinstance(start, dict) or start.get("type") != "start":
        raise ProtocolError(f"the first message is not a start message: {expected}")
    if start.get("channels", 1) != 1:
        raise ProtocolError(f"{start['channels']} channels: the model hears one (mix them down); {expected}")
    if start.get("sample_rate") != sample_rate:
        raise ProtocolError(f"audio at {start.get('sample_rate')} Hz: the listener hears {sample_rate} Hz "
                            f"(resample before sending); {expected}")
    if not isinstance(start.get("rag", ""), str):
        raise ProtocolError('"rag" must be text: the facts the model reads first')
    return start


class DuplexServer:
    """Serves the page and runs conversations, one at a time, through ``engine``.

    ``sessions`` keeps each conversation's record (``Session``), newest last;
    ``rag`` is the facts every conversation reads first, unless its start
    message gives its own.
    """

    def __init__(self, engine: DuplexEngine, rag: str | None = None) -> None:
        self.engine, self.rag = engine, rag
        self.busy = asyncio.Lock()
        self.sessions: list[Session] = []
        self.page = PAGE.read_text().replace("{{SAMPLE_RATE}}", str(engine.listener.cfg.audio.sample_rate))

    def process_request(self, connection: ServerConnection, request):
        """HTTP before the WebSocket handshake: the page at ``/``, the WebSocket at ``/ws``, 404 elsewhere."""
        if request.path.split("?")[0] in ("/", "/index.html"):
            response = connection.respond(HTTPStatus.OK, self.page)
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            return response
        if request.path != "/ws":
            return connection.respond(HTTPStatus.NOT_FOUND, "not here: the page is at /, the WebSocket at /ws\n")
        return None

    async def handle(self, connection: ServerConnection) -> None:
        if self.busy.locked():
            await send_json(connection, type="busy", message="the model is in another conversation; try again later")
            await connection.close(1013, "busy")
            return
        async with self.busy:
            session = Session()
            self.sessions.append(session)
            try:
                await self.converse(connection, session)
            except ProtocolError as error:
                session.ended = str(error)
                logger.info("session %d refused: %s", len(self.sessions), error)
                await send_json(connection, type="error", message=str(error))
                await connection.close(1008, "protocol error")
            except ConnectionClosed:
                session.ended = session.ended or "closed"
            finally:
                session.user_said, session.model_said = self.engine.said("user"), self.engine.said("model")

    async def converse(self, connection: ServerConnection, session: Session) -> None:
        engine = self.engine
        audio_in, audio_out = engine.listener.cfg.audio, engine.model.cfg.audio
        start = read_start(await connection.recv(), audio_in.sample_rate)
        await asyncio.to_thread(engine.reset, start.get("rag") or self.rag)
        await send_json(connection, type="ready", sample_rate=audio_in.sample_rate,
                        output_sample_rate=audio_out.sample_rate, frame_samples=engine.samples_in,
                        output_frame_samples=audio_out.samples_per_frame)
        cutter = FrameCutter(engine.samples_in)
        energy = 0.0
        async for message in connection:
            if isinstance(message, str):
                request = read_request(message)
                if request.get("type") == "played":
                    session.played = {k: request.get(k) for k in ("frames", "rms")}
                elif request.get("type") == "stop":
                    session.ended = "stopped"
                    await connection.close()
                    return
                else:
                    raise ProtocolError(f"unknown text message {message[:80]!r}: after the start, send audio "
                                        '(binary), "played" or "stop"')
                continue
            frames = cutter.push(message)
            session.clipped_samples = cutter.clipped
            for frame in frames:
                out = await asyncio.to_thread(engine.step, frame)
                record = engine.log[-1]
                session.frames += 1
                energy += float(np.square(frame, dtype=np.float64).sum())
                session.user_rms = (energy / (session.frames * len(frame))) ** 0.5
                await connection.send(out.astype("<f4").tobytes())
                await send_json(connection, type="frame", index=record.index, user=engine.token_text(record.user_token),
                                model=engine.token_text(record.model_token),
                                step_ms=round(record.total_seconds * 1000, 1))
        session.ended = "closed"


def read_request(message: str) -> dict:
    """A text message after the start -> the request it is; ``{}`` for one that is not a JSON object."""
    try:
        request = json.loads(message)
    except json.JSONDecodeError:
        return {}
    return request if isinstance(request, dict) else {}


async def send_json(connection: ServerConnection, **message) -> None:
    await connection.send(json.dumps(message))


async def run_server(server: DuplexServer, host: str = "127.0.0.1", port: int = 8765,
                     started: asyncio.Future | None = None) -> None:
    """Serve until cancelled. ``started``, if given, gets the port bound (useful with ``port`` 0)."""
    async with serve(server.handle, host, port, process_request=server.process_request,
                     max_size=MAX_MESSAGE_BYTES) as listening:
        bound = listening.sockets[0].getsockname()[1]
        logger.info("serving the duplex page at http://%s:%d/", host, bound)
        if started is not None:
            started.set_result(bound)
        await asyncio.Future()  # until cancelled
