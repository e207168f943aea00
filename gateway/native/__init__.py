"""Our own terminal protocol on the gateway's side: sessions, TCP and TLS links, the door that
strangers wait at, serial ports and RS-485 buses (docs/protocol.md, docs/rs485.md)."""
