"""What the training signals cost against plain training (:mod:`bench.signal_perf`).

One benchmark per variant (a fixed-length training of the 9-task problem of :func:`bench.signal_perf.cost_problem`
with the signal's callback), and an interleaved comparison in the same run (``signal_costs``) whose ratios go to
the benchmark's ``extra_info`` and are printed. The targets (ETAP <= 1.10x plain, TAG <= 2x plain at 9 tasks,
sampled transfer gain below TAG) are reported, not asserted: where one is missed the module docstring of
``bench.signal_perf`` says why.

Run: ``pytest tests/benchmarks/test_signal_cost.py --benchmark-only``; under ``--benchmark-disable`` every test
runs once as a plain check.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.errors import UsageError
from bench.signal_perf import LAYOUTS, SCALES, TASK_GRADIENTS, cost_problem, signal_costs, variants, write_signal_report

PROBLEMS = {layout: cost_problem(9, steps=64, layout=layout) for layout in LAYOUTS}
GROUP = PROBLEMS["shared"].task_names
MAKERS = variants(tuple(sorted(GROUP)))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", list(MAKERS))
def test_benchmark_training_with_signal(benchmark, one_thread, variant, layout):
    benchmark.group = f"signal-cost-{layout}"

    def run():
        callbacks = MAKERS[variant](0)
        result = PROBLEMS[layout].train(GROUP, 0, callbacks=callbacks)
        return result, callbacks

    result, callbacks = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert math.isfinite(sum(result.val_loss.values()))
    if variant == TASK_GRADIENTS:  # the reference observes nothing; it only asks for the per-task gradients
        assert callbacks[0].steps == 0 and callbacks[0].extra_backward > 0
    elif callbacks:
        assert callbacks[0].steps > 0
        benchmark.extra_info.update({k: v for k, v in callbacks[0].info().items() if isinstance(v, (int, str))})


@pytest.mark.parametrize("layout", LAYOUTS)
def test_signal_cost_ratios(benchmark, capsys, layout):
    benchmark.group = "signal-cost-ratio"
    repeats = 1 if benchmark.disabled else 5
    rows = benchmark.pedantic(lambda: signal_costs(steps=64, repeats=repeats, layout=layout), rounds=1,
                              iterations=1)
    benchmark.extra_info.update({r["variant"]: round(r["ratio"], 3) for r in rows})
    with capsys.disabled():  # shown even without -s
        print(f"\nsignal cost ({layout} inputs; ratio to plain training, 9 tasks, 64 steps): " + ", ".join(
            f"{r['variant']} {r['ratio']:.2f}x" + (f" [{r['target']}: {r['met']}]" if r["target"] else "")
            for r in rows))
    assert rows[0]["variant"] == "plain" and rows[0]["ratio"] == 1.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_signal_costs_quick_shape(tmp_path, layout):
    rows = signal_costs(quick=True, layout=layout)
    labels = [r["variant"] for r in rows]
    assert labels == ["plain", "task gradients", "tag", "cs", "transfer_gain", "transfer_gain[sample=true]", "etap",
                      "etap[update=optimizer]", "tag (naive loop)", "tag[every=10]",
                      "transfer_gain[sample=true,every=10]", "etap[every=10]"]
    for r in rows:
        assert r["seconds"] > 0 and math.isfinite(r["ratio"]) and r["steps"] == 8
    by = {r["variant"]: r for r in rows}
    assert by["etap"]["extra_forward"] == 0 and by["etap"]["extra_backward"] == 8 * 8
    # the reference step computes the per-task gradients and observes nothing: the same extra backward as etap
    assert by["task gradients"]["extra_backward"] == 8 * 8 and by["task gradients"]["over_task_gradients"] == 1.0
    for r in rows:
        assert r["over_task_gradients"] == pytest.approx(r["seconds"] / by["task gradients"]["seconds"])
    assert by["etap[every=10]"]["extra_backward"] == 8  # one observed step in 10: step 0 of the 8
    assert by["tag"]["extra_forward"] == by["tag (naive loop)"]["extra_forward"] == 9 * 8
    assert by["transfer_gain"]["extra_forward"] == 54 * 8  # 9 singles, 9 doubled singles, 36 pairs
    # per-task inputs: a pair's set encodes its two tasks' samples (2/9 of a batch), a single's also two copies
    assert by["transfer_gain"]["forward_batches"] == pytest.approx(54 * 8 * (2 / 9 if layout == "per_task" else 1))
    assert by["tag"]["forward_batches"] == 9 * 8 and all(r["layout"] == layout for r in rows)
    assert {by["etap"]["target"], by["tag"]["target"], by["transfer_gain[sample=true]"]["target"]} == {
        "<= 1.10x plain", "<= 2x plain", "< tag"}
    paths = write_signal_report(rows, tmp_path)
    assert [p.name for p in paths] == ["signal_costs.csv", "signal_costs.md"]
    text = paths[1].read_text()
    assert "| variant" in text and "tag (naive loop)" in text


def test_unknown_layout_is_named():
    with pytest.raises(UsageError, match="layout must be one of"):
        cost_problem(layout="mixed")


def test_unknown_scale_is_named():
    with pytest.raises(UsageError, match=r"scale must be one of \('small', 'wide'\), got 'huge'"):
        signal_costs(scale="huge")


@pytest.mark.parametrize("scale", list(SCALES))
def test_scales_build_the_widths_they_name(scale):
    dim, hidden, feature, batch = SCALES[scale]
    problem = cost_problem(3, steps=4, layout="per_task", scale=scale)
    model = problem.model_factory(problem.task_names)
    widths = [(m.in_features, m.out_features) for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert widths == [(dim, hidden), (hidden, feature)]
    assert problem.config.batch_size == batch and problem.identity["scale"] == scale


def test_wide_scale_quick_report(tmp_path):
    rows = signal_costs(quick=True, layout="shared", scale="wide", only=("etap",))
    assert [r["variant"] for r in rows] == ["plain", "task gradients", "etap"]
    assert all(r["scale"] == "wide" and r["steps"] == 8 for r in rows)
    text = write_signal_report(rows, tmp_path)[1].read_text()
    assert "wide: 8 steps" in text and "over_task_gradients" in text


def test_sca_cost_quick_shape():
    from bench.signal_perf import sca_cost

    row = sca_cost(quick=True)
    assert row["seconds"] > 0 and row["training_seconds"] > 0
    assert row["ratio"] == pytest.approx(row["seconds"] / row["training_seconds"])
    assert row["met"] in ("yes", "NO") and row["target"] == "< 5% of one training"
