"""Smoke test of ``gradc bench --quick``: runs the small sweep into a temporary folder."""

from __future__ import annotations

import json
import time

import pytest

from gradc import bench


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    start = time.perf_counter()
    code = bench.main(quick=True, out_dir=out, command="gradc bench --quick", verbose=False)
    return out, code, time.perf_counter() - start


def test_quick_bench_writes_table_and_agrees(quick_run):
    out, code, seconds = quick_run
    assert code == 0, "naive and shared gradients disagreed"
    md = (out / "naive_vs_shared_quick.md").read_text(encoding="utf-8")
    assert "| network | params | forward ops | shared backward ops | naive backward ops" in md
    assert "## Width sweep: 3-h-2" in md and "## Depth sweep" in md
    assert "backward ÷ forward time" in md
    assert "gradients agree to 1e-10 relative wherever naive finishes: met" in md
    assert seconds < 120  # the command's own budget is a minute; leave room for a busy machine


def test_quick_bench_data(quick_run):
    out, _, _ = quick_run
    data = json.loads((out / "naive_vs_shared_quick.json").read_text(encoding="utf-8"))
    assert data["mode"] == "quick" and data["gradients_agree"] is True
    checked = [r for r in data["width"] + data["depth"] if r["max_relative_difference"] is not None]
    assert checked, "naive finished no network"
    assert all(r["max_relative_difference"] <= 1e-10 for r in checked)
    slopes = data["slopes"]
    assert slopes["naive, width sweep"] is not None and slopes["shared, width sweep"] is not None
    # the shape of the result, with room for the quick sweep's few, tiny points
    assert slopes["naive, width sweep"] > slopes["shared, width sweep"] + 0.5
    assert data["ratio"] and all(r["ratio"] > 0 for r in data["ratio"])
    for r in data["width"]:
        assert r["shared"]["backward_ops"] > 0 and r["params"] > 0


def test_quick_bench_plots(quick_run):
    pytest.importorskip("matplotlib")
    out, _, _ = quick_run
    for name in ("naive_vs_shared_ops_quick.png", "naive_vs_shared_time_quick.png"):
        assert (out / name).stat().st_size > 1000


def test_slope_and_budget_helpers():
    assert bench._slope([1, 10, 100], [3, 300, 30000]) == pytest.approx(2.0)
    assert bench._slope([1], [1]) is None
    with pytest.raises(bench.BudgetExceeded):
        with bench._deadline(0.2):
            while True:
                sum(range(1000))
