"""The chaos harness (`python -m pgqueue chaos`): real worker processes against a real PostgreSQL
while workers are killed, the server restarts, crashes or runs out of connections, sessions are
terminated or an old snapshot pins xmin; a report of what was lost, run twice or rescued wrongly.

A tool, not engine: it drives the engine from outside (processes, SQL on the engine's tables).
"""
