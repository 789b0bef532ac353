"""Write the locked dependency set (pip constraints) from the environment this interpreter runs in.

`make lock` builds a fresh venv, installs the user's torch pair and the project with its extras at their newest
versions, runs the test suite's imports there, and calls this to freeze what it got into requirements/lock.txt.
`make setup` then installs with `pip install -c requirements/lock.txt`, so every machine gets the tested set.

torch and torchvision stay the user's choice (the CUDA build matching their driver), so they and the packages
torch pins exactly for its own CUDA build (nvidia-*, cuda-*, triton) and sympy/mpmath (which older torch
releases pin with ==) are left out: pinning them would make the lock refuse another torch build.
"""

from __future__ import annotations

import platform
import re
import sys
import time
from importlib import metadata

# The project itself (installed editable) and what belongs to the user's torch build.
EXCLUDE = re.compile(r"^(cad-attribution|torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|sympy|mpmath|pip|"
                     r"setuptools|wheel)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    out = {}
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if not EXCLUDE.match(name):
            out[name] = dist.version
    return dict(sorted(out.items()))


def main() -> int:
    torch = next((d.version for d in metadata.distributions() if canonical(d.metadata["Name"]) == "torch"), "absent")
    lines = [
        "# The tested dependency set of cad, as pip constraints (`make setup` installs with -c this file).",
        "# Regenerate with `make lock`; `make test-latest` tests the newest releases instead.",
        f"# Made {time.strftime('%Y-%m-%d')} on Python {platform.python_version()} ({sys.platform}), "
        f"tested with torch {torch} (not pinned: torch and its CUDA packages are the user's build).",
    ]
    lines += [f"{name}=={version}" for name, version in locked().items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
