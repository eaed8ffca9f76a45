import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import resource, sys, torch
from attnvgg_export.graphs.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x, w = torch.randn(4, 16, 128, 128), torch.randn(64, 16, 3, 3)
def batch():  # a conv layer's activations (16 MiB each), made and freed, as in an eager batch
    with torch.inference_mode():
        torch.relu(torch.nn.functional.conv2d(x, w, padding=1)).sum()
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_without_faulting_their_pages_in_again():
    default, kept = _page_faults("default"), _page_faults("keep")
    # glibc's default unmaps the freed blocks: ~32,000 pages fault in again over 4 batches
    # (fewer where transparent huge pages are always on); kept, the blocks are reused
    assert kept < max(200, default / 10), (default, kept)
