/* The native path: HttpWasmMiddleware's call (asgi/middleware.py) in the common case, end to end.
 *
 * Mirrors HttpWasmMiddleware.__call__ and serve(), which are the reference. The middleware's class gets this
 * file's call as its type's tp_call: calling the middleware lands here, while its __call__ attribute stays the
 * Python coroutine function (servers tell an ASGI 3 app by it; a subclass and an explicit __call__ run it).
 *
 * An http request whose chain (or route's chain) runs every guest on the native path gets a Serving: an
 * awaitable that opens the flow, runs the guests' handle_request, awaits the app's coroutine in its place (no
 * Python frame and no coroutine of its own) and runs their handle_response. Anything else is the reference's:
 * the call returns its coroutine as is. A request that leaves the common case half-way (a guest that did not
 * end in next at once, a failing app, a buffered response, a cancellation) goes on in serve(chain, flow, scope,
 * stage, value), started at the stage it reached, which finishes it as the reference does from there.
 */
#include "native.h"

/* Set by middleware_call */
static PyObject *reference_call; /* HttpWasmMiddleware.__call__, the Python coroutine function */
static PyObject *serve_rest;     /* serve(chain, flow, scope, stage, value): the reference from a stage on */
static PyObject *close_retired;  /* _close_retired(chain): the last request of a replaced chain closes it */
static PyObject *stage_enter, *stage_request_phase, *stage_app_failed, *stage_back, *stage_finish, *stage_raised;

enum { FRESH, APP, REST, OVER }; /* a Serving: not started; awaiting the app; awaiting serve(); finished */

typedef struct {
    PyObject_HEAD
    PyObject *chain;    /* the middleware's chain, read once: it counts the request and runs the app */
    PyObject *run;      /* the chain whose guests serve the request: `chain`, or the chain of its route */
    PyObject *scope, *receive, *send;
    PyObject *flow;     /* NULL until opened */
    PyObject *awaiting; /* the iterator awaited now: the app's coroutine (APP) or serve()'s (REST) */
    int state;
    int running;
} Serving;

static PyTypeObject ServingType;

/* ---------------------------------------------------------------- the request's count on its chain */

/* chain.active += delta */
static int count_request(PyObject *chain, Py_ssize_t delta) {
    PyObject *active = FIELD(chain, o_chain_active);
    Py_ssize_t n = active != NULL && PyLong_CheckExact(active) ? PyLong_AsSsize_t(active) : -1;
    if (n < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "the chain's count of requests is not an int");
    PyObject *now = n < 0 ? NULL : PyLong_FromSsize_t(n + delta);
    if (now == NULL)
        return -1;
    Py_XSETREF(FIELD(chain, o_chain_active), now);
    return 0;
}

