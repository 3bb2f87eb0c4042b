/* The native path: the Core type, one instance's call path (calls, slices, clock).
 *
 * Mirrors http_wasm_asgi/wasm/calls.py (the ctypes PyCore, the same interface), which is the reference: any
 * difference in behaviour is a bug here. Each instance has a `Core`: its store context, export addresses,
 * argument slots and cached memory base/size. `core.request(exchange, features)` / `core.response(ctx, err)`
 * are one C call each (no ctypes, no argument objects; the GIL is kept unless the guest runs on a worker
 * thread), with the host's begin/after_next/end done on its slots (host.c). A trap calls back into Python
 * (the instance's `_raise_trap(index)`), which raises the runtime's GuestTrap.
 *
 * Two additions have no reference, both plain synchronous calls (sync_call, native.h): SYNC_FIRST, for the native
 * call (call.c), and handle_response of an instance whose sync_response is set.
 *
 * Names of Python classes come from contract.c (a_*), ABI facts from configure_abi (hw_next_bit).
 */
#include "native.h"
#include <pthread.h>

const long long hw_stats_buckets_ns[STATS_NBUCKETS] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000,
    50000000, 100000000, 250000000, 1000000000};

/* The instance whose guest code runs on this thread; whether the running guest call kept the GIL. */
HW_THREAD_LOCAL Core *hw_current;
HW_THREAD_LOCAL int hw_holds_gil;
PyObject *hw_suspended;
PyObject *hw_overran;
/* Guest time on this thread, for the calls' clocks and the event loop's turn budget. */
static HW_THREAD_LOCAL long long thread_slices_ns; /* every slice ever run on this thread */
static HW_THREAD_LOCAL long long turn_start_ns, turn_busy_ns; /* guest time in the current turn */
static HW_THREAD_LOCAL unsigned long long quick_calls; /* cooperative calls done in their first slice */
static long long turn_ns = 1000000, turn_window_ns = 2000000, long_ns = 10000000; /* set_turn() */
static double long_wait = 0.5; /* the part of its waiting a long call's clock counts (set_turn) */

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
    while (b < STATS_NBUCKETS && ns > hw_stats_buckets_ns[b])
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
    hw_yield_update(self->ctx, 1);
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
 * before it clears the Core of an abandoned instance. ("_Managed__ptr" is the wasmtime package's own
 * attribute, not one of this project's classes: it is not part of the contract.) */
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
    self->yielded = 0;
    if (store_open(self)) {
        Core *prev = hw_current;
        hw_current = self;
        hw_delete(self->future);
        hw_current = prev;
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

/* The owner raises the failed call as a Python exception (its _raise_trap, role "instance"); always -1. */
static int raise_trap(Core *self) {
    if (a_instance_raise_trap == NULL) {
        hw_require(ROLE(ROLE_INSTANCE), "a failed guest call");
        return CALL_FAILED;
    }
    PyObject *i = PyLong_FromLong(self->index);
    PyObject *r = (i && self->owner != Py_None) ? PyObject_CallMethodOneArg(self->owner, a_instance_raise_trap, i)
                                                : NULL;
    Py_XDECREF(i);
    Py_XDECREF(r);
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_RuntimeError, "guest call failed");
    return CALL_FAILED;
}

/* Guest code of `self` runs on this thread, a slice of a call or a synchronous call, between these two: it is the
 * current instance (host functions find it), the ticker moves the epoch while any runs, and its time counts on
 * its own clock, the thread's and the turn's. */
typedef struct { Core *prev; int prev_holds; } guest_frame;

static inline guest_frame guest_code_starts(Core *self, int holds_gil) {
    guest_frame frame = {hw_current, hw_holds_gil};
    Py_INCREF(self); /* a host function may drop the last outside reference: the caller drops this one */
    hw_current = self;
    hw_holds_gil = holds_gil;
    __atomic_add_fetch(&hw_slices_running, 1, __ATOMIC_RELAXED);
    return frame;
}

/* The guest code that started at t0 stopped: the time it stopped. */
static inline long long guest_code_ends(Core *self, guest_frame frame, long long t0) {
    __atomic_sub_fetch(&hw_slices_running, 1, __ATOMIC_RELAXED);
    long long t1 = hw_now_ns(), d = t1 - t0;
    hw_current = frame.prev;
    hw_holds_gil = frame.prev_holds;
    self->own_ns += d;
    thread_slices_ns += d;
    turn_busy_ns += d;
    return t1;
}

/* A call starts at t: its clock (see slice) counts from here. */
static inline void call_clock_starts(Core *self, long long t) {
    self->start_ns = t;
    self->own_ns = 0;
    self->others0 = thread_slices_ns;
}

/* One slice of the running call: poll its future once (it runs until done or the next epoch tick).
 *
 * The call's clock is its own slices plus, once it is long (long_ns of its own guest time), long_wait of
 * the time other (non-guest) work ran on this thread while it was suspended; other calls' slices never
 * count, and a short call is never timed out for waiting on a busy loop. Past the budget it is cancelled
 * (503). */
static int slice(Core *self, long long t0) {
    unsigned char done;
    guest_frame frame = guest_code_starts(self, !self->release_gil);
    if (self->yielded)
        hw_wake_ticker();
    if (self->release_gil) {
        Py_BEGIN_ALLOW_THREADS
        done = hw_poll(self->future);
        Py_END_ALLOW_THREADS
    } else {
        done = hw_poll(self->future);
    }
    long long t1 = guest_code_ends(self, frame, t0);
    int rc = CALL_SUSPENDED;
    if (done) {
        self->yielded = 0;
        hw_delete(self->future);
        self->future = NULL;
        if (self->stats != NULL && self->index < 2)
            count_call(self, t1 - self->start_ns);
        rc = (self->trap || self->err) ? raise_trap(self) : CALL_DONE;
    } else if (self->own_ns >= self->budget_ns ||
               (self->own_ns >= long_ns &&
                self->own_ns + (long long)(long_wait * (double)((t1 - self->start_ns) -
                                                                (thread_slices_ns - self->others0))) >=
                    self->budget_ns)) {
        cancel_call(self);
        if (self->stats != NULL && self->index < 2)
            count_call(self, t1 - self->start_ns);
        self->timed_out = 1;
        self->trap_status = 503;
        rc = raise_trap(self);
    }
    if (rc == CALL_SUSPENDED)
        self->yielded = 1; /* its next slices wake an idle ticker */
    Py_DECREF(self);
    return rc;
}

/* Whether guests already had this turn's budget (a cooperative call then waits for the event loop first). */
static int turn_spent(long long t) {
    if (t - turn_start_ns >= turn_window_ns) {
        turn_start_ns = t;
        turn_busy_ns = 0;
    }
    return turn_busy_ns >= turn_ns;
}

#define SYNC_RETRY_NS 10000000000LL /* after overruns SYNC_SPACING calls apart or closer, calls yield this long */
#define SYNC_SPACING 5000ULL /* handle_request calls: an overrun costs the loop 1-2 ticks, the fast path ~1 us a call */
#define UNREACHED_DEADLINE (1ULL << 40) /* epoch ticks: a deadline that a call which ends on its own never meets */

/* Whether handle_request may be tried synchronously at t: not within SYNC_RETRY_NS of an overrun close after the
 * guest's previous one (its counters). Rare long (or spinning) requests thus leave the fast path on. */
static inline int sync_allowed(Core *self, long long t) {
    return self->stats == NULL || t >= (long long)self->stats[STATS_SYNC_AFTER];
}

/* What a synchronous call may need of its thread's stack: wasmtime lets wasm use max_wasm_stack (512 KiB by
 * default) below the caller's frame, and host functions run below that. On a fiber (the cooperative path) a
 * call has a stack of its own, so a thread with less room left (a small thread stack, or a deep caller) takes
 * that path. */
#define SYNC_STACK_NEED (1024 * 1024)
static HW_THREAD_LOCAL uintptr_t stack_floor; /* this thread's stack bottom + SYNC_STACK_NEED; 0: not read yet */

static int stack_has_room(void) {
    if (stack_floor == 0) {
        pthread_attr_t attr;
        void *bottom = NULL;
        size_t size = 0;
        stack_floor = UINTPTR_MAX; /* unknown: no synchronous calls on this thread */
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            if (pthread_attr_getstack(&attr, &bottom, &size) == 0 && size > SYNC_STACK_NEED)
                stack_floor = (uintptr_t)bottom + SYNC_STACK_NEED;
            pthread_attr_destroy(&attr);
        }
    }
    char here;
    return (uintptr_t)&here > stack_floor;
}

