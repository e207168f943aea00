"""``simulator terminal ... &`` in an interactive shell keeps running: in the background it leaves
the keyboard to the shell instead of reading it and being stopped by the terminal (SIGTTIN) the
moment someone types the next command. An interactive bash on a pty, with job control."""

import fcntl
import os
import re
import signal
import subprocess
import sys
import termios
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
        self.jobs: list[int] = []  # in a shell with job control each job is a process group of its own

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def shows(self, pattern: str) -> bool:
        try:
            self.screen += os.read(self.master, 65536).decode(errors="replace")
        except BlockingIOError:
            pass
        return re.search(pattern, self.screen) is not None

    def start_job(self, line: str) -> None:
        """Run ``line &`` and note its process group, which closing the shell does not end."""
        self.type(f"{line} &")
        self.type('echo "job=$!"')
        self.jobs.append(int(eventually(lambda: self.shows(r"job=(\d+)") and re.search(r"job=(\d+)", self.screen),
                                        "the job's process id").group(1)))

    def close(self) -> None:
        for job in self.jobs:
            try:
                os.killpg(job, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.killpg(self.bash.pid, signal.SIGKILL)
        self.bash.wait(10)
        os.close(self.master)


def test_a_terminal_started_with_an_ampersand_keeps_answering_while_the_shell_is_used(tmp_path):
    shell = Shell(tmp_path)
    log = tmp_path / "t1.log"
    try:
        with refusing_port() as nowhere:
            shell.start_job(f"simulator terminal --gateway 127.0.0.1:{nowhere} --id 1 --secret S1 --control 0 > t1.log 2>&1")
            port = eventually(lambda: log.exists() and re.search(r"control socket on 127\.0\.0\.1:(\d+)", log.read_text()),
                              "the terminal's control port").group(1)
            keypad = KeypadClient(int(port), timeout=10)
            try:
                assert keypad.command("status")[0].startswith("ok terminal 1")  # running, its keypad open
                # Someone types the next command while the shell is busy: for a second it waits in
                # the terminal, where a program reading the keyboard from the background finds it.
                shell.type("sleep 1")
                shell.type("echo typed")
                eventually(lambda: shell.shows(r"(?<!echo )typed\r?\n"), "the shell to run the typed command")
                assert keypad.command("status")[0].startswith("ok terminal 1")
            finally:
                keypad.close()
            shell.type("jobs")
            eventually(lambda: shell.shows(r"Running\s+simulator terminal"), "the job listed as running")
            assert "Stopped" not in shell.screen
    finally:
        shell.close()
