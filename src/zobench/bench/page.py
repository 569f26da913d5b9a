"""The Markdown page of one ``python -m zobench.bench`` result (its JSON → the table beside it).

Needs no torch: ``python -m zobench.report regenerate`` remakes committed pages from their JSON.
"""

from __future__ import annotations


def markdown(result: dict, command: str) -> str:
    mb = 2**20
    method = result["zobench"].get("optimizer", "mezo")
    title = "MeZO" if method == "mezo" else method
    lines = [
        f"# {title} step benchmark: {result['model']} / {result['task']}, batch {result['batch_size']}, "
        f"{result['dtype']}, {result['device']}",
        "",
        f"Command: `{command}`",
        "",
        f"{result['parameters'] / 1e6:.1f}M parameters, {result['tokens_per_pair']:.1f} tokens per "
        f"(example, candidate) pair, {result['threads']} threads, torch {result['versions']['torch']}, "
        f"transformers {result['versions']['transformers']}. Medians of {result['repeats']} steps after "
        f"{result['warmup']} warm-up step(s), all in one process.",
        "",
        "| variant | step (s) | forward (s) | engine (s) | other (s) | engine share | peak mem (MB) | "
        "inference peak (MB) | peak / inference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("zobench", "zobench"), ("authors' MeZO (baseline)", "baseline")):
        if key not in result:
            continue
        r = result[key]
        label = (
            name
            if "engine" not in r
            else f"{name} [{r['engine']}]"
            if method == "mezo"
            else f"{name} {method} [{r['engine']}]"
        )
        lines.append(
            f"| {label} | {r['step_s']:.3f} | {r['forward_s']:.3f} | {r['engine_s']:.3f} | "
            f"{r['other_s']:.3f} | {r['engine_fraction']:.1%} | {r['peak_memory_bytes'] / mb:.0f} | "
            f"{result[key + '_inference_peak_memory_bytes'] / mb:.0f} | {r['peak_over_inference']:.3f} |"
        )
    return "\n".join(lines + _notes(result, method)) + "\n"


def _notes(result: dict, method: str) -> list[str]:
    """The lines under the step table: what is compared, the ratios, the numerics."""
    lines: list[str] = []
    if method != "mezo":
        z = result["zobench"]
        lines += [
            "",
            f"zobench's step is {method}'s ({z['forward_passes_per_step']} forward passes, "
            f"{z['state_buffers_per_param']} parameter-sized state buffer(s)); the baseline is "
            "the authors' MeZO step (2 passes, no state), so the ratios below compare methods, "
            "not implementations.",
        ]
    if "step_time_ratio" in result:
        lines += [
            "",
            f"zobench / baseline: step time {result['step_time_ratio']:.2f}×, "
            f"peak memory {result['peak_memory_ratio']:.2f}×.",
        ]
    if "numerics" in result:
        n = result["numerics"]
        lines += [
            "",
            f"Numerics: weights after {n['steps']} lr=0 steps (eps {n['eps']}), "
            "fraction of elements changed / largest change:",
            "",
            "| dtype | authors' in-place | zobench in-place | zobench virtual |",
            "|---|---|---|---|",
        ]
        for dtype, d in n.items():
            if isinstance(d, dict):
                a, z = d["authors_inplace"], d["zobench_inplace"]
                lines.append(
                    f"| {dtype} | {a['changed_fraction']:.1%} / {a['max_abs_drift']:.2e} | "
                    f"{z['changed_fraction']:.1%} / {z['max_abs_drift']:.2e} | 0 (bit-identical) |"
                )
    if "virtual_lr0" in result:
        v = result["virtual_lr0"]
        lines += [
            "",
            f"Measured: {v['steps']} lr=0 MeZO steps with real forwards on the virtual engine "
            f"({v['dtype']} model): {v['changed_elements']} of {v['elements']} weights changed.",
        ]
    return lines
