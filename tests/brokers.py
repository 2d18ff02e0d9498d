"""A Mosquitto broker on loopback for integration tests, started and stopped by the tests.

The broker listens on 127.0.0.1 only, accepts anonymous clients, keeps nothing on
disk unless asked to (so a restart loses sessions and retained messages) and accepts
packets of up to 32 MiB, enough for 16 MiB payloads.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

from modiad.broker import LOOPBACK_HOST, free_port, wait_for_port

__all__ = ["MOSQUITTO_MAX_PACKET_BYTES", "MosquittoBroker", "find_mosquitto"]

MOSQUITTO_MAX_PACKET_BYTES = 32 * 1024 * 1024
"""Maximum MQTT packet size the test broker accepts: a 16 MiB payload plus headroom."""

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def find_mosquitto() -> Path:
    """Return the mosquitto binary, or raise RuntimeError saying how to install it if it is missing."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if found is None:
        raise RuntimeError(
            "mosquitto not found on PATH or at /usr/sbin/mosquitto. The MQTT integration tests need it, "
            "so install it with `apt-get install mosquitto`"
        )
    return Path(found)


class MosquittoBroker:
    """One mosquitto process with its own config and log in `workdir`, bound to 127.0.0.1:`port`.

    With `persistence`, mosquitto saves sessions, queued messages and retained messages
    in `workdir` on shutdown and loads them on start, so they survive `restart()`.
    Without `allow_anonymous`, it rejects every client, because no password file is set.
    """

    def __init__(
        self, workdir: Path, port: int | None = None, *, persistence: bool = False, allow_anonymous: bool = True
    ) -> None:
        self.binary = find_mosquitto()
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.persistence = persistence
        self.allow_anonymous = allow_anonymous
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        """Broker URL for `MqttSettings.url`."""
        return f"mqtt://{LOOPBACK_HOST}:{self.port}"

    def start(self) -> None:
        """Start mosquitto and wait until it accepts TCP connections, or raise RuntimeError with its log."""
        if self._process is not None:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")

        self._process = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(LOOPBACK_HOST, self.port, _START_TIMEOUT_S)
        except Exception as error:
            self.stop()
            raise RuntimeError(f"mosquitto failed to start on port {self.port}:\n{self.log_tail()}") from error

    def stop(self) -> None:
        """Stop mosquitto with SIGTERM (SIGKILL if it hangs), which drops every client connection."""
        process = self._process
        if process is None:
            return
        self._process = None
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT_S)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        """Stop and start on the same port. Without persistence, sessions and retained messages are lost."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        """Return the last `lines` lines of the broker log, for failure messages."""
        if not self.log_path.exists():
            return "(no mosquitto log written)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _write_config(self) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"listener {self.port} {LOOPBACK_HOST}",
                    f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
                    f"persistence {'true' if self.persistence else 'false'}",
                    f"persistence_location {self.workdir}/",
                    f"max_packet_size {MOSQUITTO_MAX_PACKET_BYTES}",
                    # Mosquitto started as root drops to the 'mosquitto' user, which could
                    # not write the log in the test's temporary folder.
                    f"user {getpass.getuser()}",
                    f"log_dest file {self.log_path}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    "",
                ]
            )
        )
