"""benchmarks/spy_top.py's phases (unit): each reactor sample goes to the innermost frame naming a phase."""

from collections import Counter

from benchmarks.spy_top import phases

LOOP = ("ReactorBase.run (twisted/internet/base.py)", "ReactorBase.mainLoop (twisted/internet/base.py)")


def test_a_sample_goes_to_its_innermost_phase_and_threads_and_epoll_waits_count_for_none():
    stacks = Counter({
        LOOP + ("TcpLink.dataReceived (gateway/native/tcp.py)", "TerminalSession._request_received (gateway/native/session.py)",
                "EventLog.submit (gateway/sync/eventlog.py)"): 3,
        LOOP + ("TcpLink.dataReceived (gateway/native/tcp.py)", "parse_body (protocol/messages.py)"): 2,
        LOOP + ("DelayedCall.__call__ (twisted/internet/base.py)",): 1,
        LOOP + ("EPollReactor.doPoll (twisted/internet/epollreactor.py)",): 50,
        ("Thread.run (threading.py)", "DefaultDialect.do_commit (sqlalchemy/engine/default.py)"): 9,
    })
    assert phases(stacks) == Counter({"event ingest and acknowledgement": 3, "frames in (decode, match to the request, parse)": 2,
                                      "other (timers, Twisted)": 1})
