"""Corral inside Tornado's WSGI container, as docs/deploy.md shows it.

    CORRAL_APP=app.py python tests/apps/tornado_server.py PORT
"""

import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from tornado.httpserver import HTTPServer
from tornado.wsgi import WSGIContainer

from corral.wsgi import create_app


async def main(port: int) -> None:
    # An executor, so that requests waiting for a batch do not block Tornado's loop;
    # its size bounds how many requests can wait for one batch together.
    container = WSGIContainer(create_app(), executor=ThreadPoolExecutor(32))
    server = HTTPServer(container)
    server.listen(port, address="127.0.0.1")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
