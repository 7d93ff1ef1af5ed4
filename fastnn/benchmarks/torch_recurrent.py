"""Training steps of a recurrent network in PyTorch, for the recurrent
benchmarks (recurrent.py). Run as a program in a process of its own (its
source through ``python -c``, runner.run_apart), which never imports fastnn,
as a PyTorch user's process.

argv[1]: JSON {"kind": "rnn" or "lstm", "batch", "steps", "features", "units",
"min_time": seconds per timing, "repeats", optionally "threads": torch's thread
count, and "cpu_time": true to time in the thread's CPU time (one thread), not
wall time}. The network: torch.nn.RNN (tanh) or
torch.nn.LSTM, batch first, a linear head on the last hidden state, squared
error, Adam (lr 1e-3), float32. Prints one JSON line: {"step_seconds": [the
mean time of one training step over each timing], "threads": torch's}.
"""

import json
import sys
import time

import numpy as np


def main(o):
    import torch  # here, so that the module imports where PyTorch is absent

    if o.get("threads"):
        torch.set_num_threads(o["threads"])
    clock = time.thread_time if o.get("cpu_time") else time.perf_counter
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.standard_normal((o["batch"], o["steps"], o["features"]), np.float32))
    y = torch.from_numpy(rng.standard_normal((o["batch"], 1), np.float32))
    layer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM}[o["kind"]]
    recurrent = layer(o["features"], o["units"], batch_first=True)
    head = torch.nn.Linear(o["units"], 1)
    optimizer = torch.optim.Adam([*recurrent.parameters(), *head.parameters()], lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        hs, _ = recurrent(X)  # hs (N, T, H)
        loss = torch.nn.functional.mse_loss(head(hs[:, -1]), y)
        loss.backward()
        optimizer.step()

    for _ in range(5):  # warm-up
        step()
    start = clock()
    step()
    calls = max(1, int(o["min_time"] / max(clock() - start, 1e-6)))
    times = []
    for _ in range(o["repeats"]):
        start = clock()
        for _ in range(calls):
            step()
        times.append((clock() - start) / calls)
    print(json.dumps({"step_seconds": times, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
