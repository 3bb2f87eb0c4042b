/* The native path's contract with the Python classes: the needs table, learn() and configure_abi().
 *
 * Mirrors the NATIVE_SLOTS / NATIVE_ATTRIBUTES declarations of the Python classes (host.py, pool.py,
 * asgi/flow.py, guest.py, wasm/instance.py) and abi.NATIVE_FACTS; the Python is the reference.
 *
 * The needs table below is the only place where the native path writes a name of a Python class. For each
 * role it lists every slot read or written by offset (NATIVE_SLOTS: plain object slots, found through the MRO)
 * and every attribute got or method called (NATIVE_ATTRIBUTES). learn(role, cls, slots, attributes) requires
 * the declared names to be exactly the needed ones, in both directions, and then stores the slots' offsets and
 * the attribute names (interned from the strings the class declares) in the variables the other files use.
 * A function that needs a role refuses to run (TypeError) until that role was learned (hw_require).
 *
 * The ABI's facts (abi.py) come in through configure_abi(facts): exactly the keys of `facts_table`.
 */
#include "native.h"

PyTypeObject *hw_role_class[NROLES];
static const char *const role_names[NROLES] = {"host",     "exchange", "flow",       "pool",  "guest",
                                               "context",  "chain",    "instance", "middleware", "routes"};

Py_ssize_t o_host_exchange, o_host_phase, o_host_config, o_host_features, o_host_request_read,
    o_host_request_written, o_host_response_read, o_host_response_written;
Py_ssize_t o_ex_request_headers, o_ex_response_headers, o_ex_headers_changed, o_ex_status, o_ex_method, o_ex_path,
    o_ex_query, o_ex_max_body_size, o_ex_protocol, o_ex_client, o_ex_trailers_supported, o_ex_uri,
    o_ex_request_body, o_ex_request_body_replaced;
Py_ssize_t o_flow_buffered, o_flow_chain, o_flow_exchange, o_flow_held, o_flow_pending, o_flow_send, o_flow_sent,
    o_flow_started, o_flow_receive, o_flow_scope, o_flow_response_too_large;
Py_ssize_t o_pool_idle, o_pool_low, o_pool_reuse, o_pool_waiters, o_pool_max_idle, o_pool_size, o_pool_min_size,
    o_pool_trim_handle, o_pool_idle_timeout;
Py_ssize_t o_instance_recycle_above, o_instance_core;
Py_ssize_t o_chain_steps, o_chain_observes_response, o_instance_closed;
Py_ssize_t o_chain_active, o_chain_app, o_chain_retired, o_chain_open_flow, o_chain_routes, o_chain_max_body_size;

PyObject *a_host_after_next, *a_host_begin, *a_host_end, *a_host_pass_on_request_body;
PyObject *a_instance_raise_trap, *a_instance_bind_memory;
PyObject *a_guest_threaded, *a_guest_pool;
PyObject *a_context_features;
PyObject *a_middleware_chain, *a_routes_match;
PyObject *a_flow_collect, *a_flow_stream, *a_flow_replay_receive;
PyObject *a_pool_try_acquire, *a_pool_release, *a_pool_schedule_trim;

/* ---------------------------------------------------------------- the needs table */

enum { NEED_SLOT, NEED_ATTRIBUTE, NEED_METHOD }; /* read/written by offset; got (getattr); called or got as method */
typedef struct {
    int role, kind;
    const char *name;
    Py_ssize_t *offset; /* NEED_SLOT */
    PyObject **attr;    /* NEED_ATTRIBUTE, NEED_METHOD */
} need;

#define SLOT_(role, name, var) {role, NEED_SLOT, name, &var, NULL}
#define ATTR_(role, name, var) {role, NEED_ATTRIBUTE, name, NULL, &var}
#define METH_(role, name, var) {role, NEED_METHOD, name, NULL, &var}