/* A call as one plain synchronous call: no future, no fiber. handle_request (SYNC_FIRST): its epoch deadline is
 * two ticks away, so a call stopped there ran for at least a whole tick; it cannot yield, so it ends with an error,
 * CALL_OVERRAN here (the instance is left mid-call: the caller discards it and runs the request again). The code
 * of a sync_response handle_response cannot loop: it ends on its own, its deadline out of reach. */
static int sync_call(Core *self, void *func, long long t0) {
    int request = self->index == 0;
    /* two wasmtime_val_raw_t: handle_request's i64 result, or handle_response's arguments */
    uint64_t raw[4] = {request ? 0 : (uint32_t)self->args[0].of.i32, 0, request ? 0 : (uint32_t)self->args[1].of.i32};
    call_clock_starts(self, t0);
    guest_frame frame = guest_code_starts(self, 1);
    hw_set_deadline(self->ctx, request ? 2 : UNREACHED_DEADLINE);
    void *err = hw_call_unchecked(self->ctx, func, raw, request ? 1 : 2, &self->trap);
    long long t1 = guest_code_ends(self, frame, t0);
    int rc;
    if (request && err != NULL && self->trap == NULL) {
        hw_error_delete(err);
        if (self->stats != NULL) {
            uint64_t at = self->stats[0] + 1, last = self->stats[STATS_OVERRAN_AT]; /* calls ended, + 1 */
            self->stats[STATS_OVERRUNS]++;
            self->stats[STATS_OVERRAN_AT] = at;
            if (last != 0 && at - last <= SYNC_SPACING) /* two close together: a slow guest */
                self->stats[STATS_SYNC_AFTER] = (uint64_t)(t1 + SYNC_RETRY_NS);
        }
        rc = CALL_OVERRAN;
    } else {
        self->err = err;
        if (request)
            memcpy(&self->results[0].of.i64, raw, sizeof self->results[0].of.i64);
        if (self->stats != NULL)
            count_call(self, t1 - t0);
        rc = (self->trap || self->err) ? raise_trap(self) : CALL_DONE;
        if (rc == CALL_DONE)
            quick_calls++;
    }
    Py_DECREF(self);
    return rc;
}

