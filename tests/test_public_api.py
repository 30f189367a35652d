"""The lazily re-exported public API: every listed name resolves to the object its module
defines, and a wrong name is an AttributeError naming the package."""

import importlib
import subprocess
import sys

import pytest

PACKAGES = ("phasewatch", "phasewatch.hooks", "phasewatch.grams", "phasewatch.demo")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_is_the_object_its_module_defines(package):
    pkg = importlib.import_module(package)
    for name, module in pkg._EXPORTS.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name), name
    assert set(pkg._EXPORTS) <= set(dir(pkg))


@pytest.mark.parametrize("package", PACKAGES)
def test_an_unknown_name_is_an_attribute_error_naming_the_package(package):
    pkg = importlib.import_module(package)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'Nope'"):
        pkg.Nope  # noqa: B018


def test_importing_the_packages_loads_no_torch():
    code = "import sys, phasewatch, phasewatch.hooks, phasewatch.grams; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
