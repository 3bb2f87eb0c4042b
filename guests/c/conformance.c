/* The C conformance guest: runs the checks of the conformance cases
 * (http_wasm_asgi/devkit/conformance_cases.json) from the guest side. The case comes from the request
 * header `x-httpwasm-test-id`; the verdict goes out as the response header
 * `x-conformance-result: pass` or `fail: <reason>`.
 *
 * Byte-level checks (buf_limit, count_len, NUL layout) call the hw_abi_* imports directly; everything
 * else goes through the typed library. */

#include "httpwasm.h"

/* The config every conformance guest is given (the cases' "config"). */
static const char expected_config[] = "{\"name\":\"conformance\",\"answer\":42}";

/* --- verdict ----------------------------------------------------------------------------------------- */

/* The first failed check of this request (failure.ptr == 0: none yet). */
static hw_bytes failure;
static hw_text message;

static bool failed(void) { return failure.ptr != 0; }

/* A failure message is built with fail_start, add, add_int, add_shown, then fail_end (the first one of
 * a request wins; later ones are built and dropped). */
static void fail_start(const char *what) {
    message = hw_text_start();
    hw_bytes w = {(const uint8_t *)what, 0};
    while (what[w.len]) w.len++;
    hw_text_add(&message, w);
}
static void add(hw_bytes b) { hw_text_add(&message, b); }
static void add_int(uint64_t v) { hw_text_add_u64(&message, v); }

/* Header values must stay printable: show anything else as '?', and keep it short. */
static void add_shown(hw_bytes b) {
    for (uint32_t i = 0; i < b.len && i < 80; i++) {
        uint8_t c = b.ptr[i] >= 0x20 && b.ptr[i] < 0x7f ? b.ptr[i] : '?';
        hw_text_add(&message, hw_bytes_of(&c, 1));
    }
}
static void fail_end(void) {
    hw_bytes m = hw_text_end(&message);
    if (!failed()) failure = m;
}

static void fail(const char *what) {
    fail_start(what);
    fail_end();
}

static void expect(bool ok, const char *what) {
    if (!ok) fail(what);
}

static void expect_int(uint64_t got, uint64_t want, const char *what) {
    if (got == want) return;
    fail_start(what);
    add(HW_STR(" = "));
    add_int(got);
    add(HW_STR(", want "));
    add_int(want);
    fail_end();
}

static void expect_str(hw_bytes got, hw_bytes want, const char *what) {
    if (hw_eq(got, want)) return;
    fail_start(what);
    add(HW_STR(" = '"));
    add_shown(got);
    add(HW_STR("', want '"));
    add_shown(want);
    add(HW_STR("'"));
    fail_end();
}

static const hw_bytes result_header = HW_LIT("x-conformance-result");

static void report(void) {
    if (failed()) {
        hw_text t = hw_text_start();
        hw_text_add(&t, HW_STR("fail: "));
        hw_text_add(&t, failure);
        hw_set_header(HW_RESPONSE, result_header, hw_text_end(&t));
    } else {
        hw_set_header(HW_RESPONSE, result_header, HW_STR("pass"));
    }
}

/* --- helpers -------------------------------------------------------------------------------------------- */

/* A scratch area the byte-level checks hand to the host. */
static uint8_t probe[256];

static void fill_probe(void) { __builtin_memset(probe, 0xAA, sizeof probe); }

static bool probe_untouched(uint32_t from) {
    for (uint32_t i = from; i < sizeof probe; i++)
        if (probe[i] != 0xAA) return false;
    return true;
}

#define LIT(s) HW_LIT(s)

/* get_header_values(kind, name) into the probe; checks the packed result and the exact bytes. */
static void expect_raw_values(hw_header_kind kind, hw_bytes name, uint32_t count, hw_bytes bytes) {
    fill_probe();
    uint64_t r = hw_abi_get_header_values(kind, name.ptr, name.len, probe, sizeof probe);
    expect_int(r, (uint64_t)count << 32 | bytes.len, "get_header_values count_len");
    if (failed()) return;
    expect_str(hw_bytes_of(probe, bytes.len), bytes, "get_header_values bytes");
    expect(probe_untouched(bytes.len), "get_header_values wrote past its length");
}

