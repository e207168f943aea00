"""``python -m gateway.http``: the API process, as ``gateway run`` starts it (gateway/http/process.py)."""

from gateway.http.process import main

main()
