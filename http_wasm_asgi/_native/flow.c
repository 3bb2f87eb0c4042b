/* The native path: the per-request flow (enter, leave, stream, app_args) and open_flow.
 *
 * Mirrors http_wasm_asgi/asgi/flow.py, which is the reference: the flow class's enter, leave, stream and
 * app_args as C methods (flow_methods) take the same steps as the Python methods, on the slots the class
 * declares in NATIVE_SLOTS. Anything but the common case goes back to Python: enter and leave stop (leaving a
 * call's outcome in `pending`), stream and app_args call the reference. The methods go on the subclass handed
 * to flow_methods (NativeFlow, `__slots__ = ()`); the class learned as "flow" keeps the Python ones.
 *
 * Names of the Python classes come from contract.c (a_*), the ABI's facts from configure_abi.
 */
#include "native.h"

/* ASGI's own names (the ASGI specification's scope and message keys and message types; not names of this
 * project's classes, so not part of the contract): interned once, here, by hw_flow_init. call.c reads the scope's
 * type too (hw_k_type, hw_k_http). */
PyObject *hw_k_type, *hw_k_http;
static PyObject *k_status, *k_headers, *k_method, *k_raw_path, *k_query_string, *k_http_version, *k_client,
    *k_extensions, *k_response_start, *k_response_body, *k_response_trailers, *k_response_pathsend,
    *k_response_zerocopysend;
static PyObject **const asgi_keys[] = {&hw_k_type, &hw_k_http, &k_status, &k_headers, &k_method, &k_raw_path,
                                       &k_query_string, &k_http_version, &k_client, &k_extensions, &k_response_start,
                                       &k_response_body, &k_response_trailers, &k_response_pathsend,
                                       &k_response_zerocopysend};
static const char *const asgi_texts[] = {"type", "http", "status", "headers", "method", "raw_path", "query_string",
                                         "http_version", "client", "extensions", "http.response.start",
                                         "http.response.body", "http.response.trailers", "http.response.pathsend",
                                         "http.response.zerocopysend"};
static PyObject *empty_bytes;

int hw_flow_init(void) {
    for (size_t i = 0; i < sizeof asgi_keys / sizeof asgi_keys[0]; i++)
        if ((*asgi_keys[i] = PyUnicode_InternFromString(asgi_texts[i])) == NULL)
            return -1;
    return (empty_bytes = PyBytes_FromStringAndSize("", 0)) == NULL ? -1 : 0;
}

/* Set by flow_methods */
static PyObject *guest_trap;       /* errors.GuestTrap: a call's outcome, not a failure of the native path */
static PyObject *stream_reference; /* the Python stream of the "flow" class */
static PyTypeObject *held_type, *pending_type; /* Held(guest, instance, req_ctx), Pending(guest, instance, outcome) */

/* held_type / pending_type (typing.NamedTuple classes of 3 fields) of (a, b, c), built as a tuple is */
static PyObject *triple(PyTypeObject *type, PyObject *a, PyObject *b, PyObject *c) {
    PyObject *t = type->tp_alloc(type, 3);
    if (t == NULL)
        return NULL;
#if PY_VERSION_HEX >= 0x030E0000
    ((PyTupleObject *)t)->ob_hash = -1; /* tuples cache their hash from 3.14: "not computed yet" */
#endif
    PyTuple_SET_ITEM(t, 0, Py_NewRef(a));
    PyTuple_SET_ITEM(t, 1, Py_NewRef(b));
    PyTuple_SET_ITEM(t, 2, Py_NewRef(c));
    return t;
}

/* flow.pending = Pending(guest, instance, outcome); outcome stolen. 0, or -1 with an exception. */
static int set_pending(PyObject *flow, PyObject *guest, PyObject *instance, PyObject *outcome) {
    PyObject *t = outcome ? triple(pending_type, guest, instance, outcome) : NULL;
    Py_XDECREF(outcome);
    if (t == NULL)
        return -1;
    Py_XSETREF(FIELD(flow, o_flow_pending), t);
    return 0;
}

