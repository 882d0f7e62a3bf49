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


FREED_RSS = """
import os
import numpy as np
import flows

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2 ** 20

def churn():              # 160 MB of 1 MiB blocks (heap blocks under the kept 32 MiB threshold), then freed
    blocks = [np.ones(1 << 17) for _ in range(160)]
    del blocks

base = rss_mb()
churn()
kept = rss_mb()
with flows.returning_freed_memory():
    entered = rss_mb()
    churn()
    inside = rss_mb()
print(base, kept, entered, inside, flows._kept is not None)
"""


@GLIBC_ONLY
def test_returning_freed_memory_gives_the_kept_heap_back_and_keeps_no_more_inside():
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    for env in (environ, environ | {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:"
                                                      "glibc.malloc.trim_threshold=2147483647"}):   # as inherited
        out = subprocess.run([sys.executable, "-c", FREED_RSS], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        base, kept, entered, inside = map(int, out[:4])
        assert out[4] == "True"
        assert kept - base > 120                  # keep_freed_memory: the freed blocks stay resident
        assert entered - base < 40 and inside - base < 40, out
    # after the block keep_freed_memory's thresholds are back: freed blocks stay resident again
    restored = subprocess.run([sys.executable, "-c", FREED_RSS.replace("print(", "churn(); print(rss_mb() - inside, ")],
                              cwd=REPO, env=environ, capture_output=True, text=True, check=True).stdout.split()
    assert int(restored[0]) > 120
