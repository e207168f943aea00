"""Process life: the service that wires the parts, its start and end, several worker processes on
one port, and what processes sharing one PostgreSQL database tell each other."""
