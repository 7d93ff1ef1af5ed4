"""Kernel benchmarks, measured against this machine's own limits.

One module per concern:

* timing.py: the timing harness (`time_calls`, `time_call`, `best_of`).
* limits.py: what this machine can do at best, measured in the same run
  (`measure_limits`: BLAS GEMM GFLOP/s per dtype, streaming memory bandwidth),
  and the ceiling each benchmark is compared with (`limit_for`).
* workloads.py: the work of each benchmark, whichever library does it: inputs
  (setups), the end-to-end network, flop counts and the bare GEMMs.
* peers.py: the same work in other libraries (PyTorch, scikit-learn).
* cases.py: the benchmarks as data (`Benchmark`, `BENCHMARKS`), with the call of
  each on a fastnn backend. Adding a benchmark is appending one `Benchmark` to
  `BENCHMARKS`.
* runner.py: `run_benchmark` / `run` time the benchmarks on each backend and on
  the other libraries and return `Record`s (rate, percent of the machine limit,
  speed-up over the reference).
* machine.py: where the figures were measured (CPU, cores, BLAS, versions).

timing.py, limits.py, workloads.py and peers.py never import fastnn.
Every name is also importable from fastnn.benchmarks itself.
"""

from .cases import (
    BENCHMARKS,
    CNN_KERNELS,
    NET_KERNELS,
    Benchmark,
    M,
    activation_call,
    adam_call,
    batchnorm_call,
    cnn_epoch_call,
    cnn_model,
    dense_call,
    dropout_call,
    get_benchmark,
    mlp_fit_call,
    nn_epoch_call,
    select,
    sgd_call,
    softmax_ce_call,
)
from .limits import MB, best_limits, best_streaming, in_threads, limit_for, measure_limits, usable_cores
from .machine import (
    blas_info,
    cpu_busy_seconds,
    cpu_flags,
    cpu_model,
    machine,
    openblas_core_warning,
    openblas_report,
    other_cpu_percent,
    version,
)
from .peers import (
    adam_torch,
    batchnorm_torch,
    cnn_epoch_torch,
    convnet_epoch_torch,
    dense_torch,
    dropout_torch,
    gelu_torch,
    lenet_epoch_torch,
    mlp_fit_sklearn,
    nn_epoch_torch,
    sgd_torch,
    softmax_ce_torch,
    tanh_torch,
)
from .runner import (
    BARE,
    REFERENCE,
    SCALE_ENV,
    TIMED_APART,
    PeerError,
    PeerProcess,
    Record,
    RemoteCall,
    records_of,
    rescore,
    run,
    run_benchmark,
    scale_from_env,
    time_apart,
)
from .timing import best_of, time_call, time_calls
from .workloads import (
    CNN_BATCH,
    CNN_IMAGE,
    CONVNET,
    LENET,
    MLP_PARAMS,
    NET_BATCH,
    NET_UNITS,
    adam_setup,
    batchnorm_setup,
    cnn_flops,
    cnn_gemms,
    cnn_gemms_of,
    cnn_setup,
    dense_flops,
    dense_gemms,
    dense_setup,
    elementwise_setup,
    network_flops,
    network_gemms,
    network_setup,
    sgd_setup,
    softmax_ce_setup,
)

__all__ = [
    # timing
    "best_of", "time_call", "time_calls",
    # limits
    "MB", "best_limits", "best_streaming", "in_threads", "limit_for", "measure_limits", "usable_cores",
    # workloads
    "CNN_BATCH", "CNN_IMAGE", "CONVNET", "LENET", "MLP_PARAMS", "NET_BATCH", "NET_UNITS", "adam_setup",
    "batchnorm_setup", "cnn_flops", "cnn_gemms", "cnn_gemms_of",
    "cnn_setup", "dense_flops", "dense_gemms",
    "dense_setup", "elementwise_setup", "network_flops", "network_gemms", "network_setup", "sgd_setup",
    "softmax_ce_setup",
    # peers
    "adam_torch", "batchnorm_torch", "cnn_epoch_torch", "convnet_epoch_torch", "dense_torch",
    "lenet_epoch_torch", "dropout_torch", "gelu_torch", "mlp_fit_sklearn",
    "nn_epoch_torch", "sgd_torch", "softmax_ce_torch", "tanh_torch",
    # cases
    "BENCHMARKS", "CNN_KERNELS", "NET_KERNELS", "Benchmark", "M", "activation_call", "adam_call",
    "batchnorm_call", "cnn_epoch_call", "cnn_model",
    "dense_call", "dropout_call", "get_benchmark", "mlp_fit_call", "nn_epoch_call", "select", "sgd_call",
    "softmax_ce_call",
    # runner
    "BARE", "REFERENCE", "SCALE_ENV", "TIMED_APART", "PeerError", "PeerProcess", "Record",
    "RemoteCall", "records_of", "rescore", "run",
    "run_benchmark", "scale_from_env", "time_apart",
    # machine
    "blas_info", "cpu_busy_seconds", "cpu_flags", "cpu_model", "machine", "other_cpu_percent", "version",
    "openblas_core_warning", "openblas_report",
]
