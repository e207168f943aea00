"""gateway-loadtest --kind push (tools/loadtest/push_load.py) on a real ``gateway run`` and a
station of emulated PUSH devices, with a Delay of 1 s so that it is quick: the report says what
the harness measured, and a run where nothing is lost is ``ok``. It runs in a process of its own:
the harness runs the global reactor, which a process can run once."""

import json
import subprocess
import sys

from processes import ROOT

RUN = """
import json, sys
from pathlib import Path
from tools.loadtest import push_load
from tools.loadtest.harness import build_parser
args = build_parser().parse_args(["--kind", "push", "--devices", "3", "--duration", "5", "--rate", "2", "--idle-cycles", "2"])
print(json.dumps(push_load.run(args, Path(sys.argv[1]), delay_s=1)))
"""


def test_a_push_load_run_reports_every_punch_stored_and_every_enrolment_delivered(tmp_path):
    done = subprocess.run([sys.executable, "-c", RUN, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["ok"], report
    assert (report["punches"], report["enrolled"]) == (9, 1)  # every tenth action an enrolment
    assert report["events_stored"] == 9 and report["lost_events"] == 0
    assert report["user_deliveries"] == 2 and report["lost_updates"] == 0  # the other two devices
    assert report["api_ms"]["samples"] > 0 and report["api_ms"]["idle_p99"] is not None and report["api_ms"]["calling_p99"] is not None
    assert report["gateway_cpu_pct_per_device_calling"] is not None and report["idle_s"] == 2