static void expect_values(hw_header_kind kind, hw_bytes name, const hw_bytes *want, uint32_t n) {
    hw_list values = hw_header_values(kind, name);
    expect_int(values.count, n, "value count");
    hw_bytes rest = values.bytes, got;
    for (uint32_t i = 0; i < n; i++) {
        if (!hw_list_next(&rest, &got)) {
            fail_start("missing value '");
            add_shown(want[i]);
            add(HW_STR("'"));
            return fail_end();
        }
        expect_str(got, want[i], "value");
    }
}

/* --- the cases ------------------------------------------------------------------------------------------- */

/* The case ids of the conformance cases, spelled exactly, in the order of this enum. */
enum case_id {
    GET_CONFIG_BYTES, LOG_LEVELS, ENABLE_FEATURES_REQUEST, TRAILERS_UNSUPPORTED, TRAILERS_SUPPORTED,
    GET_METHOD_GET, GET_METHOD_POST, SET_METHOD, GET_URI_ENCODED, GET_URI_ROOT, SET_URI_PATH_AND_QUERY,
    SET_URI_DROPS_QUERY, GET_PROTOCOL_VERSION, GET_PROTOCOL_VERSION_HTTP2, GET_SOURCE_ADDR, BUF_LIMIT_TOO_SMALL,
    GET_HEADER_NAMES_LOWERCASE, GET_HEADER_VALUES_SINGLE, GET_HEADER_VALUES_MULTI,
    GET_HEADER_VALUES_CASE_INSENSITIVE, GET_HEADER_VALUES_MISSING, SET_HEADER_VALUE_REQUEST,
    ADD_HEADER_VALUE_REQUEST, REMOVE_HEADER_REQUEST, SET_HEADER_VALUE_RESPONSE_BEFORE_NEXT,
    RESPONSE_HEADERS_AFTER_NEXT, READ_BODY_REQUEST, WRITE_BODY_REQUEST, READ_BODY_RESPONSE,
    WRITE_BODY_RESPONSE, GET_STATUS_CODE_RESPONSE, SET_STATUS_CODE_RESPONSE, SHORT_CIRCUIT_RESPONSE,
    SHORT_CIRCUIT_DEFAULT, REQ_CTX, N_CASES, NO_CASE = -1
};

static const hw_bytes case_ids[N_CASES] = {
    LIT("get_config/bytes"), LIT("log/levels"), LIT("enable_features/request"),
    LIT("enable_features/trailers_unsupported"), LIT("enable_features/trailers_supported"),
    LIT("get_method/get"), LIT("get_method/post"), LIT("set_method"), LIT("get_uri/encoded"),
    LIT("get_uri/root"), LIT("set_uri/path_and_query"), LIT("set_uri/drops_query"),
    LIT("get_protocol_version"), LIT("get_protocol_version/http2"), LIT("get_source_addr"),
    LIT("buf_limit/too_small"), LIT("get_header_names/lowercase"), LIT("get_header_values/single"),
    LIT("get_header_values/multi"), LIT("get_header_values/case_insensitive"),
    LIT("get_header_values/missing"), LIT("set_header_value/request"), LIT("add_header_value/request"),
    LIT("remove_header/request"), LIT("set_header_value/response_before_next"),
    LIT("response_headers/after_next"), LIT("read_body/request"), LIT("write_body/request"),
    LIT("read_body/response"), LIT("write_body/response"), LIT("get_status_code/response"),
    LIT("set_status_code/response"), LIT("short_circuit/response"), LIT("short_circuit/default"),
    LIT("req_ctx"),
};

/* Cases that buffer the response report from handle_response. */
static bool buffers_response(enum case_id c) {
    return c == RESPONSE_HEADERS_AFTER_NEXT || c == READ_BODY_RESPONSE || c == WRITE_BODY_RESPONSE ||
           c == GET_STATUS_CODE_RESPONSE || c == SET_STATUS_CODE_RESPONSE || c == REQ_CTX;
}

static void check_source_addr(hw_bytes addr) {
    hw_bytes prefix = HW_STR("127.0.0.1:");
    if (!hw_starts_with(addr, prefix)) {
        fail_start("get_source_addr = '");
        add_shown(addr);
        add(HW_STR("'"));
        return fail_end();
    }
    hw_bytes port = hw_slice(addr, prefix.len, addr.len);
    bool digits = port.len >= 1 && port.len <= 5;
    for (uint32_t i = 0; i < port.len; i++) digits = digits && port.ptr[i] >= '0' && port.ptr[i] <= '9';
    if (!digits) {
        fail_start("get_source_addr port = '");
        add_shown(port);
        add(HW_STR("'"));
        fail_end();
    }
}

