/* httpwasm.h: a small typed library for writing http-wasm guests in C, header only, no libc.
 *
 * A guest is one C file that includes this header and exports its handlers with
 * HW_EXPORT_HANDLERS:
 *
 *     #include "httpwasm.h"
 *     static hw_next on_request(void) { hw_set_header(HW_RESPONSE, HW_STR("x-hello"), HW_STR("world"));
 *                                       return HW_PROCEED; }
 *     HW_EXPORT_HANDLERS(on_request, 0)
 *
 * Build: `python -m ziglang cc --target=wasm32-freestanding -O2 -nostdlib -Wl,--no-entry guest.c`
 * (guests/c/build_lang.py has the exact flags).
 *
 * Strings are `hw_bytes` (pointer and length, not NUL-terminated); HW_STR makes one from a literal.
 *
 * Memory: there is no malloc. Values read from the host are copied into a per-request arena (a bump
 * region above __heap_base, grown with memory.grow) that is reset at the start of every
 * handle_request; the bytes this library returns stay valid until then, so also in handle_response
 * of the same request. The config is read once per instance, on the first request, and lives below
 * the arena's floor for the instance's lifetime.
 *
 * Reading a field: the host is handed all the free space of the arena (at least 2 KiB); when it
 * answers with a bigger length (nothing was written), the arena grows to exactly that length and
 * the call is retried once. A host that answers bigger again is broken: the guest traps.
 */
#ifndef HTTPWASM_H
#define HTTPWASM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --- the raw host functions, exactly as the ABI declares them ------------------------------------- */

#define HW_IMPORT(name) __attribute__((import_module("http_handler"), import_name(#name)))

HW_IMPORT(enable_features) uint32_t hw_abi_enable_features(uint32_t features);
HW_IMPORT(get_config) uint32_t hw_abi_get_config(uint8_t *buf, uint32_t buf_limit);
HW_IMPORT(log_enabled) uint32_t hw_abi_log_enabled(int32_t level);
HW_IMPORT(log) void hw_abi_log(int32_t level, const uint8_t *message, uint32_t message_len);
HW_IMPORT(get_header_names) uint64_t hw_abi_get_header_names(uint32_t kind, uint8_t *buf, uint32_t buf_limit);
HW_IMPORT(get_header_values) uint64_t hw_abi_get_header_values(uint32_t kind, const uint8_t *name,
                                                               uint32_t name_len, uint8_t *buf, uint32_t buf_limit);
HW_IMPORT(set_header_value) void hw_abi_set_header_value(uint32_t kind, const uint8_t *name, uint32_t name_len,
                                                          const uint8_t *value, uint32_t value_len);
HW_IMPORT(add_header_value) void hw_abi_add_header_value(uint32_t kind, const uint8_t *name, uint32_t name_len,
                                                          const uint8_t *value, uint32_t value_len);
HW_IMPORT(remove_header) void hw_abi_remove_header(uint32_t kind, const uint8_t *name, uint32_t name_len);
HW_IMPORT(read_body) uint64_t hw_abi_read_body(uint32_t kind, uint8_t *buf, uint32_t buf_limit);
HW_IMPORT(write_body) void hw_abi_write_body(uint32_t kind, const uint8_t *body, uint32_t body_len);
HW_IMPORT(get_method) uint32_t hw_abi_get_method(uint8_t *buf, uint32_t buf_limit);
HW_IMPORT(set_method) void hw_abi_set_method(const uint8_t *method, uint32_t method_len);
HW_IMPORT(get_uri) uint32_t hw_abi_get_uri(uint8_t *buf, uint32_t buf_limit);
HW_IMPORT(set_uri) void hw_abi_set_uri(const uint8_t *uri, uint32_t uri_len);
HW_IMPORT(get_protocol_version) uint32_t hw_abi_get_protocol_version(uint8_t *buf, uint32_t buf_limit);
HW_IMPORT(get_source_addr) uint32_t hw_abi_get_source_addr(uint8_t *buf, uint32_t buf_limit);
HW_IMPORT(get_status_code) uint32_t hw_abi_get_status_code(void);
HW_IMPORT(set_status_code) void hw_abi_set_status_code(uint32_t status_code);

