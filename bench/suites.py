"""Named suites: which datasets, methods and baselines, split counts, seeds and profile a run covers.

A suite lists component ids; ``*`` stands for every registered component of that kind, so a dataset or method
added as one file joins ``all`` without edits here. Command-line options override any field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench import registry
from bench.errors import unknown_name

ALL = ("*",)
# "Clustering Algorithms: Hierarchical (MTL Affinities)" of affinity-predictor-local-search Table 1: the pairwise
# MTL gains (signal task_features) clustered hierarchically into exactly k groups.
TABLE1_HIERARCHICAL = "tag[problem=partition,signal=task_features,solver=hierarchical]"


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    datasets: tuple[str, ...] = ALL
    methods: tuple[str, ...] = ALL  # methods and baselines
    splits: tuple[int, ...] = (2, 3, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    profile: str = "mini"

    def expand_datasets(self) -> tuple[str, ...]:
        return tuple(sorted(registry.components("dataset"))) if self.datasets == ALL else self.datasets

    def expand_methods(self) -> tuple[str, ...]:
        if self.methods != ALL:
            return self.methods
        found = {**registry.components("baseline"), **registry.components("method")}
        return tuple(sorted(found))

    def override(self, **fields) -> Suite:
        return replace(self, **{k: v for k, v in fields.items() if v is not None})


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("all", "every registered dataset x every method and baseline, splits 2-4, seeds 0-2, mini profile"),
        Suite("smoke", "a minutes-long check: every dataset and method on the smoke profile, one seed",
              splits=(2, 3), seeds=(0,), profile="smoke"),
        Suite("taskonomy", "transfer-gain-mip Table 2: Taskonomy gain table, splits 2-4",
              datasets=("taskonomy",), seeds=(0, 1, 2)),
        # The reproductions of results/README.md (real data: add --data-root). The pairwise rows of Table 1 come
        # from `bench sweep --sizes 1,2,n`, whose records join the same folder.
        Suite("affinity_ls_table1", "affinity-predictor-local-search Table 1: grouping methods on the tabular data",
              datasets=("school", "chemical", "landmine", "parkinson"),
              methods=("stl", "naive_mtl", "random", "task_features_ls", TABLE1_HIERARCHICAL), seeds=(0,)),
        Suite("divergence_table3", "tabular-divergence-features Table 3: SDP grouping of three predictors",
              datasets=("school", "chemical", "landmine"),
              methods=("stl", "tag[problem=partition,solver=sdp]", "grad_tae", "divergence_sdp"),
              splits=(2, 3, 4, 6, 15), seeds=(0,)),
        Suite("ettm1_table5", "transfer-gain-mip Table 5 layout on ETTm1 (Autoformer), reduced scale",
              datasets=("ettm1",), methods=("stl", "naive_mtl", "random", "optimal", "tag", "transfer_gain_mip",
                                          "mtg_net", "grad_tae", "surrogate"),
              seeds=(0,)),
    )
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise unknown_name("suite", name, SUITES)
    return SUITES[name]
