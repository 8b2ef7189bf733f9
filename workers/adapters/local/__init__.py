"""The embedded runtime: SQLite state, asyncio worker pool, local server, offline model."""
