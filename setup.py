"""Map the top-level folders onto the ``segs.*`` import names.

Packages are discovered under each folder rather than listed, so a new
subpackage can never be left out of the wheel.
"""

from setuptools import find_namespace_packages, setup

FOLDERS = {
    "segs": "segs",
    "segs.protocol": "protocol",
    "segs.edge": "edge",
    "segs.hub": "hub",
    "segs.sim": "firmware-sim",
}


def _packages() -> list[str]:
    found = list(FOLDERS)
    for name, folder in FOLDERS.items():
        found += [
            f"{name}.{sub}"
            for sub in find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])
        ]
    return found


setup(
    packages=_packages(),
    package_dir=FOLDERS,
    package_data={"": ["py.typed", "*.toml", "*.json", "*.ini", "*.mako", "*.sql"]},
)
