"""MTG-Net's "beam" search for network selection (``approx_search`` in ``ShawnKS/MTG-Net`` ``model/search.py``).

MTG-Net (reference notes, implementations.md §3.4): with ``pred[g, t]`` the predicted gain of task ``t`` in
candidate ``g`` (``-99`` where ``t`` is not in ``g``),

1. **Seeds.** ``beams = 5`` beams start from the 5 candidates with the largest total ``sum_t pred[g, t]``.
2. **Growth.** At each further step (up to the number of groups allowed) each beam adds the candidate maximising
   ``sum_t max(0, pred[g, t] - best_t)``, ``best_t`` the beam's current best for task ``t``; a beam adds nothing
   when no candidate improves it. The beams never interact: these are independent greedy runs from 5 seeds.
3. **Choice.** The beam with the largest ``sum_t max_{g in beam} pred[g, t]``.

Here ``pred`` is the candidates' utility (larger is better). Departures, each forced by the ``select`` problem:

* **Uncovered tasks.** A selection must cover every task. An uncovered task's current best is a sentinel below
  every utility by more than all improvements together (MTG-Net's ``-99`` against gains of order one acts the
  same way): the growth criterion is lexicographic, first the number of newly covered tasks, then the sum of the
  new tasks' utilities plus the improvements on covered tasks. The seed totals use the same sentinel for
  non-members, so the seeds are the largest candidates, ties by their utility sum (as in MTG-Net).
* **Limits.** A beam grows to at most ``k`` groups (``problem.max_groups``; ``n`` when only a budget is given) and
  only adds candidates whose cost fits the remaining budget (MTG-Net's budget is the number of groups); seeds
  must fit the budget too.
* **Coverage.** Beams that end without covering every task are dropped before the choice. If none covers, a
  greedy cover is used instead: repeatedly add the affordable candidate covering the most new tasks per unit cost
  (ties: the larger sum of utilities, then candidate order) until all tasks are covered, then grow it with the
  MTG-Net rule while ``k`` and the budget allow. When that fails as well, the solver raises ``Unsupported`` (it
  cannot prove infeasibility; the exact ``dp`` can).
* **Ties.** Candidates are ordered canonically (by size, then names; for a repeated group the last candidate
  counts, as in the problem's objective); every argmax takes the first in that order, and the choice among beams
  the first in seed order.
* MTG-Net scores the chosen groups on ground-truth test gains; here the objective is recomputed from the
  candidates' utilities by the base class.

Not optimal in general: with tasks ``a, b, c, d``, ``k = 2``, candidates ``ab`` and ``cd`` (utility 10 per task)
and ``abcd`` plus the four triples (utility 0), the seeds are ``abcd`` and the triples and every beam ends at
value 20, while ``{ab, cd}`` is worth 40 (pinned in the tests).
"""

from __future__ import annotations

import math

import numpy as np

from bench.errors import Unsupported, UsageError
from bench.solvers.base import TOL, Raw, SelectProblem, Solver


class _Beam:
    """A beam's chosen candidates, covered tasks, best utility per covered task and spent cost."""

    def __init__(self, n: int) -> None:
        self.chosen: list[int] = []
        self.covered = np.zeros(n, dtype=bool)
        self.best = np.zeros(n)
        self.spent = 0.0

    def add(self, c: int, member: np.ndarray, U: np.ndarray, cost: np.ndarray) -> None:
        row = member[c]
        self.best[row] = np.where(self.covered[row], np.maximum(self.best[row], U[c, row]), U[c, row])
        self.covered |= row
        self.chosen.append(c)
        self.spent += cost[c]

    def value(self) -> float:
        return float(self.best[self.covered].sum())


class Beam(Solver):
    """MTG-Net's beam search (``approx_search``) for network selection; see :mod:`bench.solvers.beam`."""

    name = "beam"
    version = "1"
    problems = ("select",)
    exact = False
    defaults = {"beams": 5}
    test_parameters = {"beams": 2}

    def _solve(self, problem: SelectProblem, seed: int) -> Raw:
        if self.beams < 1:
            raise UsageError(f"parameter 'beams' of solver 'beam' must be at least 1, got {self.beams}")
        table = {c.group: c for c in problem.candidates}
        cands = sorted(table.values(), key=lambda c: (len(c.group), c.group))
        index = {t: i for i, t in enumerate(problem.tasks)}
        n, m = problem.n, len(cands)
        member = np.zeros((m, n), dtype=bool)
        U = np.zeros((m, n))
        for c, cand in enumerate(cands):
            for t in cand.group:
                member[c, index[t]] = True
                U[c, index[t]] = cand.utility[t]
        cost = np.array([c.cost for c in cands])
        budget = math.inf if problem.budget is None else problem.budget + TOL
        limit = problem.max_groups
        order = np.arange(m)

        def pick(beam: _Beam, per_cost: bool = False) -> int | None:
            """The candidate MTG-Net's rule adds to ``beam`` (lexicographic, see the module docstring), or None."""
            fresh = member & ~beam.covered
            new = fresh.sum(axis=1)
            gain = np.where(fresh, U, 0.0).sum(axis=1) + \
                np.where(member & beam.covered, np.maximum(U - beam.best, 0.0), 0.0).sum(axis=1)
            ok = cost <= budget - beam.spent
            ok[beam.chosen] = False
            ok &= (new > 0) if per_cost else ((new > 0) | (gain > 0))
            if not ok.any():
                return None
            first = new / np.maximum(cost, 1e-12) if per_cost else new
            ranked = np.lexsort((order[ok], -gain[ok], -first[ok]))
            return int(order[ok][ranked[0]])

        def grow(beam: _Beam) -> _Beam:
            while len(beam.chosen) < limit and (c := pick(beam)) is not None:
                beam.add(c, member, U, cost)
            return beam

        affordable = np.flatnonzero(cost <= budget)
        seeds = affordable[np.lexsort((affordable, -U[affordable].sum(axis=1), -member[affordable].sum(axis=1)))]
        beams = []
        for c in seeds[: self.beams]:
            beam = _Beam(n)
            beam.add(int(c), member, U, cost)
            beams.append(grow(beam))
        covering = [b for b in beams if b.covered.all()]
        info = {"beams": len(beams), "covering_beams": len(covering), "fallback": not covering}
        notes: tuple[str, ...] = ()
        if covering:
            chosen = max(covering, key=lambda b: b.value())  # max keeps the first of equal values
        else:
            chosen = _Beam(n)
            while not chosen.covered.all() and len(chosen.chosen) < limit and \
                    (c := pick(chosen, per_cost=True)) is not None:
                chosen.add(c, member, U, cost)
            if not chosen.covered.all():
                raise Unsupported(f"beam search and the greedy cover found no selection of at most {limit} candidates"
                                  f"{'' if problem.budget is None else f' within the budget {problem.budget}'} "
                                  f"covering every task; the problem may be infeasible (the exact solver dp decides)")
            grow(chosen)
            notes = ("no beam covered every task: the greedy cover (new tasks per unit cost) was used",)
        return Raw([cands[c].group for c in chosen.chosen], "heuristic", info, notes)
