"""Progress is visible: a tqdm bar with rate and ETA at a terminal, one log line per 10% without one."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios

from cad.progress import LogProgress, progress

SCRIPT = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from cad.progress import progress
for _ in progress(range(20), desc="generate demo [edited]", unit="img"):
    time.sleep(0.01)
"""


def _run(tty: bool) -> str:
    if not tty:
        proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    leader, follower = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, where tqdm draws nothing: give it a real terminal's size
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=follower, stderr=follower, stdin=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_bar():
    out = _run(tty=True)
    assert "generate demo [edited]" in out and "20/20" in out and "img/s" in out
    assert "\r" in out  # redrawn in place
    assert "cad.progress" not in out  # no log lines beside the bar


def test_a_log_gets_a_line_per_tenth():
    out = _run(tty=False)
    lines = [ln for ln in out.splitlines() if ln.startswith("cad.progress generate demo [edited]")]
    assert len(lines) == 10  # 2/20 ... 18/20 with an ETA, then the closing 20/20 with the time taken
    assert "2/20 (10%)" in lines[0] and "img/s" in lines[0] and "ETA" in lines[0]
    assert "20/20 (100%)" in lines[-1] and "ETA" not in lines[-1]
    assert "\r" not in out


def test_log_progress_with_update_and_initial(caplog):
    with caplog.at_level(logging.INFO, logger="cad.progress"):
        with LogProgress(total=100, initial=40, desc="generate x", unit="img") as bar:
            for _ in range(60):
                bar.update(1)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("generate x: 50/100 (50%)")  # cached items count as done, lines continue from there
    assert messages[-1].startswith("generate x: 100/100 (100%)") and len(messages) == 6


def test_disabled_progress_is_silent(caplog):
    with caplog.at_level(logging.INFO, logger="cad.progress"):
        assert list(progress(range(5), desc="quiet", enabled=False)) == [0, 1, 2, 3, 4]
    assert not caplog.records