/* --- types ------------------------------------------------------------------------------------------ */

/* Feature bits for hw_enable_features. */
#define HW_FEATURE_BUFFER_REQUEST 1u
#define HW_FEATURE_BUFFER_RESPONSE 2u
#define HW_FEATURE_TRAILERS 4u

typedef enum { HW_REQUEST = 0, HW_RESPONSE = 1, HW_REQUEST_TRAILERS = 2, HW_RESPONSE_TRAILERS = 3 } hw_header_kind;
typedef enum { HW_BODY_REQUEST = 0, HW_BODY_RESPONSE = 1 } hw_body_kind;
typedef enum { HW_LOG_DEBUG = -1, HW_LOG_INFO = 0, HW_LOG_WARN = 1, HW_LOG_ERROR = 2, HW_LOG_NONE = 3 } hw_log_level;

/* Bytes: a pointer and a length. */
typedef struct {
    const uint8_t *ptr;
    uint32_t len;
} hw_bytes;

#define HW_STR(literal) ((hw_bytes){(const uint8_t *)(literal), sizeof(literal) - 1})
/* The same as an initializer, for static tables: `static const hw_bytes names[] = {HW_LIT("a")};` */
#define HW_LIT(literal) {(const uint8_t *)(literal), sizeof(literal) - 1}

/* A NUL-terminated sequence as the host writes it ("a\0b\0"): walk it with hw_list_next. */
typedef struct {
    uint32_t count;
    hw_bytes bytes;
} hw_list;

/* What handle_request answers: go on to the next handler (handle_response gets ctx), or stop. */
typedef struct {
    bool next;
    uint32_t ctx;
} hw_next;

#define HW_PROCEED ((hw_next){true, 0})
#define HW_STOP ((hw_next){false, 0})
#define HW_PROCEED_WITH(ctx) ((hw_next){true, (ctx)})

static inline uint32_t hw_high(uint64_t v) { return (uint32_t)(v >> 32); }
static inline uint32_t hw_low(uint64_t v) { return (uint32_t)v; }

/* Any failed check traps: the host turns a trap into an error response. */
#define HW_TRAP() __builtin_trap()

/* --- bytes ------------------------------------------------------------------------------------------- */

static inline hw_bytes hw_bytes_of(const void *ptr, uint32_t len) { return (hw_bytes){(const uint8_t *)ptr, len}; }

static inline bool hw_eq(hw_bytes a, hw_bytes b) {
    if (a.len != b.len) return false;
    for (uint32_t i = 0; i < a.len; i++)
        if (a.ptr[i] != b.ptr[i]) return false;
    return true;
}

static inline bool hw_starts_with(hw_bytes s, hw_bytes prefix) {
    return s.len >= prefix.len && hw_eq(hw_bytes_of(s.ptr, prefix.len), prefix);
}

static inline hw_bytes hw_slice(hw_bytes s, uint32_t from, uint32_t to) { return hw_bytes_of(s.ptr + from, to - from); }

/* Index of the first `c` in `s`, or -1. */
static inline int32_t hw_index(hw_bytes s, uint8_t c) {
    for (uint32_t i = 0; i < s.len; i++)
        if (s.ptr[i] == c) return (int32_t)i;
    return -1;
}

static inline bool hw_is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* `s` without leading and trailing spaces, tabs, CR and LF. */
static inline hw_bytes hw_trim(hw_bytes s) {
    while (s.len && hw_is_space(s.ptr[0])) s.ptr++, s.len--;
    while (s.len && hw_is_space(s.ptr[s.len - 1])) s.len--;
    return s;
}

/* Split off the first word of `*s` (at spaces and tabs); `*s` becomes the rest, unstripped. */
static inline hw_bytes hw_next_word(hw_bytes *s) {
    hw_bytes t = hw_trim(*s);
    uint32_t end = 0;
    while (end < t.len && t.ptr[end] != ' ' && t.ptr[end] != '\t') end++;
    *s = hw_slice(t, end, t.len);
    return hw_slice(t, 0, end);
}

