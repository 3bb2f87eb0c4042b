/* The native path: native host functions over the slots of the host's classes, configure_host, and
 * merge_response_headers.
 *
 * Mirrors http_wasm_asgi/host.py, which is the reference. The hottest host functions (header reads and
 * writes, status, config, method) have a native implementation over the slots of GuestHost ("host") and
 * Exchange ("exchange"). It handles only the common, valid case and otherwise *falls back* to the Python
 * function before changing anything, so the Python functions stay the single reference for semantics, errors
 * and traps. Every object's exact type is checked before use. GuestHost's begin, after_next and end are here
 * too, as the same assignments on its slots (tests run both paths).
 *
 * Slot offsets come from learn (contract.c); header kinds and count_len's shift from configure_abi.
 */
#include "native.h"

int hw_native_ready; /* configure_host and configure_abi done (and the roles learned) */
static int host_configured;
PyObject *hw_phase_init, *hw_phase_request, *hw_phase_response, *hw_zero; /* the ints GuestHost.phase takes */
static PyObject *merge_fallback; /* the Python reference of merge_response_headers (accelerated()) */

/* The native host functions run once the host is configured and the ABI's facts are known. */
void hw_update_native_ready(void) {
    hw_native_ready = host_configured && hw_abi_ready && hw_t_host != NULL && hw_t_exchange != NULL;
}

/* GuestHost.begin(exchange, features), after_next() and end(), on the slots: the same
 * assignments as host.py's methods (tests run both paths). */
void hw_host_begin(PyObject *h, PyObject *exchange, PyObject *features) {
    SET_FIELD(h, o_host_exchange, exchange);
    SET_FIELD(h, o_host_features, features);
    SET_FIELD(h, o_host_phase, hw_phase_request);
    SET_FIELD(h, o_host_request_read, hw_zero);
    SET_FIELD(h, o_host_request_written, Py_False);
    SET_FIELD(h, o_host_response_read, hw_zero);
    SET_FIELD(h, o_host_response_written, Py_False);
}

void hw_host_after_next(PyObject *h) {
    SET_FIELD(h, o_host_phase, hw_phase_response);
    SET_FIELD(h, o_host_response_written, Py_False);
    SET_FIELD(h, o_host_response_read, hw_zero);
}

void hw_host_end(PyObject *h) {
    SET_FIELD(h, o_host_exchange, Py_None);
    SET_FIELD(h, o_host_phase, hw_phase_init);
}

/* ---------------------------------------------------------------- native host functions */

enum { N_NONE = 0, N_GET_HEADER_VALUES, N_SET_HEADER_VALUE, N_ADD_HEADER_VALUE, N_REMOVE_HEADER,
       N_GET_STATUS_CODE, N_GET_CONFIG, N_GET_METHOD };

/* The ABI's names of the host functions implemented here (abi.HOST_FUNCTIONS has them all): the names of
 * these C implementations, matched against what define() is given. */
static const char *native_names[] = {"", "get_header_values", "set_header_value", "add_header_value",
                                     "remove_header", "get_status_code", "get_config", "get_method", NULL};

/* Bytes allowed in header names and values: the host's own tables (configure_host). */
static unsigned char token_char[256], value_char[256];

static inline int in_bounds(Core *c, uint64_t ptr, uint64_t len) {
    uint64_t end = ptr + len;
    if (end <= c->size)
        return 1;
    if (c->memory == NULL || c->ctx == NULL)
        return 0;
    c->size = hw_memory_size(c->ctx, c->memory); /* the guest may have grown it */
    return end <= c->size;
}

/* The Exchange slot of a header kind's headers (HeaderKind.REQUEST or RESPONSE), -1 for any other kind. */
static inline Py_ssize_t header_offset(uint32_t kind) {
    return kind == hw_kind_request ? o_ex_request_headers : kind == hw_kind_response ? o_ex_response_headers : -1;
}