static const need needs[] = {
    /* GuestHost (host.py): native host functions, begin/after_next/end, the flow's hold */
    SLOT_(ROLE_HOST, "exchange", o_host_exchange),
    SLOT_(ROLE_HOST, "phase", o_host_phase),
    SLOT_(ROLE_HOST, "features", o_host_features),
    SLOT_(ROLE_HOST, "request_read", o_host_request_read),
    SLOT_(ROLE_HOST, "request_written", o_host_request_written),
    SLOT_(ROLE_HOST, "response_read", o_host_response_read),
    SLOT_(ROLE_HOST, "response_written", o_host_response_written),
    SLOT_(ROLE_HOST, "config", o_host_config),
    METH_(ROLE_HOST, "begin", a_host_begin),
    METH_(ROLE_HOST, "after_next", a_host_after_next),
    METH_(ROLE_HOST, "end", a_host_end),
    METH_(ROLE_HOST, "pass_on_request_body", a_host_pass_on_request_body),
    /* Exchange (host.py): native host functions, open_flow, stream, app_args */
    SLOT_(ROLE_EXCHANGE, "request_headers", o_ex_request_headers),
    SLOT_(ROLE_EXCHANGE, "response_headers", o_ex_response_headers),
    SLOT_(ROLE_EXCHANGE, "headers_changed", o_ex_headers_changed),
    SLOT_(ROLE_EXCHANGE, "status", o_ex_status),
    SLOT_(ROLE_EXCHANGE, "method", o_ex_method),
    SLOT_(ROLE_EXCHANGE, "path", o_ex_path),
    SLOT_(ROLE_EXCHANGE, "query", o_ex_query),
    SLOT_(ROLE_EXCHANGE, "max_body_size", o_ex_max_body_size),
    SLOT_(ROLE_EXCHANGE, "protocol", o_ex_protocol),
    SLOT_(ROLE_EXCHANGE, "client", o_ex_client),
    SLOT_(ROLE_EXCHANGE, "trailers_supported", o_ex_trailers_supported),
    SLOT_(ROLE_EXCHANGE, "uri", o_ex_uri),
    SLOT_(ROLE_EXCHANGE, "request_body", o_ex_request_body),
    SLOT_(ROLE_EXCHANGE, "request_body_replaced", o_ex_request_body_replaced),
    /* the per-request flow (asgi/flow.py): enter, leave, stream, app_args, open_flow */
    SLOT_(ROLE_FLOW, "buffered", o_flow_buffered),
    SLOT_(ROLE_FLOW, "chain", o_flow_chain),
    SLOT_(ROLE_FLOW, "exchange", o_flow_exchange),
    SLOT_(ROLE_FLOW, "held", o_flow_held),
    SLOT_(ROLE_FLOW, "pending", o_flow_pending),
    SLOT_(ROLE_FLOW, "send", o_flow_send),
    SLOT_(ROLE_FLOW, "sent", o_flow_sent),
    SLOT_(ROLE_FLOW, "started", o_flow_started),
    SLOT_(ROLE_FLOW, "receive", o_flow_receive),
    SLOT_(ROLE_FLOW, "scope", o_flow_scope),
    SLOT_(ROLE_FLOW, "response_too_large", o_flow_response_too_large),
    METH_(ROLE_FLOW, "collect", a_flow_collect),
    METH_(ROLE_FLOW, "stream", a_flow_stream),
    METH_(ROLE_FLOW, "replay_receive", a_flow_replay_receive),
    /* InstancePool (pool.py): try_acquire, release; the flow takes and gives back instances */
    SLOT_(ROLE_POOL, "_idle", o_pool_idle),
    SLOT_(ROLE_POOL, "_low", o_pool_low),
    SLOT_(ROLE_POOL, "reuse", o_pool_reuse),
    SLOT_(ROLE_POOL, "_waiters", o_pool_waiters),
    SLOT_(ROLE_POOL, "max_idle", o_pool_max_idle),
    SLOT_(ROLE_POOL, "size", o_pool_size),
    SLOT_(ROLE_POOL, "min_size", o_pool_min_size),
    SLOT_(ROLE_POOL, "_trim_handle", o_pool_trim_handle),
    SLOT_(ROLE_POOL, "idle_timeout", o_pool_idle_timeout),
    METH_(ROLE_POOL, "try_acquire", a_pool_try_acquire),
    METH_(ROLE_POOL, "release", a_pool_release),
    METH_(ROLE_POOL, "_schedule_trim", a_pool_schedule_trim),
    /* Guest (guest.py): the flow's enter and leave */
    ATTR_(ROLE_GUEST, "threaded", a_guest_threaded),
    ATTR_(ROLE_GUEST, "pool", a_guest_pool),
    /* GuestContext (guest.py): the flow's enter */
    ATTR_(ROLE_CONTEXT, "features", a_context_features),
    /* Chain (asgi/flow.py): enter, app_args, open_flow; the middleware's call */
    SLOT_(ROLE_CHAIN, "steps", o_chain_steps),
    SLOT_(ROLE_CHAIN, "observes_response", o_chain_observes_response),
    SLOT_(ROLE_CHAIN, "active", o_chain_active),
    SLOT_(ROLE_CHAIN, "app", o_chain_app),
    SLOT_(ROLE_CHAIN, "retired", o_chain_retired),
    SLOT_(ROLE_CHAIN, "open_flow", o_chain_open_flow),
    SLOT_(ROLE_CHAIN, "routes", o_chain_routes),
    SLOT_(ROLE_CHAIN, "max_body_size", o_chain_max_body_size),
    /* HttpWasmMiddleware (asgi/middleware.py): its call */
    ATTR_(ROLE_MIDDLEWARE, "chain", a_middleware_chain),
    /* RouteTable (asgi/routes.py): the middleware's call picks a route's chain */
    METH_(ROLE_ROUTES, "match", a_routes_match),
    /* WasmInstance (wasm/instance.py): the Core's owner; the flow's and the pool's instances */
    METH_(ROLE_INSTANCE, "_raise_trap", a_instance_raise_trap),
    METH_(ROLE_INSTANCE, "_bind_memory_from_caller", a_instance_bind_memory),
    SLOT_(ROLE_INSTANCE, "_core", o_instance_core),
    SLOT_(ROLE_INSTANCE, "closed", o_instance_closed),
    SLOT_(ROLE_INSTANCE, "recycle_above", o_instance_recycle_above),
};
#define NNEEDS ((Py_ssize_t)(sizeof needs / sizeof needs[0]))

