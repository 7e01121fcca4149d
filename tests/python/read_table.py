"""Reads a topic's Delta Lake table as an analyst would, with no Cairn code: the `deltalake`
package (delta-rs) for the snapshot and pyarrow, polars for a second reader, DuckDB for SQL
over the same Arrow data. Prints one JSON object.

usage: read_table.py TABLE_URI [VERSION|latest|every] [STORAGE_OPTIONS_JSON]
       read_table.py TABLE_URI query SQL [STORAGE_OPTIONS_JSON]

`every` reads each version from the first the log still holds to the latest and prints, per
version, its rows and distinct (partition, offset) pairs. `query` runs SQL in DuckDB over the
latest snapshot registered as `topic`, and polars' count of the table's non-null values per
column, and prints the rows, the column types and those counts.
"""

import json
import os
import sys

import duckdb
import polars as pl
from deltalake import DeltaTable

uri = sys.argv[1]
which = sys.argv[2] if len(sys.argv) > 2 else "latest"

if which == "query":
    sql = sys.argv[3]
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    table = DeltaTable(uri, storage_options=options).to_pyarrow_table()
    con = duckdb.connect()
    con.register("topic", table)
    rows = con.execute(sql).fetchall()
    frame = pl.read_delta(uri, storage_options=options)
    print(
        json.dumps(
            {
                "rows": [list(r) for r in rows],
                "types": {f.name: str(f.type) for f in table.schema},
                "polars_non_null": {c: frame.height - frame[c].null_count() for c in frame.columns},
            },
            default=str,
        )
    )
    sys.stdout.flush()
    os._exit(0)

options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None

if which == "every":
    latest = DeltaTable(uri, storage_options=options).version()
    out = {}
    for v in range(latest + 1):
        try:
            t = DeltaTable(uri, version=v, storage_options=options).to_pyarrow_table()
        except Exception as e:  # a version whose log entry has expired
            out[str(v)] = str(e)[:200]
            continue
        pairs = set(zip(t.column("partition").to_pylist(), t.column("offset").to_pylist()))
        out[str(v)] = [t.num_rows, len(pairs)]
    print(json.dumps(out))
    sys.stdout.flush()
    # Skips interpreter teardown: the native libraries' threads (delta-rs, DuckDB, polars)
    # sometimes abort the process while it unwinds, after the answer was printed.
    os._exit(0)

version = None if which == "latest" else int(which)

dt = DeltaTable(uri, version=version, storage_options=options)
table = dt.to_pyarrow_table()
parts = {}
for p, o in zip(table.column("partition").to_pylist(), table.column("offset").to_pylist()):
    parts.setdefault(str(p), []).append(o)

# polars, through its own Delta reader.
frame = pl.read_delta(uri, version=version, storage_options=options)
# DuckDB: SQL over the snapshot's Arrow data.
con = duckdb.connect()
con.register("topic", table)
duck = con.execute(
    "SELECT count(*), count(DISTINCT (partition, \"offset\")) FROM topic"
).fetchone()

print(
    json.dumps(
        {
            "version": dt.version(),
            "files": len(dt.file_uris()),
            "rows": table.num_rows,
            "per_partition": {
                p: [len(o), min(o), max(o), len(set(o))] for p, o in sorted(parts.items())
            },
            "polars_rows": frame.height,
            "duckdb": list(duck),
            "columns": table.column_names,
        }
    )
)
sys.stdout.flush()
os._exit(0)