static void check_header_names(void) {
    fill_probe();
    uint64_t r = hw_abi_get_header_names(0, probe, sizeof probe);
    uint32_t count = hw_high(r), len = hw_low(r);
    if (len == 0 || len > sizeof probe) {
        fail_start("get_header_names len = ");
        add_int(len);
        return fail_end();
    }
    hw_bytes written = hw_bytes_of(probe, len);
    expect(probe[len - 1] == 0, "get_header_names: last name not NUL-terminated");
    expect(probe_untouched(len), "get_header_names wrote past its length");
    uint32_t nuls = 0;
    for (uint32_t i = 0; i < len; i++) nuls += probe[i] == 0;
    expect_int(count, nuls, "get_header_names count vs NULs");
    bool a = false, b = false;
    hw_bytes rest = written, name;
    while (hw_list_next(&rest, &name)) {
        for (uint32_t i = 0; i < name.len; i++) {
            if (name.ptr[i] >= 'A' && name.ptr[i] <= 'Z') {
                fail_start("header name '");
                add_shown(name);
                add(HW_STR("' is not lowercase"));
                return fail_end();
            }
        }
        a = a || hw_eq(name, HW_STR("x-case-a"));
        b = b || hw_eq(name, HW_STR("x-case-b"));
    }
    expect(a && b, "x-case-a or x-case-b missing from get_header_names");
    /* The library's view (arena read, retry, copy) must be the same list. */
    hw_list names = hw_header_names(HW_REQUEST);
    expect_int(names.count, count, "hw_header_names count");
    expect_str(names.bytes, written, "hw_header_names bytes");
}

static void check_response_body(hw_bytes body) {
    expect(body.len > 0 && body.ptr[0] == '{', "response body does not start with '{'");
    bool found = false;
    hw_bytes key = HW_STR("\"method\"");
    for (uint32_t i = 0; i + key.len <= body.len && !found; i++) found = hw_eq(hw_slice(body, i, i + key.len), key);
    expect(found, "response body lacks \"method\"");
}

/* Read the request body to EOF in chunks of at most 5 bytes, then check it. */
static void check_request_body(void) {
    enum { LIMIT = 5 };
    uint8_t body[64], chunk[LIMIT];
    uint32_t total = 0;
    for (int calls = 0; calls < 10000; calls++) {
        uint64_t r = hw_abi_read_body(0, chunk, LIMIT);
        uint32_t len = hw_low(r);
        if (len > LIMIT) {
            fail_start("read_body returned ");
            add_int(len);
            add(HW_STR(" bytes for a limit of 5"));
            return fail_end();
        }
        for (uint32_t i = 0; i < len && total < sizeof body; i++) body[total++] = chunk[i];
        if (hw_high(r) == 1) return expect_str(hw_bytes_of(body, total), HW_STR("hello conformance body"), "request body");
        if (hw_high(r) != 0) {
            fail_start("read_body eof = ");
            add_int(hw_high(r));
            return fail_end();
        }
    }
    fail("read_body never reached eof");
}

/* --- handle_request ----------------------------------------------------------------------------------- */

static enum case_id current = NO_CASE;

