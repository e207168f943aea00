"""A first start with no configuration at all can be administered: the gateway makes an API token,
keeps it beside its database (owner-only), prints it once with how to use it, and the ``gateway``
command run in that folder finds it. Options given at a start apply to that start."""

import os
import queue
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.api_token import local_token, stored_or_new, token_path
from gateway.cli import build_parser

BIN = Path(sys.executable).parent


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_API_TOKEN"}
    return {**env, **extra}


class Gateway:
    """``gateway run`` in a folder, its output read on a thread so every wait is bounded."""

    def __init__(self, folder: Path, *args: str, **env):
        self.popen = subprocess.Popen([BIN / "gateway", "run", "--tcp-port", "0", "--http-port", "0", *args], cwd=folder,
                                      env=environment(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.popen.stdout], daemon=True).start()
        self.url = self.wait_for(r"monitoring page at (http://\S+)/").group(1)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        try:
            while True:
                line = self.lines.get(timeout=timeout)
                self.output.append(line)
                if found := re.search(pattern, line):
                    return found
        except queue.Empty:
            raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s:\n{''.join(self.output)}") from None

    def stop(self) -> None:
        self.popen.terminate()
        assert self.popen.wait(timeout=20) == 0


@pytest.fixture
def started():
    running = []

    def start(folder, *args, **env) -> Gateway:
        running.append(Gateway(folder, *args, **env))
        return running[-1]

    yield start
    for gateway in running:
        if gateway.popen.poll() is None:
            gateway.popen.kill()
            gateway.popen.wait(10)


def cli(folder: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "gateway", *args], cwd=folder, env=environment(**env), capture_output=True, text=True, timeout=30)


def test_a_first_start_makes_a_token_that_the_command_in_that_folder_uses(tmp_path, started):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir(), elsewhere.mkdir()
    gateway = started(site)
    token = gateway.wait_for(r"^    (\S+)$").group(1)
    kept = site / "gateway.token"
    assert kept.read_text().strip() == token
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert f"kept in {kept}" in "".join(gateway.output)

    done = cli(site, "--url", gateway.url, "sync-mode", "all")
    assert (done.returncode, done.stdout.split(":")[0]) == (0, "sync mode set to all"), done.stderr
    refused = cli(elsewhere, "--url", gateway.url, "sync-mode", "specific")
    assert refused.returncode == 1 and "[HTTP 401]" in refused.stderr and "gateway.token" in refused.stderr
    given = cli(elsewhere, "--token", token, "--url", gateway.url, "sync-mode", "specific")  # global options first
    assert given.stdout.startswith("sync mode set to specific: "), given.stderr
    gateway.stop()

    again = started(site, "--sync-mode", "all-with-device-updates")
    # Replaced before the gateway listens, so no terminal ever sees the stored mode at this start.
    assert "sync mode all-with-device-updates from --sync-mode replaces the stored specific" in "".join(again.output)
    again.wait_for(f"the one kept in {kept}")
    assert token not in "".join(again.output)
    assert cli(site, "sync-mode", "--url", again.url).stdout == "all-with-device-updates\n"
    assert kept.read_text().strip() == token


def test_a_token_given_by_option_or_environment_is_used_and_no_file_is_made(tmp_path, started):
    by_option = started(tmp_path, "--api-token", "from-option")
    assert cli(tmp_path, "--url", by_option.url, "--token", "from-option", "sync-mode", "all").returncode == 0
    by_option.stop()
    by_environment = started(tmp_path, GATEWAY_API_TOKEN="from-environment")
    done = cli(tmp_path, "sync-mode", "disabled", "--url", by_environment.url, GATEWAY_API_TOKEN="from-environment")
    assert done.stdout.startswith("sync mode set to disabled: "), done.stderr
    assert not (tmp_path / "gateway.token").exists()


def test_client_options_go_before_or_after_the_command():
    before = build_parser().parse_args(["--token", "T", "--url", "http://h:1", "--json", "sync-mode", "all"])
    after = build_parser().parse_args(["sync-mode", "all", "--token", "T", "--url", "http://h:1", "--json"])
    assert vars(before) == vars(after)
    plain = build_parser().parse_args(["users", "list"])
    assert (plain.url, plain.token, plain.json) == ("http://127.0.0.1:8080", None, False)


def test_choices_come_from_the_enums(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sync-mode", "sideways"])
    assert "choose from 'disabled', 'specific', 'all', 'all-with-device-updates'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--admission", "closed"])
    assert "choose from 'allowlist', 'pending', 'open'" in capsys.readouterr().err


def test_the_token_lives_beside_a_sqlite_file_else_in_the_working_folder(tmp_path):
    assert token_path(f"sqlite:///{tmp_path}/data/gateway.db") == tmp_path / "data" / "gateway.token"
    assert token_path("sqlite:///gateway.db") == Path("gateway.token")
    assert token_path("postgresql+psycopg2://u:p@db.example/gw") == Path("gateway.token")


def test_the_kept_token_is_only_ever_sent_to_a_gateway_on_this_machine(tmp_path):
    (tmp_path / "gateway.token").write_text("kept\n")
    assert local_token("http://127.0.0.1:8080", tmp_path) == "kept"
    assert local_token("http://localhost:9", tmp_path) == "kept"
    assert local_token("http://gateway.example:8080", tmp_path) is None


def test_a_made_token_can_be_typed_after_token_on_the_command_line(tmp_path):
    # One random token in 64 began with "-" and the command took it for an option.
    for n in range(200):
        token, made = stored_or_new(tmp_path / f"gateway-{n}.token")
        assert made
        args = build_parser().parse_args(["--token", token, "sync-mode", "all"])
        assert args.token == token


def test_tcp_host_chooses_the_address_terminals_dial_and_every_address_is_the_default(tmp_path, started):
    from gateway.config import GatewayConfig

    assert GatewayConfig().tcp_host == "0.0.0.0"  # terminals are on the network (a test listens on loopback only)
    loopback = started(tmp_path, "--tcp-host", "127.0.0.1", "--api-token", "t")
    assert "gateway listening for terminals on 127.0.0.1:" in "".join(loopback.output)
