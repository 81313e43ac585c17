"""A real HTTP server on 127.0.0.1 speaking the chat-completions API, scripted per request. With
`hears=True` it is an audio-language model's endpoint: the script also gets the WAV bytes of each
request's `input_audio` part (None when a request carries none)."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

# A behaviour: ("answer", text) | ("hang", seconds) | ("status", code, headers) | ("garbage", body)
Behaviour = tuple


def text_and_audio(content: str | list) -> tuple[str, bytes | None]:
    """A message's text, and the WAV bytes of its `input_audio` part if it has one."""
    if isinstance(content, str):
        return content, None
    text = " ".join(p["text"] for p in content if p["type"] == "text")
    audio = [base64.b64decode(p["input_audio"]["data"]) for p in content if p["type"] == "input_audio"]
    return text, audio[0] if audio else None


class ChatServer:
    def __init__(self, script: Callable[..., Behaviour], port: int = 0, hears: bool = False, latency_s: float = 0.0):
        self.script = script
        self.hears = hears
        self.latency_s = latency_s  # every answer waits this long (bench/describe.py's fixed latency)
        self.stopped = False
        self.requests: list[tuple[float, dict, dict]] = []  # time, headers, body
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body in one write: no Nagle/delayed-ACK stalls

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                if server.stopped:  # gone: drop even kept-alive connections
                    self.close_connection = True
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    n = len(server.requests)
                    server.requests.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                prompt, audio = text_and_audio(body["messages"][-1]["content"])
                b = server.script(n, prompt, audio) if server.hears else server.script(n, prompt)
                if server.latency_s:
                    time.sleep(server.latency_s)
                if b[0] == "hang":
                    time.sleep(b[1])
                    b = ("answer", "a late answer that nobody is waiting for anymore")
                if b[0] == "status":
                    self._send(b[1], json.dumps({"error": {"message": "scripted", "type": "x"}}).encode(), b[2])
                elif b[0] == "garbage":
                    self._send(200, b[1].encode(), {})
                else:
                    msg = {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": b[1]}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                    self._send(200, json.dumps(msg).encode(), {})

            def _send(self, code: int, payload: bytes, headers: dict) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the point of a hang

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """The endpoint goes away: no more connections are accepted."""
        if not self.stopped:
            self.stopped = True
            self._close()

    def go_away_after_this_answer(self) -> None:
        """For a script: the request being handled is still answered, every later one is dropped from
        now on (not once a shutdown thread gets to run), and the server then closes."""
        self.stopped = True
        threading.Thread(target=self._close, daemon=True).start()  # shutdown() waits for serve_forever

    def _close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