static const char *const kind_field[] = {"NATIVE_SLOTS", "NATIVE_ATTRIBUTES", "NATIVE_ATTRIBUTES"};
static const char *const kind_verb[] = {"reads and writes the slot", "reads", "calls"};

int hw_require(unsigned roles, const char *what) {
    for (int r = 0; r < NROLES; r++)
        if ((roles & ROLE(r)) && hw_role_class[r] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s needs the role '%s': learn(\"%s\", ...) was not called", what,
                         role_names[r], role_names[r]);
            return -1;
        }
    return 0;
}

int hw_each_member(PyTypeObject *type, int (*fn)(PyMemberDef *, void *), void *arg) {
    PyObject *mro = type->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        for (PyMemberDef *m = t->tp_members; m != NULL && m->name != NULL; m++) {
            int rc = fn(m, arg);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* The offset of the plain object slot `name` of `type`: the member descriptor attribute lookup finds first in
 * its MRO (so a subclass with __slots__ = () has its base's slots); -1 with a TypeError when it is not one. */
static Py_ssize_t slot_offset(PyTypeObject *type, PyObject *name) {
    PyObject *mro = type->tp_mro, *d = NULL;
    for (Py_ssize_t i = 0; d == NULL && mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        if (dict != NULL && (d = PyDict_GetItemWithError(dict, name)) == NULL && PyErr_Occurred())
            return -1;
    }
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%U is not a slot", type->tp_name, name);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "%s.%U is not a plain object slot", type->tp_name, name);
        return -1;
    }
    return m->offset;
}

/* The declared names (any iterable of str) as a tuple, each once; NULL with a TypeError otherwise. */
static PyObject *declared_names(PyTypeObject *cls, PyObject *declared, const char *field) {
    PyObject *names = PySequence_Tuple(declared);
    if (names == NULL) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a sequence of names", cls->tp_name, field);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_CheckExact(name)) {
            PyErr_Format(PyExc_TypeError, "%s.%s: %R is not a str", cls->tp_name, field, name);
            Py_DECREF(names);
            return NULL;
        }
        for (Py_ssize_t j = 0; j < i; j++)
            if (PyUnicode_Compare(name, PyTuple_GET_ITEM(names, j)) == 0) {
                PyErr_Format(PyExc_TypeError, "%s.%s declares '%U' twice", cls->tp_name, field, name);
                Py_DECREF(names);
                return NULL;
            }
    }
    return names;
}

/* The index in `names` of the need's name, or -1 */
static Py_ssize_t find_name(PyObject *names, const char *name) {
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(names); j++)
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(names, j), name) == 0)
            return j;
    return -1;
}

/* learn(role, cls, slots, attributes): the class playing `role`, with its NATIVE_SLOTS and NATIVE_ATTRIBUTES.
 * Checks everything before it changes anything: a refused class leaves what was learned before. */
