"""Independent reader of vqlab's Parquet files with pyarrow.

Usage: parquet_read.py FILE... — prints JSON {file: {"columns": {name: type}, "rows": [...]}}
(or {"error": message} for a file pyarrow cannot read)."""
import json
import math
import sys

import pyarrow.parquet as pq


def clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


out = {}
for path in sys.argv[1:]:
    try:
        table = pq.read_table(path)
        out[path] = {
            "columns": {f.name: str(f.type) for f in table.schema},
            "rows": [{k: clean(v) for k, v in row.items()} for row in table.to_pylist()],
        }
    except Exception as e:  # reported, not raised: the caller asserts on it
        out[path] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
