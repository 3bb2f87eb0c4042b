/* Optional accelerator for http_wasm_asgi.runtime: the hot calls into and out of wasmtime.
 *
 * The runtime works without it (through ctypes, see runtime.py); with it:
 *
 * - Each instance has a `Core`: its store context, export addresses, argument slots and
 *   cached memory base/size. `core.handle_request()` / `core.handle_response(ctx, err)` are
 *   one C call each (no ctypes, no argument objects, the GIL is kept unless the guest runs
 *   on a worker thread). A trap calls back into Python (`owner._raise_trap(index)`), which
 *   raises the runtime's GuestTrap.
 * - Host functions are entered through one C trampoline. The instance being called is in a
 *   thread-local (set by the call), so the trampoline hands the Python host function its
 *   host object and plain ints directly, and turns a Python exception into a wasm trap
 *   through the runtime's error handler.
 * - The hottest host functions (header reads and writes, status, config, method) have a
 *   native implementation over the slots of http_wasm_asgi.host's classes. It handles
 *   only the common, valid case and otherwise *falls back* to the Python function before
 *   changing anything, so the Python functions stay the single reference for semantics,
 *   errors and traps. The host classes declare the slots read here (NATIVE_SLOTS); the
 *   runtime hands them and the host's header byte tables to configure_host, which takes
 *   the offsets from the classes' member descriptors; every object's exact type is checked
 *   before use.
 * - The epoch ticker that enforces the CPU limit is a native thread (guest calls keep the GIL).
 *
 * The wasmtime entry points are not linked here: the runtime passes their addresses (from
 * the wasmtime package's own shared library) to configure().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

typedef void *(*call_async_fn)(void *ctx, const void *func, const void *args, size_t nargs, void *results,
                               size_t nresults, void **trap, void **err);
typedef void *(*instantiate_async_fn)(const void *pre, void *ctx, void *instance, void **trap, void **err);
typedef unsigned char (*future_poll_fn)(void *future);
typedef void (*future_delete_fn)(void *future);
typedef void (*yield_update_fn)(void *ctx, uint64_t delta);
typedef void (*set_deadline_fn)(void *ctx, uint64_t ticks);
typedef void *(*trap_new_fn)(const char *msg, size_t len);
typedef void (*increment_epoch_fn)(void *engine);
typedef size_t (*memory_size_fn)(const void *ctx, const void *memory);
typedef void *(*trampoline_fn)(void *env, void *caller, void *vals, size_t n);
typedef void (*finalizer_fn)(void *env);
typedef void *(*define_fn)(void *linker, const char *module, size_t module_len, const char *name,
                           size_t name_len, const void *functype, trampoline_fn cb, void *env,
                           finalizer_fn finalizer);

static call_async_fn p_call_async;
static instantiate_async_fn p_instantiate_async;
static future_poll_fn p_poll;
static future_delete_fn p_delete;
static yield_update_fn p_yield_update;
static set_deadline_fn p_set_deadline;
static trap_new_fn p_trap_new;
static increment_epoch_fn p_increment_epoch;
static memory_size_fn p_memory_size;
static PyObject *error_handler; /* (name, exception, core) -> str: the trap message */
static PyObject *str_raise_trap, *suspended;

#define FASTPATH_VERSION 11 /* bump with every change of what runtime.py calls */
#define SLOT 16 /* sizeof(wasmtime_val_raw_t): host function arguments */
#define MAX_PARAMS 8
#define NEXPORTS 4
#define INSTANTIATE NEXPORTS /* the "export index" of instantiation (the start section) */
/* Call counters of one guest (runtime.CallStats.counts, shared by its instances): per phase (0 handle_request,
 * 1 handle_response) [calls, nanoseconds, one count per bucket of STATS_BUCKETS_NS and +Inf], then short
 * circuits. Plain increments under the GIL; read by the metrics collector at scrape time. */
#define STATS_NBUCKETS 16
static const long long STATS_BUCKETS_NS[STATS_NBUCKETS] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000,
    50000000, 100000000, 250000000, 1000000000};
#define STATS_STRIDE (2 + STATS_NBUCKETS + 1)
#define STATS_SHORT (2 * STATS_STRIDE)
#define STATS_SIZE (STATS_SHORT + 1)
#define WASMTIME_I32 0
#define WASMTIME_I64 1

/* wasmtime_val_t: a kind byte, then a 24-byte union at offset 8 (runtime.check_binding checks the size) */
typedef struct {
    uint8_t kind;
    uint8_t pad[7];
    union { int32_t i32; int64_t i64; uint8_t raw[24]; } of;
} val_t;

/* Slot offsets of the host's classes, from the slots they declare in NATIVE_SLOTS (configure_host). */
static PyTypeObject *t_host, *t_exchange, *t_flow;
static Py_ssize_t o_host_exchange, o_host_phase, o_host_config, o_host_features, o_host_request_read,
    o_host_request_written, o_host_response_read, o_host_response_written;
static Py_ssize_t o_ex_request_headers, o_ex_response_headers, o_ex_headers_changed, o_ex_status, o_ex_method;
static Py_ssize_t o_ex_path, o_ex_query, o_ex_max_body_size, o_ex_protocol, o_ex_client, o_ex_trailers_supported;
static Py_ssize_t o_flow_receive, o_flow_scope, o_ex_uri, o_ex_request_body, o_ex_request_body_replaced;
static Py_ssize_t o_pool_idle, o_pool_low, o_pool_reuse, o_pool_waiters, o_pool_max_idle, o_pool_size,
    o_pool_min_size, o_pool_trim_handle, o_pool_idle_timeout;
static Py_ssize_t o_flow_buffered, o_flow_chain, o_flow_exchange, o_flow_held, o_flow_pending, o_flow_send, o_flow_sent,
    o_flow_started;
static PyObject *phase_init, *phase_request, *phase_response, *zero; /* the ints GuestHost.phase takes */
static PyObject *merge_fallback; /* the Python reference of merge_response_headers (accelerated()) */
static int native_ready;

#define FIELD(obj, off) (*(PyObject **)((char *)(obj) + (off)))
#define SET_FIELD(obj, off, value) Py_XSETREF(FIELD(obj, off), Py_NewRef(value))

/* ---------------------------------------------------------------- Core */

enum { AFTER_NONE, AFTER_RESULT, AFTER_REQUEST, AFTER_RESPONSE }; /* what completing a call returns/does */
enum { CALL_DONE = 0, CALL_SUSPENDED = 1, CALL_FAILED = -1 };

typedef struct {
    PyObject_HEAD
    void *ctx;                /* wasmtime_context_t*; NULL once closed */
    void *funcs[NEXPORTS];    /* wasmtime_func_t* of handle_request, handle_response, _initialize, _start */
    val_t args[2], results[1];/* of the running call: kept unchanged while its future lives */
    void *future;             /* the running call's wasmtime_call_future_t, NULL between calls */
    void *trap, *err;         /* what the last failed call left (taken by take_trap) */
    int index, after;         /* the running call: export index, what completing it does */
    int timed_out;            /* the last call ran out of time (no trap object: it was cancelled) */
    long long budget_ns;      /* call_timeout */
    long long start_ns, own_ns, others0; /* the running call's clock (see slice) */
    const void *memory;       /* wasmtime_memory_t* (kept alive by the owner) */
    uint8_t *base;            /* memory base: fixed (memory_may_move = false) */
    size_t size;              /* a lower bound of the memory size: memory only grows */
    int release_gil;
    int trap_status;
    PyObject *owner;          /* the runtime's WasmInstance */
    PyObject *host;           /* what Python host functions get first */
    PyObject *store;          /* the wasmtime.Store: outlives any running call (cancelled before it goes) */
    uint64_t *stats;          /* the guest's call counters (STATS_SIZE), NULL: not counted */
    Py_buffer stats_view;     /* holds the counters' buffer while stats is set */
} Core;

static _Thread_local Core *current;  /* the instance whose guest code runs on this thread */
static _Thread_local int holds_gil;  /* the running guest call kept the GIL */
/* Guest time on this thread, for the calls' clocks and the event loop's turn budget. */
static _Thread_local long long thread_slices_ns; /* every slice ever run on this thread */
static _Thread_local long long turn_start_ns, turn_busy_ns; /* guest time in the current turn */
static _Thread_local unsigned long long quick_calls; /* cooperative calls done in their first slice */
static long long turn_ns = 1000000, turn_window_ns = 2000000, long_ns = 10000000; /* set_turn() */

static inline long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void cancel_call(Core *self);

static int Core_traverse(Core *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    Py_VISIT(self->host);
    Py_VISIT(self->store);
    return 0;
}

static void drop_stats(Core *self) {
    if (self->stats != NULL) {
        self->stats = NULL;
        PyBuffer_Release(&self->stats_view);
    }
}

/* One call of handle_request (0) or handle_response (1) ended after ns nanoseconds. */
static inline void count_call(Core *self, long long ns) {
    uint64_t *s = self->stats + self->index * STATS_STRIDE;
    int b = 0;
    while (b < STATS_NBUCKETS && ns > STATS_BUCKETS_NS[b])
        b++;
    s[0]++;
    s[1] += (uint64_t)ns;
    s[2 + b]++;
}

static int Core_clear(Core *self) {
    cancel_call(self); /* while the store is still alive */
    drop_stats(self);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->host);
    Py_CLEAR(self->store);
    return 0;
}

