#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <stdlib.h>
#include "common.h"

/* The C kernels' threads: a small pool of their own rather than OpenMP, so that
 * how they wait is theirs to choose and the process's OpenMP policy
 * (OMP_WAIT_POLICY, read once by each OpenMP runtime as it loads) stays the
 * user's. A worker spins for up to a millisecond after a range (in a training
 * step the next parallel kernel follows within microseconds, after the serial
 * passes of a small layer within tens of them), then sleeps on a condition
 * variable. The GEMMs of the dense layers run on these threads too (csrc/blas.c,
 * BLAS on one thread meanwhile), so no other pool waits for the core a worker
 * spins on.
 *
 * LOCALITY. Part 0 of every job is the caller's, the next parts the workers':
 * kernels that split the rows of a batch the same way then find their rows in
 * their own core's caches, where a kernel that runs on one core pulls what the
 * other core wrote or read (on a 2-vCPU Zen 4, a line another core holds costs
 * several times a local one). So the small kernels of a training step split too
 * (parallel_run_small): a part posted to a spinning worker starts within a
 * microsecond, and one that no worker has claimed when the caller is done is
 * the caller's (nothing waits for a sleeping worker, which small kernels do not
 * wake). Measured in a step of a 200 x 54 -> 100 -> 7 float64 network (c, 2
 * threads): with only its large layer split, the 100 -> 7 layer's backward took
 * 25 us against 15.5 for the same call repeated, the optimizer 18 against 8.3;
 * with every kernel split, 10.4 and 11.7 (9.3 and 6.5 repeated); the epoch went
 * from 36.9 to 28.9 ms, its GEMMs alone (NumPy) taking 26.1.
 *
 * One job at a time: parallel_run claims the pool with a trylock; a second
 * caller (another Python thread: cffi releases the GIL) or a nested one runs
 * its ranges serially. Parts are claimed from one 64-bit word, job sequence
 * number << 16 | parts << 8 | next part, so a worker that wakes late can only
 * claim a part of the job the word describes, and that job cannot end (nor its
 * arguments change) before the part is done. */
#if !defined(_WIN32)
#define POOL 1
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#define KEEP_OFF_CALLER 1
#include <sys/syscall.h>
#endif
#endif

static int fastnn_num_threads = 0; /* 0: the default (read_default_threads) */

#ifdef POOL
/* After a fork, only the forking thread exists in the child; the pool's workers
 * and, if another thread was inside parallel_run, its locks are not usable. So a
 * forked child runs every kernel serially (its siblings, if a pool of
 * processes, share the cores anyway). Set in the child by pthread_atfork,
 * registered when the library loads; never cleared. */
static volatile int forked_child = 0;

static void mark_forked_child(void) { forked_child = 1; }

__attribute__((constructor)) static void register_fork_guard(void) {
    pthread_atfork(NULL, NULL, mark_forked_child);
}

/* How long a worker, or the caller waiting for the workers' parts, spins
 * before it sleeps. Waking a sleeping worker costs 70-130 us on a 2-vCPU
 * virtual machine (see keep_workers_off), more than a small
 * layer's kernel; a spin of 25 us let the workers sleep between the parallel
 * kernels of a small network's step, whose serial ones (a 100 x 10 layer, the
 * loss) take tens of microseconds. Measured with `python -m fastnn bench`
 * (Zen 4, a pause 25 ns, 2 threads), one epoch of the 1797 x 64 digits network
 * (batch 200, float64): 1.98 and 2.01 ms spinning 25 us, 1.56-1.68 spinning
 * 0.25 ms, 1.56-1.62 spinning 1 ms, 1.58-1.74 spinning 2.5 ms; of 50000 x 54
 * tabular data 47-48, 41.8-45.2, 39.4-44.0, 38.9-41.9 ms; of a 784-512-256-10
 * network 306-311, 297-308, 297-324, 293-314 ms (runs in the machine's slow
 * spells left out). GNU OpenMP's default spins for about as long. */
#define SPIN_NS 1000000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline uint64_t clock_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* One pause of a spin that ends at `deadline` (clock_ns); whether it has
 * ended (the clock is read every 64 pauses, `count` counts them). */
static inline int spin_ended(unsigned *count, uint64_t deadline) {
    cpu_relax();
    return ++*count % 64 == 0 && clock_ns() > deadline;
}

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;  /* one job at a time */
static pthread_mutex_t wait_lock = PTHREAD_MUTEX_INITIALIZER; /* guards the sleeps */
static pthread_cond_t job_posted = PTHREAD_COND_INITIALIZER;
static pthread_cond_t job_done = PTHREAD_COND_INITIALIZER;
static int workers = 0; /* started; they never exit */

