"""Install kiln's runtime and test dependencies from pyproject.toml into the venv.

The package itself is installed afterwards with --no-build-isolation (the C++ build needs
the venv's torch for libtorch), so its dependencies are installed here first.
"""
import subprocess
import sys
import tomllib
from pathlib import Path

pip = sys.argv[1] if len(sys.argv) > 1 else "pip"
project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
reqs = list(project["dependencies"])
for extra in project.get("optional-dependencies", {}).values():
    reqs += extra
subprocess.check_call([pip, "install", "-q", *reqs])
