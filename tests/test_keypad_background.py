"""``simulator terminal ... &`` in an interactive shell keeps running: in the background it leaves
the keyboard to the shell instead of reading it and being stopped by the terminal (SIGTTIN) the
moment someone types the next command. An interactive bash on a pty, with job control."""

import fcntl
import os
import re
import subprocess
import sys
import termios
import time
from pathlib import Path

from live_site import refusing_port
from processes import KeypadClient, eventually

BIN = Path(sys.executable).parent


class Shell:
    """``bash -i`` on a pty that is its controlling terminal, as in a terminal window."""

    def __init__(self, folder: Path):
        self.master, slave = os.openpty()
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PS1": "$ "}
        self.bash = subprocess.Popen(["bash", "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave, stderr=slave,
                                     cwd=folder, env=env, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        os.set_blocking(self.master, False)
        self.screen = ""

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def shows(self, pattern: str) -> bool:
        try:
            self.screen += os.read(self.master, 65536).decode(errors="replace")
        except BlockingIOError:
            pass
        return re.search(pattern, self.screen) is not None

    def close(self) -> None:
        os.killpg(self.bash.pid, 9)
        self.bash.wait(10)
        os.close(self.master)


def test_a_terminal_started_with_an_ampersand_keeps_answering_while_the_shell_is_used(tmp_path):
    shell = Shell(tmp_path)
    log = tmp_path / "t1.log"
    try:
        with refusing_port() as nowhere:
            shell.type(f"simulator terminal --gateway 127.0.0.1:{nowhere} --id 1 --secret S1 --control 0 > t1.log 2>&1 &")
            port = eventually(lambda: log.exists() and re.search(r"control socket on 127\.0\.0\.1:(\d+)", log.read_text()),
                              "the terminal's control port").group(1)
            for n in range(3):  # someone goes on typing at the shell
                shell.type(f"echo typed-{n}")
                eventually(lambda: shell.shows(rf"(?<!echo )typed-{n}\r?\n"), f"the shell to run command {n}")
            keypad = KeypadClient(int(port), timeout=10)
            try:
                assert keypad.command("status")[0].startswith("ok terminal 1")
            finally:
                keypad.close()
            shell.type("jobs")
            eventually(lambda: shell.shows(r"Running\s+simulator terminal"), "the job listed as running")
            assert "Stopped" not in shell.screen
    finally:
        shell.close()
