"""The sync core: the event log, the puller and pusher, the merge and reconciliation, the user
directory and its changes feed, and the sync mode. It talks to every terminal through
``TerminalConnection`` (gateway/sync/connection.py) and never knows which protocol is underneath."""
