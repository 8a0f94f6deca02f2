"""The plot scripts' shared start: modules imported, or a clear exit when this Python lacks them
(another python3, from pyenv or a venv, coming first on PATH), and matplotlib without a display."""
import importlib
import os
import sys


def require(*modules):
    """Imports the named modules and returns them; exits 2 naming the missing one and the system
    interpreter, which has them on Debian (python3-numpy, python3-matplotlib)."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: the Python module '{e.name or e}' is missing from "
                         f"{sys.executable}.\nRun the script with the system interpreter, which has it: "
                         f"/usr/bin/python3 {sys.argv[0]} ...\n(Debian: apt install python3-matplotlib python3-numpy)\n")
        sys.exit(2)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    (matplotlib,) = require("matplotlib")
    matplotlib.use("Agg")
    (plt,) = require("matplotlib.pyplot")
    return plt