/* Start a call whose future is in self->future. cooperative: return CALL_SUSPENDED when it does not end in
 * its first slice, or without running it when guests already had this turn's budget; else run it to its end. */
static int run(Core *self, int cooperative) {
    long long t = hw_now_ns();
    call_clock_starts(self, t);
    if (cooperative && turn_spent(t))
        return CALL_SUSPENDED; /* deferred: let the event loop run first */
    int rc = slice(self, t);
    if (!cooperative)
        while (rc == CALL_SUSPENDED)
            rc = slice(self, hw_now_ns());
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
    if (!self->release_gil) {
        if (cooperative == SYNC_FIRST && index == 0) {
            long long t = hw_now_ns();
            if (sync_allowed(self, t) && !turn_spent(t) && stack_has_room())
                return sync_call(self, func, t);
        } else if (index == 1 && self->sync_response && stack_has_room()) {
            return sync_call(self, func, hw_now_ns()); /* it ends on its own: no turn to wait for */
        }
    }
    hw_set_deadline(self->ctx, 1); /* the first slice ends at the next tick */
    self->future = hw_call_async(self->ctx, func, self->args, nargs, self->results, nresults, &self->trap,
                                &self->err);
    return run(self, cooperative);
}

static inline int native_host(Core *self) {
    return hw_native_ready && self->host && Py_IS_TYPE(self->host, hw_t_host);
}

