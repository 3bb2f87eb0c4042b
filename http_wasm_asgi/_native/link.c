/* The native path: the host-function trampoline, define, configure and the epoch ticker.
 *
 * Mirrors the ctypes path of http_wasm_asgi/wasm/instance.py (_define_ctypes, _start_ticker_thread), which
 * is the reference. Host functions are entered through one C trampoline. The instance being called is in a
 * thread-local (hw_current, set by the call), so the trampoline hands the Python host function its host
 * object and plain ints directly, and turns a Python exception into a wasm trap through the runtime's error
 * handler. A host function with a native implementation (host.c) tries it first. The epoch ticker that
 * enforces the CPU limit is a native thread (guest calls keep the GIL).
 *
 * The wasmtime entry points are not linked here: the runtime passes their addresses (from the wasmtime
 * package's own shared library) to configure().
 */
#include "native.h"
#include <pthread.h>

call_async_fn hw_call_async;
call_unchecked_fn hw_call_unchecked;
error_delete_fn hw_error_delete;
instantiate_async_fn hw_instantiate_async;
future_poll_fn hw_poll;
future_delete_fn hw_delete;
yield_update_fn hw_yield_update;
set_deadline_fn hw_set_deadline;
trap_new_fn hw_trap_new;
increment_epoch_fn hw_increment_epoch;
memory_size_fn hw_memory_size;
static PyObject *error_handler; /* (name, exception, core) -> str: the trap message */

typedef void *(*trampoline_fn)(void *env, void *caller, void *vals, size_t n);
typedef void (*finalizer_fn)(void *env);
typedef void *(*define_fn)(void *linker, const char *module, size_t module_len, const char *name,
                           size_t name_len, const void *functype, trampoline_fn cb, void *env,
                           finalizer_fn finalizer);

/* ---------------------------------------------------------------- the trampoline */

typedef struct {
    PyObject *fn;   /* the Python host function: fn(target, *args) */
    PyObject *name; /* str, for trap messages */
    int nparams;
    int nresults;
    int on_instance; /* fn gets the owner (WasmInstance), not the host object */
    int native;      /* N_*: a native implementation to try first */
} host_env;

static void *make_trap(const char *msg) { return hw_trap_new(msg, strlen(msg)); }

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
        trap = hw_trap_new(utf8, (size_t)len);
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
    int ensure = !hw_holds_gil;
    PyGILState_STATE gil = PyGILState_LOCKED;
    if (ensure)
        gil = PyGILState_Ensure();
    void *trap = NULL;
    Core *core = hw_current;
    if (core == NULL) {
        trap = make_trap("host function called outside a guest call");
        goto out;
    }
    if (core->memory == NULL) { /* instantiation (start section): find the memory through the caller */
        PyObject *address = PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)caller);
        PyObject *r = NULL;
        if (address != NULL && hw_require(ROLE(ROLE_INSTANCE), "a host function called at instantiation") == 0)
            r = PyObject_CallMethodOneArg(core->owner, a_instance_bind_memory, address);
        Py_XDECREF(address);
        if (r == NULL) {
            trap = trap_from_exception(env, core);
            goto out;
        }
        Py_DECREF(r);
    }
    if (env->native) {
        int rc = hw_run_native(env->native, core, vals);
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
        argv[count++] = PyLong_FromUnsignedLong(hw_arg(vals, i));
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
            hw_result(vals, v);
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
PyObject *hw_define(PyObject *self, PyObject *args) {
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
    if (native && hw_native_ready)
        env->native = hw_native_id(name, (size_t)name_len);
    void *err = ((define_fn)(uintptr_t)define_addr)((void *)(uintptr_t)linker, module, (size_t)module_len, name,
                                                   (size_t)name_len, (void *)(uintptr_t)functype, trampoline,
                                                   env, finalize);
    return PyLong_FromVoidPtr(err);
}

/* ---------------------------------------------------------------- configure, ticker */

/* configure(call_async, instantiate_async, future_poll, future_delete, yield_update, set_deadline, trap_new,
 * increment_epoch, memory_data_size, call_unchecked, error_delete, error handler): the wasmtime entry points
 * (addresses, in the order of _native.WASMTIME_FUNCTIONS) and the runtime's host error handler. */
PyObject *hw_configure(PyObject *self, PyObject *args) {
    unsigned long long f[11];
    PyObject *handler;
    if (!PyArg_ParseTuple(args, "KKKKKKKKKKKO", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &f[9],
                          &f[10], &handler))
        return NULL;
    hw_call_async = (call_async_fn)(uintptr_t)f[0];
    hw_instantiate_async = (instantiate_async_fn)(uintptr_t)f[1];
    hw_poll = (future_poll_fn)(uintptr_t)f[2];
    hw_delete = (future_delete_fn)(uintptr_t)f[3];
    hw_yield_update = (yield_update_fn)(uintptr_t)f[4];
    hw_set_deadline = (set_deadline_fn)(uintptr_t)f[5];
    hw_trap_new = (trap_new_fn)(uintptr_t)f[6];
    hw_increment_epoch = (increment_epoch_fn)(uintptr_t)f[7];
    hw_memory_size = (memory_size_fn)(uintptr_t)f[8];
    hw_call_unchecked = (call_unchecked_fn)(uintptr_t)f[9];
    hw_error_delete = (error_delete_fn)(uintptr_t)f[10];
    Py_INCREF(handler);
    Py_XSETREF(error_handler, handler);
    Py_RETURN_NONE;
}

int hw_slices_running; /* (atomic) guest slices being polled now, on any thread */
int hw_ticker_fast;    /* (atomic) the ticker wakes every tick (else it waits up to idle_us for hw_wake_ticker) */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cond;
static int wake_pending;

typedef struct {
    void *engine;
    long interval_us, idle_us; /* a tick; the longest wait while the ticker idles */
    double busy_share;         /* the share of wake-ups finding a slice running above which it ticks every tick */
} ticker_args;

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* A slice of a call that yielded before (a long call) starts: an idle ticker gives it a tick, as a busy one
 * would. One futex wake-up per such slice, none while the ticker ticks anyway. */
void hw_wake_ticker(void) {
    if (__atomic_load_n(&hw_ticker_fast, __ATOMIC_RELAXED))
        return;
    pthread_mutex_lock(&wake_lock);
    wake_pending = 1;
    pthread_cond_signal(&wake_cond);
    pthread_mutex_unlock(&wake_lock);
}

/* Idle: wait up to idle_us, or until a long call's slice starts (then one tick more for it). */
static void idle_wait(const ticker_args *t) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += (t->idle_us % 1000000) * 1000;
    until.tv_sec += t->idle_us / 1000000 + until.tv_nsec / 1000000000;
    until.tv_nsec %= 1000000000;
    pthread_mutex_lock(&wake_lock);
    while (!wake_pending && pthread_cond_timedwait(&wake_cond, &wake_lock, &until) == 0)
        ;
    int woken = wake_pending;
    wake_pending = 0;
    pthread_mutex_unlock(&wake_lock);
    if (woken)
        sleep_us(t->interval_us);
}

