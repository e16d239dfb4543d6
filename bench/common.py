"""Helpers the bench scripts share."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def arguments(doc: str | None, rounds: int) -> argparse.ArgumentParser:
    """The options every A B B A bench takes: how many rounds, how long each load."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seconds", type=int, default=4)
    return parser


def have_wrk() -> bool:
    """Whether wrk is installed; says how to install it when not."""
    if shutil.which("wrk"):
        return True
    print("bench needs wrk: apt-get install wrk", file=sys.stderr)
    return False


def stop(*processes: subprocess.Popen[bytes]) -> None:
    """Terminate them all, then wait for each."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(15)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (FileNotFoundError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
