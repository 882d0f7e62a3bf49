"""What importing ``flows`` does to the process: glibc keeps freed memory (no page faults on every forward pass)."""
import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO

FORWARD_FAULTS = """
import os, resource, sys
import torch
if sys.argv[1] == "flows":
    import flows
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
                          torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 8, 3, padding=1)).eval()
x = torch.rand(4, 3, 256, 256)
with torch.inference_mode():
    net(x), net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x)
print(os.environ.get("GLIBC_TUNABLES"), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


GLIBC_ONLY = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc malloc only")


def faults_per_forward(mode: str, **env: str) -> tuple[str, int]:
    """(GLIBC_TUNABLES as the child saw it, page faults per forward) in a child whose malloc settings are ``env``
    alone: one inherited from the caller (CI sets some) would make ``flows`` leave malloc as it is."""
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", FORWARD_FAULTS, mode], cwd=REPO, env=environ, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@GLIBC_ONLY
def test_importing_flows_stops_forward_passes_page_faulting_their_activations_in():
    # 16 MiB activations freed and allocated again each forward: ~12,000-14,000 page faults each with glibc's
    # defaults, 0 to a few hundred after `import flows` (the exact count varies from run to run)
    _, plain = faults_per_forward("plain")
    _, tuned = faults_per_forward("flows")
    assert tuned * 5 < plain


@GLIBC_ONLY
def test_a_malloc_setting_in_the_environment_wins_over_flows():
    assert faults_per_forward("flows", GLIBC_TUNABLES="glibc.malloc.check=0")[0] == "glibc.malloc.check=0"
    # an explicit threshold also turns glibc's adaptive one off: every forward maps its activations afresh
    plain = faults_per_forward("plain", MALLOC_MMAP_THRESHOLD_="131072")[1]
    tunables, kept = faults_per_forward("flows", MALLOC_MMAP_THRESHOLD_="131072")
    assert tunables == "None" and kept * 2 > plain
