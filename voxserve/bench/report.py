"""The short table ``voxserve bench`` prints last: one row per subject, then voxserve's speed relative to each
peer, all read from the result document (so the table shows only what the run measured)."""

from __future__ import annotations

import statistics
from typing import Any


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


# A figure measured while other work competed for the CPU more than this share of the time is marked "*".
CONTENDED_PCT = 10.0


def _mark(row: dict[str, Any]) -> str:
    return "*" if (row.get("cpu_contention_pct") or 0.0) > CONTENDED_PCT else ""


# The figures the table shows; with several rounds each is the median over the rounds (contention: the worst).
_SHOWN = ("realtime_factor", "ms_per_input", "median_ms", "p90_ms", "step_ms")


def _figures(doc: dict[str, Any], suite: str, key: str) -> dict[str, dict[Any, dict[str, Any]]]:
    """subject -> the suite's rows by ``key`` (batch, input_s), one row per key: a run of several rounds has
    several rows per key, merged into one whose shown figures are the medians over the rounds."""
    grouped: dict[str, dict[Any, list[dict[str, Any]]]] = {}
    for row in doc["figures"].get(suite, []):
        grouped.setdefault(row["subject"], {}).setdefault(row[key], []).append(row)
    out: dict[str, dict[Any, dict[str, Any]]] = {}
    for subject, by_key in grouped.items():
        out[subject] = {}
        for k, rows in by_key.items():
            merged = dict(rows[0])
            for name in _SHOWN:
                if name in merged:
                    merged[name] = float(statistics.median(r[name] for r in rows))
            merged["cpu_contention_pct"] = max((r.get("cpu_contention_pct") or 0.0) for r in rows)
            out[subject][k] = merged
    return out


def format_table(doc: dict[str, Any]) -> str:
    offline = {s: next(iter(rows.values())) for s, rows in _figures(doc, "offline", "batch").items()}
    latency = _figures(doc, "latency", "input_s")
    steps = _figures(doc, "step", "batch")
    step_batches = sorted({b for rows in steps.values() for b in rows})
    rounds = doc["settings"].get("rounds", 1)
    header = ["subject", "device", "precision", "offline RTF", "ms/30s input", "5 s ms", "30 s ms"]
    header += [f"step ms b={b}" for b in step_batches]
    table = [header]
    for s in doc["subjects"]:
        name = s["name"]
        off = offline.get(name)
        lat = latency.get(name, {})
        st = steps.get(name, {})
        row = [
            name,
            s["device"],
            s["precision"],
            f"{off['realtime_factor']:,.1f}x (b={off['batch']}){_mark(off)}" if off else "-",
            _fmt_ms(off["ms_per_input"]) + _mark(off) if off else "-",
            *(
                f"{_fmt_ms(lat[sec]['median_ms'])} (p90 {_fmt_ms(lat[sec]['p90_ms'])}){_mark(lat[sec])}"
                if sec in lat
                else "-"
                for sec in (5.0, 30.0)
            ),
            *(_fmt_ms(st[b]["step_ms"]) + _mark(st[b]) if b in st else "-" for b in step_batches),
        ]
        table.append(row)
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if rounds > 1:
        lines.append(
            f"figures: medians over {rounds} rounds, the subjects alternating (every round is in the file)"
        )
    lines += _ratios(doc, offline, latency)
    for skip in doc.get("skipped", []):
        lines.append(f"not measured: {skip['subject']}: {skip['reason']}")
    contention = doc.get("conditions", {}).get("cpu_contention_pct")
    if contention is not None:
        lines.append(f"CPU contention during the run: tasks waited for a CPU {contention}% of the time "
                     "(near 0 on an idle machine)")  # fmt: skip
    if any(_mark(r) for rows in doc["figures"].values() for r in rows):
        lines.append(f"* other work competed for the CPU more than {CONTENDED_PCT:g}% of that measurement")
    return "\n".join(lines)


def _ratios(doc: dict[str, Any], offline: dict, latency: dict) -> list[str]:
    """voxserve's speed over each peer's: offline real-time factor and 30 s latency (>1 means voxserve faster)."""
    ours = [s["name"] for s in doc["subjects"] if s["side"] == "voxserve"]
    peers = [s["name"] for s in doc["subjects"] if s["side"] == "peer"]
    lines = []
    for v in ours:
        for p in peers:
            parts = []
            if v in offline and p in offline:
                parts.append(f"offline {offline[v]['realtime_factor'] / offline[p]['realtime_factor']:.2f}x")
            lat_v = {sec: r["median_ms"] for sec, r in latency.get(v, {}).items()}
            lat_p = {sec: r["median_ms"] for sec, r in latency.get(p, {}).items()}
            for sec in (5.0, 30.0):
                if sec in lat_v and sec in lat_p:
                    parts.append(f"{sec:g} s latency {lat_p[sec] / lat_v[sec]:.2f}x")
            if parts:
                lines.append(f"{v} vs {p}: " + ", ".join(parts) + " (>1: voxserve faster)")
    return lines
