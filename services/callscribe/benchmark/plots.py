"""PNG plots for benchmark results (matplotlib, headless) and the soak drift figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def drift(runs: list[dict]) -> dict:
    """Least-squares slope of RSS (MiB per minute) and final p95 (ms per minute) over time."""
    t = np.array([r.get("t_s", i) for i, r in enumerate(runs)], dtype=float) / 60
    if len(t) < 2:
        return {"rss_mib_per_min": None, "final_p95_ms_per_min": None, "samples": len(t)}
    rss = np.array([r["rss_mib"] for r in runs], dtype=float)
    lat = np.array([r["final_ms"][95] or 0 for r in runs], dtype=float)
    return {"rss_mib_per_min": round(float(np.polyfit(t, rss, 1)[0]), 3),
            "final_p95_ms_per_min": round(float(np.polyfit(t, lat, 1)[0]), 2),
            "rss_first_mib": float(rss[0]), "rss_last_mib": float(rss[-1]), "samples": len(t)}


def write_all(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    if not runs:
        return
    if doc["command"] == "soak":
        t = [r["t_s"] / 60 for r in runs]
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        ax[0].plot(t, [r["rss_mib"] for r in runs], marker="o")
        ax[0].set(xlabel="minutes", ylabel="RSS (MiB)", title="memory over the soak")
        ax[1].plot(t, [r["final_ms"][95] for r in runs], marker="o")
        ax[1].set(xlabel="minutes", ylabel="final latency p95 (ms)", title="latency drift")
        fig.tight_layout()
        fig.savefig(out / "soak.png", dpi=100)
        plt.close(fig)
        return
    n = [r["clients"] for r in runs]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for q, style in ((50, "o-"), (95, "s-"), (99, "^-")):
        ax[0].plot(n, [r["final_ms"][q] for r in runs], style, label=f"final p{q}")
    ax[0].plot(n, [r["first_partial_ms"][95] for r in runs], "x--", label="first partial p95")
    ax[0].axhline(1500, color="grey", lw=0.8, ls=":")
    ax[0].set(xlabel="concurrent streams", ylabel="ms", title="latency against concurrency")
    ax[0].legend()
    ax[1].plot(n, [r["cpu_s_per_audio_s"] for r in runs], "o-")
    ax[1].set(xlabel="concurrent streams", ylabel="CPU s per audio s", title="CPU per stream")
    fig.tight_layout()
    fig.savefig(out / "latency_cpu.png", dpi=100)
    plt.close(fig)
