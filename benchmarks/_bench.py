"""What the benchmark scripts share: measuring a process, the machine, the simulator, the docs.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path``
and they ``import _bench``.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = re.search(r"VmRSS:\s+(\d+)", status)
    peak = re.search(r"VmHWM:\s+(\d+)", status)
    assert rss is not None
    assert peak is not None
    return int(rss.group(1)), int(peak.group(1))


def machine() -> dict[str, str]:
    """What the benchmark ran on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def machine_line(info: dict[str, str]) -> str:
    """The "Machine: ..." sentence of a results section, from :func:`machine`."""
    return (
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, "
        f"Python {info['python']}."
    )


def spawn_sim(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``segs sim`` by ``command``; return it and its banner once it says ``ready``."""
    sim = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    banner = []
    for line in sim.stdout:
        banner.append(line)
        if line.strip() == "ready":
            break
    else:
        stop(sim)
        raise RuntimeError("segs sim exited:\n" + "".join(banner))
    return sim, "".join(banner)


def stop(process: subprocess.Popen[str], *, timeout: float = 30) -> None:
    """SIGTERM ``process`` and wait for it; kill it when it takes longer than ``timeout``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def write_section(path: Path, section: str, *, begin: str, end: str) -> None:
    """Replace the section between ``begin`` and ``end`` in ``path`` (append it when missing)."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + section + "\n"
    path.write_text(text)
