"""Registry, canonical ids and the plugin namespace."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from bench import registry
from bench.component import format_value, make_id, parse_id, parse_value
from bench.errors import UsageError

REPO = registry.PROJECT_ROOT


def test_discovers_every_plugin_file():
    for kind, folder in registry.FOLDERS.items():
        if kind in registry.ENGINE_PACKAGES:  # built-ins are engine modules (bench/solvers/), the root has none
            assert not (REPO / folder).exists()
            folder = registry.ENGINE_PACKAGES[kind].replace(".", "/")
        stems = {p.stem for p in (REPO / folder).glob("*.py") if not p.stem.startswith("_") and p.stem != "base"}
        assert set(registry.components(kind)) == stems, kind


def test_a_users_solver_is_one_file(tmp_path, monkeypatch):
    (tmp_path / "solvers").mkdir()
    (tmp_path / "solvers" / "all_together.py").write_text(textwrap.dedent('''
        """Everything in one group."""
        from bench.solvers.base import Raw, Solver

        class AllTogether(Solver):
            name = "all_together"
            problems = ("partition",)

            def _solve(self, problem, seed):
                return Raw([problem.tasks], "heuristic")
    '''))
    (tmp_path / "solvers" / "dp.py").write_text("")
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(tmp_path))
    registry.reload()
    try:
        with pytest.raises(UsageError, match="reuses the built-in name 'dp'"):
            registry.components("solver")
        (tmp_path / "solvers" / "dp.py").unlink()
        registry.reload()
        from bench.solvers.base import PairwiseScore, PartitionProblem

        problem = PartitionProblem(("a", "b"), 1, PairwiseScore([[1.0, 2.0], [3.0, 4.0]], ("a", "b")))
        solution = registry.create("solver", "all_together").solve(problem)
        assert solution.groups == (("a", "b"),) and solution.objective == pytest.approx(5.0)
    finally:
        monkeypatch.delenv("BENCH_PLUGIN_PATH")
        registry.reload()
    assert "all_together" not in registry.components("solver")


def test_baselines_and_methods_are_labelled_by_folder():
    assert all(cls.kind == "baseline" for cls in registry.components("baseline").values())
    assert all(cls.kind == "method" for cls in registry.components("method").values())


@pytest.mark.parametrize("text", ["synthetic", "synthetic[clusters=[3,3]]", "synthetic[clusters=[2,2],noise=0.5]",
                                  "random[repeats=3]", "optimal[select_on=val]"])
def test_id_round_trip(text):
    component = registry.create(("dataset", "method", "baseline"), text)
    assert component.id == text
    assert registry.create(("dataset", "method", "baseline"), component.id) == component


def test_default_parameters_are_left_out_of_the_id():
    assert registry.create("baseline", "random[repeats=10]").id == "random"


@pytest.mark.parametrize("value", [3, 0.5, True, False, None, "val", (2, 2, 3), "a b"])
def test_value_round_trip(value):
    assert parse_value(format_value(value)) == value


def test_parse_id_nested_lists():
    assert parse_id("x[a=[1,2],b=true,c=s]") == ("x", {"a": (1, 2), "b": True, "c": "s"})
    assert make_id("x", {"b": 1, "a": 2}) == "x[a=2,b=1]"


@pytest.mark.parametrize("text", ["synthetic[clusters", "9abc", "random[repeats]", "random[x=[1,]"])
def test_malformed_ids(text):
    with pytest.raises(UsageError):
        registry.create(("dataset", "baseline"), text)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UsageError, match=r"Did you mean 'optimal'.*Valid .*naive_mtl"):
        registry.create_method("optimall")


def test_unknown_and_mistyped_parameters():
    with pytest.raises(UsageError, match="Did you mean 'repeats'"):
        registry.create("baseline", "random[repeat=3]")
    with pytest.raises(UsageError, match="must be int"):
        registry.create("baseline", "random[repeats=abc]")


def test_components_pickle_by_reference():
    component = registry.create("dataset", "synthetic[clusters=[2,2]]")
    assert type(component).__module__ == "bench.plugins.datasets.synthetic"
    assert pickle.loads(pickle.dumps(component)) == component


def _python(code: str, cwd, extra_path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(REPO)) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


LOAD_ALL = """
    import sys
    from bench import registry
    for kind in registry.KINDS:
        registry.components(kind)
    assert "bench.plugins.datasets.synthetic" in sys.modules
"""


@pytest.mark.parametrize("where", ["elsewhere", "project_root"])
def test_plugin_folder_is_not_a_top_level_datasets_module(tmp_path, where):
    """With no package called ``datasets`` installed, loading every plugin must not create one, even when run
    from the checkout (the project root is then on ``sys.path``)."""
    code = LOAD_ALL + """
    assert "datasets" not in sys.modules
    import importlib.util
    spec = importlib.util.find_spec("datasets")
    origin = None if spec is None else (spec.origin or list(spec.submodule_search_locations or []))
    assert spec is None or "site-packages" in str(origin), origin
    print("ok")
    """
    proc = _python(code, cwd=tmp_path if where == "elsewhere" else REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("where", ["elsewhere", "project_root"])
def test_installed_datasets_package_is_not_shadowed(tmp_path, where):
    """With another package called ``datasets`` on the path, ``import datasets`` still gets that one."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("IS_THE_OTHER_PACKAGE = True\n")
    code = LOAD_ALL + """
    import datasets
    assert datasets.IS_THE_OTHER_PACKAGE
    print("ok")
    """
    proc = _python(code, cwd=tmp_path if where == "elsewhere" else REPO, extra_path=str(tmp_path / "site"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_extra_plugin_roots(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "all_in_one.py").write_text(textwrap.dedent('''
        """All tasks in one group (a test plugin)."""
        from bench.method import Method
        from bench.types import Grouping

        class AllInOne(Method):
            name = "all_in_one"
            def solve(self, model, n_groups, ctx):
                return Grouping.of([ctx.tasks])
    '''))
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(tmp_path))
    registry.reload()
    try:
        assert "all_in_one" in registry.components("method")
        assert registry.create_method("all_in_one").kind == "method"
    finally:
        monkeypatch.delenv("BENCH_PLUGIN_PATH")
        registry.reload()
    assert "all_in_one" not in registry.components("method")


def test_a_broken_plugin_names_its_file(tmp_path, monkeypatch):
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(tmp_path))
    registry.reload()
    try:
        with pytest.raises(UsageError, match=r"broken\.py.*boom"):
            registry.components("baseline")
    finally:
        monkeypatch.delenv("BENCH_PLUGIN_PATH")
        registry.reload()


def test_profile_defaults_change_only_the_parameters_not_given():
    mtg = registry.create("predictor", "mtg_net")
    smoke = mtg.at_profile("smoke")
    assert smoke.active_budget == 4 and smoke.max_epochs == 100 and smoke.hidden == mtg.hidden
    assert smoke.id == "mtg_net[active_budget=4,max_epochs=100]"  # the record names what ran
    assert mtg.at_profile("mini") is mtg and mtg.at_profile(None) is mtg
    given = registry.create("predictor", "mtg_net[max_epochs=7]").at_profile("smoke")
    assert given.max_epochs == 7 and given.active_budget == 4
    assert given.at_profile("smoke").params == given.params  # idempotent: what was given stays given
    # the profiles' defaults are part of the identity, so changing them changes the cache and run keys
    assert mtg.identity()["profile_defaults"]["smoke"] == {"active_budget": 4, "max_epochs": 100}
    assert mtg.at_profile("paper").max_epochs == 10000  # the reference's cap
    assert "profile_defaults" not in registry.create("solver", "dp").identity()