/* The host object and its exchange, when there is a request and the types are the expected ones. */
static int request_state(Core *c, PyObject **ex, PyObject **host) {
    PyObject *h = c->host;
    if (h == NULL || !Py_IS_TYPE(h, hw_t_host))
        return 0;
    *host = h;
    *ex = FIELD(h, o_host_exchange);
    return *ex && PyObject_TypeCheck(*ex, hw_t_exchange);
}

static inline int name_equals(PyObject *k, const uint8_t *name, size_t len) {
    if ((size_t)PyBytes_GET_SIZE(k) != len)
        return 0;
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(k);
    for (size_t i = 0; i < len; i++)
        if (hw_lower(s[i]) != hw_lower(name[i]))
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
    hw_result(vals, (uint64_t)n);
    return DONE;
}

static int n_get_header_values(Core *c, void *vals) {
    uint32_t kind = hw_arg(vals, 0), name_ptr = hw_arg(vals, 1), name_len = hw_arg(vals, 2), buf = hw_arg(vals, 3),
             limit = hw_arg(vals, 4);
    PyObject *ex, *host;
    Py_ssize_t off = header_offset(kind);
    if (off < 0 || name_len == 0 || !request_state(c, &ex, &host) || !in_bounds(c, name_ptr, name_len))
        return FALLBACK;
    PyObject *headers = FIELD(ex, off);
    if (headers == NULL || !(PyList_CheckExact(headers) || PyTuple_CheckExact(headers)))
        return FALLBACK;
    PyObject **items = PySequence_Fast_ITEMS(headers);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    const uint8_t *name = c->base + name_ptr;
    uint64_t count = 0, total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *v;
        if (!hw_header_entry(items[i], &k, &v))
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
    hw_result(vals, (count << hw_count_shift) | total); /* count_len */
    return DONE;
}

/* set/add/remove on request or response headers before next (the common case). */
static int n_change_header(Core *c, void *vals, int which) {
    uint32_t kind = hw_arg(vals, 0), name_ptr = hw_arg(vals, 1), name_len = hw_arg(vals, 2);
    uint32_t value_ptr = which == N_REMOVE_HEADER ? 0 : hw_arg(vals, 3);
    uint32_t value_len = which == N_REMOVE_HEADER ? 0 : hw_arg(vals, 4);
    PyObject *ex, *host;
    Py_ssize_t off = header_offset(kind);
    if (off < 0 || name_len == 0 || !request_state(c, &ex, &host))
        return FALLBACK;
    PyObject *phase = FIELD(host, o_host_phase);
    if (phase != hw_phase_request) /* the very int object GuestHost.begin stores */
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
    PyObject *headers = FIELD(ex, off);
    if (headers == NULL)
        return FALLBACK;
    if (!(PyList_CheckExact(headers) || PyTuple_CheckExact(headers)))
        return FALLBACK;
    /* copy on first write: request headers are the scope's, an unwritten list is a shared () */
    int copy =
        (off == o_ex_request_headers && FIELD(ex, o_ex_headers_changed) != Py_True) || !PyList_CheckExact(headers);
    /* everything checked: from here on the change is made here */
    PyObject **items = PySequence_Fast_ITEMS(headers);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    int found = 0;
    if (which != N_ADD_HEADER_VALUE) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k, *v;
            if (!hw_header_entry(items[i], &k, &v))
                return FALLBACK;
            found |= name_equals(k, name, name_len);
        }
    }
    if (copy) {
        PyObject *list = PySequence_List(headers);
        if (list == NULL)
            return FAILED;
        Py_SETREF(FIELD(ex, off), list);
        if (off == o_ex_request_headers) {
            Py_INCREF(Py_True);
            Py_XSETREF(FIELD(ex, o_ex_headers_changed), Py_True);
        }
        headers = list;
    }
    if (found) { /* headers[:] = [h for h in headers if h.name.hw_lower() != name] */
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
        kp[i] = (char)hw_lower(name[i]);
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
    hw_result(vals, s);
    return DONE;
}

