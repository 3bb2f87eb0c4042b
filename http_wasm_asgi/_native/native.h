/* The native path of http_wasm_asgi: what its files share.
 *
 * The native path (the extension http_wasm_asgi._native._ext) is optional: every part of it mirrors a Python
 * module, and the Python is the reference (semantics, errors, traps). Each file says which module it mirrors:
 *
 *   core.c      the Core type: one instance's calls, slices and clock        (wasm/calls.py)
 *   link.c      the host-function trampoline, define, configure, the ticker  (wasm/instance.py's ctypes path)
 *   host.c      native host functions, configure_host, merge_response_headers (host.py)
 *   flow.c      the per-request flow and open_flow                          (asgi/flow.py)
 *   call.c      the middleware's call: the common request, end to end      (asgi/middleware.py)
 *   pool.c      the instance pool's fast cases                              (pool.py)
 *   contract.c  the needs table, learn and configure_abi                    (NATIVE_SLOTS / NATIVE_ATTRIBUTES, abi.py)
 *   module.c    PyInit and the module's function table
 *
 * The contract: every name of a Python class the native path uses (a slot it reads or writes by offset, an
 * attribute it gets or a method it calls) is written once, in contract.c's needs table, per role. The Python
 * classes declare the same names (NATIVE_SLOTS, NATIVE_ATTRIBUTES) and hand them to learn(), which refuses any
 * difference. The ABI's facts (bits, shifts, header kinds) come from abi.py through configure_abi(); none is
 * restated here.
 */
#ifndef HTTP_WASM_ASGI_NATIVE_H
#define HTTP_WASM_ASGI_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

/* Per-thread state of the call path. The module is a shared object, so plain _Thread_local takes the general
 * dynamic TLS model: a call into the dynamic linker (__tls_get_addr) at each access, ~30 per guest per request.
 * initial-exec makes each access a load at a fixed offset from the thread pointer; the few bytes come from the
 * static TLS block glibc keeps spare for modules loaded later (were it full, the import fails and the Python path
 * serves). Other C libraries need not keep such room: they get the general model. */
#if defined(__GNUC__) && defined(__ELF__) && defined(__GLIBC__)
#define HW_THREAD_LOCAL _Thread_local __attribute__((tls_model("initial-exec")))
#else
#define HW_THREAD_LOCAL _Thread_local
#endif

#if defined(__GNUC__)
#pragma GCC visibility push(hidden) /* shared between the files, not exported: no GOT/PLT on the hot paths */
#endif

#define NATIVE_VERSION 21 /* bump with every change of what the Python calls (runtime checks VERSION) */

/* ---------------------------------------------------------------- wasmtime (link.c: configure) */

typedef void *(*call_async_fn)(void *ctx, const void *func, const void *args, size_t nargs, void *results,
                               size_t nresults, void **trap, void **err);
typedef void *(*call_unchecked_fn)(void *ctx, const void *func, void *args_and_results, size_t n, void **trap);
typedef void (*error_delete_fn)(void *err);
typedef void *(*instantiate_async_fn)(const void *pre, void *ctx, void *instance, void **trap, void **err);
typedef unsigned char (*future_poll_fn)(void *future);
typedef void (*future_delete_fn)(void *future);
typedef void (*yield_update_fn)(void *ctx, uint64_t delta);
typedef void (*set_deadline_fn)(void *ctx, uint64_t ticks);
typedef void *(*trap_new_fn)(const char *msg, size_t len);
typedef void (*increment_epoch_fn)(void *engine);
typedef size_t (*memory_size_fn)(const void *ctx, const void *memory);

extern call_async_fn hw_call_async;
extern call_unchecked_fn hw_call_unchecked;
extern error_delete_fn hw_error_delete;
extern instantiate_async_fn hw_instantiate_async;
extern future_poll_fn hw_poll;
extern future_delete_fn hw_delete;
extern yield_update_fn hw_yield_update;
extern set_deadline_fn hw_set_deadline;
extern trap_new_fn hw_trap_new;
extern increment_epoch_fn hw_increment_epoch;
extern memory_size_fn hw_memory_size;

