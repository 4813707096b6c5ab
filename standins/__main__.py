"""Serve the stand-ins on the seed's ports: ``python -m standins``.

messaging-service on 7004 (with the seed's demo channel and a first human message) and
agent-memory on 7008. Prints every reply an agent posts.
"""

from __future__ import annotations

import argparse
import signal
import threading

from standins.memory import MemoryStandIn
from standins.messaging import DEMO_CHANNEL, MessagingStandIn
from standins.server import Served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messaging-port", type=int, default=7004)
    parser.add_argument("--memory-port", type=int, default=7008)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container, for the others to reach")
    args = parser.parse_args()

    messaging, memory = MessagingStandIn(), MemoryStandIn()
    messaging.add_message(DEMO_CHANNEL, "Привіт! Що нового в нашій DAO?")

    def show(message: dict) -> None:
        if message["sender_type"] == "agent":
            print(f"[{message['channel_id']}] {message['sender_id']}: {message['content_preview']}", flush=True)

    messaging.on_message = show
    servers = [
        Served(messaging.app, host=args.host, port=args.messaging_port),
        Served(memory.app, host=args.host, port=args.memory_port),
    ]
    print(f"messaging-service stand-in: {servers[0].url} (demo channel {DEMO_CHANNEL})", flush=True)
    print(f"agent-memory stand-in:      {servers[1].url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    for server in servers:
        server.stop()


if __name__ == "__main__":
    main()
