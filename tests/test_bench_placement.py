"""bench/benchutil.on_cpu: the rate benchmarks put the client on one core and the server, with every thread it
starts, on another; on a one-CPU machine they leave both where they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import benchutil  # noqa: E402

# A child reporting the CPUs its main thread and a thread it starts may run on.
REPORT = """
import os, threading
seen = []
thread = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
thread.start()
thread.join()
print(sorted(os.sched_getaffinity(0)), seen[0])
"""


def _placed(index: int) -> str:
    return subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, check=True,
                          **benchutil.on_cpu(index)).stdout.strip()


def test_the_server_and_its_threads_run_on_one_cpu_the_client_on_another() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    server, client = _placed(benchutil.SERVER_CPU), _placed(benchutil.CLIENT_CPU)
    if len(cpus) < 2:  # nowhere to separate them: both run where the caller may
        assert benchutil.on_cpu(benchutil.SERVER_CPU) == {}
        assert server == client == f"{cpus} {cpus}"
        return
    one, other = cpus[benchutil.SERVER_CPU], cpus[benchutil.CLIENT_CPU]
    assert one != other
    assert server == f"[{one}] [{one}]"
    assert client == f"[{other}] [{other}]"


def test_placing_a_child_leaves_the_caller_where_it_was() -> None:
    before = os.sched_getaffinity(0)
    _placed(benchutil.SERVER_CPU)
    assert os.sched_getaffinity(0) == before