#define SLOT 16 /* sizeof(wasmtime_val_raw_t): host function arguments */
#define MAX_PARAMS 8
#define NEXPORTS 4
#define INSTANTIATE NEXPORTS /* the "export index" of instantiation (the start section) */
#define WASMTIME_I32 0
#define WASMTIME_I64 1

/* wasmtime_val_t: a kind byte, then a 24-byte union at offset 8 (the runtime's check_binding checks the size) */
typedef struct {
    uint8_t kind;
    uint8_t pad[7];
    union { int32_t i32; int64_t i64; uint8_t raw[24]; } of;
} val_t;

/* ---------------------------------------------------------------- call counters (core.c) */

/* Call counters of one guest (CallStats.counts, shared by its instances): per phase (0 handle_request,
 * 1 handle_response) [calls, nanoseconds, one count per bucket of STATS_BUCKETS_NS and +Inf], then short
 * circuits. Plain increments under the GIL; read by the metrics collector at scrape time. */
#define STATS_NBUCKETS 16
extern const long long hw_stats_buckets_ns[STATS_NBUCKETS];
#define STATS_STRIDE (2 + STATS_NBUCKETS + 1)
#define STATS_SHORT (2 * STATS_STRIDE)
#define STATS_OVERRUNS (STATS_SHORT + 1)   /* handle_request calls that ran past their synchronous first try */
#define STATS_SYNC_AFTER (STATS_SHORT + 2) /* no synchronous try before this hw_now_ns() (see sync_call) */
#define STATS_OVERRAN_AT (STATS_SHORT + 3) /* 1 + the handle_request calls ended at the last overrun; 0: none yet */
#define STATS_SIZE (STATS_SHORT + 4)

/* ---------------------------------------------------------------- the Core (core.c) */

enum { AFTER_NONE, AFTER_RESULT, AFTER_REQUEST, AFTER_RESPONSE }; /* what completing a call returns/does */
enum { CALL_DONE = 0, CALL_SUSPENDED = 1, CALL_OVERRAN = 2, CALL_FAILED = -1 };
/* How a call runs (the `cooperative` argument of hw_request_call / hw_response_call):
 * RUN_TO_END   slice after slice until it ends;
 * COOPERATIVE  its first slice, then CALL_SUSPENDED if it has not ended (the event loop resumes it);
 * SYNC_FIRST   handle_request only: as one synchronous call (no fiber, no future); one that runs past its
 *              first slice is stopped there (CALL_OVERRAN: its instance is spent). The caller runs the request
 *              again, cooperatively; a guest whose tries overrun often makes COOPERATIVE calls for 10 s.
 * handle_response of an instance whose sync_response is set runs as one synchronous call in any mode: its
 * guest's code cannot loop (wasm/snapshot/bounded.py), so it ends on its own, without a turn to wait for. */
enum { RUN_TO_END = 0, COOPERATIVE = 1, SYNC_FIRST = 2 };

typedef struct {
    PyObject_HEAD
    void *ctx;                /* wasmtime_context_t*; NULL once closed */
    void *funcs[NEXPORTS];    /* wasmtime_func_t* of handle_request, handle_response, _initialize, _start */
    val_t args[2], results[1];/* of the running call: kept unchanged while its future lives */
    void *future;             /* the running call's wasmtime_call_future_t, NULL between calls */
    void *trap, *err;         /* what the last failed call left (taken by take_trap) */
    int index, after;         /* the running call: export index, what completing it does */
    int timed_out;            /* the last call ran out of time (no trap object: it was cancelled) */
    int yielded;              /* the running call was suspended at least once (its slices wake the ticker) */
    long long budget_ns;      /* call_timeout */
    long long start_ns, own_ns, others0; /* the running call's clock (see slice) */
    const void *memory;       /* wasmtime_memory_t* (kept alive by the owner) */
    uint8_t *base;            /* memory base: fixed (memory_may_move = false) */
    size_t size;              /* a lower bound of the memory size: memory only grows */
    int release_gil;
    int sync_response;        /* handle_response's code cannot loop: it is one synchronous call (sync_call) */
    int trap_status;
    PyObject *owner;          /* the runtime's WasmInstance (role "instance") */
    PyObject *host;           /* what Python host functions get first (role "host") */
    PyObject *store;          /* the wasmtime.Store: outlives any running call (cancelled before it goes) */
    uint64_t *stats;          /* the guest's call counters (STATS_SIZE), NULL: not counted */
    Py_buffer stats_view;     /* holds the counters' buffer while stats is set */
} Core;