/* Compare without returning early on the first differing byte (for secrets). */
static inline bool hw_same_secret(hw_bytes a, hw_bytes b) {
    if (a.len != b.len) return false;
    uint8_t diff = 0;
    for (uint32_t i = 0; i < a.len; i++) diff |= a.ptr[i] ^ b.ptr[i];
    return diff == 0;
}

/* The next item of a NUL-terminated list into `*item`; false at the end. Start with `rest = list.bytes`. */
static inline bool hw_list_next(hw_bytes *rest, hw_bytes *item) {
    int32_t end = hw_index(*rest, 0);
    if (end < 0) return false;
    *item = hw_slice(*rest, 0, (uint32_t)end);
    *rest = hw_slice(*rest, (uint32_t)end + 1, rest->len);
    return true;
}

/* The first item of a list (empty when there is none): use `list.count` to tell "" from nothing. */
static inline hw_bytes hw_list_first(hw_list list) {
    hw_bytes rest = list.bytes, item = {0, 0};
    hw_list_next(&rest, &item);
    return item;
}

/* --- memory: the per-request arena -------------------------------------------------------------------- */

extern unsigned char __heap_base;

#define HW_PAGE 65536u
#define HW_MIN_READ 2048u

/* [hw__floor, hw__top) is this request's, [hw__top, hw__end) is free, hw__end is the end of memory. */
static uintptr_t hw__floor, hw__top, hw__end;
static hw_bytes hw__config;
static bool hw__config_read;

static inline uintptr_t hw__align8(uintptr_t n) { return (n + 7) & ~(uintptr_t)7; }

/* Make at least `room` bytes free above the arena's top (grows linear memory, or traps). */
static void hw__ensure(uint32_t room) {
    if (hw__end == 0) {
        hw__floor = hw__top = hw__align8((uintptr_t)&__heap_base);
        hw__end = __builtin_wasm_memory_size(0) * HW_PAGE;
    }
    if (hw__end - hw__top < room) {
        uint32_t pages = (room - (hw__end - hw__top) + HW_PAGE - 1) / HW_PAGE;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) HW_TRAP();
        hw__end += pages * HW_PAGE;
    }
}

/* `len` bytes from the request arena. */
static inline uint8_t *hw_alloc(uint32_t len) {
    hw__ensure(len);
    uint8_t *p = (uint8_t *)hw__top;
    hw__top += hw__align8(len);
    return p;
}

/* Copy `b` into the request arena. */
static inline hw_bytes hw_dupe(hw_bytes b) {
    uint8_t *p = hw_alloc(b.len);
    __builtin_memcpy(p, b.ptr, b.len);
    return hw_bytes_of(p, b.len);
}

/* Call a reader with the arena's free space, growing it and retrying once when the value does not
 * fit; the value stays in the arena. `kind`/`name` are passed to the readers that take them. */
typedef uint64_t (*hw__reader)(uint32_t kind, hw_bytes name, uint8_t *buf, uint32_t limit);

static hw_list hw__fetch(hw__reader read, uint32_t kind, hw_bytes name) {
    hw__ensure(HW_MIN_READ);
    uint32_t room = hw__end - hw__top;
    uint64_t r = read(kind, name, (uint8_t *)hw__top, room);
    if (hw_low(r) > room) {
        hw__ensure(hw_low(r));
        room = hw__end - hw__top;
        r = read(kind, name, (uint8_t *)hw__top, room);
        if (hw_low(r) > room) HW_TRAP();
    }
    hw_list out = {hw_high(r), hw_bytes_of((const uint8_t *)hw__top, hw_low(r))};
    hw__top += hw__align8(hw_low(r));
    return out;
}

