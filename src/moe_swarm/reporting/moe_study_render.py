"""Rendering of the MoE-vs-dense study (``moe_swarm.reporting.moe_study``): the markdown table and the
plots (bpb against E at fixed active parameters and against training FLOPs; tokens per expert by source)."""

from __future__ import annotations

from pathlib import Path

import torch

SOURCES = ("prose", "code")  # the study corpus's two sources, in this order everywhere


def markdown(table: list[dict], stepcost: dict | None = None) -> str:
    lines = [
        "| variant | E | g | route scale | shared | total params | active params | val bpb per seed | mean window bpb "
        "| MoE − dense [95% CI] | wall s | tokens/s | dead (val) | load CV | max/mean | specialisation |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        d = r.get("diff")
        ci = f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else "—"
        per_seed = ", ".join(f"{x:.4f}" for x in r["val_bpb"] if x is not None)
        moe = r["experts"] > 0
        lines.append(
            f"| {r['variant']} | {r['experts'] or '—'} | {r['granularity'] if moe else '—'} "
            f"| {r['route_scale'] if moe else '—'} | {r['shared']} "
            f"| {r['params_total']:,} | {r['params_active']:,} | {per_seed} | {r['window_bpb']:.4f} | {ci} "
            f"| {r['wall_s']:.0f} | {r['tokens_per_s']:,.0f} "
            + (
                f"| {r['val_dead_experts']:.1f} | {r['val_load_cv']:.2f} | {r['val_max_over_mean']:.2f} "
                f"| {r['specialisation']:.3f} |"
                if moe
                else "| — | — | — | — |"
            )
        )
    text = "\n".join(lines) + "\n"
    if stepcost:
        text += "\nStep cost (fwd+bwd+AdamW, one process, side by side, " + stepcost["setup"] + "):\n\n"
        text += "\n".join(
            f"- {k}: {v['ms']:.1f} ms, {v['ratio']:.2f}x dense" for k, v in stepcost["variants"].items()
        )
        text += "\n"
    return text


def plots(table: list[dict], rows: dict, out: Path) -> list[Path]:
    """bpb vs E, bpb vs training FLOPs, and tokens per expert by source (specialisation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    dense = next((r for r in table if r["experts"] == 0), None)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    families = {
        "routed (g = E/8 from E = 16)": lambda r: not r["shared"] and r["route_scale"] == 1,
        "fine-grained, route_scale = g": lambda r: r["route_scale"] != 1 or r["variant"] == "E8",
        "+ 1 shared expert": lambda r: r["shared"] > 0,
    }
    for (kind, keep), marker in zip(families.items(), ("o", "^", "s")):
        pts = [r for r in table if r["experts"] and keep(r)]
        if pts:
            ax1.plot([r["experts"] for r in pts], [r["window_bpb"] for r in pts], marker=marker, label=kind)
    colours = plt.get_cmap("tab20")
    for i, r in enumerate(table):
        ax2.scatter(r["flops"], r["window_bpb"], label=r["variant"], color=colours(i % 20))
    if dense:
        ax1.axhline(dense["window_bpb"], color="k", ls="--", label="dense")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("experts E (equal active parameters)")
    ax1.set_ylabel("val bpb (mean over seeds)")
    ax1.legend()
    ax2.set_xlabel("training FLOPs (6N + attention, per run)")
    ax2.set_ylabel("val bpb")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "bpb_vs_experts_and_flops.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    for name in [r["variant"] for r in table if r["experts"] in (8, 64) and r["shared"] == 0]:
        key = next((k for k in rows if k[0] == name), None)
        if key is None or len(rows[key]["counts"]) < 2:
            continue
        counts = rows[key]["counts"]
        share = [torch.tensor(counts[s]) / torch.tensor(counts[s]).sum(1, keepdim=True) for s in SOURCES]
        n_layers = share[0].shape[0]
        fig, axes = plt.subplots(n_layers, 1, figsize=(10, 1.6 * n_layers + 0.6), squeeze=False)
        for i in range(n_layers):
            ax = axes[i][0]
            e = share[0].shape[1]
            for j, s in enumerate(SOURCES):
                ax.bar([x + 0.4 * j for x in range(e)], share[j][i].tolist(), width=0.4, label=s)
            ax.set_ylabel(f"MoE layer {i}")
        axes[0][0].legend()
        axes[0][0].set_title(f"{key[0]} seed {key[1]}: share of each source's tokens per expert (val)")
        axes[-1][0].set_xlabel("expert")
        fig.tight_layout()
        written.append(out / f"specialisation_{name}.png")
        fig.savefig(written[-1], dpi=80)
        plt.close(fig)
    return written