static void Core_dealloc(Core *self) {
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Core(owner, store, context address, budget seconds): the store yields to its caller at every epoch tick. */
static int Core_init(Core *self, PyObject *args, PyObject *kw) {
    PyObject *owner, *store;
    unsigned long long ctx;
    double budget;
    if (!PyArg_ParseTuple(args, "OOKd", &owner, &store, &ctx, &budget))
        return -1;
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    Py_INCREF(store);
    Py_XSETREF(self->store, store);
    Py_INCREF(Py_None);
    Py_XSETREF(self->host, Py_None);
    self->ctx = (void *)(uintptr_t)ctx;
    self->budget_ns = (long long)(budget * 1e9);
    self->trap_status = 500;
    p_yield_update(self->ctx, 1);
    return 0;
}

static PyObject *Core_set_func(Core *self, PyObject *args) {
    int index;
    unsigned long long func;
    if (!PyArg_ParseTuple(args, "iK", &index, &func))
        return NULL;
    if (index < 0 || index >= NEXPORTS) {
        PyErr_SetString(PyExc_IndexError, "export index");
        return NULL;
    }
    self->funcs[index] = (void *)(uintptr_t)func;
    Py_RETURN_NONE;
}

static PyObject *Core_set_memory(Core *self, PyObject *args) {
    unsigned long long memory, base, size;
    if (!PyArg_ParseTuple(args, "KKK", &memory, &base, &size))
        return NULL;
    self->memory = (const void *)(uintptr_t)memory;
    self->base = (uint8_t *)(uintptr_t)base;
    self->size = (size_t)size;
    Py_RETURN_NONE;
}

/* set_stats(counters or None): count this instance's calls in a writable buffer of STATS_SIZE uint64. */
static PyObject *Core_set_stats(Core *self, PyObject *arg) {
    drop_stats(self);
    if (arg == Py_None)
        Py_RETURN_NONE;
    if (PyObject_GetBuffer(arg, &self->stats_view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (self->stats_view.len < (Py_ssize_t)(STATS_SIZE * sizeof(uint64_t))) {
        PyBuffer_Release(&self->stats_view);
        PyErr_SetString(PyExc_ValueError, "set_stats: the buffer is smaller than STATS_SIZE counters");
        return NULL;
    }
    self->stats = (uint64_t *)self->stats_view.buf;
    Py_RETURN_NONE;
}

/* take_trap() -> (trap, error, timed_out): what the last failed call left */
static PyObject *Core_take_trap(Core *self, PyObject *unused) {
    PyObject *r = Py_BuildValue("(KKO)", (unsigned long long)(uintptr_t)self->trap,
                                (unsigned long long)(uintptr_t)self->err, self->timed_out ? Py_True : Py_False);
    self->trap = self->err = NULL;
    self->timed_out = 0;
    return r;
}

/* Whether the wasmtime.Store is still open: the garbage collector may run its finalizer (closing it)
 * before it clears the Core of an abandoned instance. */
static int store_open(Core *self) {
    if (self->store == NULL)
        return 0;
    PyObject *ptr = PyObject_GetAttrString(self->store, "_Managed__ptr");
    int open = ptr != NULL && ptr != Py_None;
    Py_XDECREF(ptr);
    PyErr_Clear();
    return open;
}

/* Drop the running call, if any: wasmtime unwinds its fiber (no host function runs). A call whose store
 * is already gone cannot be unwound: it is left as it is (leaked) rather than touching freed memory. */
static void cancel_call(Core *self) {
    if (self->future == NULL)
        return;
    if (store_open(self)) {
        Core *prev = current;
        current = self;
        p_delete(self->future);
        current = prev;
    }
    self->future = NULL;
}

static PyObject *Core_close(Core *self, PyObject *unused) {
    cancel_call(self);
    drop_stats(self);
    self->ctx = NULL;
    self->memory = NULL;
    self->base = NULL;
    self->size = 0;
    for (int i = 0; i < NEXPORTS; i++)
        self->funcs[i] = NULL;
    Py_INCREF(Py_None);
    Py_XSETREF(self->host, Py_None);
    Py_INCREF(Py_None);
    Py_XSETREF(self->owner, Py_None);
    Py_RETURN_NONE;
}

/* The owner raises the failed call as a Python exception; always -1. */
static int raise_trap(Core *self) {
    PyObject *i = PyLong_FromLong(self->index);
    PyObject *r = (i && self->owner != Py_None) ? PyObject_CallMethodOneArg(self->owner, str_raise_trap, i) : NULL;
    Py_XDECREF(i);
    Py_XDECREF(r);
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_RuntimeError, "guest call failed");
    return CALL_FAILED;
}

/* One slice of the running call: poll its future once (it runs until done or the next epoch tick).
 *
 * The call's clock is its own slices plus, once it is long (long_ns of its own guest time), the time
 * other (non-guest) work ran on this thread while it was suspended; other calls' slices never count,
 * and a short call is never timed out for waiting on a busy loop. Past the budget it is cancelled (503). */
static int slice(Core *self, long long t0) {
    Core *prev = current;
    int prev_holds = holds_gil;
    unsigned char done;
    Py_INCREF(self); /* a host function may drop the last outside reference */
    current = self;
    if (self->release_gil) {
        holds_gil = 0;
        Py_BEGIN_ALLOW_THREADS
        done = p_poll(self->future);
        Py_END_ALLOW_THREADS
    } else {
        holds_gil = 1;
        done = p_poll(self->future);
    }
    long long t1 = now_ns(), d = t1 - t0;
    current = prev;
    holds_gil = prev_holds;
    self->own_ns += d;
    thread_slices_ns += d;
    turn_busy_ns += d;
    int rc = CALL_SUSPENDED;
    if (done) {
        p_delete(self->future);
        self->future = NULL;
        if (self->stats != NULL && self->index < 2)
            count_call(self, t1 - self->start_ns);
        rc = (self->trap || self->err) ? raise_trap(self) : CALL_DONE;
    } else if (self->own_ns >= self->budget_ns ||
               (self->own_ns >= long_ns &&
                (t1 - self->start_ns) - (thread_slices_ns - self->others0 - self->own_ns) >= self->budget_ns)) {
        cancel_call(self);
        if (self->stats != NULL && self->index < 2)
            count_call(self, t1 - self->start_ns);
        self->timed_out = 1;
        self->trap_status = 503;
        rc = raise_trap(self);
    }
    Py_DECREF(self);
    return rc;
}

/* Start a call whose future is in self->future. cooperative: return CALL_SUSPENDED when it does not end in
 * its first slice, or without running it when guests already had this turn's budget; else run it to its end. */
static int run(Core *self, int cooperative) {
    long long t = now_ns();
    self->start_ns = t;
    self->own_ns = 0;
    self->others0 = thread_slices_ns;
    if (cooperative) {
        if (t - turn_start_ns >= turn_window_ns) {
            turn_start_ns = t;
            turn_busy_ns = 0;
        }
        if (turn_busy_ns >= turn_ns)
            return CALL_SUSPENDED; /* deferred: let the event loop run first */
    }
    int rc = slice(self, t);
    if (!cooperative)
        while (rc == CALL_SUSPENDED)
            rc = slice(self, now_ns());
    else if (rc == CALL_DONE)
        quick_calls++;
    return rc;
}

static int start(Core *self, int index, int after, int cooperative) {
    void *func = index < NEXPORTS ? self->funcs[index] : NULL;
    if (self->ctx == NULL || func == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "guest instance is closed");
        return CALL_FAILED;
    }
    if (self->future != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a call is already running on this instance");
        return CALL_FAILED;
    }
    size_t nargs = index == 1 ? 2 : 0, nresults = index == 0 ? 1 : 0;
    self->trap = self->err = NULL;
    self->timed_out = 0;
    self->trap_status = 500;
    self->index = index;
    self->after = after;
    p_set_deadline(self->ctx, 1); /* the first slice ends at the next tick */
    self->future = p_call_async(self->ctx, func, self->args, nargs, self->results, nresults, &self->trap,
                                &self->err);
    return run(self, cooperative);
}

/* GuestHost.begin(exchange, features), after_next() and end(), on the slots: the same
 * assignments as host.py's methods (tests run both paths). */
static void host_begin(PyObject *h, PyObject *exchange, PyObject *features) {
    SET_FIELD(h, o_host_exchange, exchange);
    SET_FIELD(h, o_host_features, features);
    SET_FIELD(h, o_host_phase, phase_request);
    SET_FIELD(h, o_host_request_read, zero);
    SET_FIELD(h, o_host_request_written, Py_False);
    SET_FIELD(h, o_host_response_read, zero);
    SET_FIELD(h, o_host_response_written, Py_False);
}

static void host_after_next(PyObject *h) {
    SET_FIELD(h, o_host_phase, phase_response);
    SET_FIELD(h, o_host_response_written, Py_False);
    SET_FIELD(h, o_host_response_read, zero);
}

static void host_end(PyObject *h) {
    SET_FIELD(h, o_host_exchange, Py_None);
    SET_FIELD(h, o_host_phase, phase_init);
}

static int native_host(Core *self) { return native_ready && self->host && Py_IS_TYPE(self->host, t_host); }

static int call_host(PyObject *host, const char *method) {
    PyObject *r = PyObject_CallMethod(host, method, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The value of a call that ended, after what ends it on the host (after_next on next, end). */
static PyObject *complete(Core *self, int rc) {
    if (rc == CALL_FAILED)
        return NULL;
    if (rc == CALL_SUSPENDED)
        return Py_NewRef(suspended);
    uint64_t ctx_next = (uint64_t)self->results[0].of.i64;
    switch (self->after) {
    case AFTER_RESULT:
        return PyLong_FromUnsignedLongLong(ctx_next);
    case AFTER_REQUEST:
        if (ctx_next & 1) {
            if (native_host(self))
                host_after_next(self->host);
            else if (call_host(self->host, "after_next") < 0)
                return NULL;
        } else if (self->stats != NULL) {
            self->stats[STATS_SHORT]++;
        }
        return PyLong_FromUnsignedLongLong(ctx_next);
    case AFTER_RESPONSE:
        if (native_host(self))
            host_end(self->host);
        else if (call_host(self->host, "end") < 0)
            return NULL;
        Py_RETURN_NONE;
    default:
        Py_RETURN_NONE;
    }
}

/* request(exchange, features) / start_request(...): host.begin(exchange, features), handle_request,
 * and host.after_next() when the guest said next; the i64 ctx_next. */
static PyObject *request_call(Core *self, PyObject *const *args, Py_ssize_t nargs, int cooperative) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "request(exchange, features)");
        return NULL;
    }
    if (self->host == NULL || self->ctx == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "guest instance is closed");
        return NULL;
    }
    if (native_host(self) && PyLong_CheckExact(args[1])) {
        host_begin(self->host, args[0], args[1]);
    } else {
        PyObject *r = PyObject_CallMethod(self->host, "begin", "OO", args[0], args[1]);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    return complete(self, start(self, 0, AFTER_REQUEST, cooperative));
}

static int set_response_args(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "handle_response(req_ctx, is_error)");
        return -1;
    }
    unsigned long long req_ctx = PyLong_AsUnsignedLongLongMask(args[0]);
    int is_error = PyObject_IsTrue(args[1]);
    if (PyErr_Occurred() || is_error < 0)
        return -1;
    self->args[0].kind = self->args[1].kind = WASMTIME_I32;
    self->args[0].of.i32 = (int32_t)(uint32_t)(req_ctx & 0xFFFFFFFFull);
    self->args[1].of.i32 = is_error ? 1 : 0;
    return 0;
}

/* response(req_ctx, is_error) / start_response(...): handle_response, then host.end() (not after a trap). */
static PyObject *response_call(Core *self, PyObject *const *args, Py_ssize_t nargs, int cooperative) {
    if (set_response_args(self, args, nargs) < 0)
        return NULL;
    return complete(self, start(self, 1, AFTER_RESPONSE, cooperative));
}

static PyObject *Core_request(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    return request_call(self, args, nargs, 0);
}

static PyObject *Core_start_request(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    return request_call(self, args, nargs, 1);
}

static PyObject *Core_response(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    return response_call(self, args, nargs, 0);
}

static PyObject *Core_start_response(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    return response_call(self, args, nargs, 1);
}

static PyObject *Core_handle_request(Core *self, PyObject *unused) {
    return complete(self, start(self, 0, AFTER_RESULT, 0));
}

static PyObject *Core_handle_response(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (set_response_args(self, args, nargs) < 0)
        return NULL;
    return complete(self, start(self, 1, AFTER_NONE, 0));
}

/* call(index) -> None: an init export (_initialize/_start), run to its end */
static PyObject *Core_call(Core *self, PyObject *arg) {
    long index = PyLong_AsLong(arg);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= NEXPORTS) {
        PyErr_SetString(PyExc_IndexError, "export index");
        return NULL;
    }
    return complete(self, start(self, (int)index, AFTER_NONE, 0));
}

/* instantiate(instance_pre, wasmtime_instance_t address): instantiate into this store (running the
 * start section), to the end, on this thread. */
