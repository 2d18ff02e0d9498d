"""An embedded MQTT broker (amqtt) for the zero-setup demo, listening on loopback only.

Production and the integration tests use Mosquitto. This broker exists so that
`modiad demo` runs without installing one. Run it as

    python -m modiad.broker --port 18830

It logs "listening on 127.0.0.1:N" once it accepts connections and stops cleanly on
SIGTERM or SIGINT. amqtt 0.12 has no packet size limit to configure: it reads each
packet in full, up to the MQTT maximum of 268435455 bytes, so 16 MiB payloads pass.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import threading
import time
from typing import Any

from modiad.errors import ConfigError, TransportError

__all__ = [
    "LOOPBACK_HOST",
    "broker_config",
    "free_port",
    "main",
    "run_embedded_broker",
    "wait_for_port",
]

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"
"""The only address the embedded broker binds to: it has no authentication."""

_STOP_CHECK_INTERVAL_S = 0.2
"""How often the broker checks a `threading.Event` stop request, in seconds."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).

    Another process may take it before the caller binds it, so callers that start a
    server on it should wait for it with `wait_for_port`.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK_HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    """Block until a TCP connection to host:port succeeds, or raise TransportError after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    last_error: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransportError(
                f"nothing accepted connections on {host}:{port} within {timeout_s} s (last error: {last_error}). "
                "Check that the broker started, and read its log"
            )
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 1.0)):
                return
        except OSError as error:
            last_error = error
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def broker_config(port: int) -> dict[str, Any]:
    """Return the amqtt 0.12 broker configuration: one TCP listener on 127.0.0.1:`port`, anonymous access.

    Only the anonymous-auth plugin is loaded. amqtt's default packet and event
    logger plugins and its $SYS publisher are left out.
    """
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"invalid broker port {port!r}: expected an integer from 1 to 65535")
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK_HOST}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def run_embedded_broker(port: int, stop_event: threading.Event | None = None) -> None:
    """Run the amqtt broker on 127.0.0.1:`port` until SIGTERM/SIGINT or until `stop_event` is set.

    Blocks. Signal handlers are installed only when called from the main thread, so
    a caller on another thread passes `stop_event` to stop it.
    """
    config = broker_config(port)
    asyncio.run(_serve(config, port, stop_event))


async def _serve(config: dict[str, Any], port: int, stop_event: threading.Event | None) -> None:
    from amqtt.broker import Broker  # imported here: amqtt pulls in many modules that only the demo needs

    stop_requested = asyncio.Event()
    _install_stop_signals(stop_requested)

    broker = Broker(config)
    try:
        await broker.start()
    except Exception as error:  # amqtt 0.12 wraps every start-up failure (e.g. port in use) in BrokerError
        raise TransportError(f"embedded broker failed to start on {LOOPBACK_HOST}:{port}: {error}") from error
    logger.info("listening on %s:%d", LOOPBACK_HOST, port)

    try:
        while not stop_requested.is_set():
            if stop_event is not None and stop_event.is_set():
                break
            try:
                await asyncio.wait_for(stop_requested.wait(), timeout=_STOP_CHECK_INTERVAL_S)
            except TimeoutError:
                pass
    finally:
        logger.info("stopping the embedded broker on %s:%d", LOOPBACK_HOST, port)
        await broker.shutdown()
        logger.info("embedded broker stopped")


def _install_stop_signals(stop_requested: asyncio.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)


def _drop_port_probe_errors(record: logging.LogRecord) -> bool:
    """Hide amqtt's error for a connection closed before its first packet, which is what `wait_for_port` makes."""
    message = record.getMessage()
    return "No data to decode MQTT packet fixed header" not in message


def main(argv: list[str] | None = None) -> int:
    """Run `python -m modiad.broker` with `argv` and return the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m modiad.broker",
        description="Run an embedded MQTT broker on 127.0.0.1 for the MODIAD demo (no authentication).",
    )
    parser.add_argument("--port", type=int, default=1883, help="TCP port to listen on (default: 1883).")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="Logging threshold."
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # amqtt logs every client connection at INFO, which drowns the demo's own output.
    if args.log_level != "DEBUG":
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("amqtt.broker").addFilter(_drop_port_probe_errors)

    try:
        run_embedded_broker(args.port)
    except (ConfigError, TransportError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