/* The reference's last step: the request leaves its chain; the last one on a replaced chain closes it. */
static int leave_chain(PyObject *chain) {
    if (count_request(chain, -1) < 0)
        return -1;
    if (FIELD(chain, o_chain_retired) != Py_True || PyLong_AsSsize_t(FIELD(chain, o_chain_active)) != 0)
        return 0;
    PyObject *r = PyObject_CallOneArg(close_retired, chain);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* ---------------------------------------------------------------- handing over to serve() */

/* Go on in serve() from `stage` (with `value`): 0, or -1 when serve() could not even start. */
static int hand_over(Serving *s, PyObject *stage, PyObject *value) {
    PyObject *args[5] = {s->chain, s->flow, s->scope, stage, value};
    PyObject *rest = PyObject_Vectorcall(serve_rest, args, 5, NULL);
    if (rest == NULL) { /* (out of memory) the request at least leaves its chain's count */
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        if (count_request(s->chain, -1) < 0)
            PyErr_Clear();
        PyErr_Restore(type, exc, tb);
        return -1;
    }
    Py_XSETREF(s->awaiting, rest);
    s->state = REST;
    return 0;
}

/* Go on in serve() with the exception being raised: APP_FAILED for an Exception the app (or awaiting it) raised
 * (the reference catches those around the app), else RAISED: serve() raises it again where the reference has it. */
static int hand_over_error(Serving *s, int from_app) {
    PyObject *value = hw_take_exception();
    if (value == NULL) { /* no exception set: a bug in a callee, raised (and unwound) like any other */
        PyErr_SetString(PyExc_SystemError, "a native call failed without an exception");
        value = hw_take_exception();
    }
    int app_failed = from_app && PyErr_GivenExceptionMatches(value, PyExc_Exception);
    int rc = hand_over(s, app_failed ? stage_app_failed : stage_raised, value);
    Py_DECREF(value);
    return rc;
}

/* ---------------------------------------------------------------- the common case */

/* What `await obj` awaits: a coroutine itself, or what its __await__ gives (an iterator that is no coroutine);
 * NULL with the TypeError of `await`. */
static PyObject *awaited(PyObject *obj) {
    if (PyCoro_CheckExact(obj))
        return Py_NewRef(obj);
    PyAsyncMethods *am = Py_TYPE(obj)->tp_as_async;
    if (am == NULL || am->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyObject *it = am->am_await(obj);
    if (it != NULL && (PyCoro_CheckExact(it) || !PyIter_Check(it))) {
        PyErr_Format(PyExc_TypeError, "__await__() returned %s", PyCoro_CheckExact(it) ? "a coroutine"
                                                                                   : "non-iterator");
        Py_CLEAR(it);
    }
    return it;
}

/* Open the flow, run the guests' handle_request and start the app: 0 (awaiting the app or serve()), -1 with the
 * exception to raise (nothing left to undo). */
static int begin(Serving *s) {
    PyObject *flow = hw_open_flow(s->run, s->scope, s->receive, s->send);
    if (flow == NULL)
        return -1; /* as the reference: before the request counts on its chain */
    s->flow = flow;
    Py_CLEAR(s->receive);
    Py_CLEAR(s->send);
    if (count_request(s->chain, 1) < 0)
        return -1;
    if (!Py_IS_TYPE(flow, hw_native_flow_type)) /* a scope out of the common case: a flow of the reference's */
        return hand_over(s, stage_enter, Py_None);
    PyObject *entered = hw_flow_enter_sync_first(flow);
    if (entered == hw_overran) { /* a guest's handle_request overran: the request starts over, cooperatively */
        Py_DECREF(entered);
        PyObject *fresh = hw_open_flow(s->run, s->scope, FIELD(flow, o_flow_receive), FIELD(flow, o_flow_send));
        if (fresh == NULL)
            return hand_over_error(s, 0);
        Py_SETREF(s->flow, fresh);
        return hand_over(s, stage_enter, Py_None);
    }
    if (entered != Py_True) {
        Py_XDECREF(entered);
        return entered == NULL ? hand_over_error(s, 0) : hand_over(s, stage_request_phase, Py_None);
    }
    Py_DECREF(entered);
    PyObject *app_args = hw_flow_app_args(flow, NULL);
    if (app_args == NULL)
        return hand_over_error(s, 0);
    PyObject *app = FIELD(s->chain, o_chain_app);
    PyObject *coroutine = app != NULL ? PyObject_Vectorcall(app, &PyTuple_GET_ITEM(app_args, 0), 3, NULL) : NULL;
    Py_DECREF(app_args);
    if (coroutine == NULL && app == NULL)
        PyErr_SetString(PyExc_TypeError, "the chain has no app");
    PyObject *it = coroutine != NULL ? awaited(coroutine) : NULL;
    Py_XDECREF(coroutine);
    if (it == NULL)
        return hand_over_error(s, 1);
    s->awaiting = it;
    s->state = APP;
    return 0;
}

/* The app returned: its guests' handle_response. 1 when the request is over, 0 when serve() goes on, -1 error. */
static int after_app(Serving *s) {
    PyObject *left = hw_flow_leave(s->flow, Py_False);
    if (left != Py_True) {
        Py_XDECREF(left);
        return left == NULL ? hand_over_error(s, 0) : hand_over(s, stage_back, Py_None);
    }
    Py_DECREF(left);
    int buffered = PyObject_IsTrue(FIELD(s->flow, o_flow_buffered));
    if (buffered == 0)
        buffered = PyObject_IsTrue(FIELD(s->flow, o_flow_response_too_large));
    if (buffered)
        return buffered < 0 ? hand_over_error(s, 0) : hand_over(s, stage_finish, Py_None);
    return leave_chain(s->chain) < 0 ? -1 : 1; /* no guest is held: nothing for the reference's finally to unwind */
}

/* ---------------------------------------------------------------- the awaitable */

/* Send `arg` into (or, with `throwing`, throw the exception being raised into) what the Serving awaits. */
static PySendResult delegate(PyObject *it, PyObject *arg, int throwing, PyObject **out) {
    if (!throwing)
        return PyIter_Send(it, arg, out);
    PyObject *value = hw_take_exception(), *r;
    *out = NULL;
    if (value == NULL)
        return PYGEN_ERROR; /* nothing to throw: step's callers set it */
    if (PyErr_GivenExceptionMatches(value, PyExc_GeneratorExit)) { /* as `await` does: close what it awaits */
        r = PyObject_CallMethod(it, "close", NULL);
        if (r == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) { /* nothing to close */
            PyErr_Clear();
            r = Py_NewRef(Py_None);
        }
        if (r != NULL) { /* closed: GeneratorExit goes on from here (else what closing it raised) */
            Py_DECREF(r);
            PyErr_SetObject((PyObject *)Py_TYPE(value), value);
        }
        Py_DECREF(value);
        return PYGEN_ERROR;
    }
    r = PyObject_CallMethod(it, "throw", "O", value);
    Py_DECREF(value);
    if (r != NULL) {
        *out = r;
        return PYGEN_NEXT;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) { /* the awaited one returned */
        PyObject *stop = hw_take_exception();
        *out = stop != NULL ? PyObject_GetAttrString(stop, "value") : Py_NewRef(Py_None);
        Py_XDECREF(stop);
        return *out == NULL ? PYGEN_ERROR : PYGEN_RETURN;
    }
    return PYGEN_ERROR;
}

static void finish(Serving *s) {
    s->state = OVER;
    Py_CLEAR(s->awaiting);
    Py_CLEAR(s->flow);
    Py_CLEAR(s->receive);
    Py_CLEAR(s->send);
}

/* One step of the request: resume it with `arg` (or the exception being raised, with `throwing`) */
static PySendResult step(Serving *s, PyObject *arg, int throwing, PyObject **out) {
    *out = NULL;
    if (s->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    if (s->state == OVER || (s->state == FRESH && throwing)) {
        if (!throwing)
            PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        finish(s);
        return PYGEN_ERROR;
    }
    s->running = 1;
    PySendResult r = PYGEN_ERROR;
    if (s->state == FRESH) {
        if (begin(s) < 0)
            goto over;
        arg = Py_None;
    }
    for (;;) {
        r = delegate(s->awaiting, arg, throwing, out);
        throwing = 0;
        if (r == PYGEN_NEXT) {
            s->running = 0;
            return r;
        }
        if (s->state == REST)
            goto over;
        int rc; /* the app's coroutine ended */
        Py_CLEAR(s->awaiting);
        if (r == PYGEN_RETURN) {
            Py_CLEAR(*out);
            rc = after_app(s);
        } else {
            rc = hand_over_error(s, 1);
        }
        if (rc != 0) {
            r = rc < 0 ? PYGEN_ERROR : PYGEN_RETURN;
            *out = rc < 0 ? NULL : Py_NewRef(Py_None);
            goto over;
        }
        arg = Py_None; /* serve() starts */
    }
over:
    s->running = 0;
    finish(s);
    return r;
}

static PySendResult Serving_am_send(PyObject *self, PyObject *arg, PyObject **out) {
    return step((Serving *)self, arg, 0, out);
}

/* a generator's answer to send/__next__: the yielded value, or NULL with StopIteration (value None) */
static PyObject *yielded(PySendResult r, PyObject *out) {
    if (r == PYGEN_RETURN) {
        if (out == Py_None)
            PyErr_SetNone(PyExc_StopIteration);
        else
            PyErr_SetObject(PyExc_StopIteration, out);
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *Serving_iternext(PyObject *self) {
    PyObject *out;
    PySendResult r = step((Serving *)self, Py_None, 0, &out);
    if (r == PYGEN_RETURN) { /* tp_iternext: NULL without an exception is the end */
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *Serving_send(PyObject *self, PyObject *arg) {
    PyObject *out;
    PySendResult r = step((Serving *)self, arg, 0, &out);
    return yielded(r, out);
}

static PyObject *Serving_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : Py_None, *tb = nargs > 2 ? args[2] : Py_None;
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    } else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
    } else {
        PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException");
        return NULL;
    }
    if (PyTraceBack_Check(tb)) {
        PyObject *exc = hw_take_exception();
        if (exc == NULL)
            return NULL;
        PyException_SetTraceback(exc, tb);
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    PyObject *out;
    PySendResult r = step((Serving *)self, Py_None, 1, &out);
    return yielded(r, out);
}

static PyObject *Serving_close(PyObject *self, PyObject *unused) {
    Serving *s = (Serving *)self;
    if (s->state == FRESH || s->state == OVER) {
        finish(s);
        Py_RETURN_NONE;
    }
    PyErr_SetNone(PyExc_GeneratorExit);
    PyObject *out;
    PySendResult r = step(s, Py_None, 1, &out);
    if (r == PYGEN_NEXT) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "coroutine ignored GeneratorExit");
        return NULL;
    }
    if (r == PYGEN_RETURN) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    if (PyErr_ExceptionMatches(PyExc_GeneratorExit) || PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

/* A request dropped half-way is closed, as a coroutine is: its guests still get handle_response and give their
 * instances back. */
static void Serving_finalize(PyObject *self) {
    Serving *s = (Serving *)self;
    if (s->state != APP && s->state != REST)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = Serving_close(self, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable(self);
    Py_XDECREF(r);
    PyErr_Restore(type, value, tb);
}

static int Serving_traverse(Serving *s, visitproc visit, void *arg) {
    Py_VISIT(s->chain);
    Py_VISIT(s->run);
    Py_VISIT(s->scope);
    Py_VISIT(s->receive);
    Py_VISIT(s->send);
    Py_VISIT(s->flow);
    Py_VISIT(s->awaiting);
    return 0;
}

static int Serving_clear(Serving *s) {
    Py_CLEAR(s->chain);
    Py_CLEAR(s->run);
    Py_CLEAR(s->scope);
    Py_CLEAR(s->receive);
    Py_CLEAR(s->send);
    Py_CLEAR(s->flow);
    Py_CLEAR(s->awaiting);
    return 0;
}

static void Serving_dealloc(PyObject *self) {
    if (PyObject_CallFinalizerFromDealloc(self) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(self);
    Serving_clear((Serving *)self);
    PyObject_GC_Del(self);
}

static PyObject *Serving_await(PyObject *self) { return Py_NewRef(self); }

static PyAsyncMethods Serving_async = {.am_await = Serving_await, .am_send = Serving_am_send};

static PyMethodDef Serving_methods[] = {
    {"send", Serving_send, METH_O, "Resume the request with a value."},
    {"throw", (PyCFunction)(void (*)(void))Serving_throw, METH_FASTCALL, "Raise an exception where it waits."},
    {"close", Serving_close, METH_NOARGS, "Raise GeneratorExit where it waits."},
    {NULL, NULL, 0, NULL},
};

/* What inspect.getcoroutinestate and asyncio's task reprs read of a coroutine (there is no Python frame) */
static PyObject *Serving_running(Serving *s, void *unused) { return PyBool_FromLong(s->running); }
static PyObject *Serving_suspended(Serving *s, void *unused) {
    return PyBool_FromLong(!s->running && (s->state == APP || s->state == REST));
}
static PyObject *Serving_frame(Serving *s, void *unused) { Py_RETURN_NONE; }
static PyObject *Serving_awaiting(Serving *s, void *unused) {
    return Py_NewRef(s->awaiting != NULL ? s->awaiting : Py_None);
}

static PyGetSetDef Serving_getset[] = {
    {"cr_running", (getter)Serving_running, NULL, "Whether it runs now.", NULL},
    {"cr_suspended", (getter)Serving_suspended, NULL, "Whether it waits, started and not over.", NULL},
    {"cr_frame", (getter)Serving_frame, NULL, "None: no Python frame runs it.", NULL},
    {"cr_await", (getter)Serving_awaiting, NULL, "What it awaits: the app's coroutine, or serve()'s.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ServingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "http_wasm_asgi._native.Serving",
    .tp_doc = "One request through the middleware's chain (see asgi/middleware.py: serve)",
    .tp_basicsize = sizeof(Serving),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_FINALIZE,
    .tp_as_async = &Serving_async,
    .tp_iter = Serving_await,
    .tp_iternext = Serving_iternext,
    .tp_methods = Serving_methods,
    .tp_getset = Serving_getset,
    .tp_traverse = (traverseproc)Serving_traverse,
    .tp_clear = (inquiry)Serving_clear,
    .tp_dealloc = Serving_dealloc,
    .tp_finalize = Serving_finalize,
};

/* ---------------------------------------------------------------- the middleware's tp_call */

/* The chain serving an http request natively: `chain` itself or its route's chain (borrowed), NULL when the
 * reference serves it, Py_None when no route matches (the app alone serves it); NULL with an exception on error. */
static PyObject *native_chain(PyObject *chain, PyObject *scope, PyObject **route) {
    *route = NULL;
    PyObject *kind = PyDict_GetItemWithError(scope, hw_k_type);
    if (kind == NULL ||
        (kind != hw_k_http && (!PyUnicode_CheckExact(kind) || PyUnicode_Compare(kind, hw_k_http) != 0)))
        return NULL;
    PyObject *steps = FIELD(chain, o_chain_steps), *routes = FIELD(chain, o_chain_routes);
    PyObject *run = chain;
    if (steps == NULL || !PyTuple_CheckExact(steps))
        return NULL;
    if (PyTuple_GET_SIZE(steps) == 0) {
        if (routes == NULL || routes == Py_None)
            return NULL;
        *route = PyObject_CallMethodOneArg(routes, a_routes_match, scope);
        if (*route == NULL || *route == Py_None)
            return *route;
        run = *route;
        if (!PyObject_TypeCheck(run, hw_role_class[ROLE_CHAIN]))
            return NULL;
    }
    return FIELD(run, o_chain_open_flow) == hw_open_flow_function ? run : NULL;
}

static PyObject *middleware_tp_call(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *chain = NULL, *route = NULL, *run = NULL;
    if (PyTuple_GET_SIZE(args) == 3 && (kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0) &&
        PyDict_CheckExact(PyTuple_GET_ITEM(args, 0)) && (chain = PyObject_GetAttr(self, a_middleware_chain)) != NULL &&
        PyObject_TypeCheck(chain, hw_role_class[ROLE_CHAIN]))
        run = native_chain(chain, PyTuple_GET_ITEM(args, 0), &route);
    if (run == Py_None) { /* no route matched: the app alone, as the reference awaits it */
        PyObject *app = Py_XNewRef(FIELD(chain, o_chain_app));
        Py_DECREF(chain);
        Py_DECREF(route);
        PyObject *r = app ? PyObject_Call(app, args, kwargs) : NULL;
        Py_XDECREF(app);
        return r;
    }
    if (run == NULL) {
        Py_XDECREF(chain);
        Py_XDECREF(route);
        if (PyErr_Occurred())
            return NULL;
        PyObject *bound = PyMethod_New(reference_call, self); /* the reference's coroutine */
        PyObject *r = bound ? PyObject_Call(bound, args, kwargs) : NULL;
        Py_XDECREF(bound);
        return r;
    }
    Serving *s = PyObject_GC_New(Serving, &ServingType);
    if (s == NULL) {
        Py_DECREF(chain);
        Py_XDECREF(route);
        return NULL;
    }
    s->chain = chain;
    s->run = Py_NewRef(run);
    Py_XDECREF(route);
    s->scope = Py_NewRef(PyTuple_GET_ITEM(args, 0));
    s->receive = Py_NewRef(PyTuple_GET_ITEM(args, 1));
    s->send = Py_NewRef(PyTuple_GET_ITEM(args, 2));
    s->flow = s->awaiting = NULL;
    s->state = FRESH;
    s->running = 0;
    PyObject_GC_Track((PyObject *)s);
    return (PyObject *)s;
}

/* middleware_call(cls, serve, close_retired, stages): calls of `cls` (the learned "middleware" class, exactly)
 * take the native path; `stages` maps ENTER, REQUEST_PHASE, APP_FAILED, BACK, FINISH, RAISED to serve()'s. */
PyObject *hw_middleware_call(PyObject *self, PyObject *args) {
    PyTypeObject *cls;
    PyObject *serve, *closer, *stages;
    if (!PyArg_ParseTuple(args, "O!OOO!:middleware_call", &PyType_Type, &cls, &serve, &closer, &PyDict_Type,
                          &stages))
        return NULL;
    if (hw_require(ROLE(ROLE_MIDDLEWARE) | ROLE(ROLE_CHAIN) | ROLE(ROLE_FLOW) | ROLE(ROLE_ROUTES),
                   "middleware_call") < 0)
        return NULL;
    if (cls != hw_role_class[ROLE_MIDDLEWARE] || hw_open_flow_function == NULL || hw_native_flow_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "middleware_call: cls is not the learned middleware class, or the flow's "
                                         "methods are not made yet (flow_methods)");
        return NULL;
    }
    PyObject *name = PyUnicode_InternFromString("__call__");
    PyObject *call = name ? hw_python_method(cls, name, "middleware_call") : NULL;
    Py_XDECREF(name);
    if (call == NULL)
        return NULL;
    static const char *names[] = {"ENTER", "REQUEST_PHASE", "APP_FAILED", "BACK", "FINISH", "RAISED"};
    PyObject **vars[] = {&stage_enter, &stage_request_phase, &stage_app_failed, &stage_back, &stage_finish,
                         &stage_raised};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        PyObject *v = PyDict_GetItemString(stages, names[i]);
        if (v == NULL) {
            Py_DECREF(call);
            PyErr_Format(PyExc_TypeError, "middleware_call: no stage %s", names[i]);
            return NULL;
        }
        Py_XSETREF(*vars[i], Py_NewRef(v));
    }
    if (PyType_Ready(&ServingType) < 0) {
        Py_DECREF(call);
        return NULL;
    }
    Py_XSETREF(reference_call, call);
    Py_XSETREF(serve_rest, Py_NewRef(serve));
    Py_XSETREF(close_retired, Py_NewRef(closer));
    cls->tp_call = middleware_tp_call; /* its __call__ attribute stays the reference (see the top) */
    Py_RETURN_NONE;
}