static PyObject *Core_instantiate(Core *self, PyObject *args) {
    unsigned long long pre, out;
    if (!PyArg_ParseTuple(args, "KK", &pre, &out))
        return NULL;
    if (self->ctx == NULL || self->future != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "guest instance is closed or busy");
        return NULL;
    }
    self->trap = self->err = NULL;
    self->timed_out = 0;
    self->trap_status = 500;
    self->index = INSTANTIATE;
    self->after = AFTER_NONE;
    p_set_deadline(self->ctx, 1);
    self->future = p_instantiate_async((const void *)(uintptr_t)pre, self->ctx, (void *)(uintptr_t)out, &self->trap,
                                       &self->err);
    return complete(self, run(self, 0));
}

/* resume() -> the suspended call's value, or SUSPENDED: one more slice. The caller (the event loop's
 * scheduler) starts a new turn for it. */
static PyObject *Core_resume(Core *self, PyObject *unused) {
    if (self->future == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no suspended call on this instance");
        return NULL;
    }
    long long t = now_ns();
    turn_start_ns = t;
    turn_busy_ns = 0;
    return complete(self, slice(self, t));
}

/* cancel(): abandon the suspended call (its instance must not be used again). */
static PyObject *Core_cancel(Core *self, PyObject *unused) {
    cancel_call(self);
    Py_RETURN_NONE;
}

static PyObject *Core_get_release_gil(Core *self, void *closure) { return PyBool_FromLong(self->release_gil); }

static int Core_set_release_gil(Core *self, PyObject *value, void *closure) {
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    self->release_gil = v;
    return 0;
}

static PyObject *Core_get_used(Core *self, void *closure) { return PyFloat_FromDouble(self->own_ns / 1e9); }

static PyObject *Core_get_budget(Core *self, void *closure) { return PyFloat_FromDouble(self->budget_ns / 1e9); }

static int Core_set_budget(Core *self, PyObject *value, void *closure) {
    double v = value ? PyFloat_AsDouble(value) : -1.0;
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    self->budget_ns = (long long)(v * 1e9);
    return 0;
}

static PyMethodDef Core_methods[] = {
    {"handle_request", (PyCFunction)Core_handle_request, METH_NOARGS, "Call handle_request; the i64 result."},
    {"handle_response", (PyCFunction)(void (*)(void))Core_handle_response, METH_FASTCALL,
     "Call handle_response(req_ctx, is_error)."},
    {"request", (PyCFunction)(void (*)(void))Core_request, METH_FASTCALL,
     "host.begin(exchange, features); handle_request; host.after_next() on next. The i64 result."},
    {"response", (PyCFunction)(void (*)(void))Core_response, METH_FASTCALL,
     "handle_response(req_ctx, is_error); host.end()."},
    {"start_request", (PyCFunction)(void (*)(void))Core_start_request, METH_FASTCALL,
     "request(), or SUSPENDED when the guest yielded (resume() goes on)."},
    {"start_response", (PyCFunction)(void (*)(void))Core_start_response, METH_FASTCALL,
     "response(), or SUSPENDED when the guest yielded (resume() goes on)."},
    {"resume", (PyCFunction)Core_resume, METH_NOARGS, "One more slice of the suspended call."},
    {"cancel", (PyCFunction)Core_cancel, METH_NOARGS, "Abandon the suspended call."},
    {"call", (PyCFunction)Core_call, METH_O, "Call an init export by index."},
    {"instantiate", (PyCFunction)Core_instantiate, METH_VARARGS, "instantiate(instance_pre, instance_t address)"},
    {"set_func", (PyCFunction)Core_set_func, METH_VARARGS, "set_func(index, wasmtime_func_t address)"},
    {"set_memory", (PyCFunction)Core_set_memory, METH_VARARGS, "set_memory(wasmtime_memory_t address, base, size)"},
    {"take_trap", (PyCFunction)Core_take_trap, METH_NOARGS, "(trap, error, timed_out) of the last failed call"},
    {"set_stats", (PyCFunction)Core_set_stats, METH_O, "Count calls in this buffer of STATS_SIZE uint64 (or None)."},
    {"close", (PyCFunction)Core_close, METH_NOARGS, "Forget the store: no more calls."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Core_members[] = {
    {"trap_status", T_INT, offsetof(Core, trap_status), 0, "status for the current call's trap"},
    {"host", T_OBJECT_EX, offsetof(Core, host), 0, "first argument of Python host functions"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"release_gil", (getter)Core_get_release_gil, (setter)Core_set_release_gil, "release the GIL in calls", NULL},
    {"used", (getter)Core_get_used, NULL, "seconds of guest time the running (or last) call used", NULL},
    {"budget", (getter)Core_get_budget, (setter)Core_set_budget, "seconds each call may take (see slice)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "http_wasm_asgi._fastpath.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Core(owner, store, context address, budget seconds): one instance's call path",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_methods = Core_methods,
    .tp_members = Core_members,
    .tp_getset = Core_getset,
};

/* set_current(core or None) -> previous: around instantiation (start functions call host functions) */
static PyObject *set_current(PyObject *self, PyObject *arg) {
    PyObject *prev = current ? (PyObject *)current : Py_None;
    Py_INCREF(prev);
    if (arg == Py_None) {
        current = NULL;
    } else if (Py_IS_TYPE(arg, &CoreType)) {
        current = (Core *)arg; /* the caller keeps it alive while it is current */
    } else {
        Py_DECREF(prev);
        PyErr_SetString(PyExc_TypeError, "set_current(Core | None)");
        return NULL;
    }
    holds_gil = 0;
    return prev;
}

/* quick_calls() -> cooperative calls on this thread that ended in their first slice (a counter) */
static PyObject *quick_calls_count(PyObject *self, PyObject *unused) { return PyLong_FromUnsignedLongLong(quick_calls); }

/* set_turn(turn seconds, window seconds, long seconds): the guest time the event loop gives guests per
 * turn, and the guest time after which a call is long (its clock then counts the time it waited) */
static PyObject *set_turn(PyObject *self, PyObject *args) {
    double turn, window, longer;
    if (!PyArg_ParseTuple(args, "ddd", &turn, &window, &longer))
        return NULL;
    turn_ns = (long long)(turn * 1e9);
    turn_window_ns = (long long)(window * 1e9);
    long_ns = (long long)(longer * 1e9);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- native host functions */


enum { N_NONE = 0, N_GET_HEADER_VALUES, N_SET_HEADER_VALUE, N_ADD_HEADER_VALUE, N_REMOVE_HEADER,
       N_GET_STATUS_CODE, N_GET_CONFIG, N_GET_METHOD };
enum { DONE = 0, FALLBACK = 1, FAILED = -1 };

static const char *native_names[] = {"", "get_header_values", "set_header_value", "add_header_value",
                                     "remove_header", "get_status_code", "get_config", "get_method", NULL};

/* Bytes allowed in header names and values: the host's own tables (configure_host). */
static unsigned char token_char[256], value_char[256];

static inline unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static inline int in_bounds(Core *c, uint64_t ptr, uint64_t len) {
    uint64_t end = ptr + len;
    if (end <= c->size)
        return 1;
    if (c->memory == NULL || c->ctx == NULL)
        return 0;
    c->size = p_memory_size(c->ctx, c->memory); /* the guest may have grown it */
    return end <= c->size;
}

static inline uint32_t arg(void *vals, int i) {
    uint32_t v;
    memcpy(&v, (char *)vals + SLOT * i, sizeof v);
    return v;
}

static inline void result(void *vals, uint64_t v) { memcpy(vals, &v, sizeof v); }

/* The host object and its exchange, when there is a request and the types are the expected ones. */
static int request_state(Core *c, PyObject **ex, PyObject **host) {
    PyObject *h = c->host;
    if (h == NULL || !Py_IS_TYPE(h, t_host))
        return 0;
    *host = h;
    *ex = FIELD(h, o_host_exchange);
    return *ex && PyObject_TypeCheck(*ex, t_exchange);
}

/* A header entry the native code understands: an exact 2-tuple of exact bytes. */
static inline int header_entry(PyObject *item, PyObject **k, PyObject **v) {
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
        return 0;
    *k = PyTuple_GET_ITEM(item, 0);
    *v = PyTuple_GET_ITEM(item, 1);
    return PyBytes_CheckExact(*k) && PyBytes_CheckExact(*v);
}

static inline int name_equals(PyObject *k, const uint8_t *name, size_t len) {
    if ((size_t)PyBytes_GET_SIZE(k) != len)
        return 0;
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(k);
    for (size_t i = 0; i < len; i++)
        if (lower(s[i]) != lower(name[i]))
            return 0;
    return 1;
}

/* buf_limit rule for one value: write only when it fits; the result is its length. */
static int write_limited(Core *c, void *vals, const char *data, Py_ssize_t n, uint32_t buf, uint32_t limit) {
    if (n > 0 && (uint64_t)n <= limit) {
        if (!in_bounds(c, buf, (uint64_t)n))
            return FALLBACK;
        memcpy(c->base + buf, data, (size_t)n);
    }
    result(vals, (uint64_t)n);
    return DONE;
}

static int n_get_header_values(Core *c, void *vals) {
    uint32_t kind = arg(vals, 0), name_ptr = arg(vals, 1), name_len = arg(vals, 2), buf = arg(vals, 3),
             limit = arg(vals, 4);
    PyObject *ex, *host;
    if (kind > 1 || name_len == 0 || !request_state(c, &ex, &host) || !in_bounds(c, name_ptr, name_len))
        return FALLBACK;
    PyObject *headers = FIELD(ex, kind ? o_ex_response_headers : o_ex_request_headers);
    if (headers == NULL || !(PyList_CheckExact(headers) || PyTuple_CheckExact(headers)))
        return FALLBACK;
    PyObject **items = PySequence_Fast_ITEMS(headers);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    const uint8_t *name = c->base + name_ptr;
    uint64_t count = 0, total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *v;
        if (!header_entry(items[i], &k, &v))
            return FALLBACK;
        if (name_equals(k, name, name_len)) {
            count++;
            total += (uint64_t)PyBytes_GET_SIZE(v) + 1;
        }
    }
    if (count && total <= limit) {
        if (!in_bounds(c, buf, total))
            return FALLBACK;
        uint8_t *out = c->base + buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k = PyTuple_GET_ITEM(items[i], 0), *v = PyTuple_GET_ITEM(items[i], 1);
            if (name_equals(k, name, name_len)) {
                size_t len = (size_t)PyBytes_GET_SIZE(v);
                memcpy(out, PyBytes_AS_STRING(v), len);
                out[len] = 0;
                out += len + 1;
            }
        }
    }
    result(vals, (count << 32) | total);
    return DONE;
}

/* set/add/remove on request or response headers before next (the common case). */
static int n_change_header(Core *c, void *vals, int which) {
    uint32_t kind = arg(vals, 0), name_ptr = arg(vals, 1), name_len = arg(vals, 2);
    uint32_t value_ptr = which == N_REMOVE_HEADER ? 0 : arg(vals, 3);
    uint32_t value_len = which == N_REMOVE_HEADER ? 0 : arg(vals, 4);
    PyObject *ex, *host;
    if (kind > 1 || name_len == 0 || !request_state(c, &ex, &host))
        return FALLBACK;
    PyObject *phase = FIELD(host, o_host_phase);
    if (phase != phase_request) /* the very int object GuestHost.begin stores */
        return FALLBACK;
    if (!in_bounds(c, name_ptr, name_len) || !in_bounds(c, value_ptr, value_len))
        return FALLBACK;
    const uint8_t *name = c->base + name_ptr, *value = c->base + value_ptr;
    for (uint32_t i = 0; i < name_len; i++)
        if (!token_char[name[i]])
            return FALLBACK;
    if (which != N_REMOVE_HEADER) {
        for (uint32_t i = 0; i < value_len; i++)
            if (!value_char[value[i]])
                return FALLBACK;
        if (value_len && (value[0] == ' ' || value[0] == '\t' || value[value_len - 1] == ' ' ||
                          value[value_len - 1] == '\t'))
            return FALLBACK;
    }
    Py_ssize_t off = kind ? o_ex_response_headers : o_ex_request_headers;
    PyObject *headers = FIELD(ex, off);
    if (headers == NULL)
        return FALLBACK;
    if (!(PyList_CheckExact(headers) || PyTuple_CheckExact(headers)))
        return FALLBACK;
    /* copy on first write: request headers are the scope's, an unwritten list is a shared () */
    int copy = (kind == 0 && FIELD(ex, o_ex_headers_changed) != Py_True) || !PyList_CheckExact(headers);
    /* everything checked: from here on the change is made here */
    PyObject **items = PySequence_Fast_ITEMS(headers);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    int found = 0;
    if (which != N_ADD_HEADER_VALUE) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k, *v;
            if (!header_entry(items[i], &k, &v))
                return FALLBACK;
            found |= name_equals(k, name, name_len);
        }
    }
    if (copy) {
        PyObject *list = PySequence_List(headers);
        if (list == NULL)
            return FAILED;
        Py_SETREF(FIELD(ex, off), list);
        if (kind == 0) {
            Py_INCREF(Py_True);
            Py_XSETREF(FIELD(ex, o_ex_headers_changed), Py_True);
        }
        headers = list;
    }
    if (found) { /* headers[:] = [h for h in headers if h.name.lower() != name] */
        Py_ssize_t j = 0;
        n = PyList_GET_SIZE(headers);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(headers, i);
            if (name_equals(PyTuple_GET_ITEM(item, 0), name, name_len))
                continue;
            if (i != j) {
                PyObject *old = PyList_GET_ITEM(headers, j);
                Py_INCREF(item);
                PyList_SET_ITEM(headers, j, item);
                Py_DECREF(old);
            }
            j++;
        }
        if (PyList_SetSlice(headers, j, n, NULL) < 0)
            return FAILED;
    }
    if (which == N_REMOVE_HEADER)
        return DONE;
    PyObject *k = PyBytes_FromStringAndSize(NULL, name_len);
    if (k == NULL)
        return FAILED;
    char *kp = PyBytes_AS_STRING(k);
    for (uint32_t i = 0; i < name_len; i++)
        kp[i] = (char)lower(name[i]);
    PyObject *v = PyBytes_FromStringAndSize((const char *)value, value_len);
    PyObject *entry = v ? PyTuple_Pack(2, k, v) : NULL;
    Py_DECREF(k);
    Py_XDECREF(v);
    if (entry == NULL)
        return FAILED;
    int rc = PyList_Append(headers, entry);
    Py_DECREF(entry);
    return rc < 0 ? FAILED : DONE;
}

