"""PNG plots for the suites where a picture reads better than a table (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from moe_swarm.bench.results import Row  # noqa: E402


def _cases(rows: list[Row]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        case = r.metric.split("/")[1]
        if case not in seen:
            seen.append(case)
    return seen


def plot_moe_layer(rows: list[Row], path: Path) -> bool:
    """Grouped bars: median fwd+bwd ms per implementation, one group per case (log scale).

    The implementations are read from the rows (``moe_layer/<case>/<impl>_ms``), in order of appearance."""
    ms = {r.metric: r.value for r in rows if r.metric.endswith("_ms")}
    impls: list[str] = []
    for metric in ms:
        impl = metric.split("/")[-1].removesuffix("_ms")
        if impl not in impls:
            impls.append(impl)
    cases = _cases([r for r in rows if r.metric.endswith("_ms")])
    if not cases:
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cases)), 4.5))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        xs = [c + (i - (len(impls) - 1) / 2) * width for c in range(len(cases))]
        ys = [ms.get(f"moe_layer/{case}/{impl}_ms", 0.0) for case in cases]
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per forward+backward (median)")
    ax.set_title("MoE layer dispatch implementations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_generate(rows: list[Row], path: Path) -> bool:
    """Left: tokens/s with and without the KV cache. Right: N agents batched vs one by one vs alone."""
    kv = [r for r in rows if r.metric.endswith(("kv_cache_tok_s", "recompute_tok_s"))]
    agents = [r for r in rows if r.metric.endswith(("single_ms", "batched_ms", "sequential_ms"))]
    if not kv and not agents:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    cases = _cases(kv)
    for j, kind in enumerate(("recompute_tok_s", "kv_cache_tok_s")):
        vals = {r.metric.split("/")[1]: r.value for r in kv if r.metric.endswith(kind)}
        left.bar([c + (j - 0.5) * 0.4 for c in range(len(cases))], [vals.get(c, 0.0) for c in cases], 0.4,
                 label=kind.removesuffix("_tok_s"))  # fmt: skip
    left.set_xticks(range(len(cases)), cases)
    left.set_ylabel("tokens/s (median)")
    left.set_title("KV cache vs full recompute (batch 1)")
    left.legend(fontsize=8)
    labels = [r.metric.split("/")[-1].removesuffix("_ms") for r in agents]
    right.bar(range(len(agents)), [r.value for r in agents])
    right.set_xticks(range(len(agents)), labels)
    right.set_ylabel("ms per generate (median)")
    right.set_title(_cases(agents)[0] if agents else "agents")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTTERS = {"moe_layer": plot_moe_layer, "generate": plot_generate}


def write_plots(rows: list[Row], out_dir: Path) -> list[Path]:
    """One PNG per suite that has a plotter and rows; returns the files written."""
    written = []
    for suite, plot in PLOTTERS.items():
        suite_rows = [r for r in rows if r.suite == suite]
        path = out_dir / f"{suite}.png"
        if suite_rows and plot(suite_rows, path):
            written.append(path)
    return written
