#!/usr/bin/env python3
"""Draws a benchmark curve as SVG, with no plotting library: size on a
logarithmic x axis, one line per series.

usage: plot.py CASE X_LABEL Y_LABEL FIELD [FIELD ...]
Reads bench/results/curves.jsonl (one JSON object per measurement, with
"case", "series", "n" and the FIELDs) and writes bench/results/CASE-FIELD.svg
for each FIELD; the last measurement of a (series, n) wins.
"""
import json
import math
import sys

W, H, L, R, T, B = 640, 400, 70, 160, 40, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def svg(case, field, xlabel, ylabel, series):
    xs = sorted({n for pts in series.values() for n in pts})
    ys = [v for pts in series.values() for v in pts.values()]
    if not xs or not ys:
        return None
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    hi = hi if hi > lo else lo + 1
    top = max(ys) * 1.1 or 1

    def px(n):
        return L + (math.log10(n) - lo) / (hi - lo) * (W - L - R)

    def py(v):
        return H - B - v / top * (H - T - B)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{case}: {ylabel}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">{xlabel}</text>']
    for n in xs:
        out.append(f'<text x="{px(n):.1f}" y="{H - B + 16}" text-anchor="middle">{n:,}</text>')
    for i in range(5):
        v = top * i / 4
        out.append(f'<line x1="{L - 4}" y1="{py(v):.1f}" x2="{W - R}" y2="{py(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 8}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for k, (name, pts) in enumerate(sorted(series.items())):
        c = COLOURS[k % len(COLOURS)]
        line = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in sorted(pts.items()))
        out.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="2"/>')
        for n, v in sorted(pts.items()):
            out.append(f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="3" fill="{c}"/>')
            out.append(f'<text x="{px(n) + 5:.1f}" y="{py(v) - 6:.1f}" fill="{c}">{v:.3g}</text>')
        out.append(f'<text x="{W - R + 10}" y="{T + 18 * k + 10}" fill="{c}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    case, xlabel, ylabel = sys.argv[1:4]
    for field in sys.argv[4:]:
        series = {}
        with open("bench/results/curves.jsonl") as f:
            for line in f:
                d = json.loads(line)
                if d.get("case") == case and field in d:
                    series.setdefault(d["series"], {})[int(d["n"])] = float(d[field])
        doc = svg(case, field, xlabel, f"{ylabel} ({field})", series)
        if doc:
            with open(f"bench/results/{case}-{field}.svg", "w") as f:
                f.write(doc)
            print(f"bench/results/{case}-{field}.svg")


if __name__ == "__main__":
    main()
