"""Loads pgqueue/sql/queries.sql once into named statements (`QUERIES["claim_jobs"]`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+) :(one|many|none|copy)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    cardinality: str  # one, many, none or copy
    doc: str
    sql: str


def parse_queries(text: str) -> dict[str, Query]:
    queries: dict[str, Query] = {}
    headers = list(_HEADER.finditer(text))
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        body = text[header.end() : end].strip()
        doc_lines: list[str] = []
        sql_lines: list[str] = []
        for line in body.splitlines():
            if not sql_lines and line.startswith("--"):
                doc_lines.append(line[2:].strip())
            else:
                sql_lines.append(line)
        while sql_lines and (not sql_lines[-1].strip() or sql_lines[-1].startswith("--")):
            sql_lines.pop()  # a section header above the next statement belongs to no statement
        name = header.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} defined twice")
        sql = "\n".join(sql_lines).strip().rstrip(";")
        queries[name] = Query(name, header.group(2), " ".join(doc_lines), sql)
    return queries


QUERIES = parse_queries((Path(__file__).parent / "sql" / "queries.sql").read_text())
