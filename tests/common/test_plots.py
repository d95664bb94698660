"""Table figures a reader can use: the paper's numbers visible above the bars, a y-range that shows the
gaps claims are about, the legend off the bars, and each claim's interval beside what it needs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PathCollection

from common.results.plots import fitted_range, plot_table, table_figure
from tests.conftest import committed_table_result


def test_the_range_starts_at_zero_only_where_zero_is_near():
    low, high = fitted_range([88.0, 91.0, 96.5])
    assert 80 < low < 88 and 96.5 < high < 100  # a 1-point gap stays visible
    assert fitted_range([5.0, 95.0])[0] == 0.0  # from zero: small and large values side by side
    low, high = fitted_range([-3.0, -2.0])
    assert low < -3.0 and high > -2.0
    assert fitted_range([float("nan"), None]) == (0.0, 1.0)


def test_paper_numbers_are_filled_dark_edged_and_drawn_above_the_bars(tmp_path: Path):
    result, claims = committed_table_result("elr", "table1")
    fig = table_figure(result, claims)
    bars_axis, claims_axis = fig.axes[0], fig.axes[-1]
    assert len(fig.axes) == 3  # bars, curves, claims
    markers = [c for c in bars_axis.collections if isinstance(c, PathCollection)]
    assert len(markers) == 2  # CE and ELR each have the paper's numbers
    bar_order = max(p.get_zorder() for p in bars_axis.patches)
    for marker in markers:
        assert marker.get_facecolors()[0][3] == 1.0  # filled, not hollow
        assert np.allclose(marker.get_edgecolors()[0][:3], 0.0)  # a dark edge
        assert marker.get_zorder() > bar_order
    legend = bars_axis.get_legend()
    assert legend._bbox_to_anchor.bounds[1] < bars_axis.get_window_extent().y0  # below the axes
    assert "paper's number" in [t.get_text() for t in legend.get_texts()][-1]
    assert claims_axis.get_yticklabels()[0].get_text().startswith("elr_beats_ce_sym40")
    assert "\n" in bars_axis.get_title()  # a long title wraps instead of being clipped
    plt.close(fig)
    plot_table(result, tmp_path / "table1.png", claims)
    assert (tmp_path / "table1.png").stat().st_size > 10_000
