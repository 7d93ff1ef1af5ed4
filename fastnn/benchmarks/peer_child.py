"""The process that times other libraries' calls (peers.py) in turns with
fastnn's backends, for runner.PeerProcess. It is a PyTorch user's process: it
never imports fastnn, and runs with the environment of a process that never
did (runner.child_env). Run as a program (its source through ``python -c``, in
a temporary folder), argv[1] the folder of workloads.py and peers.py, which it
loads as a package of its own (not fastnn.benchmarks, whose __init__ imports
fastnn).

Requests come one JSON object a line on stdin; each gets one JSON line on
stdout:

  {"op": "setup", "key", "setup", "make", "shape", "dtype"} -> {}
      builds the arrays of workloads.<setup>(shape, dtype) and the callable
      peers.<make>(arrays), kept under `key`
  {"op": "sample", "key", "inner"} -> {"seconds": s}
      s: time.perf_counter() seconds of `inner` calls of that callable
  {"op": "drop", "key"} -> {}     forgets it (its arrays can be large)
  {"op": "status"} -> {"fastnn": whether any fastnn module is loaded, "pid"}

A request that fails answers {"error": its traceback, "missing": true when it
was an ImportError (the library is not installed)}. The end of stdin ends the
process.
"""

import importlib
import json
import os
import sys
import time
import traceback
import types


def load(folder):
    package = types.ModuleType("benchmarks_apart")
    package.__path__ = [folder]
    sys.modules["benchmarks_apart"] = package
    return [importlib.import_module("benchmarks_apart." + name) for name in ("workloads", "peers")]


def main(folder):
    # the answers go to the original stdout; anything else written to stdout
    # (by Python or by compiled code) goes to stderr, not into the answers
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    workloads, peers = load(folder)
    calls = {}

    def handle(request):
        op = request["op"]
        if op == "setup":
            arrays = getattr(workloads, request["setup"])(tuple(request["shape"]), request["dtype"])
            calls[request["key"]] = getattr(peers, request["make"])(arrays)
            return {}
        if op == "sample":
            fn, inner = calls[request["key"]], request["inner"]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            return {"seconds": time.perf_counter() - start}
        if op == "drop":
            calls.pop(request["key"], None)
            return {}
        if op == "status":
            return {"fastnn": any(m.split(".")[0] == "fastnn" for m in sys.modules), "pid": os.getpid()}
        raise ValueError(f"unknown request {op!r}")

    for line in sys.stdin:
        try:
            answer = handle(json.loads(line))
        except Exception as exc:
            answer = {"error": traceback.format_exc(), "missing": isinstance(exc, ImportError)}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main(sys.argv[1])
