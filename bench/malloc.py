"""Training steps with and without ``train.memory.keep_freed_memory``, side by side.

glibc's malloc maps every block of 32 MiB or more afresh and unmaps it when freed; a training step
of the short-chunk CNN on a batch of 32 makes several such activations and gradients, so without
the setting every step faults them all in again. malloc's settings hold for a whole process, so
each pass is a child process (``--threads`` torch threads) that trains the short-chunk CNN
(``shortchunk``, ``--freq-pools 4``: the ``chunks`` recipe's model until 2026-12-04, now at 2;
channels-last as ``train fit`` places it, AdamW) on one batch of 32 random 128 x 128 crops for
``--steps`` steps after 3 untimed ones. Passes alternate between malloc as it is
(``FMA_GENRE_MALLOC=default``) and the setting ``python -m train`` applies.

Prints per pass kind the medians over ``--repeats`` passes of wall ms, user and system CPU ms and
minor page faults per step, and the ratio of wall times (as it is / kept; above 1: faster kept).

Usage: python bench/malloc.py [--threads 2] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from train.memory import keep_freed_memory
applied = keep_freed_memory()
import torch
from train.inference import place_model, prepare_input
from train.models import ModelConfig, build_model
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
cpu = torch.device("cpu")
model = place_model(build_model(ModelConfig("shortchunk", 16, {"freq_pools": 4})), cpu).train()
x = prepare_input(torch.randn(32, 1, 128, 128), cpu)
y = torch.randint(0, 16, (32,))
optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(3):
    step()
steps = int(sys.argv[3])
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"applied": applied, "wall_ms": 1000 * wall / steps,
    "user_ms": 1000 * (after.ru_utime - before.ru_utime) / steps,
    "sys_ms": 1000 * (after.ru_stime - before.ru_stime) / steps,
    "faults": (after.ru_minflt - before.ru_minflt) / steps}))
"""


def one_pass(kept: bool, threads: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FMA_GENRE_MALLOC"}
    if not kept:
        env["FMA_GENRE_MALLOC"] = "default"
    argv = [sys.executable, "-c", _CHILD, str(REPO), str(threads), str(steps)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each pass (default 2)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes of each kind, alternating")
    args = parser.parse_args(argv)
    if min(args.threads, args.steps, args.repeats) < 1:
        parser.error("--threads, --steps and --repeats must be >= 1")
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.repeats):
        for kept in (False, True):
            runs[kept].append(one_pass(kept, args.threads, args.steps))
    if not all(r["applied"] for r in runs[True]):
        print("keep_freed_memory did not apply here (not glibc?): nothing to compare", file=sys.stderr)
        return 1
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("wall_ms", "user_ms", "sys_ms", "faults")}
        for k, v in runs.items()
    }
    print(f"shortchunk training step, batch 32, {args.threads} thread(s), ", end="")
    print(f"medians of {args.repeats} passes of {args.steps} steps")
    print(f"{'malloc':<22} {'wall ms':>8} {'user ms':>8} {'sys ms':>7} {'faults/step':>12}")
    for kept, name in ((False, "as it is"), (True, "keep_freed_memory")):
        m = med[kept]
        print(
            f"{name:<22} {m['wall_ms']:>8.0f} {m['user_ms']:>8.0f} {m['sys_ms']:>7.0f} {m['faults']:>12.0f}"
        )
    print(f"wall time as it is / kept: {med[False]['wall_ms'] / med[True]['wall_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