static int n_get_status_code(Core *c, void *vals) {
    PyObject *ex, *host;
    if (!request_state(c, &ex, &host))
        return FALLBACK;
    PyObject *status = FIELD(ex, o_ex_status);
    if (status == NULL || !PyLong_CheckExact(status))
        return FALLBACK;
    unsigned long long s = PyLong_AsUnsignedLongLongMask(status);
    if (PyErr_Occurred())
        return FAILED;
    result(vals, s);
    return DONE;
}

static int n_get_config(Core *c, void *vals) {
    PyObject *h = c->host;
    if (h == NULL || !Py_IS_TYPE(h, t_host))
        return FALLBACK;
    PyObject *config = FIELD(h, o_host_config);
    if (config == NULL || !PyBytes_CheckExact(config))
        return FALLBACK;
    return write_limited(c, vals, PyBytes_AS_STRING(config), PyBytes_GET_SIZE(config), arg(vals, 0), arg(vals, 1));
}

static int n_get_method(Core *c, void *vals) {
    PyObject *ex, *host;
    if (!request_state(c, &ex, &host))
        return FALLBACK;
    PyObject *method = FIELD(ex, o_ex_method);
    if (method == NULL || !PyUnicode_CheckExact(method) || !PyUnicode_IS_COMPACT_ASCII(method))
        return FALLBACK;
    return write_limited(c, vals, (const char *)PyUnicode_DATA(method), PyUnicode_GET_LENGTH(method), arg(vals, 0),
                         arg(vals, 1));
}

static int run_native(int id, Core *c, void *vals) {
    switch (id) {
    case N_GET_HEADER_VALUES:
        return n_get_header_values(c, vals);
    case N_SET_HEADER_VALUE:
    case N_ADD_HEADER_VALUE:
    case N_REMOVE_HEADER:
        return n_change_header(c, vals, id);
    case N_GET_STATUS_CODE:
        return n_get_status_code(c, vals);
    case N_GET_CONFIG:
        return n_get_config(c, vals);
    case N_GET_METHOD:
        return n_get_method(c, vals);
    default:
        return FALLBACK;
    }
}

static Py_ssize_t slot_offset(PyTypeObject *type, const char *name) {
    PyObject *d = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, name);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a plain object slot", type->tp_name, name);
        return -1;
    }
    return m->offset;
}

enum { OF_HOST, OF_EXCHANGE, OF_FLOW, OF_POOL }; /* the classes whose slots the native code reads */
typedef struct { int exchange; const char *name; Py_ssize_t *out; } slot_need;

/* The slots the native code reads: each class's NATIVE_SLOTS must declare exactly these. */
static slot_need needs[] = {
    {OF_HOST, "exchange", &o_host_exchange},       {OF_HOST, "phase", &o_host_phase},
    {OF_HOST, "features", &o_host_features},       {OF_HOST, "request_read", &o_host_request_read},
    {OF_HOST, "request_written", &o_host_request_written}, {OF_HOST, "response_read", &o_host_response_read},
    {OF_HOST, "response_written", &o_host_response_written}, {OF_HOST, "config", &o_host_config},
    {OF_EXCHANGE, "request_headers", &o_ex_request_headers}, {OF_EXCHANGE, "response_headers", &o_ex_response_headers},
    {OF_EXCHANGE, "headers_changed", &o_ex_headers_changed}, {OF_EXCHANGE, "status", &o_ex_status}, {OF_EXCHANGE, "method", &o_ex_method},
    {OF_FLOW, "buffered", &o_flow_buffered}, {OF_FLOW, "chain", &o_flow_chain}, {OF_FLOW, "exchange", &o_flow_exchange},
    {OF_FLOW, "held", &o_flow_held}, {OF_FLOW, "pending", &o_flow_pending}, {OF_FLOW, "send", &o_flow_send},
    {OF_FLOW, "sent", &o_flow_sent}, {OF_FLOW, "started", &o_flow_started},
    {OF_FLOW, "receive", &o_flow_receive}, {OF_FLOW, "scope", &o_flow_scope},
    {OF_EXCHANGE, "path", &o_ex_path}, {OF_EXCHANGE, "query", &o_ex_query},
    {OF_EXCHANGE, "max_body_size", &o_ex_max_body_size}, {OF_EXCHANGE, "protocol", &o_ex_protocol},
    {OF_EXCHANGE, "client", &o_ex_client}, {OF_EXCHANGE, "trailers_supported", &o_ex_trailers_supported},
    {OF_EXCHANGE, "uri", &o_ex_uri}, {OF_EXCHANGE, "request_body", &o_ex_request_body},
    {OF_EXCHANGE, "request_body_replaced", &o_ex_request_body_replaced},
    {OF_POOL, "_idle", &o_pool_idle}, {OF_POOL, "_low", &o_pool_low}, {OF_POOL, "reuse", &o_pool_reuse},
    {OF_POOL, "_waiters", &o_pool_waiters}, {OF_POOL, "max_idle", &o_pool_max_idle}, {OF_POOL, "size", &o_pool_size},
    {OF_POOL, "min_size", &o_pool_min_size}, {OF_POOL, "_trim_handle", &o_pool_trim_handle},
    {OF_POOL, "idle_timeout", &o_pool_idle_timeout},
};
#define NNEEDS ((Py_ssize_t)(sizeof needs / sizeof needs[0]))

/* Offsets of the declared slots of `type` (a tuple of names): every name must be one the native code
 * reads (`exchange` says which class), and every slot it reads of that class must be declared. */
static int learn_slots(PyTypeObject *type, PyObject *declared, int exchange) {
    Py_ssize_t wanted = 0, n = PyTuple_GET_SIZE(declared);
    for (Py_ssize_t i = 0; i < NNEEDS; i++)
        wanted += needs[i].exchange == exchange;
    for (Py_ssize_t j = 0; j < n; j++) {
        const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(declared, j));
        if (name == NULL)
            return -1;
        Py_ssize_t i = 0;
        while (i < NNEEDS && (needs[i].exchange != exchange || strcmp(needs[i].name, name) != 0))
            i++;
        if (i == NNEEDS) {
            PyErr_Format(PyExc_TypeError, "%s.NATIVE_SLOTS: the accelerator does not read %s", type->tp_name, name);
            return -1;
        }
        if ((*needs[i].out = slot_offset(type, name)) < 0)
            return -1;
    }
    if (n != wanted) {
        PyErr_Format(PyExc_TypeError, "%s.NATIVE_SLOTS declares %zd slots, the accelerator reads %zd", type->tp_name,
                     n, wanted);
        return -1;
    }
    return 0;
}

static void byte_table(unsigned char *table, PyObject *allowed) {
    memset(table, 0, 256);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(allowed);
    for (Py_ssize_t i = 0; i < PyBytes_GET_SIZE(allowed); i++)
        table[p[i]] = 1;
}

/* configure_host(GuestHost, its NATIVE_SLOTS, Exchange, its NATIVE_SLOTS, (phase_init, phase_request,
 * phase_response), token bytes, value bytes): learn where the native code finds its state, the phase
 * values GuestHost uses, and which bytes header names and values may hold. */
static PyObject *configure_host(PyObject *self, PyObject *args) {
    PyTypeObject *h, *e;
    PyObject *hs, *es, *pi, *pq, *pr, *tokens, *values;
    if (!PyArg_ParseTuple(args, "O!O!O!O!(O!O!O!)SS", &PyType_Type, &h, &PyTuple_Type, &hs, &PyType_Type, &e,
                          &PyTuple_Type, &es, &PyLong_Type, &pi, &PyLong_Type, &pq, &PyLong_Type, &pr, &tokens,
                          &values))
        return NULL;
    native_ready = 0;
    if (learn_slots(h, hs, OF_HOST) < 0 || learn_slots(e, es, OF_EXCHANGE) < 0)
        return NULL;
    byte_table(token_char, tokens);
    byte_table(value_char, values);
    Py_XSETREF(t_host, (PyTypeObject *)Py_NewRef(h));
    Py_XSETREF(t_exchange, (PyTypeObject *)Py_NewRef(e));
    Py_XSETREF(phase_init, Py_NewRef(pi));
    Py_XSETREF(phase_request, Py_NewRef(pq));
    Py_XSETREF(phase_response, Py_NewRef(pr));
    Py_XSETREF(zero, PyLong_FromLong(0));
    native_ready = zero != NULL;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- the trampoline */

typedef struct {
    PyObject *fn;   /* the Python host function: fn(target, *args) */
    PyObject *name; /* str, for trap messages */
    int nparams;
    int nresults;
    int on_instance; /* fn gets the owner (WasmInstance), not the host object */
    int native;      /* N_*: a native implementation to try first */
} host_env;

static void *make_trap(const char *msg) { return p_trap_new(msg, strlen(msg)); }

/* The pending Python exception becomes a trap, with the runtime's error handler's message. */
static void *trap_from_exception(host_env *env, Core *core) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && tb)
        PyException_SetTraceback(value, tb);
    PyObject *text = NULL;
    if (error_handler && value)
        text = PyObject_CallFunctionObjArgs(error_handler, env->name, value, core ? (PyObject *)core : Py_None, NULL);
    void *trap;
    Py_ssize_t len;
    const char *utf8 = (text && PyUnicode_Check(text)) ? PyUnicode_AsUTF8AndSize(text, &len) : NULL;
    if (utf8)
        trap = p_trap_new(utf8, (size_t)len);
    else
        trap = make_trap("host function failed");
    PyErr_Clear();
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return trap;
}