static int n_get_config(Core *c, void *vals) {
    PyObject *h = c->host;
    if (h == NULL || !Py_IS_TYPE(h, hw_t_host))
        return FALLBACK;
    PyObject *config = FIELD(h, o_host_config);
    if (config == NULL || !PyBytes_CheckExact(config))
        return FALLBACK;
    return write_limited(c, vals, PyBytes_AS_STRING(config), PyBytes_GET_SIZE(config), hw_arg(vals, 0),
                         hw_arg(vals, 1));
}

static int n_get_method(Core *c, void *vals) {
    PyObject *ex, *host;
    if (!request_state(c, &ex, &host))
        return FALLBACK;
    PyObject *method = FIELD(ex, o_ex_method);
    if (method == NULL || !PyUnicode_CheckExact(method) || !PyUnicode_IS_COMPACT_ASCII(method))
        return FALLBACK;
    return write_limited(c, vals, (const char *)PyUnicode_DATA(method), PyUnicode_GET_LENGTH(method), hw_arg(vals, 0),
                         hw_arg(vals, 1));
}

int hw_run_native(int id, Core *c, void *vals) {
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

/* The N_* of the host function `name` with a native implementation, else 0 (N_NONE). */
int hw_native_id(const char *name, size_t len) {
    for (int i = 1; native_names[i]; i++)
        if (len == strlen(native_names[i]) && memcmp(name, native_names[i], len) == 0)
            return i;
    return N_NONE;
}

static void byte_table(unsigned char *table, PyObject *allowed) {
    memset(table, 0, 256);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(allowed);
    for (Py_ssize_t i = 0; i < PyBytes_GET_SIZE(allowed); i++)
        table[p[i]] = 1;
}

/* configure_host((phase_init, phase_request, phase_response), token bytes, value bytes): the phase values
 * GuestHost uses and which bytes header names and values may hold. The classes are the ones learned as
 * "host" and "exchange"; the native host functions run once this and configure_abi are done. */
PyObject *hw_configure_host(PyObject *self, PyObject *args) {
    PyObject *pi, *pq, *pr, *tokens, *values;
    if (!PyArg_ParseTuple(args, "(O!O!O!)SS", &PyLong_Type, &pi, &PyLong_Type, &pq, &PyLong_Type, &pr, &tokens,
                          &values))
        return NULL;
    if (hw_require(ROLE(ROLE_HOST) | ROLE(ROLE_EXCHANGE), "configure_host") < 0)
        return NULL;
    host_configured = hw_native_ready = 0;
    byte_table(token_char, tokens);
    byte_table(value_char, values);
    Py_XSETREF(hw_phase_init, Py_NewRef(pi));
    Py_XSETREF(hw_phase_request, Py_NewRef(pq));
    Py_XSETREF(hw_phase_response, Py_NewRef(pr));
    if (hw_zero == NULL && (hw_zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    host_configured = 1;
    hw_update_native_ready();
    Py_RETURN_NONE;
}

/* native_functions() -> tuple of the host function names with a native implementation (when configured) */
PyObject *hw_native_functions(PyObject *self, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (int i = 1; hw_native_ready && native_names[i]; i++) {
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

/* ---------------------------------------------------------------- response header merge (host.py) */

/* merge_response_headers(guest_headers, app_headers) -> list: the guest's entries whose name the app
 * does not set (app names compared lowercased), then the app's. Anything but lists/tuples of
 * (bytes, bytes) goes to the Python reference. */
PyObject *hw_merge_response_headers(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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
        if (!hw_header_entry(a[i], &k, &v))
            goto fallback;
    for (Py_ssize_t i = 0; i < ng; i++)
        if (!hw_header_entry(g[i], &k, &v))
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
            while (c < len && hw_lower(s[c]) == n[c])
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

/* accelerated(reference) -> the native path's function of the same name (which falls back to `reference`
 * outside the common case), or None when there is none. */
PyObject *hw_accelerated(PyObject *self, PyObject *reference) {
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
