"""What keeps the agent's RSS down: giving freed heap back, and not importing dnspython."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

from segs.edge.memory import trim_heap


def test_trim_heap_returns_freed_memory_on_glibc_and_does_nothing_elsewhere() -> None:
    blocks = [bytearray(4096) for _ in range(5_000)]  # 20 MB from malloc's heap, not pymalloc
    del blocks
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert trim_heap() is glibc


def test_the_agent_imports_without_dnspython_and_leaves_it_importable() -> None:
    script = textwrap.dedent(
        """
        import importlib.util, sys
        from segs.edge.cli import import_agent
        agent = import_agent()
        assert callable(agent.run)
        assert "dns" not in sys.modules, "paho pulled dnspython in"
        assert not sys.modules["paho.mqtt.client"].HAVE_DNS
        if importlib.util.find_spec("dns") is not None:
            import dns.resolver  # others in the process still can
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
