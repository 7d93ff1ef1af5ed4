"""How late a worker of the C kernels' pool joins a job posted after a pause
(csrc/threads.c: a sleeping worker is woken with the caller's core taken out of
its affinity; it spins 1 ms after each job). Compiles bench/pool_wake.c with
csrc/threads.c (the system's cc; not part of fastnn) and runs it for pauses
shorter and longer than the spin.

    python bench/pool_wake.py [CALLS]

On a 2-vCPU virtual machine (Zen 4), before the affinity change, after pauses of
10 ms or more the woken worker was queued on the caller's core and the caller
did both 500 us parts in every call (1.01-1.15 ms); after it, the worker starts
its part 80-120 us after the post (0.61-0.65 ms a call).
"""

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    calls = sys.argv[1] if len(sys.argv) > 1 else "10"
    program = Path(tempfile.mkdtemp()) / "pool_wake"
    subprocess.run(["cc", "-O2", "-pthread", f"-I{ROOT / 'csrc'}", str(ROOT / "bench" / "pool_wake.c"),
                    str(ROOT / "csrc" / "threads.c"), "-o", str(program), "-lm"], check=True)
    for pause_us in (500, 3000, 120000):
        subprocess.run([str(program), str(pause_us), calls], check=True)


if __name__ == "__main__":
    main()
