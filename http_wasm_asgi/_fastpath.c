/* Optional accelerator for http_wasm_asgi.runtime: the hot calls into and out of wasmtime.
 *
 * The runtime works without it (through ctypes); with it, a guest call costs a C call
 * instead of a ctypes call (no argument objects, no GIL release/re-acquire), and each
 * host function is entered through a C trampoline that calls the Python host function
 * with plain ints. The wasmtime entry points are not linked here: the runtime passes
 * their addresses (from the wasmtime package's own shared library) to configure().
 *
 * Because guest calls keep the GIL, the epoch ticker that enforces the CPU limit runs
 * as a native thread (start_ticker), not as a Python thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

typedef void *(*call_unchecked_fn)(void *ctx, const void *func, void *vals, size_t n, void **trap);
typedef void (*set_deadline_fn)(void *ctx, uint64_t ticks);
typedef void *(*trap_new_fn)(const char *msg, size_t len);
typedef void (*increment_epoch_fn)(void *engine);
typedef void *(*trampoline_fn)(void *env, void *caller, void *vals, size_t n);
typedef void (*finalizer_fn)(void *env);
typedef void *(*define_fn)(void *linker, const char *module, size_t module_len, const char *name,
                           size_t name_len, const void *functype, trampoline_fn cb, void *env,
                           finalizer_fn finalizer);

static call_unchecked_fn p_call;
static set_deadline_fn p_set_deadline;
static trap_new_fn p_trap_new;
static increment_epoch_fn p_increment_epoch;

#define SLOT 16 /* sizeof(wasmtime_val_raw_t) */
#define MAX_PARAMS 8

typedef struct {
    PyObject *fn;
    int nparams;
    int nresults;
} host_env;

static void *addr(PyObject *o) { return PyLong_AsVoidPtr(o); }

static PyObject *configure(PyObject *self, PyObject *args) {
    unsigned long long call, deadline, trap_new, increment;
    if (!PyArg_ParseTuple(args, "KKKK", &call, &deadline, &trap_new, &increment))
        return NULL;
    p_call = (call_unchecked_fn)(uintptr_t)call;
    p_set_deadline = (set_deadline_fn)(uintptr_t)deadline;
    p_trap_new = (trap_new_fn)(uintptr_t)trap_new;
    p_increment_epoch = (increment_epoch_fn)(uintptr_t)increment;
    Py_RETURN_NONE;
}

/* call(ctx, func, vals, trap_out, err_out, deadline_ticks, release_gil) -> int | None
 * The i64 in the first slot on success; None after a trap or error (written to the outs).
 * release_gil: let other Python threads run during the call (guests called from a worker thread). */
static PyObject *call(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "call() takes 7 arguments");
        return NULL;
    }
    int release = PyObject_IsTrue(args[6]);
    void *ctx = addr(args[0]);
    void *func = addr(args[1]);
    uint64_t *vals = (uint64_t *)addr(args[2]);
    void **trap_out = (void **)addr(args[3]);
    void **err_out = (void **)addr(args[4]);
    unsigned long long ticks = PyLong_AsUnsignedLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    p_set_deadline(ctx, ticks);
    void *trap = NULL;
    void *err;
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        err = p_call(ctx, func, vals, 2, &trap);
        Py_END_ALLOW_THREADS
    } else {
        err = p_call(ctx, func, vals, 2, &trap);
    }
    if (err || trap) {
        *trap_out = trap;
        *err_out = err;
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLongLong(vals[0]);
}

static void *trampoline(void *env_, void *caller, void *vals, size_t n) {
    host_env *env = (host_env *)env_;
    PyGILState_STATE gil = PyGILState_Ensure();
    void *trap = NULL;
    PyObject *argv[MAX_PARAMS + 1];
    int count = 0;
    argv[count++] = PyLong_FromVoidPtr(caller);
    for (int i = 0; i < env->nparams; i++) {
        uint32_t v;
        memcpy(&v, (char *)vals + SLOT * i, sizeof v);
        argv[count++] = PyLong_FromUnsignedLong(v);
    }
    PyObject *result = PyObject_Vectorcall(env->fn, argv, count, NULL);
    for (int i = 0; i < count; i++)
        Py_XDECREF(argv[i]);
    if (result == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *text = value ? PyObject_Str(value) : NULL;
        const char *msg = "host function failed";
        Py_ssize_t len = (Py_ssize_t)strlen(msg);
        if (text) {
            const char *utf8 = PyUnicode_AsUTF8AndSize(text, &len);
            if (utf8)
                msg = utf8;
            else {
                PyErr_Clear();
                len = (Py_ssize_t)strlen(msg);
            }
        }
        trap = p_trap_new(msg, (size_t)len);
        Py_XDECREF(text);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    } else {
        if (env->nresults) {
            uint64_t out = PyLong_AsUnsignedLongLongMask(result);
            if (PyErr_Occurred()) {
                PyErr_Clear();
                out = 0;
            }
            memcpy(vals, &out, sizeof out);
        }
        Py_DECREF(result);
    }
    PyGILState_Release(gil);
    return trap;
}

static void finalize(void *env_) {
    host_env *env = (host_env *)env_;
    if (!Py_IsInitialized()) /* interpreter gone: nothing to release */
        return;
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_XDECREF(env->fn);
    PyGILState_Release(gil);
    PyMem_RawFree(env);
}

/* define(define_fn, linker, module, name, functype, fn, nparams, nresults) -> error pointer (0 = ok) */
static PyObject *define(PyObject *self, PyObject *args) {
    unsigned long long define_addr, linker, functype;
    const char *module, *name;
    Py_ssize_t module_len, name_len;
    PyObject *fn;
    int nparams, nresults;
    if (!PyArg_ParseTuple(args, "KKy#y#KOii", &define_addr, &linker, &module, &module_len, &name, &name_len,
                          &functype, &fn, &nparams, &nresults))
        return NULL;
    if (nparams < 0 || nparams > MAX_PARAMS) {
        PyErr_SetString(PyExc_ValueError, "too many parameters");
        return NULL;
    }
    host_env *env = PyMem_RawMalloc(sizeof(host_env));
    if (!env)
        return PyErr_NoMemory();
    Py_INCREF(fn);
    env->fn = fn;
    env->nparams = nparams;
    env->nresults = nresults;
    void *err = ((define_fn)(uintptr_t)define_addr)((void *)(uintptr_t)linker, module, (size_t)module_len, name,
                                                   (size_t)name_len, (void *)(uintptr_t)functype, trampoline,
                                                   env, finalize);
    return PyLong_FromVoidPtr(err);
}

typedef struct {
    void *engine;
    long interval_us;
} ticker_args;

static void *tick(void *arg) {
    ticker_args *t = (ticker_args *)arg;
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
    {"configure", configure, METH_VARARGS, "Set the wasmtime entry points."},
    {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL, "Call a guest export (unchecked)."},
    {"define", define, METH_VARARGS, "Define a host function on a linker through the C trampoline."},
    {"start_ticker", start_ticker, METH_VARARGS, "Start the native epoch ticker."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
