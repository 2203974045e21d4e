"""Aggregate view: every head's mean attention by relative offset (from ``qkscale metrics``)."""

from __future__ import annotations

import pandas as pd


def offset_heatmap(profiles: pd.DataFrame):
    """Heads (rows, ``L{layer}H{head}``) by relative offset (columns): mean attention mass."""
    from qkscale.dashboard.plotting import hv

    cells = [(offset, head, float(profiles.at[head, offset])) for head in profiles.index for offset in profiles.columns]
    return hv.HeatMap(cells, ["offset (key - query)", "head"], "mass").opts(
        cmap="Blues",
        width=720,
        height=max(300, 14 * len(profiles) + 80),
        tools=["hover", "tap"],
        invert_yaxis=True,
        colorbar=True,
        title="mean attention by relative offset (click a head)",
    )


def offset_bars(profiles: pd.DataFrame, label: str):
    """One head's offset profile as bars."""
    from qkscale.dashboard.plotting import hv

    row = profiles.loc[label]
    return hv.Bars(list(zip(profiles.columns, row.to_numpy(), strict=True)), "offset (key - query)", "mass").opts(
        width=720, height=260, title=f"{label}: mean attention by relative offset", xrotation=0
    )
