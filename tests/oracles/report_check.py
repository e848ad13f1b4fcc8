"""Oracle for `vqlab report`: recompute every cell of a table with pandas from the sweep's
results.parquet and check the LaTeX, Markdown, CSV and Parquet outputs against it.

usage: report_check.py RESULTS.parquet TABLE.tex TABLE.md TABLE.csv TABLE.parquet
                       --rows k1,k2 [--cols k3] --metrics m1,m2
Prints JSON: {"cells": n, "errors": [...], "failed_runs": [...]}.
"""

import argparse
import json
import math
import re
from collections import Counter

import pandas as pd

LOWER = {"eval/rec_mse", "eval/rfid", "eval/kid", "eval/dead_codes"}
HIGHER = {"eval/psnr", "eval/usage", "eval/perplexity"}
CELL = re.compile(r"^\$(\\mathbf\{)?(-?[\d.]+)(?: \\pm (-?[\d.]+))?\}?\$(?:\\,\{\\scriptsize\(n=(\d+)\)\})?$")


def text(v):
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def unescape_latex(s):
    return re.sub(r"\\([_&%$#{}])", r"\1", s).strip()


def decimals(s):
    return len(s.split(".")[1]) if "." in s else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("tex")
    ap.add_argument("md")
    ap.add_argument("csv")
    ap.add_argument("parquet")
    ap.add_argument("--rows", required=True)
    ap.add_argument("--cols", default="")
    ap.add_argument("--metrics", required=True)
    a = ap.parse_args()
    rows = a.rows.split(",")
    cols = [c for c in a.cols.split(",") if c]
    metrics = a.metrics.split(",")
    errors = []

    df = pd.read_parquet(a.results)
    fin = df[df["run.state"].isin(["done", "stopped_early"])]
    failed_runs = sorted(df[~df["run.state"].isin(["done", "stopped_early"])]["run.dir"].tolist())
    expected = {}
    for m in metrics:
        agg = fin.groupby(rows + cols)[m].agg(["mean", "std", "count"])
        for key, r in agg.iterrows():
            key = key if isinstance(key, tuple) else (key,)
            expected[(tuple(text(k) for k in key), m)] = (r["mean"], r["std"], int(r["count"]))

    # --- LaTeX: header (metric order and scale), then the body.
    tex = open(a.tex).read()
    lines = tex.splitlines()
    top, mid, bot = lines.index("\\toprule"), lines.index("\\midrule"), lines.index("\\bottomrule")
    head = [l for l in lines[top + 1 : mid] if not l.startswith("\\cmidrule")]
    first = head[0].rstrip("\\ ").split(" & ")[len(rows) :]
    exponents = {}
    for m, part in zip(metrics, first):
        e = re.search(r"10\^\{(-?\d+)\}", part)
        exponents[m] = int(e.group(1)) if e else 0
    if cols:
        col_labels = [unescape_latex(c) for c in head[1].rstrip("\\ ").split(" & ")[len(rows) :]]
        ncol = len(col_labels) // len(metrics)
        col_values = [tuple(v.strip() for v in c.split(",")) for c in col_labels[:ncol]]
    else:
        col_values = [()]
    latex_cells = {}
    for line in lines[mid + 1 : bot]:
        parts = line.rstrip().removesuffix("\\\\").rstrip().split(" & ")
        rkey = tuple(unescape_latex(p) for p in parts[: len(rows)])
        for i, cell in enumerate(parts[len(rows) :]):
            m = metrics[i // len(col_values)]
            ckey = col_values[i % len(col_values)]
            latex_cells[(rkey + ckey, m)] = cell.strip()

    parsed = {}
    for (key, m), cell in latex_cells.items():
        exp = expected.get((key, m))
        if cell == "--":
            if exp is not None and exp[2] > 0:
                errors.append(f"{key} {m}: LaTeX shows -- but pandas has {exp}")
            parsed[(key, m)] = None
            continue
        g = CELL.match(cell)
        if not g:
            errors.append(f"{key} {m}: unparseable LaTeX cell {cell!r}")
            continue
        bold, mean_s, std_s, n_s = g.group(1) is not None, g.group(2), g.group(3), g.group(4)
        parsed[(key, m)] = (bold, mean_s, std_s, n_s)
        if exp is None or exp[2] == 0:
            errors.append(f"{key} {m}: LaTeX shows {cell} but pandas has no finished run")
            continue
        mean, std, n = exp
        scale = 10.0 ** exponents[m]
        d = decimals(mean_s)
        if abs(float(mean_s) - mean / scale) > 0.5 * 10**-d * (1 + 1e-9):
            errors.append(f"{key} {m}: mean {mean_s} (x10^{exponents[m]}) but pandas {mean}")
        if n > 1:
            if std_s is None or abs(float(std_s) - std / scale) > 0.5 * 10**-decimals(std_s) * (1 + 1e-9):
                errors.append(f"{key} {m}: std {std_s} but pandas {std}")
        elif std_s is not None:
            errors.append(f"{key} {m}: one run but a std {std_s}")
    for (key, m), exp in expected.items():
        if exp[2] > 0 and (key, m) not in latex_cells:
            errors.append(f"{key} {m}: pandas has {exp} but the LaTeX table has no such cell")

    # Bold: the best rounded mean of each column (metric x col value), ties included.
    for m in metrics:
        if m not in LOWER and m not in HIGHER:
            continue
        for ckey in col_values:
            column = {k: v for (k, mm), v in parsed.items() if mm == m and k[len(rows) :] == ckey and v}
            if len(column) < 2:
                continue
            vals = {k: float(v[1]) for k, v in column.items()}
            best = min(vals.values()) if m in LOWER else max(vals.values())
            for k, v in column.items():
                if v[0] != (vals[k] == best):
                    errors.append(f"{k} {m}: bold={v[0]} but best={vals[k] == best}")
    # n shown exactly where it differs from the usual n.
    ns = Counter(e[2] for e in expected.values() if e[2] > 0)
    usual = max(ns.items(), key=lambda kv: (kv[1], kv[0]))[0] if ns else 0
    for (key, m), v in parsed.items():
        if v:
            n = expected[(key, m)][2]
            shown = int(v[3]) if v[3] else None
            if (n != usual) != (shown is not None) or (shown is not None and shown != n):
                errors.append(f"{key} {m}: n={n} (usual {usual}) shown as {shown}")

    # --- Markdown: the same cell strings.
    md_rows = [l for l in open(a.md).read().splitlines() if l.startswith("|")][2:]
    for line in md_rows:
        parts = [p.strip() for p in line.strip("|").split(" | ")]
        rkey = tuple(p.replace("\\_", "_") for p in parts[: len(rows)])
        for i, cell in enumerate(parts[len(rows) :]):
            m = metrics[i // len(col_values)]
            key = rkey + col_values[i % len(col_values)]
            p = parsed.get((key, m), "absent")
            cell = re.sub(r" \(n=\d+\)$", "", cell).replace("**", "")
            want = "–" if p is None else (f"{p[1]} ± {p[2]}" if p and p != "absent" and p[2] else (p[1] if p and p != "absent" else None))
            if cell != want:
                errors.append(f"{key} {m}: Markdown {cell!r} but LaTeX {want!r}")

    # --- CSV and Parquet: unrounded numbers equal pandas; `shown` equals the LaTeX text.
    for name, frame in (("csv", pd.read_csv(a.csv)), ("parquet", pd.read_parquet(a.parquet))):
        for _, r in frame.iterrows():
            key = tuple(text(r[k]) for k in rows + cols)
            m = r["metric"]
            exp = expected.get((key, m))
            if exp is None or exp[2] == 0:
                if r["n"] != 0:
                    errors.append(f"{name} {key} {m}: n={r['n']} but pandas has no finished run")
                continue
            mean, std, n = exp
            if r["n"] != n or not math.isclose(r["mean"], mean, rel_tol=1e-9, abs_tol=1e-12):
                errors.append(f"{name} {key} {m}: mean {r['mean']} n {r['n']} but pandas {mean} {n}")
            if n > 1 and not math.isclose(r["std"], std, rel_tol=1e-9, abs_tol=1e-12):
                errors.append(f"{name} {key} {m}: std {r['std']} but pandas {std}")
            p = parsed.get((key, m))
            want = f"{p[1]} ± {p[2]}" if p and p[2] else (p[1] if p else "")
            if str(r["shown"]) != want:
                errors.append(f"{name} {key} {m}: shown {r['shown']!r} but LaTeX {want!r}")

    # --- Footnotes name every run that did not finish.
    md = open(a.md).read()
    for run in failed_runs:
        if run not in tex or run not in md:
            errors.append(f"run {run} did not finish but a footnote does not name it")

    print(json.dumps({"cells": len(latex_cells), "errors": errors, "failed_runs": failed_runs, "exponents": exponents}))


if __name__ == "__main__":
    main()
