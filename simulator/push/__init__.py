"""Emulated ZKTeco PUSH devices: ``device.py`` the device with no I/O, ``client.py`` the HTTP
caller, its keypad and ``simulator push-terminal``. Written against docs/zk-push.md."""