static hw_next run_request(enum case_id c) {
    switch (c) {
    case GET_CONFIG_BYTES: {
        uint32_t want = sizeof expected_config - 1;
        fill_probe();
        expect_int(hw_abi_get_config(probe, 0), want, "get_config(buf, 0)");
        expect(probe_untouched(0), "get_config(buf, 0) wrote to the buffer");
        expect_int(hw_abi_get_config(probe, want - 1), want, "get_config(buf, len-1)");
        expect(probe_untouched(0), "get_config(buf, len-1) wrote to the buffer");
        uint32_t full = hw_abi_get_config(probe, sizeof probe);
        expect_int(full, want, "get_config(buf, 256)");
        if (!failed()) expect_str(hw_bytes_of(probe, full), HW_STR(expected_config), "config");
        expect(probe_untouched(full), "get_config wrote past the config");
        /* The library's copy, read on the first request, is the same. */
        expect_str(hw_config(), HW_STR(expected_config), "hw_config()");
        break;
    }
    case LOG_LEVELS:
        hw_log(HW_LOG_DEBUG, HW_STR("conformance log -1"));
        hw_log(HW_LOG_INFO, HW_STR("conformance log 0"));
        hw_log(HW_LOG_WARN, HW_STR("conformance log 1"));
        hw_log(HW_LOG_ERROR, HW_STR("conformance log 2"));
        expect_int(hw_abi_log_enabled(-1), 0, "log_enabled(-1)");
        expect_int(hw_abi_log_enabled(0), 1, "log_enabled(0)");
        expect_int(hw_abi_log_enabled(2), 1, "log_enabled(2)");
        expect_int(hw_abi_log_enabled(3), 0, "log_enabled(3)");
        expect(hw_log_enabled(HW_LOG_INFO), "hw_log_enabled(HW_LOG_INFO)");
        break;
    case ENABLE_FEATURES_REQUEST:
        expect_int(hw_enable_features(0), 0, "enable_features(0)");
        expect_int(hw_enable_features(HW_FEATURE_BUFFER_REQUEST), 1, "enable_features(1)");
        expect_int(hw_enable_features(HW_FEATURE_BUFFER_RESPONSE), 3, "then enable_features(2)");
        break;
    case TRAILERS_UNSUPPORTED:
    case TRAILERS_SUPPORTED: {
        bool supported = c == TRAILERS_SUPPORTED;
        uint32_t got = hw_enable_features(HW_FEATURE_TRAILERS);
        if (((got & HW_FEATURE_TRAILERS) != 0) != supported) {
            fail_start("enable_features(4) = ");
            add_int(got);
            add(supported ? HW_STR(" lacks the trailers bit") : HW_STR(" has the trailers bit"));
            fail_end();
        }
        expect_int(hw_abi_get_header_names(2, probe, sizeof probe), 0, "get_header_names(request trailers)");
        expect_int(hw_abi_get_header_names(3, probe, sizeof probe), 0, "get_header_names(response trailers)");
        break;
    }
    case GET_METHOD_GET: expect_str(hw_method(), HW_STR("GET"), "get_method"); break;
    case GET_METHOD_POST: expect_str(hw_method(), HW_STR("POST"), "get_method"); break;
    case SET_METHOD:
        hw_set_method(HW_STR("PUT"));
        expect_str(hw_method(), HW_STR("PUT"), "get_method after set_method");
        break;
    case GET_URI_ENCODED: expect_str(hw_uri(), HW_STR("/a%20b/c%2Fd?x=1&y=%2F"), "get_uri"); break;
    case GET_URI_ROOT: expect_str(hw_uri(), HW_STR("/"), "get_uri"); break;
    case SET_URI_PATH_AND_QUERY:
        hw_set_uri(HW_STR("/new/p%2Fq?z=9"));
        expect_str(hw_uri(), HW_STR("/new/p%2Fq?z=9"), "get_uri after set_uri");
        break;
    case SET_URI_DROPS_QUERY:
        hw_set_uri(HW_STR("/plain"));
        expect_str(hw_uri(), HW_STR("/plain"), "get_uri after set_uri");
        break;
    case GET_PROTOCOL_VERSION: expect_str(hw_protocol_version(), HW_STR("HTTP/1.1"), "get_protocol_version"); break;
    case GET_PROTOCOL_VERSION_HTTP2:
        expect_str(hw_protocol_version(), HW_STR("HTTP/2.0"), "get_protocol_version");
        break;
    case GET_SOURCE_ADDR: check_source_addr(hw_source_addr()); break;
    case BUF_LIMIT_TOO_SMALL:
        fill_probe();
        expect_int(hw_abi_get_uri(probe, 5), 11, "get_uri(buf, 5)");
        expect(probe_untouched(0), "get_uri(buf, 5) wrote to the buffer");
        expect_int(hw_abi_get_uri(probe, 0), 11, "get_uri(buf, 0)");
        expect(probe_untouched(0), "get_uri(buf, 0) wrote to the buffer");
        break;
    case GET_HEADER_NAMES_LOWERCASE: check_header_names(); break;
    case GET_HEADER_VALUES_SINGLE:
        expect_raw_values(HW_REQUEST, HW_STR("x-single"), 1, HW_STR("01234567\0"));
        break;
    case GET_HEADER_VALUES_MULTI: expect_raw_values(HW_REQUEST, HW_STR("x-multi"), 2, HW_STR("a=b\0c=d\0")); break;
    case GET_HEADER_VALUES_CASE_INSENSITIVE: expect_raw_values(HW_REQUEST, HW_STR("X-MIXED"), 1, HW_STR("v\0")); break;
    case GET_HEADER_VALUES_MISSING: expect_raw_values(HW_REQUEST, HW_STR("x-not-there"), 0, HW_STR("")); break;
    case SET_HEADER_VALUE_REQUEST: {
        hw_set_header(HW_REQUEST, HW_STR("x-set"), HW_STR("new"));
        const hw_bytes want[] = {HW_STR("new")};
        expect_values(HW_REQUEST, HW_STR("x-set"), want, 1);
        break;
    }
    case ADD_HEADER_VALUE_REQUEST: {
        hw_add_header(HW_REQUEST, HW_STR("x-add"), HW_STR("second"));
        const hw_bytes want[] = {HW_STR("first"), HW_STR("second")};
        expect_values(HW_REQUEST, HW_STR("x-add"), want, 2);
        break;
    }
    case REMOVE_HEADER_REQUEST: {
        hw_remove_header(HW_REQUEST, HW_STR("x-remove"));
        hw_bytes name = HW_STR("x-remove");
        expect_int(hw_abi_get_header_values(0, name.ptr, name.len, probe, sizeof probe), 0,
                   "get_header_values after remove");
        break;
    }
    case SET_HEADER_VALUE_RESPONSE_BEFORE_NEXT: hw_set_header(HW_RESPONSE, HW_STR("x-from-guest"), HW_STR("yes")); break;
    case READ_BODY_REQUEST:
        hw_enable_features(HW_FEATURE_BUFFER_REQUEST);
        check_request_body();
        break;
    case WRITE_BODY_REQUEST:
        hw_write_body(HW_BODY_REQUEST, HW_STR("re"));
        hw_write_body(HW_BODY_REQUEST, HW_STR("written"));
        break;
    case RESPONSE_HEADERS_AFTER_NEXT:
    case READ_BODY_RESPONSE:
    case WRITE_BODY_RESPONSE:
    case GET_STATUS_CODE_RESPONSE:
    case SET_STATUS_CODE_RESPONSE: hw_enable_features(HW_FEATURE_BUFFER_RESPONSE); break;
    case SHORT_CIRCUIT_RESPONSE:
        hw_set_status_code(401);
        hw_set_header(HW_RESPONSE, HW_STR("www-authenticate"), HW_STR("Basic"));
        hw_write_body(HW_BODY_RESPONSE, HW_STR("denied"));
        return HW_STOP;
    case SHORT_CIRCUIT_DEFAULT: return HW_STOP;
    case REQ_CTX:
        hw_enable_features(HW_FEATURE_BUFFER_RESPONSE);
        return HW_PROCEED_WITH(42);
    default: fail("case has no checks"); break;
    }
    return HW_PROCEED;
}

