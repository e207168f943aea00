"""Persistence: the engine and its threads, the tables, and their migrations (SQLite embedded,
PostgreSQL for production and several processes)."""
