"""The top-level properties/ folder (the plugin's yaml, one source) ships inside the package as
recbole_missrec/properties, so a plain `pip install .` or a wheel finds it from any folder; setup.cfg
cannot map a folder outside the package tree into it."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["recbole_missrec", "recbole_missrec.*", "dataset_preprocess",
                                    "dataset_preprocess.*"]) + ["recbole_missrec.properties"],
    package_dir={"recbole_missrec.properties": "properties"},
    package_data={"recbole_missrec.properties": ["*.yaml", "*/*.yaml"]},
)
