"""A non-editable install has everything the tools need: every module, the
shipped configs and weights, found through the package (no path into the source tree)."""
import os
import subprocess
import sys
import zipfile

from sact_det.config import get_config_file
from sact_det.config.model_zoo import CONFIG_ROOT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_holds_every_module_and_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), REPO], check=True, cwd=tmp_path)
    wheel, = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    sources = {os.path.relpath(os.path.join(d, f), REPO) for d, _, files in os.walk(os.path.join(REPO, "sact_det"))
               for f in files if f.endswith((".py", ".yaml", ".pth"))}
    assert "sact_det/configs/synthetic/sact_tiny.yaml" in sources
    assert sorted(sources - names) == []


def test_configs_are_found_through_the_package():
    assert os.path.realpath(os.path.join(REPO, "configs")) == os.path.realpath(CONFIG_ROOT)
    path = get_config_file("synthetic/sact_tiny.yaml")
    assert os.path.isfile(path) and path.startswith(CONFIG_ROOT)


def test_an_unknown_config_names_the_shipped_ones():
    try:
        get_config_file("synthetic/nope.yaml")
    except FileNotFoundError as e:
        assert "synthetic/sact_tiny.yaml" in str(e)
    else:
        raise AssertionError("no error")
