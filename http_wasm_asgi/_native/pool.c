/* The native path: the instance pool's fast cases (try_acquire and release).
 *
 * Mirrors http_wasm_asgi/pool.py, which is the reference: InstancePool's try_acquire and release as C methods
 * (pool_methods): an idle instance taken from (and given back to) the end of `_idle`, as the Python methods do;
 * every other case goes to them, an instance whose memory grew past its `recycle_above` too (the reference
 * replaces it). The methods go on the subclass handed to pool_methods (NativeInstancePool, `__slots__ = ()`);
 * the class learned as "pool" keeps the Python ones, which are the fallbacks.
 */
#include "native.h"

static PyObject *pool_try_acquire_reference, *pool_release_reference; /* the "pool" class's Python methods */

/* InstancePool.try_acquire() */
static PyObject *pool_try_acquire(PyObject *pool, PyObject *unused) {
    PyObject *idle = FIELD(pool, o_pool_idle), *low = FIELD(pool, o_pool_low);
    if (idle == NULL || !PyList_CheckExact(idle) || PyList_GET_SIZE(idle) == 0 || low == NULL || !PyLong_CheckExact(low))
        return PyObject_CallOneArg(pool_try_acquire_reference, pool);
    PyObject *instance = hw_list_pop(idle);
    Py_ssize_t left = PyList_GET_SIZE(idle);
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

/* Whether a WasmInstance's linear memory reached its `recycle_above` (bytes; None: never): 1 (the reference then
 * replaces it: InstancePool._recycles), 0, or 1 for what only the reference can tell (a closed core, a value that
 * is not an int). One wasmtime call: the per-request price of giving memory back. */
static int past_recycle(PyObject *instance) {
    PyObject *limit = FIELD(instance, o_instance_recycle_above);
    if (limit == NULL || limit == Py_None)
        return 0;
    Core *core = hw_core_of(instance);
    int past = 1;
    if (PyLong_CheckExact(limit) && core != NULL && core->ctx != NULL && core->memory != NULL) {
        size_t above = PyLong_AsSize_t(limit);
        if (above == (size_t)-1 && PyErr_Occurred())
            PyErr_Clear(); /* negative or huge: the reference decides */
        else
            past = hw_memory_size(core->ctx, core->memory) >= above;
    }
    Py_XDECREF((PyObject *)core);
    return past;
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
    if (!PyObject_TypeCheck(args[0], hw_role_class[ROLE_INSTANCE]))
        goto reference; /* not a WasmInstance: the reference decides */
    PyObject *flag = FIELD(args[0], o_instance_closed);
    int closed = flag == NULL ? 1 : PyObject_IsTrue(flag);
    Py_ssize_t waiting = PyObject_Length(waiters);
    if (closed < 0 || waiting < 0)
        return NULL;
    int above = int_less(min_size, size); /* size > min_size */
    if (closed || waiting || above < 0)
        goto reference;
    int past = past_recycle(args[0]);
    if (past < 0)
        return NULL;
    if (past)
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
        return PyObject_CallMethodNoArgs(pool, a_pool_schedule_trim);
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

static PyTypeObject *native_pool_type; /* the class pool_methods equipped */

PyObject *hw_pool_take(PyObject *pool) {
    if (Py_IS_TYPE(pool, native_pool_type))
        return pool_try_acquire(pool, NULL);
    return PyObject_CallMethodNoArgs(pool, a_pool_try_acquire);
}

PyObject *hw_pool_give(PyObject *pool, PyObject *instance) {
    if (Py_IS_TYPE(pool, native_pool_type))
        return pool_release(pool, &instance, 1, NULL);
    return PyObject_CallMethodOneArg(pool, a_pool_release, instance);
}

static PyObject *discard_kwnames; /* ("discard",): the keyword of pool.release (pool.py) */

int hw_pool_discard(PyObject *pool, PyObject *instance) {
    if (a_pool_release == NULL && hw_require(ROLE(ROLE_POOL), "discarding an instance") < 0)
        return -1;
    if (discard_kwnames == NULL && (discard_kwnames = Py_BuildValue("(s)", "discard")) == NULL)
        return -1;
    PyObject *stack[3] = {pool, instance, Py_True}; /* self, the instance, then discard=True */
    PyObject *r = PyObject_VectorcallMethod(a_pool_release, stack, 2, discard_kwnames);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyMethodDef pool_defs[] = {
    {"try_acquire", (PyCFunction)pool_try_acquire, METH_NOARGS, "An idle instance (or a cheap new one), else None."},
    {"release", (PyCFunction)(void (*)(void))pool_release, METH_FASTCALL | METH_KEYWORDS,
     "Give an instance back (to the idle ones, a waiter, or closed)."},
    {NULL, NULL, 0, NULL},
};

/* pool_methods(cls) -> {name: method descriptor} of the methods above, for `cls` (a subclass of the class
 * learned as "pool") to take in place of the Python ones, which they fall back to. */
PyObject *hw_pool_methods(PyObject *self, PyObject *cls) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "pool_methods(cls): cls is not a class");
        return NULL;
    }
    if (hw_require(ROLE(ROLE_POOL) | ROLE(ROLE_INSTANCE), "pool_methods") < 0)
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)cls, hw_t_pool)) {
        PyErr_Format(PyExc_TypeError, "pool_methods: %s is not a subclass of %s (learned as \"pool\")",
                     ((PyTypeObject *)cls)->tp_name, hw_t_pool->tp_name);
        return NULL;
    }
    if (hw_check_replaces(hw_t_pool, pool_defs, "pool_methods") < 0)
        return NULL;
    PyObject *acquire = hw_python_method(hw_t_pool, a_pool_try_acquire, "pool_methods");
    PyObject *release = acquire ? hw_python_method(hw_t_pool, a_pool_release, "pool_methods") : NULL;
    if (release == NULL) {
        Py_XDECREF(acquire);
        return NULL;
    }
    Py_XSETREF(pool_try_acquire_reference, acquire);
    Py_XSETREF(pool_release_reference, release);
    Py_INCREF(cls);
    Py_XDECREF((PyObject *)native_pool_type);
    native_pool_type = (PyTypeObject *)cls;
    return hw_method_descriptors((PyTypeObject *)cls, pool_defs);
}