extern PyTypeObject hw_CoreType;
extern HW_THREAD_LOCAL Core *hw_current; /* the instance whose guest code runs on this thread */
extern HW_THREAD_LOCAL int hw_holds_gil; /* the running guest call kept the GIL */
extern PyObject *hw_suspended;         /* SUSPENDED: a cooperative call that did not end in its first slice */
extern PyObject *hw_overran;           /* a SYNC_FIRST handle_request that ran past its first slice (CALL_OVERRAN) */

PyObject *hw_request_call(Core *self, PyObject *const *args, Py_ssize_t nargs, int cooperative);
PyObject *hw_response_call(Core *self, PyObject *const *args, Py_ssize_t nargs, int cooperative);
int hw_end_request(Core *self); /* host.end(): 0, or -1 with an exception */
PyObject *hw_set_current(PyObject *self, PyObject *arg);
PyObject *hw_quick_calls(PyObject *self, PyObject *unused);
PyObject *hw_set_turn(PyObject *self, PyObject *args);

static inline long long hw_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A host function's i32 argument i, and its (single) result, in wasmtime's raw value slots */
static inline uint32_t hw_arg(void *vals, int i) {
    uint32_t v;
    memcpy(&v, (char *)vals + SLOT * i, sizeof v);
    return v;
}

static inline void hw_result(void *vals, uint64_t v) { memcpy(vals, &v, sizeof v); }

/* The exception being raised, taken (cleared) as one normalized object that carries its traceback; NULL when
 * none is. */
static inline PyObject *hw_take_exception(void) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* ---------------------------------------------------------------- slots by offset */

#define FIELD(obj, off) (*(PyObject **)((char *)(obj) + (off)))
#define SET_FIELD(obj, off, value) Py_XSETREF(FIELD(obj, off), Py_NewRef(value))

/* ---------------------------------------------------------------- the contract (contract.c) */

/* The roles of the Python classes the native path works on (learn's first argument). */
enum { ROLE_HOST, ROLE_EXCHANGE, ROLE_FLOW, ROLE_POOL, ROLE_GUEST, ROLE_CONTEXT, ROLE_CHAIN, ROLE_INSTANCE,
       ROLE_MIDDLEWARE, ROLE_ROUTES, NROLES };
#define ROLE(r) (1u << (r))

/* The learned class of each role (NULL until learned) */
extern PyTypeObject *hw_role_class[NROLES];
#define hw_t_host hw_role_class[ROLE_HOST]
#define hw_t_exchange hw_role_class[ROLE_EXCHANGE]
#define hw_t_flow hw_role_class[ROLE_FLOW]
#define hw_t_pool hw_role_class[ROLE_POOL]

/* 0 when every role of `roles` (ROLE() bits) was learned; else -1 with a TypeError saying that `what` needs it. */
int hw_require(unsigned roles, const char *what);

/* Slot offsets, set by learn from the class's members (contract.c's needs table names them). */
extern Py_ssize_t o_host_exchange, o_host_phase, o_host_config, o_host_features, o_host_request_read,
    o_host_request_written, o_host_response_read, o_host_response_written;
extern Py_ssize_t o_ex_request_headers, o_ex_response_headers, o_ex_headers_changed, o_ex_status, o_ex_method,
    o_ex_path, o_ex_query, o_ex_max_body_size, o_ex_protocol, o_ex_client, o_ex_trailers_supported, o_ex_uri,
    o_ex_request_body, o_ex_request_body_replaced;
