/* The native path's module, http_wasm_asgi._native._ext: PyInit and the function table.
 *
 * Mirrors nothing by itself: each function is documented where it lives (native.h lists the files and the
 * Python modules they mirror, which are the reference). The Python side refuses a build whose VERSION is not
 * the one it was written for (a stale build) and then falls back to its own code.
 */
#include "native.h"

static PyMethodDef methods[] = {
    {"learn", hw_learn, METH_VARARGS,
     "learn(role, cls, slots, attributes): the class playing a role, with its NATIVE_SLOTS and NATIVE_ATTRIBUTES."},
    {"configure_abi", hw_configure_abi, METH_O, "configure_abi(facts): the ABI's facts (abi.NATIVE_FACTS)."},
    {"configure", hw_configure, METH_VARARGS, "Set the wasmtime entry points and the host error handler."},
    {"configure_host", hw_configure_host, METH_VARARGS,
     "configure_host((init, request, response) phases, token bytes, value bytes)."},
    {"accelerated", hw_accelerated, METH_O, "The native version of a Python helper (None when there is none)."},
    {"native_functions", hw_native_functions, METH_NOARGS, "Host functions with a native implementation."},
    {"merge_response_headers", (PyCFunction)(void (*)(void))hw_merge_response_headers, METH_FASTCALL,
     "Guest-set response headers the app does not set, then the app's."},
    {"define", hw_define, METH_VARARGS, "Define a host function on a linker through the C trampoline."},
    {"pool_methods", hw_pool_methods, METH_O, "pool_methods(cls): the instance pool's fast cases, for cls."},
    {"middleware_call", hw_middleware_call, METH_VARARGS,
     "middleware_call(cls, serve, close_retired, stages): calls of the middleware class take the native path."},
    {"flow_methods", hw_flow_methods, METH_VARARGS,
     "flow_methods(cls, trap_class, held_type, pending_type, prototypes, protocols, default_http_version, "
     "open_flow_reference, scope_for_app): the per-request methods for cls, and open_flow."},
    {"set_current", hw_set_current, METH_O, "Set the running instance of this thread; returns the previous one."},
    {"quick_calls", hw_quick_calls, METH_NOARGS, "Cooperative calls on this thread that ended in their first slice."},
    {"set_turn", hw_set_turn, METH_VARARGS, "set_turn(turn, window, long): guest seconds per event-loop turn."},
    {"start_ticker", hw_start_ticker, METH_VARARGS,
     "start_ticker(engine, interval_us, idle_us, busy_share): the epoch ticker."},
    {"slice_running", hw_slice_running, METH_O, "slice_running(delta): a Python-path slice begins (+1) or ends (-1)."},
    {"wake_ticker", hw_wake_ticker_py, METH_NOARGS, "wake_ticker(): a slice of a call that yielded before begins."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ext", "The native path of http_wasm_asgi.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__ext(void) {
    if (hw_flow_init() < 0)
        return NULL;
    if (hw_suspended == NULL && (hw_suspended = PyLong_FromLong(-1)) == NULL)
        return NULL;
    if (hw_overran == NULL && (hw_overran = PyLong_FromLong(-2)) == NULL)
        return NULL;
    if (PyType_Ready(&hw_CoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "VERSION", NATIVE_VERSION) < 0 ||
        PyModule_AddObjectRef(m, "SUSPENDED", hw_suspended) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *buckets = PyTuple_New(STATS_NBUCKETS);
    for (int i = 0; buckets != NULL && i < STATS_NBUCKETS; i++)
        PyTuple_SET_ITEM(buckets, i, PyLong_FromLongLong(hw_stats_buckets_ns[i]));
    if (buckets == NULL || PyModule_AddObject(m, "STATS_BUCKETS_NS", buckets) < 0 ||
        PyModule_AddIntConstant(m, "STATS_SIZE", STATS_SIZE) < 0) {
        Py_XDECREF(buckets);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Core", (PyObject *)&hw_CoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
