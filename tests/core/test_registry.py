import pytest

import threestudio
from threestudio.models.geometry.base import BaseImplicitGeometry
from threestudio.models.materials.base import BaseMaterial
from threestudio.registry import RegistryError, _unregister, family_of
from threestudio.utils.base import BaseObject


@pytest.fixture
def registered():
    names = []

    def reg(name, cls, **kw):
        threestudio.register(name, **kw)(cls)
        names.append(name)
        return cls

    yield reg
    for n in names:
        _unregister(n)


def test_register_and_find_with_family(registered):
    class MyGeo(BaseImplicitGeometry):
        pass

    registered("t-reg-geo", MyGeo)
    assert threestudio.find("t-reg-geo") is MyGeo
    assert threestudio.find("t-reg-geo", family="geometry") is MyGeo
    assert family_of(MyGeo) == "geometry"
    assert "t-reg-geo" in threestudio.list_modules("geometry")
    assert "t-reg-geo" not in threestudio.list_modules("material")


def test_unknown_name_suggests_nearest_and_names_key(registered):
    class MyGeo(BaseImplicitGeometry):
        pass

    registered("t-reg-spiky-geometry", MyGeo)
    with pytest.raises(RegistryError) as e:
        threestudio.find("t-reg-spiky-geometri", family="geometry", key="system.geometry_type")
    msg = str(e.value)
    assert "Unknown geometry module 't-reg-spiky-geometri'" in msg
    assert "system.geometry_type" in msg
    assert "Did you mean: 't-reg-spiky-geometry'" in msg


def test_wrong_family_names_both_families(registered):
    class MyMat(BaseMaterial):
        pass

    registered("t-reg-mat", MyMat)
    with pytest.raises(RegistryError) as e:
        threestudio.find("t-reg-mat", family="geometry", key="system.geometry_type")
    msg = str(e.value)
    assert "'t-reg-mat' is a material module" in msg
    assert "config key 'system.geometry_type' needs a geometry module" in msg


def test_duplicate_name_names_both_classes(registered):
    class First(BaseMaterial):
        pass

    class Second(BaseMaterial):
        pass

    registered("t-reg-dup", First)
    with pytest.raises(RegistryError) as e:
        threestudio.register("t-reg-dup")(Second)
    msg = str(e.value)
    assert "test_registry" in msg and "First" in msg and "Second" in msg
    assert threestudio.find("t-reg-dup") is First


def test_family_from_name_for_threestudio_style_classes(registered):
    class SomeGuidance(BaseObject):
        pass

    registered("t-reg-foo-guidance", SomeGuidance)
    assert threestudio.find("t-reg-foo-guidance", family="guidance") is SomeGuidance


def test_composition_syntax_mixes_classes(registered):
    class Main(BaseMaterial):
        def who(self):
            return "main"

    class Mixin:
        def who(self):
            return "mixin"

    registered("t-reg-main", Main)
    registered("t-reg-mixin", Mixin, family="material")
    cls = threestudio.find("t-reg-main:t-reg-mixin")
    assert issubclass(cls, Main) and issubclass(cls, Mixin)
    assert cls.who(None) == "mixin"