extern Py_ssize_t o_flow_buffered, o_flow_chain, o_flow_exchange, o_flow_held, o_flow_pending, o_flow_send,
    o_flow_sent, o_flow_started, o_flow_receive, o_flow_scope, o_flow_response_too_large;
extern Py_ssize_t o_pool_idle, o_pool_low, o_pool_reuse, o_pool_waiters, o_pool_max_idle, o_pool_size,
    o_pool_min_size, o_pool_trim_handle, o_pool_idle_timeout;
extern Py_ssize_t o_instance_recycle_above, o_instance_core;
extern Py_ssize_t o_chain_steps, o_chain_observes_response, o_instance_closed;
extern Py_ssize_t o_chain_active, o_chain_app, o_chain_retired, o_chain_open_flow, o_chain_routes,
    o_chain_max_body_size;

/* Attribute and method names, interned from the strings the classes declare (NULL until their role is learned). */
extern PyObject *a_host_after_next, *a_host_begin, *a_host_end, *a_host_pass_on_request_body;
extern PyObject *a_instance_raise_trap, *a_instance_bind_memory;
extern PyObject *a_guest_threaded, *a_guest_pool;
extern PyObject *a_context_features;
extern PyObject *a_middleware_chain, *a_routes_match;
extern PyObject *a_flow_collect, *a_flow_stream, *a_flow_replay_receive;
extern PyObject *a_pool_try_acquire, *a_pool_release, *a_pool_schedule_trim;

/* ABI facts from abi.NATIVE_FACTS (configure_abi); hw_abi_ready is 0 until then. */
extern int hw_abi_ready;
extern uint64_t hw_next_bit;          /* handle_request's result: the next flag */
extern int hw_req_ctx_shift;          /* handle_request's result: where req_ctx starts */
extern int hw_count_shift;            /* count_len: where the count starts */
extern long hw_buffer_response;       /* Feature.BUFFER_RESPONSE */
extern uint32_t hw_kind_request, hw_kind_response; /* HeaderKind.REQUEST, HeaderKind.RESPONSE */
int hw_require_abi(const char *what);

/* getattr(obj, name) as a truth value: 1, 0, or -1 with an exception */
int hw_attr_true(PyObject *obj, PyObject *name);
/* {name: method descriptor} of `defs` for `cls` */
PyObject *hw_method_descriptors(PyTypeObject *cls, PyMethodDef *defs);
/* The Python function `name` of `cls` (through its MRO) that a native method of the same name replaces; a new
 * reference, or NULL with a TypeError saying `what` needs it. */
PyObject *hw_python_method(PyTypeObject *cls, PyObject *name, const char *what);
/* 0 when each method of `defs` replaces a Python function of `cls` (the reference it falls back to or mirrors);
 * else -1 with a TypeError naming `what`. */
int hw_check_replaces(PyTypeObject *cls, PyMethodDef *defs, const char *what);
/* Call each member of `type` and its bases (its MRO): fn(member, arg); stops at and returns the first nonzero. */
int hw_each_member(PyTypeObject *type, int (*fn)(PyMemberDef *, void *), void *arg);

PyObject *hw_learn(PyObject *self, PyObject *args);
PyObject *hw_configure_abi(PyObject *self, PyObject *facts);

/* ---------------------------------------------------------------- host (host.c) */

extern int hw_native_ready; /* configure_host and configure_abi done: native host functions may run */
void hw_update_native_ready(void); /* after configure_host, configure_abi or learning "host"/"exchange" */
extern PyObject *hw_phase_init, *hw_phase_request, *hw_phase_response, *hw_zero;

void hw_host_begin(PyObject *h, PyObject *exchange, PyObject *features);
void hw_host_after_next(PyObject *h);
void hw_host_end(PyObject *h);
int hw_native_id(const char *name, size_t len); /* the N_* of a host function with a native version, else 0 */
int hw_run_native(int id, Core *c, void *vals); /* DONE, FALLBACK or FAILED */
enum { DONE = 0, FALLBACK = 1, FAILED = -1 };