static uint64_t hw__read_config(uint32_t k, hw_bytes n, uint8_t *b, uint32_t l) { (void)k, (void)n; return hw_abi_get_config(b, l); }
static uint64_t hw__read_method(uint32_t k, hw_bytes n, uint8_t *b, uint32_t l) { (void)k, (void)n; return hw_abi_get_method(b, l); }
static uint64_t hw__read_uri(uint32_t k, hw_bytes n, uint8_t *b, uint32_t l) { (void)k, (void)n; return hw_abi_get_uri(b, l); }
static uint64_t hw__read_protocol(uint32_t k, hw_bytes n, uint8_t *b, uint32_t l) {
    (void)k, (void)n;
    return hw_abi_get_protocol_version(b, l);
}
static uint64_t hw__read_source(uint32_t k, hw_bytes n, uint8_t *b, uint32_t l) {
    (void)k, (void)n;
    return hw_abi_get_source_addr(b, l);
}
static uint64_t hw__read_names(uint32_t k, hw_bytes n, uint8_t *b, uint32_t l) {
    (void)n;
    return hw_abi_get_header_names(k, b, l);
}
static uint64_t hw__read_values(uint32_t k, hw_bytes n, uint8_t *b, uint32_t l) {
    return hw_abi_get_header_values(k, n.ptr, n.len, b, l);
}

/* A string built in the request arena: hw_text_start, hw_text_add*, hw_text_end. Nothing else may
 * allocate between start and end (the text grows in place at the arena's top). */
typedef struct {
    uint32_t len;
} hw_text;

static inline hw_text hw_text_start(void) {
    hw__ensure(0);
    return (hw_text){0};
}

static inline void hw_text_add(hw_text *t, hw_bytes b) {
    hw__ensure(t->len + b.len);
    __builtin_memcpy((uint8_t *)hw__top + t->len, b.ptr, b.len);
    t->len += b.len;
}

static inline void hw_text_add_u64(hw_text *t, uint64_t v) {
    uint8_t digits[20];
    uint32_t n = 0;
    do digits[sizeof digits - ++n] = (uint8_t)('0' + v % 10);
    while ((v /= 10) != 0);
    hw_text_add(t, hw_bytes_of(digits + sizeof digits - n, n));
}

static inline hw_bytes hw_text_end(hw_text *t) {
    hw_bytes out = hw_bytes_of((const uint8_t *)hw__top, t->len);
    hw__top += hw__align8(t->len);
    return out;
}

/* --- lifecycle ---------------------------------------------------------------------------------------- */

/* Called by handle_request before the guest's handler: frees the last request's values, and on the
 * first request reads the config (kept for the instance's lifetime, below the arena's floor). */
static void hw_begin_request(void) {
    hw__ensure(0);
    hw__top = hw__floor;
    if (!hw__config_read) {
        hw__config = hw__fetch(hw__read_config, 0, hw_bytes_of(0, 0)).bytes;
        hw__config_read = true;
        hw__floor = hw__top;
    }
}

typedef hw_next (*hw_request_handler)(void);
typedef void (*hw_response_handler)(uint32_t ctx, bool is_error);

/* Export handle_request (resetting the request arena first) and handle_response (a no-op when
 * `on_response` is 0). */
#define HW_EXPORT_HANDLERS(on_request, on_response)                                   \
    __attribute__((export_name("handle_request"))) uint64_t handle_request(void) {    \
        hw_begin_request();                                                           \
        hw_next n = on_request();                                                     \
        return (uint64_t)n.ctx << 32 | (uint64_t)n.next;                              \
    }                                                                                 \
    __attribute__((export_name("handle_response"))) void handle_response(uint32_t ctx, uint32_t is_error) { \
        hw_response_handler f = (on_response);                                        \
        if (f) f(ctx, is_error != 0);                                                 \
    }

/* --- administrative ------------------------------------------------------------------------------------ */

/* Enable features for this request (or for every request when called before any); returns what is
 * enabled now. */
static inline uint32_t hw_enable_features(uint32_t features) { return hw_abi_enable_features(features); }

/* The guest's configuration (read once per instance; it never changes). */
static inline hw_bytes hw_config(void) { return hw__config; }

/* The next non-empty line of the config (trimmed, lines starting with '#' skipped) into `*line`.
 * Start with `rest = hw_config()`. */
static inline bool hw_next_line(hw_bytes *rest, hw_bytes *line) {
    while (rest->len) {
        int32_t nl = hw_index(*rest, '\n');
        uint32_t end = nl < 0 ? rest->len : (uint32_t)nl;
        hw_bytes l = hw_trim(hw_slice(*rest, 0, end));
        *rest = nl < 0 ? hw_slice(*rest, rest->len, rest->len) : hw_slice(*rest, end + 1, rest->len);
        if (l.len && l.ptr[0] != '#') {
            *line = l;
            return true;
        }
    }
    return false;
}

