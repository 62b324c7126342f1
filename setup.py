"""Package discovery (the rest of the build is declared in pyproject.toml).

setuptools finds every package and data folder under ``cl_bench/`` and ``hydra_plugins/``, so a
new subpackage needs no edit. ``conf/`` stays at the top level, as Hydra users expect, and ships
inside the wheel as ``cl_bench/conf`` (``cl_bench.cli.CONF_DIR`` finds it after a non-editable
install too), each of its folders a data-only package ``cl_bench.conf.<group>``: a renamed
folder, which pyproject.toml's ``packages.find`` cannot express. ``hydra_plugins`` itself stays a
namespace package that other Hydra plugins share, so only the packages inside it are ours.
"""

from setuptools import find_namespace_packages, setup


def inside(folder: str, name: str) -> list[str]:
    """The packages (folders, with or without ``__init__.py``) below ``folder``, named under
    ``name``."""
    return [f"{name}.{p}" for p in find_namespace_packages(folder, exclude=["*__pycache__*"])]


setup(packages=(["cl_bench"] + inside("cl_bench", "cl_bench")
                + inside("hydra_plugins", "hydra_plugins")
                + ["cl_bench.conf"] + inside("conf", "cl_bench.conf")),
      package_dir={"cl_bench.conf": "conf"})