/* The exception of a call that failed, when it is a GuestTrap (its outcome); NULL, exception kept, otherwise. */
static PyObject *take_guest_trap(void) {
    return PyErr_ExceptionMatches(guest_trap) ? hw_take_exception() : NULL;
}

/* Flow.hold: the guest said next; it keeps its instance (held) until its handle_response. */
static int flow_hold(PyObject *flow, PyObject *guest, PyObject *instance, Core *core, PyObject *ctx_next) {
    PyObject *host = core->host;
    if (!Py_IS_TYPE(host, hw_t_host)) {
        PyErr_SetString(PyExc_TypeError, "enter: the instance's host is not a GuestHost");
        return -1;
    }
    int read = PyObject_IsTrue(FIELD(host, o_host_request_read));
    if (read < 0)
        return -1;
    if (read) {
        PyObject *r = PyObject_CallMethodNoArgs(host, a_host_pass_on_request_body);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    PyObject *req_ctx = PyLong_FromUnsignedLongLong(PyLong_AsUnsignedLongLongMask(ctx_next) >> hw_req_ctx_shift);
    PyObject *entry = req_ctx ? triple(held_type, guest, instance, req_ctx) : NULL;
    Py_XDECREF(req_ctx);
    if (entry == NULL || PyList_Append(FIELD(flow, o_flow_held), entry) < 0) {
        Py_XDECREF(entry);
        return -1;
    }
    Py_DECREF(entry);
    long features = PyLong_AsLong(FIELD(host, o_host_features));
    if (features == -1 && PyErr_Occurred())
        return -1;
    if (features & hw_buffer_response)
        SET_FIELD(flow, o_flow_buffered, Py_True);
    return 0;
}

/* A step of chain.steps: (guest, pool, context, threaded, reads_request_body), what the chain's constructor read
 * of each guest once. */
static int is_step(PyObject *step) {
    return PyTuple_CheckExact(step) && PyTuple_GET_SIZE(step) == 5;
}

/* The steps of the flow's chain (borrowed), NULL (no exception) when its chain is not a Chain with a tuple of them */
static PyObject *chain_steps(PyObject *flow) {
    PyObject *chain = FIELD(flow, o_flow_chain);
    PyObject *steps = chain != NULL && PyObject_TypeCheck(chain, hw_role_class[ROLE_CHAIN]) ? FIELD(chain, o_chain_steps)
                                                                                          : NULL;
    return steps != NULL && PyTuple_CheckExact(steps) ? steps : NULL;
}

/* An instance left mid-request (its handle_request overran, or it holds a request that starts over): its host
 * ends the request and its pool closes it, never to be reused. 0, or -1 with an exception. */
static int discard_instance(PyObject *pool, PyObject *instance) {
    Core *core = hw_core_of(instance);
    if (core == NULL) {
        PyErr_SetString(PyExc_TypeError, "discard: the instance has no native-path Core");
        return -1;
    }
    int rc = hw_end_request(core);
    Py_DECREF((PyObject *)core);
    return rc < 0 ? -1 : hw_pool_discard(pool, instance);
}

enum { STOPPED = 0, HELD = 1, OVERRAN = 2 };

/* One guest's handle_request on the native path (its step of chain.steps), its call run as `mode` says
 * (COOPERATIVE or SYNC_FIRST): HELD, STOPPED (before the guest, or with its outcome in pending), OVERRAN (its
 * instance discarded), -1 error. */
static int enter_guest(PyObject *flow, PyObject *step, PyObject *exchange, int mode) {
    if (!is_step(step)) {
        PyErr_SetString(PyExc_TypeError, "a chain step is not (guest, pool, context, threaded, reads_request_body)");
        return -1;
    }
    PyObject *guest = PyTuple_GET_ITEM(step, 0), *pool = PyTuple_GET_ITEM(step, 1);
    int stop = PyObject_IsTrue(PyTuple_GET_ITEM(step, 3));
    if (stop == 0 && (stop = PyObject_IsTrue(PyTuple_GET_ITEM(step, 4))) == 1)
        stop = FIELD(exchange, o_ex_request_body) == Py_None; /* its body is still to be read */
    if (stop)
        return stop < 0 ? -1 : 0;
    PyObject *instance = hw_pool_take(pool);
    if (instance == NULL || instance == Py_None) {
        Py_XDECREF(instance);
        return instance == NULL ? -1 : 0;
    }
    int rc = -1;
    PyObject *features = PyObject_GetAttr(PyTuple_GET_ITEM(step, 2), a_context_features);
    Core *core = features ? hw_core_of(instance) : NULL;
    if (core == NULL) {
        if (features != NULL)
            PyErr_SetString(PyExc_TypeError, "enter: the instance has no native-path Core");
        goto out;
    }
    PyObject *args[2] = {exchange, features};
    PyObject *outcome = hw_request_call(core, args, 2, mode);
    if (outcome == hw_overran) {
        Py_DECREF(outcome);
        rc = discard_instance(pool, instance) < 0 ? -1 : OVERRAN;
    } else if (outcome == NULL) {
        outcome = take_guest_trap();
        rc = outcome == NULL ? -1 : set_pending(flow, guest, instance, outcome);
    } else if (outcome == hw_suspended || !(PyLong_AsUnsignedLongLongMask(outcome) & hw_next_bit)) {
        rc = set_pending(flow, guest, instance, outcome);
    } else {
        rc = flow_hold(flow, guest, instance, core, outcome) < 0 ? -1 : HELD;
        Py_DECREF(outcome);
    }
out:
    Py_XDECREF((PyObject *)core);
    Py_XDECREF(features);
    Py_DECREF(instance);
    return rc;
}

/* The guests' handle_request, from the first one not held yet: HELD (all are), STOPPED, OVERRAN, -1 error. */
static int enter_guests(PyObject *flow, int mode) {
    PyObject *exchange = FIELD(flow, o_flow_exchange), *held = FIELD(flow, o_flow_held);
    if (exchange == NULL || held == NULL || !PyList_CheckExact(held) || !Py_IS_TYPE(exchange, hw_t_exchange)) {
        PyErr_SetString(PyExc_TypeError, "enter: the flow has no Exchange or held list");
        return -1;
    }
    PyObject *steps = chain_steps(flow);
    if (steps == NULL) {
        PyErr_SetString(PyExc_TypeError, "enter: the flow's chain has no tuple of steps");
        return -1;
    }
    int rc = HELD;
    while (rc == HELD && PyList_GET_SIZE(held) < PyTuple_GET_SIZE(steps))
        rc = enter_guest(flow, PyTuple_GET_ITEM(steps, PyList_GET_SIZE(held)), exchange, mode);
    return rc;
}

/* Flow.enter() -> bool */
PyObject *hw_flow_enter(PyObject *flow, PyObject *unused) {
    int rc = enter_guests(flow, COOPERATIVE);
    return rc < 0 ? NULL : PyBool_FromLong(rc == HELD);
}


/* One held guest's handle_response on the native path (entry popped already): 1 done and released, 0 its outcome
 * in pending, -1 error. */
static int leave_guest(PyObject *flow, PyObject *entry, PyObject *pool, PyObject *is_error) {
    PyObject *guest = PyTuple_GET_ITEM(entry, 0), *instance = PyTuple_GET_ITEM(entry, 1);
    Core *core = hw_core_of(instance);
    if (core == NULL) {
        PyErr_SetString(PyExc_TypeError, "leave: the instance has no native-path Core");
        return -1;
    }
    PyObject *args[2] = {PyTuple_GET_ITEM(entry, 2), is_error};
    PyObject *outcome = hw_response_call(core, args, 2, 1);
    Py_DECREF((PyObject *)core);
    if (outcome == NULL) {
        outcome = take_guest_trap();
        return outcome == NULL ? -1 : set_pending(flow, guest, instance, outcome);
    }
    if (outcome != Py_None)
        return set_pending(flow, guest, instance, outcome);
    Py_DECREF(outcome);
    PyObject *r = hw_pool_give(pool, instance);
    Py_XDECREF(r);
    return r == NULL ? -1 : 1;
}

/* The step of chain.steps of a held guest (borrowed), found by identity; NULL, no exception, when none is (a
 * held entry of another chain: its guest's attributes are read instead). */
static PyObject *step_of(PyObject *flow, PyObject *guest) {
    PyObject *steps = chain_steps(flow);
    if (steps == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(steps); i++) {
        PyObject *step = PyTuple_GET_ITEM(steps, i);
        if (is_step(step) && PyTuple_GET_ITEM(step, 0) == guest)
            return step;
    }
    return NULL;
}

/* One held entry's guest: whether its calls run on threads (1/0, -1 error) and its pool (a new reference). */
static int held_guest(PyObject *flow, PyObject *guest, PyObject **pool) {
    PyObject *step = step_of(flow, guest);
    if (step != NULL) {
        *pool = Py_NewRef(PyTuple_GET_ITEM(step, 1));
        return PyObject_IsTrue(PyTuple_GET_ITEM(step, 3));
    }
    int threaded = hw_attr_true(guest, a_guest_threaded);
    *pool = threaded == 0 ? PyObject_GetAttr(guest, a_guest_pool) : NULL;
    return threaded == 0 && *pool == NULL ? -1 : threaded;
}

/* The instances a spent flow holds, discarded (the last held first, as leave takes them). */
static int discard_held(PyObject *flow) {
    PyObject *held = FIELD(flow, o_flow_held);
    while (PyList_GET_SIZE(held)) {
        PyObject *entry = hw_list_pop(held), *pool = NULL;
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
            Py_DECREF(entry);
            PyErr_SetString(PyExc_TypeError, "discard: a held entry is not (guest, instance, req_ctx)");
            return -1;
        }
        int rc = held_guest(flow, PyTuple_GET_ITEM(entry, 0), &pool) < 0 ? -1
                 : pool != NULL ? discard_instance(pool, PyTuple_GET_ITEM(entry, 1))
                                : (PyErr_SetString(PyExc_TypeError, "discard: a held guest has no pool"), -1);
        Py_XDECREF(pool);
        Py_DECREF(entry);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* (native.h) */
PyObject *hw_flow_enter_sync_first(PyObject *flow) {
    int rc = enter_guests(flow, SYNC_FIRST);
    if (rc == OVERRAN)
        return discard_held(flow) < 0 ? NULL : Py_NewRef(hw_overran);
    return rc < 0 ? NULL : PyBool_FromLong(rc == HELD);
}

/* Flow.leave(is_error) -> bool */
PyObject *hw_flow_leave(PyObject *flow, PyObject *is_error) {
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
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
            PyErr_SetString(PyExc_TypeError, "leave: a held entry is not (guest, instance, req_ctx)");
            return NULL;
        }
        PyObject *pool = NULL;
        Py_INCREF(entry);
        int threaded = held_guest(flow, PyTuple_GET_ITEM(entry, 0), &pool);
        if (threaded) {
            Py_DECREF(entry);
            Py_XDECREF(pool);
            return threaded < 0 ? NULL : Py_NewRef(Py_False);
        }
        if (PyList_GET_SIZE(held) != last + 1 || PyList_GET_ITEM(held, last) != entry) { /* changed meanwhile */
            Py_DECREF(entry);
            Py_DECREF(pool);
            PyErr_SetString(PyExc_RuntimeError, "leave: the held list changed while its last guest was read");
            return NULL;
        }
        Py_DECREF(hw_list_pop(held)); /* the list's reference; ours goes to leave_guest */
        rc = leave_guest(flow, entry, pool, as_bool);
        Py_DECREF(entry);
        Py_DECREF(pool);
    }
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

/* Whether a message's type is `name`. Apps send the same str objects every time (their constants), so the last
 * one found equal is kept in *seen and compared by identity first. */
static int is_kind(PyObject *kind, PyObject *name, PyObject **seen) {
    if (kind == name || kind == *seen)
        return 1;
    if (!PyUnicode_CheckExact(kind) || PyUnicode_Compare(kind, name) != 0)
        return 0;
    Py_XSETREF(*seen, Py_NewRef(kind));
    return 1;
}

static PyObject *seen_body, *seen_start; /* the app's str objects last found equal to the two kinds */

/* Flow.stream(message) -> the server's send awaitable: start and body messages here, the rest by the reference */
static PyObject *flow_stream(PyObject *flow, PyObject *message) {
    PyObject *kind = PyDict_CheckExact(message) ? PyDict_GetItemWithError(message, hw_k_type) : NULL;
    PyObject *exchange = FIELD(flow, o_flow_exchange), *send = FIELD(flow, o_flow_send);
    if (kind == NULL || exchange == NULL || send == NULL || !Py_IS_TYPE(exchange, hw_t_exchange))
        goto reference;
    if (kind != seen_start && kind != k_response_start) { /* else the start, known by identity */
        if (is_kind(kind, k_response_body, &seen_body))
            return PyObject_CallOneArg(send, message);
        if (!is_kind(kind, k_response_start, &seen_start))
            goto reference;
    }
    PyObject *status = PyDict_GetItemWithError(message, k_status);
    PyObject *headers = PyDict_GetItemWithError(message, k_headers);
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
        PyObject *merged = hw_merge_response_headers(NULL, args, 2);
        Py_SETREF(message, merged ? PyDict_Copy(message) : NULL);
        if (message == NULL || PyDict_SetItem(message, k_headers, merged) < 0) {
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

/* Flow.app_args() -> (scope, receive, send) for the next handler: the send that keeps what guests may read,
 * the request body as the guests left it, and the scope unchanged when no guest changed the request (any other
 * scope is scope_for_app's to build). */
static PyObject *scope_for_app_reference;

static PyObject *app_scope(PyObject *scope, PyObject *exchange) {
    PyObject *method = PyDict_CheckExact(scope) ? PyDict_GetItemWithError(scope, k_method) : NULL;
    PyObject *ex_method = FIELD(exchange, o_ex_method);
    int same = method != NULL && ex_method != NULL && FIELD(exchange, o_ex_uri) == Py_None &&
               FIELD(exchange, o_ex_headers_changed) == Py_False && FIELD(exchange, o_ex_request_body_replaced) == Py_False;
    if (same && method != ex_method)
        same = PyUnicode_CheckExact(method) && PyUnicode_CheckExact(ex_method) && PyUnicode_Compare(method, ex_method) == 0;
    if (same) {
        PyObject *extensions = PyDict_GetItemWithError(scope, k_extensions);
        int has = extensions == NULL ? 0 : PyObject_IsTrue(extensions);
        if (has > 0) {
            int a = PySequence_Contains(extensions, k_response_pathsend);
            int b = a ? a : PySequence_Contains(extensions, k_response_zerocopysend);
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

/* chain.observes_response as 1/0, -1 with an exception */
static int chain_observes(PyObject *chain) {
    if (!PyObject_TypeCheck(chain, hw_role_class[ROLE_CHAIN]) || FIELD(chain, o_chain_observes_response) == NULL) {
        PyErr_SetString(PyExc_TypeError, "app_args: the flow's chain is not a Chain");
        return -1;
    }
    return PyObject_IsTrue(FIELD(chain, o_chain_observes_response));
}

PyObject *hw_flow_app_args(PyObject *flow, PyObject *unused) {
    PyObject *exchange = FIELD(flow, o_flow_exchange), *scope = FIELD(flow, o_flow_scope);
    PyObject *chain = FIELD(flow, o_flow_chain), *buffered = FIELD(flow, o_flow_buffered);
    if (exchange == NULL || scope == NULL || chain == NULL || buffered == NULL ||
        !Py_IS_TYPE(exchange, hw_t_exchange)) {
        PyErr_SetString(PyExc_TypeError, "app_args: the flow is not set up");
        return NULL;
    }
    PyObject *send;
    int observed = PyObject_IsTrue(buffered);
    if (observed > 0) {
        send = PyObject_GetAttr(flow, a_flow_collect);
    } else {
        if (observed == 0 && (observed = chain_observes(chain)) == 0)
            observed = PyObject_IsTrue(FIELD(exchange, o_ex_response_headers));
        send = observed < 0 ? NULL
               : observed   ? PyObject_GetAttr(flow, a_flow_stream)
                            : Py_XNewRef(FIELD(flow, o_flow_send));
    }
    PyObject *receive = FIELD(exchange, o_ex_request_body) == Py_None ? Py_XNewRef(FIELD(flow, o_flow_receive))
                                                                        : PyObject_GetAttr(flow, a_flow_replay_receive);
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

static PyMethodDef flow_defs[] = {
    {"enter", (PyCFunction)hw_flow_enter, METH_NOARGS, "handle_request of the guests whose calls end at once in next."},
    {"leave", (PyCFunction)hw_flow_leave, METH_O, "handle_response of the held guests whose calls end at once."},
    {"stream", (PyCFunction)flow_stream, METH_O, "Pass the app's response through, remembering what guests read."},
    {"app_args", (PyCFunction)hw_flow_app_args, METH_NOARGS, "(scope, receive, send) for the next handler."},
    {NULL, NULL, 0, NULL},
};

/* open_flow(chain, scope, receive, send) -> Flow: asgi/flow.py's open_flow in one call. The two objects start as
 * copies of prototypes the Python constructors made (the defaults are written once, in Python), then take what
 * this request brings. Scopes out of the common case go to the Python reference. */
static PyObject *open_flow_reference, *flow_prototype, *exchange_prototype, *protocols, *default_http_version;

/* The plain object slots of a prototype's class and its bases (their members, through the MRO): at most
 * MAX_SLOTS offsets, learned once by check_prototype, so a clone is a loop over offsets. */
#define MAX_SLOTS 64
typedef struct { Py_ssize_t n, offsets[MAX_SLOTS]; } slot_list;
static slot_list flow_slots, exchange_slots;

/* A new object of the prototype's class with each of its slots */
static PyObject *clone_slots(PyObject *prototype, const slot_list *slots) {
    PyTypeObject *type = Py_TYPE(prototype);
    PyObject *obj = type->tp_alloc(type, 0);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < slots->n; i++)
        Py_XINCREF(FIELD(obj, slots->offsets[i]) = FIELD(prototype, slots->offsets[i]));
    return obj;
}

/* A prototype fit for clone_slots: slots only, each slot set to a value its copies may share (an immutable one) but
 * for the slots `own` (offsets, -1 ended) that open_flow sets itself. Fills `slots` with its class's slots. */
typedef struct { PyObject *prototype; PyTypeObject *type; const Py_ssize_t *own; slot_list *slots; } prototype_check;

static int check_member(PyMemberDef *m, void *arg) {
    prototype_check *c = (prototype_check *)arg;
    if (m->type != T_OBJECT_EX)
        return 0;
    if (c->slots->n == MAX_SLOTS) {
        PyErr_Format(PyExc_TypeError, "the %s prototype has more than %d slots", c->type->tp_name, MAX_SLOTS);
        return -1;
    }
    c->slots->offsets[c->slots->n++] = m->offset;
    for (const Py_ssize_t *o = c->own; *o >= 0; o++)
        if (*o == m->offset)
            return 0;
    PyObject *v = FIELD(c->prototype, m->offset);
    if (v == NULL || !(v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) || PyBytes_CheckExact(v) ||
                       PyUnicode_CheckExact(v) || PyTuple_CheckExact(v) || PyFloat_CheckExact(v))) {
        PyErr_Format(PyExc_TypeError, "%s.%s starts as a value its copies cannot share", c->type->tp_name, m->name);
        return -1;
    }
    return 0;
}

static int check_prototype(PyObject *prototype, PyTypeObject *type, const Py_ssize_t *own, slot_list *slots) {
    if (!Py_IS_TYPE(prototype, type) || type->tp_dictoffset != 0 || type->tp_weaklistoffset != 0) {
        PyErr_Format(PyExc_TypeError, "the %s prototype is not a plain slotted object", type->tp_name);
        return -1;
    }
    prototype_check c = {prototype, type, own, slots};
    slots->n = 0;
    return hw_each_member(type, check_member, &c) ? -1 : 0;
}

static PyObject *new_exchange(PyObject *chain, PyObject *scope) {
    PyObject *method = PyDict_GetItemWithError(scope, k_method), *raw = PyDict_GetItemWithError(scope, k_raw_path);
    PyObject *headers = PyDict_GetItemWithError(scope, k_headers);
    if (method == NULL || headers == NULL || raw == NULL || !PyBytes_CheckExact(raw) || PyBytes_GET_SIZE(raw) == 0)
        return NULL; /* the reference decides (an error, or a path to encode) */
    PyObject *version = PyDict_GetItemWithError(scope, k_http_version);
    PyObject *protocol = PyDict_GetItemWithError(protocols, version ? version : default_http_version);
    if (protocol == NULL)
        return NULL;
    PyObject *query = PyDict_GetItemWithError(scope, k_query_string);
    int has_query = query == NULL ? 0 : PyObject_IsTrue(query);
    PyObject *client = PyDict_GetItemWithError(scope, k_client);
    PyObject *extensions = PyDict_GetItemWithError(scope, k_extensions);
    int trailers =
        extensions == NULL || extensions == Py_None ? 0 : PySequence_Contains(extensions, k_response_trailers);
    if (has_query < 0 || trailers < 0 || PyErr_Occurred())
        return NULL;
    PyObject *max_body_size = PyObject_TypeCheck(chain, hw_role_class[ROLE_CHAIN])
                                  ? Py_XNewRef(FIELD(chain, o_chain_max_body_size)) : NULL;
    if (max_body_size == NULL)
        return NULL; /* not a Chain: the reference decides */
    PyObject *ex = clone_slots(exchange_prototype, &exchange_slots);
    if (ex == NULL) {
        Py_DECREF(max_body_size);
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
    PyObject *flow = clone_slots(flow_prototype, &flow_slots);
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
                                    "A request's flow through the chain, over the Exchange of its scope."};

PyObject *hw_open_flow_function; /* the open_flow function flow_methods made (NULL before) */
PyTypeObject *hw_native_flow_type; /* the class flow_methods equipped (NULL before) */

PyObject *hw_open_flow(PyObject *chain, PyObject *scope, PyObject *receive, PyObject *send) {
    PyObject *args[4] = {chain, scope, receive, send};
    return open_flow(NULL, args, 4);
}

/* A NamedTuple class of 3 fields, for triple() */
static int check_triple(PyObject *type, const char *what) {
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) ||
        ((PyTypeObject *)type)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_Format(PyExc_TypeError, "flow_methods: %s is not a tuple class", what);
        return -1;
    }
    PyObject *fields = PyObject_GetAttrString(type, "_fields"); /* the namedtuple protocol */
    int ok = fields != NULL && PyTuple_Check(fields) && PyTuple_GET_SIZE(fields) == 3;
    Py_XDECREF(fields);
    PyErr_Clear();
    if (!ok)
        PyErr_Format(PyExc_TypeError, "flow_methods: %s is not a NamedTuple of 3 fields", what);
    return ok ? 0 : -1;
}

/* flow_methods(cls, trap_class, held_type, pending_type, (flow prototype, exchange prototype),
 * {http_version: protocol}, default_http_version, open_flow reference, scope_for_app) -> {name: method
 * descriptor} of the methods above for `cls` (a subclass of the "flow" class) to take in place of the Python
 * ones (which stream still falls back to), and "open_flow": the function. */
PyObject *hw_flow_methods(PyObject *self, PyObject *args) {
    PyTypeObject *cls;
    PyObject *trap, *held, *pending, *flow_proto, *exchange_proto, *versions, *default_version, *reference, *scoper;
    if (!PyArg_ParseTuple(args, "O!OOO(OO)O!UOO:flow_methods", &PyType_Type, &cls, &trap, &held, &pending,
                          &flow_proto, &exchange_proto, &PyDict_Type, &versions, &default_version, &reference, &scoper))
        return NULL;
    if (hw_require(ROLE(ROLE_HOST) | ROLE(ROLE_EXCHANGE) | ROLE(ROLE_FLOW) | ROLE(ROLE_GUEST) | ROLE(ROLE_CONTEXT) |
                   ROLE(ROLE_CHAIN) | ROLE(ROLE_INSTANCE) | ROLE(ROLE_POOL), "flow_methods") < 0 ||
        hw_require_abi("flow_methods") < 0)
        return NULL;
    if (!hw_native_ready) {
        PyErr_SetString(PyExc_TypeError, "flow_methods: the host is not configured (configure_host)");
        return NULL;
    }
    if (!PyType_IsSubtype(cls, hw_t_flow)) {
        PyErr_Format(PyExc_TypeError, "flow_methods: %s is not a subclass of %s (learned as \"flow\")", cls->tp_name,
                     hw_t_flow->tp_name);
        return NULL;
    }
    if (!PyType_Check(trap) || !PyType_IsSubtype((PyTypeObject *)trap, (PyTypeObject *)PyExc_BaseException)) {
        PyErr_SetString(PyExc_TypeError, "flow_methods: the trap class is not an exception");
        return NULL;
    }
    if (check_triple(held, "held_type") < 0 || check_triple(pending, "pending_type") < 0)
        return NULL;
    if (!PyCallable_Check(reference) || !PyCallable_Check(scoper)) {
        PyErr_SetString(PyExc_TypeError, "flow_methods: open_flow_reference and scope_for_app must be callable");
        return NULL;
    }
    PyObject *python_stream = hw_python_method(hw_t_flow, a_flow_stream, "flow_methods");
    if (python_stream == NULL)
        return NULL;
    if (hw_check_replaces(hw_t_flow, flow_defs, "flow_methods") < 0) {
        Py_DECREF(python_stream);
        return NULL;
    }
    const Py_ssize_t flow_own[] = {o_flow_chain, o_flow_scope, o_flow_receive, o_flow_send, o_flow_exchange,
                                   o_flow_held, -1};
    const Py_ssize_t ex_own[] = {o_ex_method, o_ex_path, o_ex_query, o_ex_request_headers, o_ex_max_body_size,
                                 o_ex_protocol, o_ex_client, o_ex_trailers_supported, -1};
    slot_list fs, es;
    if (check_prototype(flow_proto, cls, flow_own, &fs) < 0 ||
        check_prototype(exchange_proto, hw_t_exchange, ex_own, &es) < 0) {
        Py_DECREF(python_stream);
        return NULL;
    }
    flow_slots = fs;
    exchange_slots = es;
    Py_XSETREF(guest_trap, Py_NewRef(trap));
    Py_XSETREF(held_type, (PyTypeObject *)Py_NewRef(held));
    Py_XSETREF(pending_type, (PyTypeObject *)Py_NewRef(pending));
    Py_XSETREF(stream_reference, python_stream);
    Py_XSETREF(scope_for_app_reference, Py_NewRef(scoper));
    Py_XSETREF(flow_prototype, Py_NewRef(flow_proto));
    Py_XSETREF(exchange_prototype, Py_NewRef(exchange_proto));
    Py_XSETREF(protocols, Py_NewRef(versions));
    Py_XSETREF(default_http_version, Py_NewRef(default_version));
    Py_XSETREF(open_flow_reference, Py_NewRef(reference));
    PyObject *opener = PyCFunction_New(&open_flow_def, NULL);
    PyObject *out = opener ? hw_method_descriptors(cls, flow_defs) : NULL;
    if (out != NULL && PyDict_SetItemString(out, "open_flow", opener) < 0)
        Py_CLEAR(out);
    if (out != NULL) {
        Py_XSETREF(hw_open_flow_function, Py_NewRef(opener));
        Py_XSETREF(hw_native_flow_type, (PyTypeObject *)Py_NewRef(cls));
    }
    Py_XDECREF(opener);
    return out;
}