static inline void hw_log(hw_log_level level, hw_bytes message) { hw_abi_log(level, message.ptr, message.len); }
static inline bool hw_log_enabled(hw_log_level level) { return hw_abi_log_enabled(level) != 0; }

/* --- headers ---------------------------------------------------------------------------------------- */

/* All header names of `kind`, lowercase. */
static inline hw_list hw_header_names(hw_header_kind kind) { return hw__fetch(hw__read_names, kind, hw_bytes_of(0, 0)); }

/* All values of header `name` (case-insensitive), in order. */
static inline hw_list hw_header_values(hw_header_kind kind, hw_bytes name) { return hw__fetch(hw__read_values, kind, name); }

/* The first value of header `name` into `*value`; false when there is none. */
static inline bool hw_header(hw_header_kind kind, hw_bytes name, hw_bytes *value) {
    hw_list values = hw_header_values(kind, name);
    *value = hw_list_first(values);
    return values.count != 0;
}

static inline void hw_set_header(hw_header_kind kind, hw_bytes name, hw_bytes value) {
    hw_abi_set_header_value(kind, name.ptr, name.len, value.ptr, value.len);
}

static inline void hw_add_header(hw_header_kind kind, hw_bytes name, hw_bytes value) {
    hw_abi_add_header_value(kind, name.ptr, name.len, value.ptr, value.len);
}

static inline void hw_remove_header(hw_header_kind kind, hw_bytes name) { hw_abi_remove_header(kind, name.ptr, name.len); }

/* --- request --------------------------------------------------------------------------------------- */

static inline hw_bytes hw_method(void) { return hw__fetch(hw__read_method, 0, hw_bytes_of(0, 0)).bytes; }
static inline void hw_set_method(hw_bytes method) { hw_abi_set_method(method.ptr, method.len); }

/* The request URI, still encoded, with its query ("/a%20b?x=1"). */
static inline hw_bytes hw_uri(void) { return hw__fetch(hw__read_uri, 0, hw_bytes_of(0, 0)).bytes; }

/* Replace the URI (path and query, encoded). A URI without '?' drops the query. */
static inline void hw_set_uri(hw_bytes uri) { hw_abi_set_uri(uri.ptr, uri.len); }

static inline hw_bytes hw_protocol_version(void) { return hw__fetch(hw__read_protocol, 0, hw_bytes_of(0, 0)).bytes; }
static inline hw_bytes hw_source_addr(void) { return hw__fetch(hw__read_source, 0, hw_bytes_of(0, 0)).bytes; }

/* --- bodies ------------------------------------------------------------------------------------------ */

/* Read the next chunk of a body into buf (limit > 0); returns its length, sets *eof. */
static inline uint32_t hw_read_body(hw_body_kind kind, uint8_t *buf, uint32_t limit, bool *eof) {
    uint64_t r = hw_abi_read_body(kind, buf, limit);
    if (hw_low(r) > limit) HW_TRAP();
    *eof = hw_high(r) != 0;
    return hw_low(r);
}

/* Read the rest of a body into the request arena. */
static inline hw_bytes hw_read_body_all(hw_body_kind kind) {
    enum { ROOM = 4096 };
    uint32_t len = 0;
    bool eof = false;
    while (!eof) {
        hw__ensure(len + ROOM);
        len += hw_read_body(kind, (uint8_t *)hw__top + len, ROOM, &eof);
    }
    hw_bytes out = hw_bytes_of((const uint8_t *)hw__top, len);
    hw__top += hw__align8(len);
    return out;
}

/* Write to a body: the first write in a phase replaces it, the next ones append. */
static inline void hw_write_body(hw_body_kind kind, hw_bytes body) { hw_abi_write_body(kind, body.ptr, body.len); }

/* --- response ------------------------------------------------------------------------------------------ */

static inline uint32_t hw_status_code(void) { return hw_abi_get_status_code(); }
static inline void hw_set_status_code(uint32_t code) { hw_abi_set_status_code(code); }

#endif