/* host.<name>() (the Python GuestHost method); name is NULL until the role "host" is learned. */
static int call_host(PyObject *host, PyObject *name) {
    if (name == NULL && hw_require(ROLE(ROLE_HOST), "a guest call's host methods") < 0)
        return -1;
    PyObject *r = PyObject_CallMethodNoArgs(host, name);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* host.end(): the instance is done with its request (after its handle_response, or thrown away mid-request) */
int hw_end_request(Core *self) {
    if (native_host(self)) {
        hw_host_end(self->host);
        return 0;
    }
    return call_host(self->host, a_host_end);
}

/* The value of a call that ended, after what ends it on the host (after_next on next, end). */
static PyObject *complete(Core *self, int rc) {
    if (rc == CALL_FAILED)
        return NULL;
    if (rc == CALL_SUSPENDED)
        return Py_NewRef(hw_suspended);
    if (rc == CALL_OVERRAN)
        return Py_NewRef(hw_overran);
    uint64_t ctx_next = (uint64_t)self->results[0].of.i64;
    switch (self->after) {
    case AFTER_RESULT:
        return PyLong_FromUnsignedLongLong(ctx_next);
    case AFTER_REQUEST:
        if (ctx_next & hw_next_bit) {
            if (native_host(self))
                hw_host_after_next(self->host);
            else if (call_host(self->host, a_host_after_next) < 0)
                return NULL;
        } else if (self->stats != NULL) {
            self->stats[STATS_SHORT]++;
        }
        return PyLong_FromUnsignedLongLong(ctx_next);
    case AFTER_RESPONSE:
        if (hw_end_request(self) < 0)
            return NULL;
        Py_RETURN_NONE;
    default:
        Py_RETURN_NONE;
    }
}

/* request(exchange, features) / start_request(...): host.begin(exchange, features), handle_request,
 * and host.after_next() when the guest said next; the i64 ctx_next. */
PyObject *hw_request_call(Core *self, PyObject *const *args, Py_ssize_t nargs, int cooperative) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "request(exchange, features)");
        return NULL;
    }
    if (self->host == NULL || self->ctx == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "guest instance is closed");
        return NULL;
    }
    if (!hw_abi_ready && hw_require_abi("Core.request") < 0) /* the next bit of its result */
        return NULL;
    if (native_host(self) && PyLong_CheckExact(args[1])) {
        hw_host_begin(self->host, args[0], args[1]);
    } else {
        if (a_host_begin == NULL && hw_require(ROLE(ROLE_HOST), "Core.request") < 0)
            return NULL;
        PyObject *r = PyObject_CallMethodObjArgs(self->host, a_host_begin, args[0], args[1], NULL);
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
PyObject *hw_response_call(Core *self, PyObject *const *args, Py_ssize_t nargs, int cooperative) {
    if (set_response_args(self, args, nargs) < 0)
        return NULL;
    return complete(self, start(self, 1, AFTER_RESPONSE, cooperative));
}

static PyObject *Core_request(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    return hw_request_call(self, args, nargs, 0);
}

static PyObject *Core_start_request(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    return hw_request_call(self, args, nargs, 1);
}

static PyObject *Core_response(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    return hw_response_call(self, args, nargs, 0);
}

static PyObject *Core_start_response(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    return hw_response_call(self, args, nargs, 1);
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
    hw_set_deadline(self->ctx, 1);
    self->future = hw_instantiate_async((const void *)(uintptr_t)pre, self->ctx, (void *)(uintptr_t)out, &self->trap,
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
    long long t = hw_now_ns();
    turn_start_ns = t;
    turn_busy_ns = 0;
    return complete(self, slice(self, t));
}

/* cancel(): abandon the suspended call (its instance must not be used again). */
static PyObject *Core_cancel(Core *self, PyObject *unused) {
    cancel_call(self);
    Py_RETURN_NONE;
}

/* The int flag at byte offset `closure` of the Core (release_gil, sync_response), as a bool. */
static PyObject *Core_get_flag(Core *self, void *closure) {
    return PyBool_FromLong(*(int *)((char *)self + (uintptr_t)closure));
}

static int Core_set_flag(Core *self, PyObject *value, void *closure) {
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    *(int *)((char *)self + (uintptr_t)closure) = v;
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
    {"release_gil", (getter)Core_get_flag, (setter)Core_set_flag, "release the GIL in calls",
     (void *)offsetof(Core, release_gil)},
    {"sync_response", (getter)Core_get_flag, (setter)Core_set_flag,
     "call handle_response as one synchronous call: its code cannot loop", (void *)offsetof(Core, sync_response)},
    {"used", (getter)Core_get_used, NULL, "seconds of guest time the running (or last) call used", NULL},
    {"budget", (getter)Core_get_budget, (setter)Core_set_budget, "seconds each call may take (see slice)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject hw_CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "http_wasm_asgi._native._ext.Core",
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
PyObject *hw_set_current(PyObject *self, PyObject *arg) {
    PyObject *prev = hw_current ? (PyObject *)hw_current : Py_None;
    Py_INCREF(prev);
    if (arg == Py_None) {
        hw_current = NULL;
    } else if (Py_IS_TYPE(arg, &hw_CoreType)) {
        hw_current = (Core *)arg; /* the caller keeps it alive while it is current */
    } else {
        Py_DECREF(prev);
        PyErr_SetString(PyExc_TypeError, "set_current(Core | None)");
        return NULL;
    }
    hw_holds_gil = 0;
    return prev;
}

/* quick_calls() -> cooperative calls on this thread that ended in their first slice (a counter) */
PyObject *hw_quick_calls(PyObject *self, PyObject *unused) { return PyLong_FromUnsignedLongLong(quick_calls); }

/* set_turn(turn seconds, window seconds, long seconds, wait part): the guest time the event loop gives
 * guests per turn, the guest time after which a call is long, and the part of the time a long call
 * waited that its clock counts (0..1) */
PyObject *hw_set_turn(PyObject *self, PyObject *args) {
    double turn, window, longer, wait;
    if (!PyArg_ParseTuple(args, "dddd", &turn, &window, &longer, &wait))
        return NULL;
    long_wait = wait;
    turn_ns = (long long)(turn * 1e9);
    turn_window_ns = (long long)(window * 1e9);
    long_ns = (long long)(longer * 1e9);
    Py_RETURN_NONE;
}
