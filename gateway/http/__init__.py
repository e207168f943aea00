"""The gateway's HTTP side: JSON API, live event stream, /metrics and the monitoring page.

See docs/http-api.md. ``GatewaySite`` (site.py) is what ``Gateway.start`` listens with.
"""
