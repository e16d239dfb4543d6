"""Request and reply ids: unique within a process, and in a forked worker too."""

from __future__ import annotations

import subprocess
import sys

from lmgate.ids import unique_hex


def test_ids_are_unique_hex_within_a_process() -> None:
    ids = [unique_hex() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(id_) == 32 and int(id_, 16) >= 0 for id_ in ids)


def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    # Forked from a fresh single-threaded interpreter: forking pytest's own process,
    # which runs threads, could deadlock the child (and Python 3.12 warns about it).
    script = """
import os
from lmgate.ids import unique_hex
read, write = os.pipe()
if os.fork() == 0:
    os.write(write, unique_hex().encode())
    os._exit(0)
os.wait()
print(os.read(read, 64).decode(), unique_hex())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    child, parent = done.stdout.split()
    assert len(child) == len(parent) == 32
    assert child != parent