static void *trampoline(void *env_, void *caller, void *vals, size_t n) {
    host_env *env = (host_env *)env_;
    int ensure = !holds_gil;
    PyGILState_STATE gil = PyGILState_LOCKED;
    if (ensure)
        gil = PyGILState_Ensure();
    void *trap = NULL;
    Core *core = current;
    if (core == NULL) {
        trap = make_trap("host function called outside a guest call");
        goto out;
    }
    if (core->memory == NULL) { /* instantiation (start section): find the memory through the caller */
        PyObject *r = PyObject_CallMethod(core->owner, "_bind_memory_from_caller", "K",
                                          (unsigned long long)(uintptr_t)caller);
        if (r == NULL) {
            trap = trap_from_exception(env, core);
            goto out;
        }
        Py_DECREF(r);
    }
    if (env->native) {
        int rc = run_native(env->native, core, vals);
        if (rc == DONE)
            goto out;
        if (rc == FAILED) {
            trap = trap_from_exception(env, core);
            goto out;
        }
    }
    PyObject *argv[MAX_PARAMS + 1];
    int count = 0;
    argv[count++] = env->on_instance ? core->owner : core->host;
    Py_INCREF(argv[0]);
    for (int i = 0; i < env->nparams; i++)
        argv[count++] = PyLong_FromUnsignedLong(arg(vals, i));
    PyObject *res = PyObject_Vectorcall(env->fn, argv, count, NULL);
    for (int i = 0; i < count; i++)
        Py_XDECREF(argv[i]);
    if (res == NULL) {
        trap = trap_from_exception(env, core);
    } else {
        if (env->nresults) {
            uint64_t v = PyLong_AsUnsignedLongLongMask(res);
            if (PyErr_Occurred()) {
                PyErr_Clear();
                v = 0;
            }
            result(vals, v);
        }
        Py_DECREF(res);
    }
out:
    if (ensure)
        PyGILState_Release(gil);
    return trap;
}

static void finalize(void *env_) {
    host_env *env = (host_env *)env_;
    if (!Py_IsInitialized()) /* interpreter gone: nothing to release */
        return;
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_XDECREF(env->fn);
    Py_XDECREF(env->name);
    PyGILState_Release(gil);
    PyMem_RawFree(env);
}

/* define(define_fn, linker, module, name, functype, fn, nparams, nresults, on_instance, native)
 * -> error pointer (0 = ok). native: try the native implementation of `name` first (when there is one). */
static PyObject *define(PyObject *self, PyObject *args) {
    unsigned long long define_addr, linker, functype;
    const char *module, *name;
    Py_ssize_t module_len, name_len;
    PyObject *fn;
    int nparams, nresults, on_instance, native;
    if (!PyArg_ParseTuple(args, "KKy#y#KOiipp", &define_addr, &linker, &module, &module_len, &name, &name_len,
                          &functype, &fn, &nparams, &nresults, &on_instance, &native))
        return NULL;
    if (nparams < 0 || nparams > MAX_PARAMS) {
        PyErr_SetString(PyExc_ValueError, "too many parameters");
        return NULL;
    }
    PyObject *pyname = PyUnicode_DecodeUTF8(name, name_len, "replace");
    if (pyname == NULL)
        return NULL;
    host_env *env = PyMem_RawMalloc(sizeof(host_env));
    if (!env) {
        Py_DECREF(pyname);
        return PyErr_NoMemory();
    }
    Py_INCREF(fn);
    env->fn = fn;
    env->name = pyname;
    env->nparams = nparams;
    env->nresults = nresults;
    env->on_instance = on_instance;
    env->native = 0;
    if (native && native_ready)
        for (int i = 1; native_names[i]; i++)
            if ((size_t)name_len == strlen(native_names[i]) && memcmp(name, native_names[i], name_len) == 0)
                env->native = i;
    void *err = ((define_fn)(uintptr_t)define_addr)((void *)(uintptr_t)linker, module, (size_t)module_len, name,
                                                   (size_t)name_len, (void *)(uintptr_t)functype, trampoline,
                                                   env, finalize);
    return PyLong_FromVoidPtr(err);
}

