"""The gateway's HTTP side: JSON API, live event stream, /metrics and the monitoring page.

See docs/http-api.md. ``GatewaySite`` (site.py) is the site; serve.py says where it runs: in an
API process of its own (process.py, the default) or on the gateway's reactor.
"""
