"""The methods-at-one-budget table: a plan of named runs (``plan.txt``, one ``name|overrides`` a line,
written by ``results/methods_smollm2_sst2/run.sh``) → a README and the dev-accuracy curves.

Unlike the paper tables (``zobench.report.cells``), nothing is averaged or selected across seeds:
each planned run is one row, in the plan's order, and a run that was stopped early still shows
the dev evaluations it reached. A run dir without ``summary.json`` was stopped before it finished:
its dev evaluations so far are reported, and it has no test accuracy (the best-dev state is tested
only at the end of a run). ``void.txt`` (``name|why`` a line) lists runs found invalid after the
fact: they are shown as void and compared with nothing.

Two comparisons follow the table, the claims of the papers: each method's best dev accuracy at
the last dev evaluation every plain MeZO, HiZOO and FZOO run reached (HiZOO, Zhao et al. 2024;
FZOO, Dang et al. 2025), and the training forward passes at which each run first reached a dev
accuracy (FZOO's claim is about passes to an accuracy).
"""

from __future__ import annotations

from pathlib import Path

from .files import read_json_object, read_jsonl, read_yaml_mapping

#: dev accuracies whose first crossing is reported (FZOO's claim is about passes to an accuracy)
THRESHOLDS = (0.62, 0.65, 0.68, 0.70)

#: the curves' two panels: the full-space SPSA family (and the claims about FZOO and HiZOO), then the
#: methods that change the direction's space or the update rule; MeZO is drawn in both as the reference
PANELS = (
    ("SPSA family", ("mezo", "hizoo", "fzoo", "zo_sgd_momentum", "zo_sgd_sign", "zo_sgd_cons")),
    (
        "other directions and update rules",
        ("mezo", "sparse_mezo", "tezo", "lozo", "subzero", "zo_adam", "forward_gradient"),
    ),
)


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _row(name: str, folder: Path, void: dict) -> dict:
    """One launched run: its config, dev curve and (when it finished) summary."""
    cfg = read_yaml_mapping(folder / "config.yaml")  # a damaged committed file: one line naming it
    events = read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
    summary = read_json_object(folder / "summary.json") if (folder / "summary.json").is_file() else None
    train = [e for e in events if e["event"] == "train"]
    dev = [(e["forward_passes"], e["accuracy"]) for e in events if e["event"] == "eval" and e["split"] == "dev"]
    last = train[-1] if train else {}
    opt = cfg["optimizer"]
    return {
        "name": name,
        "launched": True,
        "method": opt["name"],
        "lr": opt.get("lr"),
        "first_order": bool(opt.get("first_order")),
        "summary": summary,
        "steps": summary["steps"] if summary else last.get("step", 0),
        "passes": summary["forward_passes"] if summary else last.get("forward_passes", 0),
        "wall": summary["wall_s"] if summary else last.get("wall_s"),
        "peak": summary["peak_memory_bytes"] if summary else last.get("peak_memory_bytes"),
        "budget": cfg["train"].get("forward_budget"),
        "dev": dev,
        "eval_only": cfg["train"]["steps"] == 0 and not cfg["train"].get("forward_budget"),
        "void": void.get(name),
    }


def load(runs: Path) -> list[dict]:
    """The planned runs of ``runs/plan.txt`` in its order; a run never launched is ``launched: False``."""
    order = [line.split("|")[0] for line in _read_lines(runs / "plan.txt")]
    void = dict(line.split("|", 1) for line in _read_lines(runs / "void.txt"))
    return [
        _row(name, runs / name, void) if (runs / name / "config.yaml").is_file() else {"name": name, "launched": False}
        for name in order
    ]