/* native_functions() -> tuple of the host function names with a native implementation (when configured) */
static PyObject *native_functions(PyObject *self, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (int i = 1; native_ready && native_names[i]; i++) {
        PyObject *s = PyUnicode_FromString(native_names[i]);
        if (s == NULL || PyList_Append(out, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *t = PyList_AsTuple(out);
    Py_DECREF(out);
    return t;
}

/* ---------------------------------------------------------------- response header merge */

/* merge_response_headers(guest_headers, app_headers) -> list: the guest's entries whose name the app
 * does not set (app names compared lowercased), then the app's. Anything but lists/tuples of
 * (bytes, bytes) goes to the Python reference. */
static PyObject *merge_response_headers(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "merge_response_headers(guest_headers, app_headers)");
        return NULL;
    }
    PyObject *guest = args[0], *app = args[1];
    if (!(PyList_CheckExact(guest) || PyTuple_CheckExact(guest)) || !(PyList_CheckExact(app) || PyTuple_CheckExact(app)))
        goto fallback;
    Py_ssize_t ng = PySequence_Fast_GET_SIZE(guest), na = PySequence_Fast_GET_SIZE(app);
    PyObject **g = PySequence_Fast_ITEMS(guest), **a = PySequence_Fast_ITEMS(app);
    PyObject *k, *v;
    for (Py_ssize_t i = 0; i < na; i++)
        if (!header_entry(a[i], &k, &v))
            goto fallback;
    for (Py_ssize_t i = 0; i < ng; i++)
        if (!header_entry(g[i], &k, &v))
            goto fallback;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < ng; i++) {
        PyObject *name = PyTuple_GET_ITEM(g[i], 0);
        const unsigned char *n = (const unsigned char *)PyBytes_AS_STRING(name);
        Py_ssize_t len = PyBytes_GET_SIZE(name);
        int set_by_app = 0;
        for (Py_ssize_t j = 0; j < na && !set_by_app; j++) {
            PyObject *an = PyTuple_GET_ITEM(a[j], 0);
            if (PyBytes_GET_SIZE(an) != len)
                continue;
            const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(an);
            Py_ssize_t c = 0;
            while (c < len && lower(s[c]) == n[c])
                c++;
            set_by_app = c == len;
        }
        if (!set_by_app && PyList_Append(out, g[i]) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    for (Py_ssize_t j = 0; j < na; j++)
        if (PyList_Append(out, a[j]) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    return out;
fallback:
    if (merge_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "merge_response_headers: no fallback configured");
        return NULL;
    }
    return PyObject_Vectorcall(merge_fallback, args, 2, NULL);
}

/* accelerated(reference) -> the native function of the same name (which falls back to `reference`
 * outside the common case), or None when there is none. */
static PyObject *accelerated(PyObject *self, PyObject *reference) {
    PyObject *name = PyObject_GetAttrString(reference, "__name__");
    if (name == NULL)
        return NULL;
    int is_merge = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "merge_response_headers") == 0;
    Py_DECREF(name);
    if (!is_merge)
        Py_RETURN_NONE;
    Py_XSETREF(merge_fallback, Py_NewRef(reference));
    return PyObject_GetAttrString(self, "merge_response_headers");
}

/* {name: method descriptor} of `defs` for `cls`: methods the class takes in place of its Python ones */
static PyObject *method_descriptors(PyTypeObject *cls, PyMethodDef *defs) {
    PyObject *out = PyDict_New();
    for (PyMethodDef *m = defs; out != NULL && m->ml_name != NULL; m++) {
        PyObject *descr = PyDescr_NewMethod(cls, m);
        if (descr == NULL || PyDict_SetItemString(out, m->ml_name, descr) < 0)
            Py_CLEAR(out);
        Py_XDECREF(descr);
    }
    return out;
}

/* ---------------------------------------------------------------- the ASGI binding's per-request fast path */

/* middleware._Flow's enter, leave, stream and app_args as C methods (flow_methods): the same steps as the Python
 * reference methods, on the slots _Flow declares in NATIVE_SLOTS. Anything but the common case goes back to
 * Python: enter and leave stop (leaving a call's outcome in `pending`), stream and app_args call the reference. */
static PyObject *guest_trap;      /* errors.GuestTrap: a call's outcome, not a failure of the fast path */
static long buffer_response_bit;  /* abi.Feature.BUFFER_RESPONSE */
static PyObject *stream_reference; /* the Python _Flow.stream */
static PyObject *s_guests, *s_threaded, *s_reads_request_body, *s_pool, *s_try_acquire, *s_release,
    *s_context, *s_features, *s_core, *s_type, *s_status, *s_headers, *s_start, *s_body;
static PyObject *s_method, *s_raw_path, *s_query_string, *s_http_version, *s_client, *s_extensions, *s_trailers_ext,
    *s_max_body_size, *s_default_version;

/* getattr(obj, name) as a truth value: 1, 0, or -1 with an exception */
static int attr_true(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* The running instance's Core (its `_core` slot), a new reference; NULL (no exception) for another kind. */
static Core *core_of(PyObject *instance) {
    PyObject *core = PyObject_GetAttr(instance, s_core);
    if (core != NULL && !Py_IS_TYPE(core, &CoreType)) {
        Py_DECREF(core);
        return NULL;
    }
    PyErr_Clear();
    return (Core *)core;
}

/* flow.pending = (guest, instance, outcome); outcome stolen. 0, or -1 with an exception. */
static int set_pending(PyObject *flow, PyObject *guest, PyObject *instance, PyObject *outcome) {
    PyObject *t = outcome ? PyTuple_Pack(3, guest, instance, outcome) : NULL;
    Py_XDECREF(outcome);
    if (t == NULL)
        return -1;
    Py_XSETREF(FIELD(flow, o_flow_pending), t);
    return 0;
}

/* The exception of a call that failed, when it is a GuestTrap (its outcome); NULL, exception kept, otherwise. */
static PyObject *take_guest_trap(void) {
    if (!PyErr_ExceptionMatches(guest_trap))
        return NULL;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* _Flow.hold: the guest said next; it keeps its instance (held) until its handle_response. */
static int flow_hold(PyObject *flow, PyObject *guest, PyObject *instance, Core *core, PyObject *ctx_next) {
    PyObject *host = core->host;
    if (!Py_IS_TYPE(host, t_host)) {
        PyErr_SetString(PyExc_TypeError, "enter: the instance's host is not a GuestHost");
        return -1;
    }
    int read = PyObject_IsTrue(FIELD(host, o_host_request_read));
    if (read < 0 || (read && call_host(host, "pass_on_request_body") < 0))
        return -1;
    PyObject *req_ctx = PyLong_FromUnsignedLongLong(PyLong_AsUnsignedLongLongMask(ctx_next) >> 32);
    PyObject *entry = req_ctx ? PyTuple_Pack(3, guest, instance, req_ctx) : NULL;
    Py_XDECREF(req_ctx);
    if (entry == NULL || PyList_Append(FIELD(flow, o_flow_held), entry) < 0) {
        Py_XDECREF(entry);
        return -1;
    }
    Py_DECREF(entry);
    long features = PyLong_AsLong(FIELD(host, o_host_features));
    if (features == -1 && PyErr_Occurred())
        return -1;
    if (features & buffer_response_bit)
        SET_FIELD(flow, o_flow_buffered, Py_True);
    return 0;
}

/* One guest's handle_request on the fast path: 1 held, 0 stopped (before the guest, or with its outcome in
 * pending), -1 error. */
static int enter_guest(PyObject *flow, PyObject *guest, PyObject *exchange) {
    int stop = attr_true(guest, s_threaded);
    if (stop == 0 && (stop = attr_true(guest, s_reads_request_body)) == 1)
        stop = FIELD(exchange, o_ex_request_body) == Py_None; /* its body is still to be read */
    if (stop)
        return stop < 0 ? -1 : 0;
    PyObject *pool = PyObject_GetAttr(guest, s_pool);
    PyObject *instance = pool ? PyObject_CallMethodNoArgs(pool, s_try_acquire) : NULL;
    Py_XDECREF(pool);
    if (instance == NULL || instance == Py_None) {
        Py_XDECREF(instance);
        return instance == NULL ? -1 : 0;
    }
    int rc = -1;
    PyObject *context = PyObject_GetAttr(guest, s_context);
    PyObject *features = context ? PyObject_GetAttr(context, s_features) : NULL;
    Py_XDECREF(context);
    Core *core = features ? core_of(instance) : NULL;
    if (core == NULL) {
        if (features != NULL)
            PyErr_SetString(PyExc_TypeError, "enter: the instance has no accelerator Core");
        goto out;
    }
    PyObject *args[2] = {exchange, features};
    PyObject *outcome = request_call(core, args, 2, 1);
    if (outcome == NULL) {
        outcome = take_guest_trap();
        rc = outcome == NULL ? -1 : set_pending(flow, guest, instance, outcome);
    } else if (outcome == suspended || !(PyLong_AsUnsignedLongLongMask(outcome) & 1)) {
        rc = set_pending(flow, guest, instance, outcome);
    } else {
        rc = flow_hold(flow, guest, instance, core, outcome) < 0 ? -1 : 1;
        Py_DECREF(outcome);
    }
out:
    Py_XDECREF((PyObject *)core);
    Py_XDECREF(features);
    Py_DECREF(instance);
    return rc;
}

/* _Flow.enter() -> bool */
static PyObject *flow_enter(PyObject *flow, PyObject *unused) {
    PyObject *exchange = FIELD(flow, o_flow_exchange), *held = FIELD(flow, o_flow_held);
    if (exchange == NULL || held == NULL || !PyList_CheckExact(held) || !Py_IS_TYPE(exchange, t_exchange)) {
        PyErr_SetString(PyExc_TypeError, "enter: the flow has no Exchange or held list");
        return NULL;
    }
    PyObject *guests = PyObject_GetAttr(FIELD(flow, o_flow_chain), s_guests);
    if (guests == NULL)
        return NULL;
    if (!PyTuple_CheckExact(guests)) {
        Py_DECREF(guests);
        PyErr_SetString(PyExc_TypeError, "enter: chain.guests is not a tuple");
        return NULL;
    }
    int rc = 1;
    while (rc == 1 && PyList_GET_SIZE(held) < PyTuple_GET_SIZE(guests))
        rc = enter_guest(flow, PyTuple_GET_ITEM(guests, PyList_GET_SIZE(held)), exchange);
    Py_DECREF(guests);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

/* One held guest's handle_response on the fast path (entry popped already): 1 done and released, 0 its outcome
 * in pending, -1 error. */
static int leave_guest(PyObject *flow, PyObject *entry, PyObject *is_error) {
    PyObject *guest = PyTuple_GET_ITEM(entry, 0), *instance = PyTuple_GET_ITEM(entry, 1);
    Core *core = core_of(instance);
    if (core == NULL) {
        PyErr_SetString(PyExc_TypeError, "leave: the instance has no accelerator Core");
        return -1;
    }
    PyObject *args[2] = {PyTuple_GET_ITEM(entry, 2), is_error};
    PyObject *outcome = response_call(core, args, 2, 1);
    Py_DECREF((PyObject *)core);
    if (outcome == NULL) {
        outcome = take_guest_trap();
        return outcome == NULL ? -1 : set_pending(flow, guest, instance, outcome);
    }
    if (outcome != Py_None)
        return set_pending(flow, guest, instance, outcome);
    Py_DECREF(outcome);
    PyObject *pool = PyObject_GetAttr(guest, s_pool);
    PyObject *r = pool ? PyObject_CallMethodOneArg(pool, s_release, instance) : NULL;
    Py_XDECREF(pool);
    Py_XDECREF(r);
    return r == NULL ? -1 : 1;
}

/* _Flow.leave(is_error) -> bool */
static PyObject *flow_leave(PyObject *flow, PyObject *is_error) {
    PyObject *held = FIELD(flow, o_flow_held);
    if (held == NULL || !PyList_CheckExact(held)) {
        PyErr_SetString(PyExc_TypeError, "leave: the flow has no held list");
        return NULL;
    }
    int err = PyObject_IsTrue(is_error);
    if (err < 0)
        return NULL;
    PyObject *as_bool = err ? Py_True : Py_False;
    int rc = 1;
    while (rc == 1 && PyList_GET_SIZE(held)) {
        Py_ssize_t last = PyList_GET_SIZE(held) - 1;
        PyObject *entry = PyList_GET_ITEM(held, last);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3) {
            PyErr_SetString(PyExc_TypeError, "leave: a held entry is not (guest, instance, req_ctx)");
            return NULL;
        }
        int threaded = attr_true(PyTuple_GET_ITEM(entry, 0), s_threaded);
        if (threaded)
            return threaded < 0 ? NULL : Py_NewRef(Py_False);
        Py_INCREF(entry);
        if (PyList_SetSlice(held, last, last + 1, NULL) < 0) {
            Py_DECREF(entry);
            return NULL;
        }
        rc = leave_guest(flow, entry, as_bool);
        Py_DECREF(entry);
    }
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static int is_kind(PyObject *kind, PyObject *name) {
    return kind == name || (PyUnicode_CheckExact(kind) && PyUnicode_Compare(kind, name) == 0);
}

/* _Flow.stream(message) -> the server's send awaitable: start and body messages here, the rest by the reference */
static PyObject *flow_stream(PyObject *flow, PyObject *message) {
    PyObject *kind = PyDict_CheckExact(message) ? PyDict_GetItemWithError(message, s_type) : NULL;
    PyObject *exchange = FIELD(flow, o_flow_exchange), *send = FIELD(flow, o_flow_send);
    if (kind == NULL || exchange == NULL || send == NULL || !Py_IS_TYPE(exchange, t_exchange))
        goto reference;
    if (is_kind(kind, s_body))
        return PyObject_CallOneArg(send, message);
    if (!is_kind(kind, s_start))
        goto reference;
    PyObject *status = PyDict_GetItemWithError(message, s_status);
    PyObject *headers = PyDict_GetItemWithError(message, s_headers);
    if (status == NULL || PyErr_Occurred())
        goto reference;
    int has = headers == NULL ? 0 : PyObject_IsTrue(headers);
    if (has < 0)
        return NULL;
    headers = has ? Py_NewRef(headers) : PyList_New(0);
    if (headers == NULL)
        return NULL;
    PyObject *guest_headers = FIELD(exchange, o_ex_response_headers);
    int set_by_guest = guest_headers == NULL ? 0 : PyObject_IsTrue(guest_headers);
    Py_INCREF(message);
    if (set_by_guest) { /* a copy of the message with the merged headers: the app's dict stays as it sent it */
        PyObject *args[2] = {guest_headers, headers};
        PyObject *merged = merge_response_headers(NULL, args, 2);
        Py_SETREF(message, merged ? PyDict_Copy(message) : NULL);
        if (message == NULL || PyDict_SetItem(message, s_headers, merged) < 0) {
            Py_XDECREF(merged);
            Py_XDECREF(message);
            Py_DECREF(headers);
            return NULL;
        }
        Py_SETREF(headers, merged);
    } else if (set_by_guest < 0) {
        Py_DECREF(message);
        Py_DECREF(headers);
        return NULL;
    }
    SET_FIELD(exchange, o_ex_status, status);
    Py_XSETREF(FIELD(exchange, o_ex_response_headers), headers); /* read-only from here: no copy */
    SET_FIELD(flow, o_flow_started, Py_True);
    SET_FIELD(flow, o_flow_sent, Py_True);
    PyObject *r = PyObject_CallOneArg(send, message);
    Py_DECREF(message);
    return r;
reference:
    if (PyErr_Occurred())
        return NULL;
    return PyObject_CallFunctionObjArgs(stream_reference, flow, message, NULL);
}

/* _Flow.app_args() -> (scope, receive, send) for the next handler: the send that keeps what guests may read,
 * the request body as the guests left it, and the scope unchanged when no guest changed the request (any other
 * scope is scope_for_app's to build). */
static PyObject *scope_for_app_reference;
static PyObject *s_collect, *s_stream, *s_replay_receive, *s_observes_response, *s_pathsend, *s_zerocopysend;

static PyObject *app_scope(PyObject *scope, PyObject *exchange) {
    PyObject *method = PyDict_CheckExact(scope) ? PyDict_GetItemWithError(scope, s_method) : NULL;
    PyObject *ex_method = FIELD(exchange, o_ex_method);
    int same = method != NULL && ex_method != NULL && FIELD(exchange, o_ex_uri) == Py_None &&
               FIELD(exchange, o_ex_headers_changed) == Py_False && FIELD(exchange, o_ex_request_body_replaced) == Py_False;
    if (same && method != ex_method)
        same = PyUnicode_CheckExact(method) && PyUnicode_CheckExact(ex_method) && PyUnicode_Compare(method, ex_method) == 0;
    if (same) {
        PyObject *extensions = PyDict_GetItemWithError(scope, s_extensions);
        int has = extensions == NULL ? 0 : PyObject_IsTrue(extensions);
        if (has > 0) {
            int a = PySequence_Contains(extensions, s_pathsend), b = a ? a : PySequence_Contains(extensions, s_zerocopysend);
            has = a < 0 || b < 0 ? -1 : a || b;
        }
        if (has < 0)
            return NULL;
        if (!has)
            return Py_NewRef(scope);
    }
    if (PyErr_Occurred())
        return NULL;
    return PyObject_CallFunctionObjArgs(scope_for_app_reference, scope, exchange, NULL);
}

static PyObject *flow_app_args(PyObject *flow, PyObject *unused) {
    PyObject *exchange = FIELD(flow, o_flow_exchange), *scope = FIELD(flow, o_flow_scope);
    PyObject *chain = FIELD(flow, o_flow_chain), *buffered = FIELD(flow, o_flow_buffered);
    if (exchange == NULL || scope == NULL || chain == NULL || buffered == NULL || !Py_IS_TYPE(exchange, t_exchange)) {
        PyErr_SetString(PyExc_TypeError, "app_args: the flow is not set up");
        return NULL;
    }
    PyObject *send;
    int observed = PyObject_IsTrue(buffered);
    if (observed > 0) {
        send = PyObject_GetAttr(flow, s_collect);
    } else {
        if (observed == 0 && (observed = attr_true(chain, s_observes_response)) == 0)
            observed = PyObject_IsTrue(FIELD(exchange, o_ex_response_headers));
        send = observed < 0 ? NULL : observed ? PyObject_GetAttr(flow, s_stream) : Py_XNewRef(FIELD(flow, o_flow_send));
    }
    PyObject *receive = FIELD(exchange, o_ex_request_body) == Py_None ? Py_XNewRef(FIELD(flow, o_flow_receive))
                                                                        : PyObject_GetAttr(flow, s_replay_receive);
    PyObject *app_scope_ = send && receive ? app_scope(scope, exchange) : NULL;
    if (app_scope_ == NULL) {
        Py_XDECREF(send);
        Py_XDECREF(receive);
        return NULL;
    }
    PyObject *out = PyTuple_New(3);
    if (out == NULL) {
        Py_DECREF(app_scope_);
        Py_DECREF(send);
        Py_DECREF(receive);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, app_scope_);
    PyTuple_SET_ITEM(out, 1, receive);
    PyTuple_SET_ITEM(out, 2, send);
    return out;
}

static PyMethodDef flow_methods[] = {
    {"enter", (PyCFunction)flow_enter, METH_NOARGS, "handle_request of the guests whose calls end at once in next."},
    {"leave", (PyCFunction)flow_leave, METH_O, "handle_response of the held guests whose calls end at once."},
    {"stream", (PyCFunction)flow_stream, METH_O, "Pass the app's response through, remembering what guests read."},
    {"app_args", (PyCFunction)flow_app_args, METH_NOARGS, "(scope, receive, send) for the next handler."},
    {NULL, NULL, 0, NULL},
};

/* open_flow(chain, scope, receive, send) -> _Flow: middleware.open_flow in one call. The two objects start as
 * copies of prototypes the Python constructors made (the defaults are written once, in Python), then take what
 * this request brings. Scopes out of the common case go to the Python reference. */
static PyObject *open_flow_reference, *flow_prototype, *exchange_prototype, *protocols, *empty_bytes;

/* A new object of the prototype's class with each of its slots (all plain object slots) */
static PyObject *clone_slots(PyObject *prototype) {
    PyTypeObject *type = Py_TYPE(prototype);
    PyObject *obj = type->tp_alloc(type, 0);
    if (obj == NULL)
        return NULL;
    for (PyMemberDef *m = type->tp_members; m != NULL && m->name != NULL; m++)
        if (m->type == T_OBJECT_EX)
            Py_XINCREF(FIELD(obj, m->offset) = FIELD(prototype, m->offset));
    return obj;
}

/* A prototype fit for clone_slots: slots only, each slot set to a value its copies may share (an immutable one) but
 * for the slots `own` (offsets, -1 ended) that open_flow sets itself. */
static int check_prototype(PyObject *prototype, PyTypeObject *type, const Py_ssize_t *own) {
    if (!Py_IS_TYPE(prototype, type) || type->tp_dictoffset != 0 || type->tp_weaklistoffset != 0) {
        PyErr_Format(PyExc_TypeError, "the %s prototype is not a plain slotted object", type->tp_name);
        return -1;
    }
    for (PyMemberDef *m = type->tp_members; m != NULL && m->name != NULL; m++) {
        if (m->type != T_OBJECT_EX)
            continue;
        int set_here = 0;
        for (const Py_ssize_t *o = own; *o >= 0; o++)
            set_here |= *o == m->offset;
        PyObject *v = FIELD(prototype, m->offset);
        if (set_here)
            continue;
        if (v == NULL || !(v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) || PyBytes_CheckExact(v) ||
                           PyUnicode_CheckExact(v) || PyTuple_CheckExact(v) || PyFloat_CheckExact(v))) {
            PyErr_Format(PyExc_TypeError, "%s.%s starts as a value its copies cannot share", type->tp_name, m->name);
            return -1;
        }
    }
    return 0;
}

static PyObject *new_exchange(PyObject *chain, PyObject *scope) {
    PyObject *method = PyDict_GetItemWithError(scope, s_method), *raw = PyDict_GetItemWithError(scope, s_raw_path);
    PyObject *headers = PyDict_GetItemWithError(scope, s_headers);
    if (method == NULL || headers == NULL || raw == NULL || !PyBytes_CheckExact(raw) || PyBytes_GET_SIZE(raw) == 0)
        return NULL; /* the reference decides (an error, or a path to encode) */
    PyObject *version = PyDict_GetItemWithError(scope, s_http_version);
    PyObject *protocol = PyDict_GetItemWithError(protocols, version ? version : s_default_version);
    if (protocol == NULL)
        return NULL;
    PyObject *query = PyDict_GetItemWithError(scope, s_query_string);
    int has_query = query == NULL ? 0 : PyObject_IsTrue(query);
    PyObject *client = PyDict_GetItemWithError(scope, s_client);
    PyObject *extensions = PyDict_GetItemWithError(scope, s_extensions);
    int trailers = extensions == NULL || extensions == Py_None ? 0 : PySequence_Contains(extensions, s_trailers_ext);
    if (has_query < 0 || trailers < 0 || PyErr_Occurred())
        return NULL;
    PyObject *max_body_size = PyObject_GetAttr(chain, s_max_body_size);
    PyObject *ex = max_body_size ? clone_slots(exchange_prototype) : NULL;
    if (ex == NULL) {
        Py_XDECREF(max_body_size);
        return NULL;
    }
    SET_FIELD(ex, o_ex_method, method);
    SET_FIELD(ex, o_ex_path, raw);
    SET_FIELD(ex, o_ex_query, has_query ? query : empty_bytes);
    SET_FIELD(ex, o_ex_request_headers, headers);
    Py_XSETREF(FIELD(ex, o_ex_max_body_size), max_body_size);
    SET_FIELD(ex, o_ex_protocol, protocol);
    SET_FIELD(ex, o_ex_client, client ? client : Py_None);
    SET_FIELD(ex, o_ex_trailers_supported, trailers ? Py_True : Py_False);
    return ex;
}

static PyObject *open_flow(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "open_flow(chain, scope, receive, send)");
        return NULL;
    }
    PyObject *exchange = PyDict_CheckExact(args[1]) ? new_exchange(args[0], args[1]) : NULL;
    if (exchange == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_Vectorcall(open_flow_reference, args, 4, NULL);
    }
    PyObject *flow = clone_slots(flow_prototype);
    PyObject *held = flow ? PyList_New(0) : NULL;
    if (held == NULL) {
        Py_XDECREF(flow);
        Py_DECREF(exchange);
        return NULL;
    }
    SET_FIELD(flow, o_flow_chain, args[0]);
    SET_FIELD(flow, o_flow_scope, args[1]);
    SET_FIELD(flow, o_flow_receive, args[2]);
    SET_FIELD(flow, o_flow_send, args[3]);
    Py_XSETREF(FIELD(flow, o_flow_exchange), exchange);
    Py_XSETREF(FIELD(flow, o_flow_held), held);
    return flow;
}

static PyMethodDef open_flow_def = {"open_flow", (PyCFunction)(void (*)(void))open_flow, METH_FASTCALL,
                                    "A request's _Flow through the chain, over the Exchange of its scope."};

/* The open_flow function, for these prototypes (a _Flow, an Exchange), http_version -> protocol map and reference */
static PyObject *make_open_flow(PyObject *flow_proto, PyObject *exchange_proto, PyObject *versions, PyObject *reference) {
    const Py_ssize_t flow_own[] = {o_flow_chain, o_flow_scope, o_flow_receive, o_flow_send, o_flow_exchange, o_flow_held, -1};
    const Py_ssize_t ex_own[] = {o_ex_method, o_ex_path, o_ex_query, o_ex_request_headers, o_ex_max_body_size,
                                 o_ex_protocol, o_ex_client, o_ex_trailers_supported, -1};
    if (!PyDict_CheckExact(versions) || !PyCallable_Check(reference)) {
        PyErr_SetString(PyExc_TypeError, "open_flow needs a dict of protocols and a reference function");
        return NULL;
    }
    if (check_prototype(flow_proto, t_flow, flow_own) < 0 || check_prototype(exchange_proto, t_exchange, ex_own) < 0)
        return NULL;
    Py_XSETREF(flow_prototype, Py_NewRef(flow_proto));
    Py_XSETREF(exchange_prototype, Py_NewRef(exchange_proto));
    Py_XSETREF(protocols, Py_NewRef(versions));
    Py_XSETREF(open_flow_reference, Py_NewRef(reference));
    return PyCFunction_New(&open_flow_def, NULL);
}

/* native_flow(_Flow, its NATIVE_SLOTS, GuestTrap, BUFFER_RESPONSE, (flow prototype, exchange prototype),
 * {http_version: protocol}, open_flow reference, scope_for_app) -> {name: method descriptor} of the methods above, for the class
 * to take in place of its Python ones (which stream still falls back to), and "open_flow": the function. */
static PyObject *native_flow(PyObject *self, PyObject *args) {
    PyTypeObject *cls;
    PyObject *slots, *trap, *flow_proto, *exchange_proto, *versions, *reference, *scoper;
    long bit;
    if (!PyArg_ParseTuple(args, "O!O!Ol(OO)OOO", &PyType_Type, &cls, &PyTuple_Type, &slots, &trap, &bit, &flow_proto,
                          &exchange_proto, &versions, &reference, &scoper))
        return NULL;
    if (!PyCallable_Check(scoper)) {
        PyErr_SetString(PyExc_TypeError, "native_flow: scope_for_app is not callable");
        return NULL;
    }
    if (!native_ready) {
        PyErr_SetString(PyExc_TypeError, "the host's classes are not configured (configure_host)");
        return NULL;
    }
    if (!PyType_Check(trap) || !PyType_IsSubtype((PyTypeObject *)trap, (PyTypeObject *)PyExc_BaseException)) {
        PyErr_SetString(PyExc_TypeError, "native_flow: the trap class is not an exception");
        return NULL;
    }
    PyObject *python_stream = PyDict_GetItemString(cls->tp_dict, "stream"); /* borrowed */
    if (python_stream == NULL || !PyFunction_Check(python_stream)) {
        PyErr_SetString(PyExc_TypeError, "native_flow: the class has no Python stream method");
        return NULL;
    }
    if (learn_slots(cls, slots, OF_FLOW) < 0)
        return NULL;
    Py_XSETREF(t_flow, (PyTypeObject *)Py_NewRef(cls));
    Py_XSETREF(guest_trap, Py_NewRef(trap));
    Py_XSETREF(stream_reference, Py_NewRef(python_stream));
    Py_XSETREF(scope_for_app_reference, Py_NewRef(scoper));
    buffer_response_bit = bit;
    PyObject *opener = make_open_flow(flow_proto, exchange_proto, versions, reference);
    PyObject *out = opener ? method_descriptors(cls, flow_methods) : NULL;
    if (out != NULL && PyDict_SetItemString(out, "open_flow", opener) < 0)
        Py_CLEAR(out);
    Py_XDECREF(opener);
    return out;
}

/* ---------------------------------------------------------------- the instance pool's fast cases */

/* pool.InstancePool's try_acquire and release as C methods (pool_methods): an idle instance taken from (and
 * given back to) the end of `_idle`, as the Python methods do; every other case goes to them. */
static PyObject *pool_try_acquire_reference, *pool_release_reference, *s_closed, *s_schedule_trim;

/* InstancePool.try_acquire() */
static PyObject *pool_try_acquire(PyObject *pool, PyObject *unused) {
    PyObject *idle = FIELD(pool, o_pool_idle), *low = FIELD(pool, o_pool_low);
    if (idle == NULL || !PyList_CheckExact(idle) || PyList_GET_SIZE(idle) == 0 || low == NULL || !PyLong_CheckExact(low))
        return PyObject_CallOneArg(pool_try_acquire_reference, pool);
    Py_ssize_t left = PyList_GET_SIZE(idle) - 1;
    PyObject *instance = Py_NewRef(PyList_GET_ITEM(idle, left));
    if (PyList_SetSlice(idle, left, left + 1, NULL) < 0) {
        Py_DECREF(instance);
        return NULL;
    }
    if (left < PyLong_AsSsize_t(low)) {
        PyObject *n = PyLong_FromSsize_t(left);
        if (n == NULL) {
            Py_DECREF(instance);
            return NULL;
        }
        Py_XSETREF(FIELD(pool, o_pool_low), n);
    }
    return instance;
}

/* compare two plain ints of the pool: a < b as 1/0, -1 when they are not ints */
static int int_less(PyObject *a, PyObject *b) {
    if (a == NULL || b == NULL || !PyLong_CheckExact(a) || !PyLong_CheckExact(b))
        return -1;
    return PyLong_AsSsize_t(a) < PyLong_AsSsize_t(b);
}

/* InstancePool.release(instance, *, discard=False) */
static PyObject *pool_release(PyObject *pool, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *idle = FIELD(pool, o_pool_idle), *waiters = FIELD(pool, o_pool_waiters);
    PyObject *max_idle = FIELD(pool, o_pool_max_idle), *size = FIELD(pool, o_pool_size);
    PyObject *min_size = FIELD(pool, o_pool_min_size);
    if (nargs != 1 || kwnames != NULL || idle == NULL || !PyList_CheckExact(idle) || FIELD(pool, o_pool_reuse) != Py_True
        || waiters == NULL || max_idle == NULL)
        goto reference;
    int closed = attr_true(args[0], s_closed);
    Py_ssize_t waiting = PyObject_Length(waiters);
    if (closed < 0 || waiting < 0)
        return NULL;
    int above = int_less(min_size, size); /* size > min_size */
    if (closed || waiting || above < 0)
        goto reference;
    if (max_idle != Py_None) { /* room among the idle ones, or the pool at its floor */
        PyObject *count = PyLong_FromSsize_t(PyList_GET_SIZE(idle));
        int room = count ? int_less(count, max_idle) : -1;
        Py_XDECREF(count);
        if (room < 0 || (!room && above))
            goto reference;
    }
    if (PyList_Append(idle, args[0]) < 0)
        return NULL;
    PyObject *timeout = FIELD(pool, o_pool_idle_timeout);
    if (above && FIELD(pool, o_pool_trim_handle) == Py_None && timeout != NULL && timeout != Py_None)
        return PyObject_CallMethodNoArgs(pool, s_schedule_trim);
    Py_RETURN_NONE;
reference:
    if (PyErr_Occurred())
        return NULL;
    {
        PyObject *stack[8];
        Py_ssize_t n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
        if (n > 7) {
            PyErr_SetString(PyExc_TypeError, "release: too many arguments");
            return NULL;
        }
        stack[0] = pool;
        for (Py_ssize_t i = 0; i < n; i++)
            stack[i + 1] = args[i];
        return PyObject_Vectorcall(pool_release_reference, stack, (size_t)nargs + 1, kwnames);
    }
}

static PyMethodDef pool_methods[] = {
    {"try_acquire", (PyCFunction)pool_try_acquire, METH_NOARGS, "An idle instance (or a cheap new one), else None."},
    {"release", (PyCFunction)(void (*)(void))pool_release, METH_FASTCALL | METH_KEYWORDS,
     "Give an instance back (to the idle ones, a waiter, or closed)."},
    {NULL, NULL, 0, NULL},
};

/* native_pool(InstancePool, its NATIVE_SLOTS) -> {name: method descriptor} of the methods above, for the class to
 * take in place of its Python ones (which they fall back to). */
static PyObject *native_pool(PyObject *self, PyObject *args) {
    PyTypeObject *cls;
    PyObject *slots;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &cls, &PyTuple_Type, &slots))
        return NULL;
    PyObject *acquire = PyDict_GetItemString(cls->tp_dict, "try_acquire"); /* borrowed */
    PyObject *release = PyDict_GetItemString(cls->tp_dict, "release");
    if (acquire == NULL || release == NULL || !PyFunction_Check(acquire) || !PyFunction_Check(release)) {
        PyErr_SetString(PyExc_TypeError, "native_pool: the class has no Python try_acquire and release");
        return NULL;
    }
    if (learn_slots(cls, slots, OF_POOL) < 0)
        return NULL;
    Py_XSETREF(pool_try_acquire_reference, Py_NewRef(acquire));
    Py_XSETREF(pool_release_reference, Py_NewRef(release));
    return method_descriptors(cls, pool_methods);
}