PyObject *hw_learn(PyObject *self, PyObject *args) {
    (void)self;
    const char *role_name;
    PyTypeObject *cls;
    PyObject *slots_in, *attributes_in;
    if (!PyArg_ParseTuple(args, "sO!OO:learn", &role_name, &PyType_Type, &cls, &slots_in, &attributes_in))
        return NULL;
    int role = 0;
    while (role < NROLES && strcmp(role_names[role], role_name) != 0)
        role++;
    if (role == NROLES) {
        PyErr_Format(PyExc_TypeError, "learn: unknown role '%s' (host, exchange, flow, pool, guest, context, chain "
                     "or instance)", role_name);
        return NULL;
    }
    PyObject *declared[2] = {declared_names(cls, slots_in, "NATIVE_SLOTS"), NULL};
    if (declared[0] != NULL)
        declared[1] = declared_names(cls, attributes_in, "NATIVE_ATTRIBUTES");
    Py_ssize_t offsets[NNEEDS] = {0};
    PyObject *found[NNEEDS] = {0}; /* borrowed from declared[] */
    int ok = declared[1] != NULL;
    /* every need of the role is declared, in the right list, and is what it must be */
    for (Py_ssize_t i = 0; ok && i < NNEEDS; i++) {
        found[i] = NULL;
        if (needs[i].role != role)
            continue;
        int list = needs[i].kind == NEED_SLOT ? 0 : 1;
        Py_ssize_t j = find_name(declared[list], needs[i].name);
        if (j < 0) {
            const char *other = find_name(declared[1 - list], needs[i].name) >= 0 ? kind_field[1 - list] : NULL;
            if (other)
                PyErr_Format(PyExc_TypeError, "%s.%s: the native path %s '%s', declared in %s instead",
                             cls->tp_name, kind_field[needs[i].kind], kind_verb[needs[i].kind], needs[i].name, other);
            else
                PyErr_Format(PyExc_TypeError, "%s.%s: the native path %s '%s', not declared", cls->tp_name,
                             kind_field[needs[i].kind], kind_verb[needs[i].kind], needs[i].name);
            ok = 0;
            break;
        }
        found[i] = PyTuple_GET_ITEM(declared[list], j);
        if (needs[i].kind == NEED_SLOT) {
            ok = (offsets[i] = slot_offset(cls, found[i])) >= 0;
        } else if (needs[i].kind == NEED_METHOD) {
            int has = PyObject_HasAttr((PyObject *)cls, found[i]);
            if (!has)
                PyErr_Format(PyExc_TypeError, "%s.NATIVE_ATTRIBUTES: the native path calls '%s', which %s does not "
                             "define", cls->tp_name, needs[i].name, cls->tp_name);
            ok = has;
        }
    }
    /* every declared name is needed */
    for (int list = 0; ok && list < 2; list++)
        for (Py_ssize_t j = 0; ok && j < PyTuple_GET_SIZE(declared[list]); j++) {
            PyObject *name = PyTuple_GET_ITEM(declared[list], j);
            Py_ssize_t i = 0;
            while (i < NNEEDS && !(needs[i].role == role && (needs[i].kind == NEED_SLOT) == (list == 0) &&
                                   PyUnicode_CompareWithASCIIString(name, needs[i].name) == 0))
                i++;
            if (i == NNEEDS) {
                PyErr_Format(PyExc_TypeError, "%s.%s declares '%U', which the native path does not use",
                             cls->tp_name, kind_field[list], name);
                ok = 0;
            }
        }
    if (ok) { /* all checked: take it */
        for (Py_ssize_t i = 0; i < NNEEDS; i++) {
            if (needs[i].role != role)
                continue;
            if (needs[i].kind == NEED_SLOT) {
                *needs[i].offset = offsets[i];
            } else {
                PyObject *name = Py_NewRef(found[i]);
                PyUnicode_InternInPlace(&name);
                Py_XSETREF(*needs[i].attr, name);
            }
        }
        Py_XSETREF(hw_role_class[role], (PyTypeObject *)Py_NewRef(cls));
        if (role == ROLE_HOST || role == ROLE_EXCHANGE)
            hw_update_native_ready();
    }
    Py_XDECREF(declared[0]);
    Py_XDECREF(declared[1]);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- helpers on the learned classes */

int hw_attr_true(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

PyObject *hw_method_descriptors(PyTypeObject *cls, PyMethodDef *defs) {
    PyObject *out = PyDict_New();
    for (PyMethodDef *m = defs; out != NULL && m->ml_name != NULL; m++) {
        PyObject *descr = PyDescr_NewMethod(cls, m);
        if (descr == NULL || PyDict_SetItemString(out, m->ml_name, descr) < 0)
            Py_CLEAR(out);
        Py_XDECREF(descr);
    }
    return out;
}

PyObject *hw_python_method(PyTypeObject *cls, PyObject *name, const char *what) {
    PyObject *f = PyObject_GetAttr((PyObject *)cls, name);
    if (f != NULL && PyFunction_Check(f))
        return f;
    Py_XDECREF(f);
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "%s: %s.%U is not a Python function", what, cls->tp_name, name);
    return NULL;
}

int hw_check_replaces(PyTypeObject *cls, PyMethodDef *defs, const char *what) {
    for (PyMethodDef *m = defs; m->ml_name != NULL; m++) {
        PyObject *f = PyObject_GetAttrString((PyObject *)cls, m->ml_name);
        int is_function = f != NULL && PyFunction_Check(f);
        Py_XDECREF(f);
        PyErr_Clear();
        if (!is_function) {
            PyErr_Format(PyExc_TypeError, "%s: %s has no Python method %s for the native path to replace", what,
                         cls->tp_name, m->ml_name);
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- the ABI's facts */

int hw_abi_ready;
uint64_t hw_next_bit;
int hw_req_ctx_shift, hw_count_shift;
long hw_buffer_response;
uint32_t hw_kind_request, hw_kind_response;

int hw_require_abi(const char *what) {
    if (hw_abi_ready)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s needs the ABI's facts: configure_abi(abi.NATIVE_FACTS) was not called", what);
    return -1;
}

/* The facts configure_abi takes (abi.NATIVE_FACTS), each an int in [min, max]. */
typedef struct { const char *key; long long min, max; } fact;
enum { F_NEXT_BIT, F_REQ_CTX_SHIFT, F_COUNT_SHIFT, F_BUFFER_RESPONSE, F_KIND_REQUEST, F_KIND_RESPONSE, NFACTS };
static const fact facts_table[NFACTS] = {
    [F_NEXT_BIT] = {"next_bit", 1, LLONG_MAX},                /* handle_request's result: next */
    [F_REQ_CTX_SHIFT] = {"req_ctx_shift", 0, 63},             /* handle_request's result: req_ctx */
    [F_COUNT_SHIFT] = {"count_shift", 0, 63},                 /* count_len: the count */
    [F_BUFFER_RESPONSE] = {"buffer_response", 1, LONG_MAX},   /* Feature.BUFFER_RESPONSE */
    [F_KIND_REQUEST] = {"header_kind_request", 0, UINT32_MAX},   /* HeaderKind.REQUEST */
    [F_KIND_RESPONSE] = {"header_kind_response", 0, UINT32_MAX}, /* HeaderKind.RESPONSE */
};

/* configure_abi(facts): the ABI's facts the native path uses, from abi.NATIVE_FACTS (a mapping with exactly
 * the keys of facts_table). */
PyObject *hw_configure_abi(PyObject *self, PyObject *facts) {
    (void)self;
    long long values[NFACTS];
    if (!PyMapping_Check(facts)) {
        PyErr_SetString(PyExc_TypeError, "configure_abi(facts): facts is not a mapping");
        return NULL;
    }
    PyObject *keys = PyMapping_Keys(facts);
    if (keys == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        int f = 0;
        while (f < NFACTS && !(PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, facts_table[f].key) == 0))
            f++;
        if (f == NFACTS) {
            PyErr_Format(PyExc_TypeError, "configure_abi: %R is not a fact the native path uses", key);
            Py_DECREF(keys);
            return NULL;
        }
    }
    Py_DECREF(keys);
    for (int f = 0; f < NFACTS; f++) {
        PyObject *v = PyMapping_GetItemString(facts, facts_table[f].key);
        if (v == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError))
                return NULL;
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "configure_abi: the fact '%s' is missing", facts_table[f].key);
            return NULL;
        }
        int overflow = 0;
        values[f] = PyLong_Check(v) ? PyLong_AsLongLongAndOverflow(v, &overflow) : -1;
        int is_int = PyLong_Check(v);
        Py_DECREF(v);
        if (!is_int) {
            PyErr_Format(PyExc_TypeError, "configure_abi: the fact '%s' is not an int", facts_table[f].key);
            return NULL;
        }
        if (overflow || (values[f] == -1 && PyErr_Occurred()) || values[f] < facts_table[f].min ||
            values[f] > facts_table[f].max) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "configure_abi: the fact '%s' is out of range", facts_table[f].key);
            return NULL;
        }
    }
    if (values[F_KIND_REQUEST] == values[F_KIND_RESPONSE]) {
        PyErr_SetString(PyExc_ValueError, "configure_abi: the request and response header kinds are the same");
        return NULL;
    }
    hw_next_bit = (uint64_t)values[F_NEXT_BIT];
    hw_req_ctx_shift = (int)values[F_REQ_CTX_SHIFT];
    hw_count_shift = (int)values[F_COUNT_SHIFT];
    hw_buffer_response = (long)values[F_BUFFER_RESPONSE];
    hw_kind_request = (uint32_t)values[F_KIND_REQUEST];
    hw_kind_response = (uint32_t)values[F_KIND_RESPONSE];
    hw_abi_ready = 1;
    hw_update_native_ready();
    Py_RETURN_NONE;
}
