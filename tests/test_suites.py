"""Named suites (bench.suites): every component a suite names exists, and the reproduction suites run what the
published tables they reproduce compare against."""

from __future__ import annotations

import pytest

from bench import registry
from bench.compare import load_references
from bench.suites import SUITES, get_suite
from bench.errors import UsageError


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_component_of_a_suite_resolves(name):
    suite = get_suite(name)
    for dataset in suite.expand_datasets():
        registry.create("dataset", dataset)
    for method in suite.expand_methods():
        registry.create_method(method)
    assert suite.profile in ("smoke", "mini", "paper")


@pytest.mark.parametrize("suite,reference", [
    ("affinity_ls_table1", "affinity_ls_table1_tabular.csv"),
    ("divergence_table3", "divergence_table3_sdp_grouping.csv"),
    ("ettm1_table5", "transfer_gain_mip_table5_ettm1.csv"),
])
def test_reproduction_suites_cover_the_published_rows_we_have_methods_for(suite, reference):
    (ref,) = [r for r in load_references() if r.path.name == reference]
    methods = {registry.create_method(m).id for m in get_suite(suite).expand_methods()}
    published = {row.method for row in ref.rows if row.method} - {"pairwise_mean", "pairwise_optimal"}
    runnable = {m for m in published if _known(m)}
    assert runnable <= methods, sorted(runnable - methods)
    assert set(get_suite(suite).expand_datasets()) >= set(ref.datasets)


def _known(method: str) -> bool:
    try:
        registry.create_method(method)
    except UsageError:
        return False
    return True


def test_unknown_suite_names_the_allowed_ones():
    with pytest.raises(UsageError, match="affinity_ls_table1"):
        get_suite("table1")
