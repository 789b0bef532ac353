"""A hostile (or careless) config must not reach outside the outputs root or import code cad does not own:
every name that becomes a path is checked before anything loads, cache paths refuse to leave their root, and a
method's `_target_` is resolved only under cad.methods or a registered plugin entry point."""

from __future__ import annotations

import sys
import textwrap

import pytest

from cad.io import UnsafeNameError, path_under
from cad.methods import MethodConfigError, build_method
from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model (or importing anything heavier than the checks) is a test failure."""
    import experiments.erase_eval as ee

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(ee, "load_model", boom)


@pytest.mark.parametrize("override, what", [
    (["experiment=amplify_erased", "erase_method=uce", "erase_method.name=../../../escaped"], "erase_method.name"),
    (["method.name=../escaped"], "method.name"),
    (["model.name=../../escaped"], "model.name"),
    (["concept.name=/tmp/escaped"], "concept.name"),
    (["benchmark.name=../escaped"], "benchmark.name"),
    (["experiment_name=../x"], "experiment_name"),
    (["concept=church", "concept.toy=../../../etc/passwd"], "concept.toy"),
    (["method.retain=[../../../x]"], "method.retain[0]"),
])
def test_a_name_that_would_leave_the_outputs_root_is_refused_before_anything_loads(outputs, tmp_path, no_model,
                                                                                    override, what):
    with pytest.raises(ConfigError, match=rf"{what.replace('[', '.').replace(']', '.')}=.* is not a safe name"):
        run_from_config(compose_config(override), tmp_path / "run")
    assert not outputs.exists() or not any(outputs.rglob("*"))  # nothing written anywhere
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_cache_paths_refuse_to_leave_their_root(tmp_path):
    assert path_under(tmp_path, "edits", "toy", "uce", "abc") == tmp_path / "edits" / "toy" / "uce" / "abc"
    assert path_under(tmp_path, "edits", "toy+..-1234abcd") == tmp_path / "edits" / "toy+..-1234abcd"  # one name
    for bad in ("..", ".", "", "a/../..", "/etc", "a\\b", "x\x00"):
        with pytest.raises(UnsafeNameError, match="cannot name a folder"):
            path_under(tmp_path, "edits", bad, "k")


def test_the_runner_builds_cache_paths_through_the_guard(tmp_path):
    """The runner's own path building refuses an unsafe name even when the config checks were bypassed."""
    from types import SimpleNamespace

    from experiments.pipeline import concept_images_cached

    loaded = SimpleNamespace(cache_key="toy-abc", key="toy")
    with pytest.raises(UnsafeNameError):
        concept_images_cached(loaded, {"name": "..", "prompt": "a circle"}, {"steps": 2}, {"resolution": 16,
                                                                                        "guidance": 4.0}, tmp_path)
    assert not any(tmp_path.rglob("*"))


def test_target_outside_cad_methods_is_refused_without_importing_it(capsys):
    sys.modules.pop("this", None)
    with pytest.raises(MethodConfigError, match=r"_target_='this.X' is refused.*entry-points"):
        build_method({"_target_": "this.X", "name": "x"})
    assert "this" not in sys.modules  # never imported ...
    assert "Beautiful is better than ugly" not in capsys.readouterr().out  # ... so its side effect never ran


def test_target_refused_in_the_preflight_with_the_fix(outputs, tmp_path, no_model, capsys):
    sys.modules.pop("this", None)
    with pytest.raises(ConfigError, match=r"method._target_='this.X' is refused.*method=cad_erase"):
        run_from_config(compose_config(["method._target_=this.X"]), tmp_path / "run")
    assert "Beautiful is better than ugly" not in capsys.readouterr().out and "this" not in sys.modules


PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass

    from cad.methods import Method, MethodOutput

    IMPORTED = True


    @dataclass
    class Mine(Method):
        strength: float = 1.0

        def build(self, ctx):
            return MethodOutput()
''')


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """A package on the path that registers a method plugin in its metadata (a real dist-info, as pip writes)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "cad_test_plugin.py").write_text(PLUGIN)
    info = site / "cad_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cad-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cad.methods]\nmine = cad_test_plugin:Mine\n")
    monkeypatch.syspath_prepend(str(site))
    yield "cad_test_plugin"
    sys.modules.pop("cad_test_plugin", None)


@pytest.mark.parametrize("target", ["mine", "cad_test_plugin.Mine", "cad_test_plugin:Mine"])
def test_a_registered_plugin_entry_point_is_accepted(plugin, target):
    method = build_method({"_target_": target, "name": "mine", "strength": 2.0})
    assert type(method).__name__ == "Mine" and method.strength == 2.0
    with pytest.raises(MethodConfigError, match="did you mean method.strength"):
        build_method({"_target_": target, "name": "mine", "strengh": 2.0})


def test_an_unregistered_module_next_to_a_plugin_stays_unimported(plugin, tmp_path):
    (tmp_path / "site" / "cad_test_other.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    with pytest.raises(MethodConfigError, match=r"Registered plugins: mine \(cad_test_plugin:Mine\)"):
        build_method({"_target_": "cad_test_other.X", "name": "x"})
    assert not (tmp_path / "site" / "cad_test_other.py.ran").exists()
    assert plugin not in sys.modules  # looking the registry up imports no plugin either