def completed(rows: list[dict]) -> list[dict]:
    """The runs that completed (not still running, stopped or failed)."""
    return [r for r in rows if r["launched"] and r["summary"] and r["summary"]["status"] == "completed"]


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def half_width(accuracy: float, n: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy measured on n examples,
    1.96·√(p(1−p)/n): the sampling noise of the test set alone (one seed, so it leaves out the
    run-to-run spread of the method, which adds to it)."""
    return 1.96 * (accuracy * (1 - accuracy) / n) ** 0.5


def passes_to_reach(dev: list[tuple[int, float]], threshold: float) -> int | None:
    """Training forward passes at the first dev evaluation with accuracy ≥ threshold (None: never)."""
    return next((passes for passes, acc in dev if acc >= threshold), None)


def _zo(rows: list[dict]) -> list[dict]:
    """The zeroth-order runs that trained and count (first-order, eval-only and void runs do not)."""
    return [r for r in rows if r["launched"] and not r["first_order"] and not r["eval_only"] and not r["void"]]


def _intro(runs: Path, budget: int, command: str, machine: str | None) -> list[str]:
    every = budget // 10 if budget else "-"
    return [
        "# Every method on SmolLM2-135M / SST-2 at one forward-pass budget",
        "",
        f"Generated by `python -m zobench.report regenerate` from `{runs.name}/` (hand-written notes: NOTES.md). "
        "Protocol: MeZO's 1000 train / 500 dev / 1000 test (SST-2 validation: 872, all used), batch 16, eps 1e-3, "
        f"full fine-tuning, fp32; every ZO method gets {budget} training forward passes (`train.forward_budget`), "
        f"dev evaluated every {every} passes (dev #k: the k-th evaluation, at ~k·{every} "
        "passes rounded down to whole steps, so a method with many passes per step is evaluated a little "
        "more often), the best-dev state tested at the end. Command: "
        f"`{command}`{f' ({machine})' if machine else ''}.",
        "",
    ]


def _run_line(r: dict, evals: int) -> str:
    """One launched run as a table row."""
    s = r["summary"]
    status = f"**void**: {r['void']}" if r["void"] else (s["status"] if s else "stopped")
    # first-order runs are evaluated by steps, not at the ZO runs' forward-pass counts
    devs = (
        ["-"] * evals
        if r["eval_only"] or r["first_order"]
        else ([fmt(acc) for _, acc in r["dev"]] + ["-"] * evals)[:evals]
    )
    best = s.get(f"dev_{s['metric']}") if s else (max(a for _, a in r["dev"]) if r["dev"] else None)
    test = s.get(f"test_{s['metric']}") if s else None
    spread = fmt(half_width(test, s["num_test"])) if test is not None and s.get("num_test") else "-"
    lr = "-" if r["lr"] is None or r["eval_only"] else f"{r['lr']:g}"
    peak = fmt(r["peak"] / 2**20, ".0f") if r["peak"] else "-"
    method = r["method"] if not r["eval_only"] else "-"
    cells = [r["name"], method, lr, status, str(r["steps"]), str(r["passes"]), *devs, fmt(best), fmt(test), spread]
    return "| " + " | ".join([*cells, peak, fmt(r["wall"], ".0f")]) + " |"


def _table(rows: list[dict], evals: int) -> list[str]:
    """The incomplete-runs note, the table of launched runs and the planned runs never started."""
    launched = [r for r in rows if r["launched"]]
    unfinished = [r for r in launched if r["summary"] is None]
    missing = [r for r in rows if not r["launched"]]
    out = []
    if unfinished or missing:
        out += [
            f"**Incomplete:** {len(unfinished)} launched run(s) stopped before the end of their budget and "
            f"{len(missing)} planned run(s) never started; stopped runs show the dev accuracy reached so far "
            "and have no test accuracy.",
            "",
        ]
    header = ["run", "method", "lr", "status", "steps", "train fwd passes"] + [f"dev #{k + 1}" for k in range(evals)]
    header += ["best dev", "test acc", "± (95%)", "peak mem (MB)", "wall (s)"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += [_run_line(r, evals) for r in launched]
    if missing:
        out += ["", "Planned, never started: " + ", ".join(r["name"] for r in missing) + "."]
    return out


def _claims(rows: list[dict], budget: int) -> list[str]:
    """The two claims of the papers, at the k-th dev evaluation (k·budget/10 passes, whole steps
    apart) that every plain MeZO, HiZOO and FZOO run reached; each method's lr picked on dev there."""
    zo = _zo(rows)
    compared = {m: [r for r in zo if r["name"].startswith(f"{m}_lr") and r["dev"]] for m in ("mezo", "hizoo", "fzoo")}
    k = min((len(r["dev"]) for runs_of in compared.values() for r in runs_of), default=0)
    if not k:
        return []
    out = [
        "",
        f"## The papers' claims at dev evaluation {k} (~{k * budget // 10} training forward "
        "passes, the most that every MeZO, HiZOO and FZOO run reached; each method's best lr there)",
        "",
        "| method | dev acc | run | forward passes | steps |",
        "|---|---|---|---|---|",
    ]
    for method, runs_of in compared.items():
        if not runs_of:
            out.append(f"| {method} | - | no valid run | - | - |")
            continue
        acc, name, passes = max((r["dev"][k - 1][1], r["name"], r["dev"][k - 1][0]) for r in runs_of)
        per_step = next(r for r in runs_of if r["name"] == name)
        steps = passes * per_step["steps"] // per_step["passes"] if per_step["passes"] else 0
        out.append(f"| {method} | {acc:.3f} | {name} | {passes} | {steps} |")
    return out + _passes_to_reach_table(rows, zo, tuple(compared))


def _passes_to_reach_table(rows: list[dict], zo: list[dict], compared: tuple[str, ...]) -> list[str]:
    """FZOO's claim is "MeZO's accuracy in ~3x fewer passes": when each run first reaches a level."""
    claimed = [r for r in zo if r["dev"] and any(r["name"].startswith(f"{m}_lr") for m in (*compared, "fzoo_r"))]
    launched = [r for r in rows if r["launched"]]
    num_dev = next((r["summary"]["num_dev"] for r in launched if r["summary"] and r["summary"].get("num_dev")), None)
    noise = f"; one dev evaluation near 0.7 is itself ±{half_width(0.7, num_dev):.2f} at 95%" if num_dev else ""
    out = [
        "",
        f"Training forward passes (steps) at the first dev evaluation reaching each accuracy (-: not within the "
        f"budget{noise}):",
        "",
        "| run | " + " | ".join(f"dev ≥ {t:.2f}" for t in THRESHOLDS) + " |",
        "|---|" + "---|" * len(THRESHOLDS),
    ]
    for r in claimed:
        reached = [passes_to_reach(r["dev"], t) for t in THRESHOLDS]
        out.append(
            f"| {r['name']} | "
            + " | ".join("-" if p is None else f"{p} ({p * r['steps'] // r['passes']})" for p in reached)
            + " |"
        )
    return out


def readme(runs: Path, rows: list[dict], command: str, subset: bool = False, machine: str | None = None) -> str:
    """The README of a runs dir made by ``command``; ``subset``: the runs were a chosen part of the
    plan (run.sh's ONLY), so the runs not launched are not reported as missing; ``machine``: where
    they ran, said after the command."""
    if subset:
        rows = [r for r in rows if r["launched"]]
    zo = _zo(rows)
    budget = max((r["budget"] or 0) for r in zo) if zo else 0
    evals = max((len(r["dev"]) for r in zo), default=0)
    return "\n".join(_intro(runs, budget, command, machine) + _table(rows, evals) + _claims(rows, budget)) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Dev accuracy against training forward passes, one line per run, in the two ``PANELS``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), sharey=True)
    for ax, (title, methods) in zip(axes, PANELS):
        # more runs per panel than tab10 has colours
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # type: ignore[attr-defined]  # colormaps are attributes of plt.cm at run time
        for r in rows:
            if not r["launched"] or r["first_order"] or not r["dev"] or r["void"]:
                continue
            if r["eval_only"]:
                color = "black" if r["name"] == "zero_shot" else "grey"
                ax.axhline(r["dev"][0][1], linestyle=":", color=color, label=f"{r['name']} (no training)")
                continue
            # the second panel takes plain MeZO (mezo_lr*) as its reference, not its variants
            reference_only = ax is axes[1] and r["method"] == "mezo" and not r["name"].startswith("mezo_lr")
            if r["method"] not in methods or reference_only:
                continue
            passes, acc = zip(*r["dev"])
            ax.plot(passes, acc, marker="o", markersize=3, label=r["name"] + ("" if r["summary"] else " (stopped)"))
        ax.set_xlabel("training forward passes")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("dev accuracy (500 examples)")
    fig.suptitle("SmolLM2-135M / SST-2: dev accuracy vs forward passes")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
