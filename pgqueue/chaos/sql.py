"""The harness's named statements, loaded once from pgqueue/chaos/queries.sql."""

from __future__ import annotations

from pathlib import Path

from pgqueue.sql import parse_queries

CHAOS_QUERIES = {name: query.sql for name, query in
                 parse_queries((Path(__file__).parent / "queries.sql").read_text()).items()}
