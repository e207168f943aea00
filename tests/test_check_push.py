"""gateway-check --push against the emulated PUSH device (simulator push-terminal), both as
processes: the device says hello, takes INFO, lists its users, and with --write stores and
deletes the test user, and the faces and photos it uploaded and its face algorithm are reported; a port in use is exit status 2 in one line."""

import socket
from contextlib import contextmanager

from processes import KeypadClient, Process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def checked(tmp_path, serial: str, *device_options: str):
    """``gateway-check --push --write`` waiting, and a device calling it: (the check, the device's keypad)."""
    port = free_port()
    check = Process("tools.check", "--push", str(port), "--push-host", "127.0.0.1", "--write", "--wait", "60")
    device = None
    try:
        check.wait_for(r"waiting up to 60 s for a PUSH device")
        device = Process("simulator.cli", "push-terminal", "--server", f"http://127.0.0.1:{port}", "--sn", serial, "--control", "0",
                         "--state", str(tmp_path / "d.json"), *device_options)
        keypad = KeypadClient(int(device.wait_for(r"keypad control socket on 127\.0\.0\.1:(\d+)").group(1)))
        yield check, keypad
        keypad.close()
    finally:
        if device is not None:
            device.stop()
        check.stop()


def test_the_check_passes_against_the_emulated_device(tmp_path):
    with checked(tmp_path, "CHK0001", "--face", "9:58.1") as (check, keypad):
        keypad.ok('enrol 3 name="Al Bo" face=yes photo=3000')
        assert check.wait_exit(120) == 0
        output = check.all_output()
        for label in ("hello: serial CHK0001", "commands: firmware Ver 6.60 emulated", "INFO: DeviceName=emulated PUSH device",
                      "user list:", "write test user: user 999999999 stored and listed back", "delete test user:"):
            assert f"PASS {label}" in output, output
        assert "(1 face templates, 1 photos)" in output and "face algorithms (its options): zkface9v58" in output, output
        assert [line.split("  ")[0] for line in keypad.ok("list")] == ["3"]  # the test user is gone again


def test_the_check_speaks_3x_to_an_access_device(tmp_path):
    """A 3.x device refuses 2.x syntax (-629): the check registers it and lists, writes and deletes in 3.x."""
    with checked(tmp_path, "ACC0001", "--push-version", "3") as (check, keypad):
        keypad.ok('enrol 3 name="Al Bo"')
        assert check.wait_exit(120) == 0, check.all_output()
        output = check.all_output()
        for label in ("hello: serial ACC0001, push version 3.1.2", "INFO: PUSH 3.x (no INFO command); it registered: DeviceType=acc",
                      "user list:", "write test user: user 999999999 stored and listed back", "delete test user:"):
            assert f"PASS {label}" in output, output
        assert [line.split("  ")[0] for line in keypad.ok("list")] == ["3"]


def test_a_port_in_use_is_one_line_and_status_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        check = Process("tools.check", "--push", str(taken.getsockname()[1]), "--push-host", "127.0.0.1")
        assert check.wait_exit(30) == 2
        assert "gateway-check: cannot listen on 127.0.0.1" in check.all_output()