/* ---------------------------------------------------------------- configure, ticker */

/* configure(call_async, instantiate_async, future_poll, future_delete, yield_update, set_deadline, trap_new,
 * increment_epoch, memory_data_size, error handler): the wasmtime entry points (addresses) and the runtime's
 * host error handler. */
static PyObject *configure(PyObject *self, PyObject *args) {
    unsigned long long f[9];
    PyObject *handler;
    if (!PyArg_ParseTuple(args, "KKKKKKKKKO", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &handler))
        return NULL;
    p_call_async = (call_async_fn)(uintptr_t)f[0];
    p_instantiate_async = (instantiate_async_fn)(uintptr_t)f[1];
    p_poll = (future_poll_fn)(uintptr_t)f[2];
    p_delete = (future_delete_fn)(uintptr_t)f[3];
    p_yield_update = (yield_update_fn)(uintptr_t)f[4];
    p_set_deadline = (set_deadline_fn)(uintptr_t)f[5];
    p_trap_new = (trap_new_fn)(uintptr_t)f[6];
    p_increment_epoch = (increment_epoch_fn)(uintptr_t)f[7];
    p_memory_size = (memory_size_fn)(uintptr_t)f[8];
    Py_INCREF(handler);
    Py_XSETREF(error_handler, handler);
    Py_RETURN_NONE;
}

