"""The run's outputs: <cpu-slug>-<date>.json (machine, limits, rows, every round), the same name .md
(one table row per result: the two figures, the ratio, the fraction of the limit, quiet rounds) and
.png (step time and peak memory against sequence length and width, with O(n) / O(n^2) guides).
An existing result is never overwritten: a second run on the same day gets -2, -3, ...
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path


def output_stem(folder: Path, cpu_slug: str, date: datetime.date | None = None) -> Path:
    """folder/<slug>-<date>, or -2, -3, ... when a result of that name exists."""
    base = f"{cpu_slug}-{(date or datetime.date.today()).isoformat()}"
    stem, n = folder / base, 1
    while any(stem.with_suffix(s).exists() for s in (".json", ".md", ".png")):
        n += 1
        stem = folder / f"{base}-{n}"
    return stem


def result_path(folder: Path, name: str, suffix: str = ".json") -> Path:
    """folder/<name>-<date><suffix> for an experiment's result, never an existing one (-2, -3, ...)."""
    return output_stem(folder, name).with_suffix(suffix)


def write_text(path: Path, text: str) -> None:
    """Atomically: a temporary sibling, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---- the Markdown table ------------------------------------------------------------------------------
def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"


def ratio_cell(ratio: dict | None) -> str:
    if not ratio or ratio.get("median") is None:
        return "—"
    text = f"{ratio['median']:.2f}×"
    if ratio.get("min") is not None and ratio.get("rounds", 0) > 1:
        text += f" [{ratio['min']:.2f}–{ratio['max']:.2f}]"
    return text


def quiet_cell(r: dict) -> str:
    ratio = r.get("ratio") or {}
    if ratio.get("quiet_rounds") is None:
        return "n/a (one run each)" if r["status"] == "ok" else "—"
    text = f"{ratio['quiet_rounds']}/{ratio['rounds']}"
    return text + " (none quiet: all rounds used)" if ratio["quiet_rounds"] == 0 and ratio["rounds"] else text


def limit_cell(r: dict) -> str:
    limit = r.get("limit")
    if r["section"] == "memory" and r.get("step_peak_mb"):
        p = r["step_peak_mb"]
        return f"step alone: {_num(p['plmkit'], 4)} vs {_num(p['transformers'], 4)} MB"
    if not limit:
        return "—"
    if limit["name"] == "read bandwidth":
        if limit.get("fraction") is None:
            return "—"
        return f"{limit['fraction']:.2f} of read bandwidth (bound {_num(limit['bound_ms_per_step'])} ms/step)"
    return (
        f"matmuls {limit['fraction']:.2f} of step (reference {limit['reference_fraction']:.2f}); "
        f"MFU {limit['mfu']:.2f} vs {limit['reference_mfu']:.2f}"
    )


def goal_cell(r: dict) -> str:
    if "goal" not in r:
        return "—"
    met = {True: "met", False: "**not met**", None: "?"}[r.get("goal_met")]
    return f"{r['goal']}: {met}"


def run_kind(options: dict) -> str:
    if options.get("tiny"):
        return "--tiny (harness test: tiny models, figures mean nothing)"
    return "--quick" if options.get("quick") else "full run"


def table(result: dict) -> str:
    m, lim = result["machine"], result["limits"]
    cpu = m["cpu"]
    flags = ", ".join(k for k in ("avx512", "avx512_bf16", "amx", "amx_bf16") if cpu.get(k)) or "none"
    lines = [
        f"# plmkit benchmark — {cpu['model']} ({m['date']})",
        "",
        f"CPU flags: {flags}; {m['threads']} threads of {m['cores']} cores; torch {m['torch']}, "
        f"transformers {m['transformers']}, peft {m['peft']}; load average {m['load_average']}; "
        f"{run_kind(result['options'])}.",
        "",
        f"Limits measured in this run: GEMM {lim['gemm_n']}³ "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in lim["gemm_gflops"].items())
        + f"; streaming read {lim['read_gb_s']:.1f} GB/s; "
        "matrix-vector from DRAM: "
        + "; ".join(
            f"{d} " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in rates.items())
            for d, rates in lim["matvec_gb_s"].items()
        )
        + ".",
    ]
    if "gpu" in lim:
        lines.append(f"GPU ({lim['gpu']['device']}): bf16 GEMM {lim['gpu']['gemm_gflops_bf16']:.0f} GFLOP/s.")
    lines += [
        "",
        "Ratios: the reference's time over plmkit's (> 1: plmkit faster), median of per-round ratios over "
        "quiet rounds [min–max]; memory: the reference's peak over plmkit's.",
        "",
        "| row | plmkit | reference | ratio | fraction of the limit | goal | quiet rounds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        if r["status"] != "ok":
            reason = r.get("reason", "")
            lines.append(f"| {r['name']} | {r['status']}: {reason} | | | | {goal_cell(r)} | |")
            continue
        unit = r.get("unit", "")
        lines.append(
            f"| {r['name']} | {_num(r.get('plmkit'))} {unit} | {_num(r.get('reference'))} {unit} "
            f"({r.get('reference_name', '')}) | {ratio_cell(r.get('ratio'))} | {limit_cell(r)} | "
            f"{goal_cell(r)} | {quiet_cell(r)} |"
        )
    speedups = [r for r in result["rows"] if r.get("bf16_over_fp32")]
    if speedups:
        lines += [
            "",
            "bf16 autocast over fp32, each side on itself (same rounds; goal: plmkit's >= the reference's):",
            "",
        ]
        for r in speedups:
            ours, theirs = r["bf16_over_fp32"]["plmkit"]["median"], r["bf16_over_fp32"]["reference"]["median"]
            met = "met" if ours >= theirs else "**not met**"
            lines.append(f"- {r['name']}: plmkit {ours:.2f}×, {r['reference_name']} {theirs:.2f}×: {met}")
    return "\n".join(lines) + "\n"


# ---- the plot ----------------------------------------------------------------------------------------
def plot(scaling: dict, path: Path) -> bool:
    """Step time and peak-RSS growth against sequence length (width fixed) and width (length fixed), on
    log-log axes with O(n), O(n^2) guides through the first point; a point measured while other processes
    took > 10% of the machine is drawn as a red x. False when there is nothing to plot."""
    points = [p for p in scaling.get("points", []) if p.get("step_ms")]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_seq = sorted((p for p in points if p["width"] == scaling["width_for_seq"]), key=lambda p: p["seq"])
    by_width = sorted((p for p in points if p["seq"] == scaling["seq_for_width"]), key=lambda p: p["width"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [
        (axes[0][0], by_seq, "seq", "step_ms", "step time (ms)", "sequence length"),
        (axes[1][0], by_seq, "seq", "peak_growth_mb", "peak RSS growth (MB)", "sequence length"),
        (axes[0][1], by_width, "width", "step_ms", "step time (ms)", "width (d_model)"),
        (axes[1][1], by_width, "width", "peak_growth_mb", "peak RSS growth (MB)", "width (d_model)"),
    ]
    for ax, series, x_key, y_key, y_label, x_label in panels:
        xs = [p[x_key] for p in series]
        ys = [max(p[y_key], 1e-3) for p in series]
        if not xs:
            ax.set_visible(False)
            continue
        ax.plot(xs, ys, "-", color="C0")
        quiet = [p.get("quiet", True) for p in series]
        ax.plot(
            [x for x, q in zip(xs, quiet) if q],
            [y for y, q in zip(ys, quiet) if q],
            "o",
            color="C0",
            label="plmkit",
        )
        if not all(quiet):
            noisy = [(x, y) for x, y, q in zip(xs, ys, quiet) if not q]
            ax.plot(*zip(*noisy), "x", color="C3", label="plmkit (others busy)")
        for power, style in ((1, "--"), (2, ":")):
            ax.plot(
                xs, [ys[0] * (x / xs[0]) ** power for x in xs], style, color="gray", label=f"O(n^{power})"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.legend(fontsize=8)
    fixed = f"{scaling['layers']} layers, vocab {scaling['vocab']}, batch {scaling['batch']}, fp32"
    axes[0][0].set_title(f"against length (width {scaling['width_for_seq']})")
    axes[0][1].set_title(f"against width (length {scaling['seq_for_width']})")
    fig.suptitle(f"plmkit causal LM training step: {fixed}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def write(result: dict, folder: Path, cpu_slug: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = output_stem(folder, cpu_slug)
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md")}
    write_text(paths["md"], table(result))
    if plot(result.get("scaling") or {}, stem.with_suffix(".png")):
        paths["png"] = stem.with_suffix(".png")
    write_text(paths["json"], json.dumps(result, indent=1, default=str) + "\n")
    return paths