static hw_next on_request(void) {
    failure = hw_bytes_of(0, 0);
    current = NO_CASE;
    hw_bytes id;
    hw_header(HW_REQUEST, HW_STR("x-httpwasm-test-id"), &id);
    for (int i = 0; i < N_CASES; i++)
        if (hw_eq(id, case_ids[i])) current = (enum case_id)i;
    if (current == NO_CASE) {
        failure = HW_STR("unknown case");
        report();
        return HW_STOP;
    }
    hw_next next = run_request(current);
    if (!next.next || !buffers_response(current)) report();
    return next;
}

/* --- handle_response ---------------------------------------------------------------------------------- */

static void on_response(uint32_t ctx, bool is_error) {
    if (current == NO_CASE || !buffers_response(current)) return;
    if (is_error) fail("handle_response is_error = 1");
    if (!failed()) {
        switch (current) {
        case RESPONSE_HEADERS_AFTER_NEXT: {
            const hw_bytes type[] = {HW_STR("application/json")}, echo[] = {HW_STR("1")};
            expect_values(HW_RESPONSE, HW_STR("content-type"), type, 1);
            expect_values(HW_RESPONSE, HW_STR("x-echo"), echo, 1);
            break;
        }
        case READ_BODY_RESPONSE: check_response_body(hw_read_body_all(HW_BODY_RESPONSE)); break;
        case WRITE_BODY_RESPONSE: hw_write_body(HW_BODY_RESPONSE, HW_STR("replaced")); break;
        case GET_STATUS_CODE_RESPONSE: expect_int(hw_status_code(), 200, "get_status_code"); break;
        case SET_STATUS_CODE_RESPONSE: hw_set_status_code(418); break;
        case REQ_CTX: expect_int(ctx, 42, "handle_response req_ctx"); break;
        default: break;
        }
    }
    report();
}

HW_EXPORT_HANDLERS(on_request, on_response)
