"""Where the plugin's yaml files live, found without importing RecBole or torch.

The benchmark scripts read ``overall.yaml`` and the model files before (or instead of) starting a run, and
keep their start-up light; the plugin's ``Config`` reads the same folder. One locator serves both.
"""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def properties_dir():
    """The plugin's yaml folder: packaged beside this module (a wheel), or the source tree's top-level one."""
    for folder in (os.path.join(_HERE, "properties"), os.path.join(os.path.dirname(_HERE), "properties")):
        if os.path.isfile(os.path.join(folder, "overall.yaml")):
            return folder
    raise FileNotFoundError(
        f"the plugin's yaml files are missing (looked in {_HERE}/properties and the source tree's properties/): "
        f"reinstall the package with `pip install recbole-missrec` or `pip install -e .` from a checkout"
    )
