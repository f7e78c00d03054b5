"""A tiny HTTP/1.1 server on loopback for tests that need an upstream engine with a
scripted behaviour (answer pieces, hang, reject): one request per connection, a thread
of its own running an asyncio loop. Subclasses say what to answer in `respond`."""

from __future__ import annotations

import asyncio
import threading


class LoopbackHTTP:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.server = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "the loopback server did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    async def respond(self, head: bytes, body: bytes) -> tuple[bytes, bytes, bytes] | None:
        """(status line, content type, payload) for one request; None: never answer."""
        raise NotImplementedError

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            answer = await self.respond(head, body)
            if answer is None:
                await asyncio.sleep(3600)          # accepted, never answered
                return
            status, ctype, payload = answer
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                         + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        async def close():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.server = None