/* The epoch moves at a wake-up that finds a guest slice running: that slice yields. The ticker wakes every tick
 * while most wake-ups find one (a heavy guest's calls fill the loop: each first slice must end within a tick);
 * else it waits up to idle_us, woken by the slices of long calls: short calls' first slices then yield within
 * idle_us, a long call's later slices within a tick. After a wake-up that found one, the next comes a tick later:
 * a synchronous try (two ticks to its deadline) that runs on is stopped 1 ms after its first tick, not idle_us.
 * Each wake-up preempts a busy worker: 1000 a second cost a light guest's server ~10% of its rate, while its
 * calls, ~1 us each, almost never need one. */
static void *tick(void *arg_) {
    ticker_args *t = (ticker_args *)arg_;
    double busy = 0; /* moving share of wake-ups that found a slice running */
    int running = 0; /* the last wake-up found a slice running */
    for (;;) {
        if (running || __atomic_load_n(&hw_ticker_fast, __ATOMIC_RELAXED))
            sleep_us(t->interval_us);
        else
            idle_wait(t);
        running = __atomic_load_n(&hw_slices_running, __ATOMIC_RELAXED) > 0;
        if (running)
            hw_increment_epoch(t->engine);
        busy += ((double)running - busy) / 32;
        __atomic_store_n(&hw_ticker_fast, busy >= t->busy_share, __ATOMIC_RELAXED);
    }
    return NULL;
}

/* slice_running(delta): a slice of the Python call path begins (+1) or ends (-1), counted with the native path's
 * own (core.c), so the ticker moves the epoch while it runs. */
PyObject *hw_slice_running(PyObject *self, PyObject *delta) {
    long d = PyLong_AsLong(delta);
    if (d == -1 && PyErr_Occurred())
        return NULL;
    __atomic_add_fetch(&hw_slices_running, (int)d, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

/* wake_ticker(): a slice of a Python-path call that yielded before begins (see idle_wait). */
PyObject *hw_wake_ticker_py(PyObject *self, PyObject *unused) {
    hw_wake_ticker();
    Py_RETURN_NONE;
}

/* start_ticker(engine, interval_us, idle_us, busy_share): a native thread moving the engine's epoch (see tick). */
PyObject *hw_start_ticker(PyObject *self, PyObject *args) {
    unsigned long long engine;
    long interval, idle;
    double busy_share;
    if (!PyArg_ParseTuple(args, "Klld", &engine, &interval, &idle, &busy_share))
        return NULL;
    if (interval <= 0 || idle < interval) {
        PyErr_SetString(PyExc_ValueError, "start_ticker: 0 < interval_us <= idle_us");
        return NULL;
    }
    pthread_condattr_t cond_attr;
    pthread_condattr_init(&cond_attr);
    pthread_condattr_setclock(&cond_attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wake_cond, &cond_attr);
    pthread_condattr_destroy(&cond_attr);
    ticker_args *t = PyMem_RawMalloc(sizeof(ticker_args)); /* lives as long as the process */
    if (!t)
        return PyErr_NoMemory();
    t->engine = (void *)(uintptr_t)engine;
    t->interval_us = interval;
    t->idle_us = idle;
    t->busy_share = busy_share;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, tick, t);
    pthread_attr_destroy(&attr);
#ifdef __linux__
    if (rc == 0)
        pthread_setname_np(thread, "http-wasm-epoch"); /* as the Python ticker thread is named; top -H shows it */
#endif
    if (rc != 0) {
        PyMem_RawFree(t);
        PyErr_SetString(PyExc_RuntimeError, "cannot start the epoch ticker thread");
        return NULL;
    }
    Py_RETURN_NONE;
}
