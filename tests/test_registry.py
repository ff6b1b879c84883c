"""Registries: lazy entries, duplicate ids, wrong base classes, 'Did you mean'."""

import pytest

from advbench.errors import PluginError
from advbench.interfaces import Defense, Metric
from advbench.registry import Registry


class GoodDefense(Defense):
    """A defense used by the tests."""

    def protect(self, model, publisher_data, ctx):
        raise NotImplementedError


def test_register_class_and_lazy_reference():
    reg = Registry("defense")
    reg.register("good", GoodDefense, source="tests")
    reg.register("lazy", "advbench_plugins.defenses.none:NoDefense", "lazy one", source="tests")
    assert reg.names() == ["good", "lazy"]
    assert reg.get("good") is GoodDefense
    from advbench_plugins.defenses.none import NoDefense

    assert reg.get("lazy") is NoDefense
    assert reg.entry("good").description == "A defense used by the tests."


def test_duplicate_names_both_plugins():
    reg = Registry("defense")
    reg.register("dup", GoodDefense, source="first-plugin")
    with pytest.raises(PluginError, match="first-plugin.*second-plugin"):
        reg.register("dup", GoodDefense, source="second-plugin")


def test_wrong_base_class_is_loud():
    reg = Registry("defense")
    with pytest.raises(PluginError, match="not a subclass of advbench.interfaces.Defense"):
        reg.register("bad", Metric, source="oops-plugin")
    reg.register("bad-lazy", "advbench.registry:Registry", source="oops-plugin")
    with pytest.raises(PluginError, match="oops-plugin.*not a subclass"):
        reg.get("bad-lazy")


def test_unimportable_lazy_reference_names_plugin():
    reg = Registry("attack")
    reg.register("ghost", "no_such_module_xyz:Thing", source="ghost-plugin")
    with pytest.raises(PluginError, match="ghost-plugin.*cannot be imported"):
        reg.get("ghost")


def test_unknown_name_suggests():
    reg = Registry("defense")
    reg.register("freezeasguard", GoodDefense, source="tests")
    reg.register("none", GoodDefense, source="tests")
    with pytest.raises(PluginError) as exc:
        reg.get("freezasguard")
    assert str(exc.value) == ("Unknown defense 'freezasguard'. Did you mean 'freezeasguard'? "
                              "Available: freezeasguard, none")


@pytest.mark.parametrize("name", ["Bad Name", "", "UPPER", "-x"])
def test_invalid_names(name):
    with pytest.raises(PluginError, match="invalid name"):
        Registry("defense").register(name, GoodDefense, source="tests")


def test_lazy_reference_needs_colon():
    with pytest.raises(PluginError, match="package.module:ClassName"):
        Registry("defense").register("x", "tests.test_registry.GoodDefense", source="tests")