#ifdef KEEP_OFF_CALLER
/* A worker woken from its sleep may be placed on the caller's own core and
 * wait there while the caller works, even though another core is idle: a
 * virtual machine's idle vCPU, descheduled by its host, counts as busy to the
 * guest's scheduler, which then wakes the worker beside its waker. Measured on
 * a 2-vCPU machine, two parts of 500 us each after a pause of 10 ms or more: the
 * worker ran on the caller's core in every call and the caller did both parts
 * (1.01-1.15 ms); kept off the caller's core it started its part 80-120 us after
 * the post (0.61-0.65 ms). Likewise a caller that the scheduler moves onto a
 * spinning worker's core would share that core with it until the worker
 * sleeps, which in a training epoch it may not do. So before posting a job, the
 * caller takes its own core out of each worker's affinity: a system call when
 * the caller's core changed since that worker's last one. */
static pid_t worker_tid[MAX_PARTS]; /* 0 until the worker has written it */
static int worker_off[MAX_PARTS];   /* the core last taken out of its affinity, -1: none */
static cpu_set_t process_cpus;      /* the process's cores when the workers started */

static void keep_workers_off(void) {
    int here = sched_getcpu();
    if (here < 0 || here >= CPU_SETSIZE || !CPU_ISSET(here, &process_cpus)) return;
    for (int i = 0; i < workers; i++) {
        pid_t tid = __atomic_load_n(&worker_tid[i], __ATOMIC_ACQUIRE);
        if (tid == 0 || worker_off[i] == here) continue;
        cpu_set_t others = process_cpus;
        CPU_CLR(here, &others);
        if (CPU_COUNT(&others) > 0 && sched_setaffinity(tid, sizeof others, &others) == 0)
            worker_off[i] = here;
    }
}
#endif

/* the current job; written by the caller holding run_lock before it posts `word` */
static range_fn job_fn;
static void *job_args;
static int64_t job_n;
static uint64_t word = 0; /* seq << 16 | parts << 8 | next */
static int done = 0;      /* parts finished */

#define WORD_PARTS(w) ((int)(((w) >> 8) & 0xff))
#define WORD_NEXT(w) ((int)((w) & 0xff))
#define WORD_SEQ(w) ((w) >> 16)

/* Runs part p of the posted job's `parts`. */
static void run_part(int p, int parts) {
    int64_t n = job_n;
    job_fn(job_args, n * p / parts, n * (p + 1) / parts, p);
    if (__atomic_add_fetch(&done, 1, __ATOMIC_ACQ_REL) == parts) {
        pthread_mutex_lock(&wait_lock);
        pthread_cond_broadcast(&job_done);
        pthread_mutex_unlock(&wait_lock);
    }
}