typedef struct {
    void *engine;
    long interval_us;
} ticker_args;

static void *tick(void *arg_) {
    ticker_args *t = (ticker_args *)arg_;
    struct timespec ts = {t->interval_us / 1000000, (t->interval_us % 1000000) * 1000};
    for (;;) {
        nanosleep(&ts, NULL);
        p_increment_epoch(t->engine);
    }
    return NULL;
}

/* start_ticker(engine, interval_us): a native thread bumping the engine's epoch forever. */
static PyObject *start_ticker(PyObject *self, PyObject *args) {
    unsigned long long engine;
    long interval;
    if (!PyArg_ParseTuple(args, "Kl", &engine, &interval))
        return NULL;
    ticker_args *t = PyMem_RawMalloc(sizeof(ticker_args)); /* lives as long as the process */
    if (!t)
        return PyErr_NoMemory();
    t->engine = (void *)(uintptr_t)engine;
    t->interval_us = interval;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, tick, t);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        PyMem_RawFree(t);
        PyErr_SetString(PyExc_RuntimeError, "cannot start the epoch ticker thread");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "Set the wasmtime entry points and the host error handler."},
    {"configure_host", configure_host, METH_VARARGS, "Learn the host's declared slots and header byte tables."},
    {"accelerated", accelerated, METH_O, "The native version of a Python helper (None when there is none)."},
    {"native_functions", native_functions, METH_NOARGS, "Host functions with a native implementation."},
    {"merge_response_headers", (PyCFunction)(void (*)(void))merge_response_headers, METH_FASTCALL,
     "Guest-set response headers the app does not set, then the app's."},
    {"define", define, METH_VARARGS, "Define a host function on a linker through the C trampoline."},
    {"native_pool", native_pool, METH_VARARGS, "The instance pool's fast cases, for its class."},
    {"native_flow", native_flow, METH_VARARGS, "The ASGI binding's per-request methods, for its _Flow class."},
    {"set_current", set_current, METH_O, "Set the running instance of this thread; returns the previous one."},
    {"quick_calls", quick_calls_count, METH_NOARGS, "Cooperative calls on this thread that ended in their first slice."},
    {"set_turn", set_turn, METH_VARARGS, "set_turn(turn, window, long): guest seconds per event-loop turn."},
    {"start_ticker", start_ticker, METH_VARARGS, "Start the native epoch ticker."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    str_raise_trap = PyUnicode_InternFromString("_raise_trap");
    PyObject **names[] = {&s_guests, &s_threaded, &s_reads_request_body, &s_pool, &s_try_acquire,
                          &s_release, &s_context, &s_features, &s_core, &s_type, &s_status,
                          &s_headers, &s_start, &s_body, &s_method, &s_raw_path, &s_query_string, &s_http_version,
                          &s_client, &s_extensions, &s_trailers_ext, &s_max_body_size, &s_default_version,
                          &s_closed, &s_schedule_trim, &s_collect, &s_stream, &s_replay_receive,
                          &s_observes_response, &s_pathsend, &s_zerocopysend};
    const char *texts[] = {"guests", "threaded", "reads_request_body", "pool", "try_acquire",
                           "release", "context", "features", "_core", "type", "status",
                           "headers", "http.response.start", "http.response.body", "method", "raw_path",
                           "query_string", "http_version", "client", "extensions", "http.response.trailers",
                           "max_body_size", "1.1", "closed", "_schedule_trim", "collect", "stream",
                           "replay_receive", "observes_response", "http.response.pathsend",
                           "http.response.zerocopysend"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i] = PyUnicode_InternFromString(texts[i])) == NULL)
            return NULL;
    if ((empty_bytes = PyBytes_FromStringAndSize("", 0)) == NULL)
        return NULL;
    suspended = PyLong_FromLong(-1);
    if (str_raise_trap == NULL || suspended == NULL || PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* runtime.py refuses a build whose VERSION is not the one it was written for (a stale build) */
    if (PyModule_AddIntConstant(m, "VERSION", FASTPATH_VERSION) < 0 || PyModule_AddObjectRef(m, "SUSPENDED", suspended) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *buckets = PyTuple_New(STATS_NBUCKETS);
    for (int i = 0; buckets != NULL && i < STATS_NBUCKETS; i++)
        PyTuple_SET_ITEM(buckets, i, PyLong_FromLongLong(STATS_BUCKETS_NS[i]));
    if (buckets == NULL || PyModule_AddObject(m, "STATS_BUCKETS_NS", buckets) < 0 ||
        PyModule_AddIntConstant(m, "STATS_SIZE", STATS_SIZE) < 0) {
        Py_XDECREF(buckets);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
