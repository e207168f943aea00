"""The emulated PUSH device against a PUSH server nobody on the team wrote: the ADMS endpoints of
django-fingerprint-attendance (PyPI), run as its own Django development server process.

It shows ``simulator push-terminal`` talks as devices do to a server written against real
hardware: the server takes its initialization request, its ATTLOG and OPERLOG uploads (punches
stored, user records and templates seen), and it fetches, carries out and reports the server's
commands. What the peer had to accept is in docs/zk-push.md, "Checked against".
"""

import socket
import subprocess
import sys
import textwrap

import pytest

from processes import ROOT, KeypadClient, Process, eventually

pytest.importorskip("fingerprint_attendance", reason="the test extra installs django-fingerprint-attendance")

SN = "PEER0000001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def peer(tmp_path, monkeypatch):
    (tmp_path / "peer_settings.py").write_text(textwrap.dedent(f"""
        SECRET_KEY = "test only"
        DEBUG = False
        ALLOWED_HOSTS = ["127.0.0.1"]
        ROOT_URLCONF = "peer_urls"
        USE_TZ = True
        TIME_ZONE = "UTC"
        MIDDLEWARE = []
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "rest_framework", "fingerprint_attendance"]
        DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {str(tmp_path / "peer.db")!r}}}}}
        FINGERPRINT_ATTENDANCE = {{"ADMS_REQUIRE_DEVICE_APPROVAL": False, "ADMS_DELAY": 1, "ADMS_ERROR_DELAY": 1,
                                  "TEMPLATE_ENCRYPTION_ENABLED": False}}
    """))
    (tmp_path / "peer_urls.py").write_text('from django.urls import include, path\nurlpatterns = [path("", include("fingerprint_attendance.urls"))]\n')
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{ROOT}")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "peer_settings")
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0"], check=True, timeout=180, cwd=tmp_path)
    port = free_port()
    server = Process("django", "runserver", "--noreload", f"127.0.0.1:{port}")
    try:
        server.wait_for(r"Starting development server", timeout=60)

        def django(code: str) -> str:
            done = subprocess.run([sys.executable, "-m", "django", "shell", "-c", textwrap.dedent(code)], capture_output=True, text=True,
                                  timeout=60, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""  # after "N objects imported"

        django.url = f"http://127.0.0.1:{port}"
        yield django
    finally:
        server.stop()


def test_the_peer_takes_the_emulated_devices_uploads_and_it_carries_out_the_peers_commands(peer, tmp_path):
    device = Process("simulator.cli", "push-terminal", "--server", peer.url, "--sn", SN, "--control", "0", "--state", str(tmp_path / "d.json"))
    try:
        keypad = KeypadClient(int(device.wait_for(r"keypad control socket on 127\.0\.0\.1:(\d+)").group(1)))
        device.wait_for(r"answered the initialization")
        keypad.ok('enrol 5 name="Ann Lee" card=4321 finger=1')
        keypad.ok('enrol 7 name="Cy Dunn"')
        keypad.ok("verify 5 finger")
        keypad.ok("verify 7 pin")  # the peer takes one punch per person in a short window: two people
        eventually(lambda: "0 lines not uploaded" in keypad.command("status")[0], "the peer to acknowledge every upload", timeout=30)
        seen = peer("""
            from fingerprint_attendance.models import Device, Punch, DeviceEventLog, FingerprintTemplate
            d = Device.objects.get(serial_number="PEER0000001")
            print(Punch.objects.filter(device=d).count(), DeviceEventLog.objects.filter(device=d, event_type="user_info").count(),
                  FingerprintTemplate.objects.count(), DeviceEventLog.objects.filter(device=d, event_type="parse_error").count())
        """)
        punches, user_infos, _templates, parse_errors = map(int, seen.split())
        assert (punches, parse_errors) == (2, 0)
        assert user_infos >= 1

        peer("""
            from fingerprint_attendance.models import Device
            from fingerprint_attendance.services.commands import queue_command
            d = Device.objects.get(serial_number="PEER0000001")
            queue_command(d, "add_user", {"pin": "6", "name": "Bo Berg"})
            queue_command(d, "delete_user", {"pin": "5"})
            queue_command(d, "query_users")
            queue_command(d, "info")
        """)
        eventually(lambda: [line.split("  ")[:2] for line in keypad.ok("list")] == [["6", "Bo Berg"], ["7", "Cy Dunn"]], "the peer's commands carried out", timeout=30)
        statuses = eventually(lambda: (s := peer("""
            from fingerprint_attendance.models import DeviceCommand
            print(" ".join(sorted(c.status for c in DeviceCommand.objects.all())))
        """)) and "sent" not in s and "pending" not in s and s, "every command's result reported", timeout=30)
        # Ours and any the peer queued by itself for a new device: every one carried out and reported.
        assert set(statuses.split()) == {"succeeded"} and len(statuses.split()) >= 4
        keypad.close()
    finally:
        device.stop()