/* Runs parts of the posted job until none is left; returns when none is. */
static void run_parts(void) {
    uint64_t w = __atomic_load_n(&word, __ATOMIC_ACQUIRE);
    for (;;) {
        int parts = WORD_PARTS(w), p = WORD_NEXT(w);
        if (p >= parts) return;
        if (!__atomic_compare_exchange_n(&word, &w, w + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue; /* w now holds the current word */
        run_part(p, parts);
        w = __atomic_load_n(&word, __ATOMIC_ACQUIRE);
    }
}

static void *worker(void *index) {
    int me = (int)(intptr_t)index;
#ifdef KEEP_OFF_CALLER
    __atomic_store_n(&worker_tid[me], (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
    pthread_setname_np(pthread_self(), "fastnn-pool"); /* for top -H, and the tests */
#endif
    (void)me;
    uint64_t seen = 0;
    for (;;) {
        unsigned spins = 0;
        uint64_t deadline = clock_ns() + SPIN_NS;
        while (WORD_SEQ(__atomic_load_n(&word, __ATOMIC_ACQUIRE)) == seen)
            if (spin_ended(&spins, deadline)) break;
        if (WORD_SEQ(__atomic_load_n(&word, __ATOMIC_ACQUIRE)) == seen) {
            pthread_mutex_lock(&wait_lock);
            while (WORD_SEQ(__atomic_load_n(&word, __ATOMIC_ACQUIRE)) == seen)
                pthread_cond_wait(&job_posted, &wait_lock);
            pthread_mutex_unlock(&wait_lock);
        }
        seen = WORD_SEQ(__atomic_load_n(&word, __ATOMIC_ACQUIRE));
        run_parts();
    }
    return NULL;
}

/* Starts workers until there are `wanted` (fewer if the system refuses). */
static void start_workers(int wanted) {
#ifdef KEEP_OFF_CALLER
    if (workers == 0 && sched_getaffinity(0, sizeof process_cpus, &process_cpus) != 0)
        CPU_ZERO(&process_cpus);
#endif
    while (workers < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
#ifdef KEEP_OFF_CALLER
        worker_tid[workers] = 0; /* until the worker writes it */
        worker_off[workers] = -1;
#endif
        int failed = pthread_create(&thread, &attr, worker, (void *)(intptr_t)workers);
        pthread_attr_destroy(&attr);
        if (failed) break;
        workers++;
    }
}

/* OMP_NUM_THREADS when set (its first number, as OpenMP reads it), else the
 * cores this process may run on; read once, as the library loads (every
 * kernel call asks, and this costs a system call). */
static int read_default_threads(void) {
    const char *env = getenv("OMP_NUM_THREADS");
    if (env && atoi(env) > 0) return atoi(env);
#ifdef CPU_COUNT
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) > 0) return CPU_COUNT(&cpus);
#endif
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

static int default_threads = 1;

__attribute__((constructor)) static void set_default_threads(void) {
    default_threads = read_default_threads();
}
#endif

void fastnn_set_num_threads(int n) {
    fastnn_num_threads = n > 0 ? n : 0;
}

int fastnn_get_num_threads(void) {
#ifdef POOL
    if (forked_child) return 1;
    int n = fastnn_num_threads > 0 ? fastnn_num_threads : default_threads;
    return n < MAX_PARTS ? n : MAX_PARTS;
#else
    return 1;
#endif
}

int parallel_parts(int64_t n, int64_t min_parallel) {
    int threads = fastnn_get_num_threads();
    if (threads <= 1 || n < min_parallel || n < threads) return 1;
    return threads;
}

static void run_serially(range_fn fn, void *args, int64_t n, int parts) {
    for (int p = 0; p < parts; p++) fn(args, n * p / parts, n * (p + 1) / parts, p);
}

void parallel_run(range_fn fn, void *args, int64_t n, int parts) {
    parallel_run_small(fn, args, n, parts, 1);
}

void parallel_run_small(range_fn fn, void *args, int64_t n, int parts, int wake) {
    if (n <= 0) return;
    if (parts <= 1) {
        fn(args, 0, n, 0);
        return;
    }
#ifdef POOL
    if (forked_child || pthread_mutex_trylock(&run_lock) != 0) {
        run_serially(fn, args, n, parts);
        return;
    }
    start_workers(parts - 1);
    job_fn = fn;
    job_args = args;
    job_n = n;
    __atomic_store_n(&done, 0, __ATOMIC_RELAXED);
#ifdef KEEP_OFF_CALLER
    keep_workers_off();
#endif
    uint64_t seq = WORD_SEQ(__atomic_load_n(&word, __ATOMIC_RELAXED)) + 1;
    /* posted under wait_lock: a worker between its last look and its sleep holds
     * it, so it cannot miss the broadcast. Part 0 is the caller's own (posted as
     * taken), the others the workers' in the order they come: so from one kernel
     * to the next the caller's slice of the rows stays in its core's caches and a
     * spinning worker's in its own (see LOCALITY). Parts no worker has claimed
     * when the caller is done are the caller's too (a sleeping worker is not
     * waited for); without workers it does every part. */
    uint64_t posted = seq << 16 | (uint64_t)parts << 8 | 1;
    if (wake) {
        pthread_mutex_lock(&wait_lock);
        __atomic_store_n(&word, posted, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&job_posted);
        pthread_mutex_unlock(&wait_lock);
    } else { /* a worker that sleeps, or is going to, may miss it: the caller runs its part */
        __atomic_store_n(&word, posted, __ATOMIC_RELEASE);
    }
    run_part(0, parts);
    run_parts();
    unsigned spins = 0;
    uint64_t deadline = clock_ns() + SPIN_NS;
    while (__atomic_load_n(&done, __ATOMIC_ACQUIRE) < parts)
        if (spin_ended(&spins, deadline)) break;
    if (__atomic_load_n(&done, __ATOMIC_ACQUIRE) < parts) {
        pthread_mutex_lock(&wait_lock);
        while (__atomic_load_n(&done, __ATOMIC_ACQUIRE) < parts) pthread_cond_wait(&job_done, &wait_lock);
        pthread_mutex_unlock(&wait_lock);
    }
    pthread_mutex_unlock(&run_lock);
#else
    run_serially(fn, args, n, parts);
#endif
}

int parallel_for(range_fn fn, void *args, int64_t n, int64_t min_parallel) {
    int parts = parallel_parts(n, min_parallel);
    parallel_run(fn, args, n, parts);
    return parts;
}

int parallel_for_small(range_fn fn, void *args, int64_t n, int64_t min_split, int64_t min_wake) {
    int parts = parallel_parts(n, min_split);
    parallel_run_small(fn, args, n, parts, n >= min_wake);
    return parts;
}

double *workspace(int parts, int64_t len) {
    return calloc((size_t)parts * (size_t)(len > 0 ? len : 1), sizeof(double));
}

void add_parts(double *ws, int parts, int64_t len) {
    for (int p = 1; p < parts; p++)
        for (int64_t j = 0; j < len; j++) ws[j] += ws[p * len + j];
}