PyObject *hw_configure_host(PyObject *self, PyObject *args);
PyObject *hw_native_functions(PyObject *self, PyObject *unused);
PyObject *hw_merge_response_headers(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *hw_accelerated(PyObject *self, PyObject *reference);

static inline unsigned char hw_lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* A header entry the native path understands: an exact 2-tuple of exact bytes. */
static inline int hw_header_entry(PyObject *item, PyObject **k, PyObject **v) {
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
        return 0;
    *k = PyTuple_GET_ITEM(item, 0);
    *v = PyTuple_GET_ITEM(item, 1);
    return PyBytes_CheckExact(*k) && PyBytes_CheckExact(*v);
}

/* ---------------------------------------------------------------- link, flow, pool */

PyObject *hw_configure(PyObject *self, PyObject *args);
PyObject *hw_define(PyObject *self, PyObject *args);
PyObject *hw_start_ticker(PyObject *self, PyObject *args);
PyObject *hw_slice_running(PyObject *self, PyObject *delta);
PyObject *hw_wake_ticker_py(PyObject *self, PyObject *unused);
/* link.c, the epoch ticker: guest slices being polled now (atomic); a slice of a call that yielded before begins */
extern int hw_slices_running;
void hw_wake_ticker(void);
PyObject *hw_flow_methods(PyObject *self, PyObject *args);
/* flow.c for call.c: open_flow and the NativeFlow methods, called directly */
extern PyObject *hw_open_flow_function;    /* the open_flow function flow_methods made (NULL before) */
extern PyTypeObject *hw_native_flow_type; /* the class flow_methods equipped (NULL before) */
PyObject *hw_open_flow(PyObject *chain, PyObject *scope, PyObject *receive, PyObject *send);
PyObject *hw_flow_enter(PyObject *flow, PyObject *unused);
/* enter with SYNC_FIRST calls: Py_True / Py_False as enter, NULL on error, or hw_overran (a new reference) when a
 * guest's handle_request overran: every instance the flow held is then discarded, the flow is spent. */
PyObject *hw_flow_enter_sync_first(PyObject *flow);
PyObject *hw_flow_app_args(PyObject *flow, PyObject *unused);
PyObject *hw_flow_leave(PyObject *flow, PyObject *is_error);
PyObject *hw_middleware_call(PyObject *self, PyObject *args); /* call.c */
PyObject *hw_pool_methods(PyObject *self, PyObject *cls);
/* pool.try_acquire() and pool.release(instance): the native methods called directly when `pool` is of the class
 * pool_methods equipped (exactly), else through the method lookup. */
PyObject *hw_pool_take(PyObject *pool);
PyObject *hw_pool_give(PyObject *pool, PyObject *instance);
/* pool.release(instance, discard=True): the instance is closed, never reused. 0, or -1 with an exception. */
int hw_pool_discard(PyObject *pool, PyObject *instance);

/* list.pop() of a non-empty exact list, as a new reference: its capacity stays for the next append (as a pop
 * that does not shrink it), with no call into the generic slice assignment. */
static inline PyObject *hw_list_pop(PyObject *list) {
    Py_ssize_t last = PyList_GET_SIZE(list) - 1;
    PyObject *item = PyList_GET_ITEM(list, last);
    PyList_SET_ITEM(list, last, NULL);
    Py_SET_SIZE(list, last);
    return item;
}

/* The native-path Core of a WasmInstance (its `_core` slot), a new reference; NULL, no exception, for anything
 * else. */
static inline Core *hw_core_of(PyObject *instance) {
    if (hw_role_class[ROLE_INSTANCE] == NULL || !PyObject_TypeCheck(instance, hw_role_class[ROLE_INSTANCE]))
        return NULL;
    PyObject *core = FIELD(instance, o_instance_core);
    return core != NULL && Py_IS_TYPE(core, &hw_CoreType) ? (Core *)Py_NewRef(core) : NULL;
}
int hw_flow_init(void); /* interns ASGI's keys (PyInit) */
extern PyObject *hw_k_type, *hw_k_http; /* flow.c: ASGI's "type" key and its "http" value, interned */

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
