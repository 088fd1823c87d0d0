"""Evaluation reports: a terminal table, report.json, report.md and a pass@k curve (PNG)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prover.eval import EvalResult


def as_dict(result: EvalResult) -> dict:
    spec = dataclasses.asdict(result.spec)
    t = result.timings
    return {
        "run": result.run_name,
        "dataset": result.dataset | {"split": result.spec.split},
        "model": result.model,
        "backend": result.spec.backend,
        "prompt_format": result.spec.prompt,
        "sampling": {k: spec[k] for k in ("n", "temperature", "top_p", "max_tokens", "seed")}
        | {"stop": list(result.spec.sampling().stop)},
        "k": list(result.spec.ks),
        "self_correction_rounds": result.spec.rounds,
        "pass_at_k_counts": "chains" if result.spec.rounds else "samples",
        "verifier": result.verifier,
        "pass_at_k": result.passk,
        "timings": t | {"verify_share": (t["verify_s"] / t["wall_s"]) if t.get("wall_s") else None},
        "counts": result.counts,
        "problems": result.problems,
    }


def print_table(result: EvalResult, console: Console | None = None) -> None:
    console = console or Console()
    d = as_dict(result)
    table = Table(title=escape(f"{d['dataset']['name']} [{d['dataset']['split']}] — {d['model']}"))
    for col in ("k", "pass@k", "95% CI", "problems"):
        table.add_column(col, justify="right")
    for p in result.passk:
        table.add_row(str(p["k"]), f"{100 * p['value']:.1f}%",
                      f"{100 * p['ci_low']:.1f}–{100 * p['ci_high']:.1f}%", str(p["problems"]))
    console.print(table)
    t = d["timings"]
    console.print(
        f"n={result.spec.n} rounds={result.spec.rounds} (pass@k counts "
        f"{d['pass_at_k_counts']}) wall {t['wall_s']:.1f}s, generation "
        f"{t['generate_s']:.1f}s, verification {t['verify_s']:.1f}s "
        f"({100 * (t['verify_share'] or 0):.0f}% of wall); verifier {result.verifier['backend']} "
        f"{result.verifier['version']}; attempts by status {result.counts}", markup=False
    )


def write_report(result: EvalResult, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    d = as_dict(result)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md",
             "png": out_dir / "pass_at_k.png"}
    paths["json"].write_text(json.dumps(d, indent=2, ensure_ascii=False))
    paths["md"].write_text(_markdown(d))
    _plot(result, paths["png"])
    return paths


def _markdown(d: dict) -> str:
    ds, s, t = d["dataset"], d["sampling"], d["timings"]
    lines = [
        f"# Evaluation `{d['run']}`",
        "",
        f"- dataset: **{ds['name']}** split `{ds['split']}`, file `{ds.get('file', ds['source'])}` "
        f"sha256 `{ds['version']}`, source `{ds['source']}`",
        f"- model: `{d['model']}` via backend `{d['backend']}`, prompt format `{d['prompt_format']}`",
        f"- sampling: n={s['n']}, temperature={s['temperature']}, top_p={s['top_p']}, "
        f"max_tokens={s['max_tokens']}, seed={s['seed']}",
        f"- self-correction rounds: {d['self_correction_rounds']} (pass@k counts "
        f"{d['pass_at_k_counts']})",
        f"- verifier: {d['verifier']['backend']} {d['verifier']['version']}, "
        f"timeout {d['verifier']['timeout_s']} s"
        + ("" if d["verifier"].get("sandboxed", True) else " (**not sandboxed**)"),
        f"- wall time {t['wall_s']:.1f} s; generation {t['generate_s']:.1f} s; verification "
        f"{t['verify_s']:.1f} s ({100 * (t['verify_share'] or 0):.0f}% of wall)",
        "",
        "| k | pass@k | 95% bootstrap CI | problems |",
        "|---|---|---|---|",
    ]
    for p in d["pass_at_k"]:
        lines.append(f"| {p['k']} | {100 * p['value']:.1f}% | {100 * p['ci_low']:.1f}–"
                     f"{100 * p['ci_high']:.1f}% | {p['problems']} |")
    unit = d["pass_at_k_counts"]
    lines += ["", "## Problems", "", f"n and c count {unit}.", "",
              f"| problem | n ({unit}) | c (successful {unit}) |", "|---|---|---|"]
    for p in d["problems"]:
        lines.append(f"| {p['name']} | {p['n']} | {p['c']} |")
    proved = [p for p in d["problems"] if p["proof"]]
    if proved:
        lines += ["", "## One verified proof per solved problem", ""]
        for p in proved:
            lines += [f"### {p['name']}", ""]
            if p.get("helpers"):
                lines += ["Helpers (checked before the statement):", "", *_fenced(p["helpers"]),
                          "", "Proof:", ""]
            lines += [*_fenced(p["proof"]), ""]
    return "\n".join(lines) + "\n"


def _fenced(text: str) -> list[str]:
    """A code block whose fence is longer than any backtick run in the (untrusted) text."""
    best = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    fence = "`" * max(3, best + 1)
    return [fence, text.strip(), fence]


def _plot(result: EvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prover.passk import mean_pass_at_k

    pairs = [(p["n"], p["c"]) for p in result.problems]
    n = min((p[0] for p in pairs), default=0)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 3200) if k <= n] or [1]
    values = [100 * mean_pass_at_k(pairs, k) for k in ks] if n else [0.0]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, values, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"{result.dataset['name']} [{result.spec.split}] — {result.model}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
