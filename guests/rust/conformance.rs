//! The Rust conformance guest: runs the checks of the conformance cases
//! (http_wasm_asgi/devkit/conformance_cases.json) from the guest side. The case comes from the
//! request header `x-httpwasm-test-id`; the verdict goes out as the response header
//! `x-conformance-result: pass` or `fail: <reason>`.
//!
//! Byte-level checks (buf_limit, count_len, NUL layout) call `httpwasm::abi` directly; everything
//! else goes through the typed library.

#![no_std]

#[macro_use]
mod httpwasm;

use core::fmt::Arguments;
use httpwasm::{abi, feature, BodyKind, HeaderKind, LogLevel, Next};

export_handlers!(on_request, on_response);

/// The config every conformance guest is given (the cases' "config").
const EXPECTED_CONFIG: &str = "{\"name\":\"conformance\",\"answer\":42}";

const RESULT_HEADER: &[u8] = b"x-conformance-result";

// --- verdict -------------------------------------------------------------------------------------

/// The first failed check of this request, if any.
static mut FAILURE: Option<&'static [u8]> = None;
/// The case of this request (an index into CASES), if it is a known one.
static mut CURRENT: Option<&'static str> = None;

fn failed() -> bool {
    unsafe { FAILURE.is_some() }
}

fn fail(args: Arguments) {
    if !failed() {
        let reason = httpwasm::format(args);
        unsafe { FAILURE = Some(reason) };
    }
}

fn expect(ok: bool, what: &str) {
    if !ok {
        fail(format_args!("{}", what));
    }
}

fn expect_int(got: u64, want: u64, what: &str) {
    if got != want {
        fail(format_args!("{} = {}, want {}", what, got, want));
    }
}

fn expect_str(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        fail(format_args!("{} = '{}', want '{}'", what, Printable(got), Printable(want)));
    }
}

/// Header values must stay printable: show anything else as '?', and keep it short.
struct Printable<'a>(&'a [u8]);

impl core::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        use core::fmt::Write;
        for &c in self.0.iter().take(80) {
            f.write_char(if (0x20..0x7f).contains(&c) { c as char } else { '?' })?;
        }
        Ok(())
    }
}

fn report() {
    match unsafe { FAILURE } {
        Some(reason) => {
            let value = httpwasm::format(format_args!("fail: {}", httpwasm::Show(reason)));
            httpwasm::set_header(HeaderKind::Response, RESULT_HEADER, value);
        }
        None => httpwasm::set_header(HeaderKind::Response, RESULT_HEADER, b"pass"),
    }
}

// --- helpers -------------------------------------------------------------------------------------

/// A scratch area the byte-level checks hand to the host.
static mut PROBE: [u8; 256] = [0; 256];

fn probe() -> &'static mut [u8; 256] {
    unsafe { &mut PROBE }
}

fn fill_probe() {
    probe().fill(0xAA);
}

fn probe_untouched(from: usize) -> bool {
    probe()[from..].iter().all(|&b| b == 0xAA)
}

/// get_header_values(kind, name) into the probe; checks the packed result and the exact bytes.
fn expect_raw_values(kind: HeaderKind, name: &[u8], count: u32, bytes: &[u8]) {
    fill_probe();
    let p = probe();
    let r = unsafe { abi::get_header_values(kind as u32, name.as_ptr(), name.len() as u32, p.as_mut_ptr(), 256) };
    expect_int(r, (count as u64) << 32 | bytes.len() as u64, "get_header_values count_len");
    if failed() {
        return;
    }
    expect_str(&p[..bytes.len()], bytes, "get_header_values bytes");
    expect(probe_untouched(bytes.len()), "get_header_values wrote past its length");
}

fn expect_values(kind: HeaderKind, name: &[u8], want: &[&[u8]]) {
    let values = httpwasm::header_values(kind, name);
    expect_int(values.count as u64, want.len() as u64, "value count");
    let mut it = values.iter();
    for w in want {
        match it.next() {
            Some(got) => expect_str(got, w, "value"),
            None => return fail(format_args!("missing value '{}'", Printable(w))),
        }
    }
}

// --- handle_request ----------------------------------------------------------------------------

/// The case ids of the conformance cases, spelled exactly.
const CASES: &[&str] = &[
    "get_config/bytes",
    "log/levels",
    "enable_features/request",
    "enable_features/trailers_unsupported",
    "enable_features/trailers_supported",
    "get_method/get",
    "get_method/post",
    "set_method",
    "get_uri/encoded",
    "get_uri/root",
    "set_uri/path_and_query",
    "set_uri/drops_query",
    "get_protocol_version",
    "get_protocol_version/http2",
    "get_source_addr",
    "buf_limit/too_small",
    "get_header_names/lowercase",
    "get_header_values/single",
    "get_header_values/multi",
    "get_header_values/case_insensitive",
    "get_header_values/missing",
    "set_header_value/request",
    "add_header_value/request",
    "remove_header/request",
    "set_header_value/response_before_next",
    "response_headers/after_next",
    "read_body/request",
    "write_body/request",
    "read_body/response",
    "write_body/response",
    "get_status_code/response",
    "set_status_code/response",
    "short_circuit/response",
    "short_circuit/default",
    "req_ctx",
];

/// Cases that buffer the response report from handle_response.
fn buffers_response(case: &str) -> bool {
    matches!(
        case,
        "response_headers/after_next"
            | "read_body/response"
            | "write_body/response"
            | "get_status_code/response"
            | "set_status_code/response"
            | "req_ctx"
    )
}

fn on_request() -> Next {
    unsafe {
        FAILURE = None;
        CURRENT = None;
    }
    let id = httpwasm::header(HeaderKind::Request, b"x-httpwasm-test-id").unwrap_or(b"");
    let case = match CASES.iter().find(|c| c.as_bytes() == id) {
        Some(case) => *case,
        None => {
            unsafe { FAILURE = Some(b"unknown case") };
            report();
            return Next::STOP;
        }
    };
    unsafe { CURRENT = Some(case) };
    let next = run_request(case);
    if !next.next || !buffers_response(case) {
        report();
    }
    next
}

fn run_request(case: &str) -> Next {
    let p = probe();
    match case {
        "get_config/bytes" => unsafe {
            let config = EXPECTED_CONFIG.as_bytes();
            fill_probe();
            let len = abi::get_config(p.as_mut_ptr(), 0);
            expect_int(len as u64, config.len() as u64, "get_config(buf, 0)");
            expect(probe_untouched(0), "get_config(buf, 0) wrote to the buffer");
            let short = abi::get_config(p.as_mut_ptr(), config.len() as u32 - 1);
            expect_int(short as u64, config.len() as u64, "get_config(buf, len-1)");
            expect(probe_untouched(0), "get_config(buf, len-1) wrote to the buffer");
            let full = abi::get_config(p.as_mut_ptr(), 256) as usize;
            expect_int(full as u64, config.len() as u64, "get_config(buf, 256)");
            if !failed() {
                expect_str(&p[..full], config, "config");
            }
            expect(probe_untouched(full), "get_config wrote past the config");
            // The library's copy, read on the first request, is the same.
            expect_str(httpwasm::config(), config, "httpwasm::config()");
        },
        "log/levels" => {
            httpwasm::log(LogLevel::Debug, b"conformance log -1");
            httpwasm::log(LogLevel::Info, b"conformance log 0");
            httpwasm::log(LogLevel::Warn, b"conformance log 1");
            httpwasm::log(LogLevel::Error, b"conformance log 2");
            unsafe {
                expect_int(abi::log_enabled(-1) as u64, 0, "log_enabled(-1)");
                expect_int(abi::log_enabled(0) as u64, 1, "log_enabled(0)");
                expect_int(abi::log_enabled(2) as u64, 1, "log_enabled(2)");
                expect_int(abi::log_enabled(3) as u64, 0, "log_enabled(3)");
            }
            expect(httpwasm::log_enabled(LogLevel::Info), "log_enabled(Info)");
        }
        "enable_features/request" => {
            expect_int(httpwasm::enable_features(0) as u64, 0, "enable_features(0)");
            expect_int(httpwasm::enable_features(feature::BUFFER_REQUEST) as u64, 1, "enable_features(1)");
            expect_int(httpwasm::enable_features(feature::BUFFER_RESPONSE) as u64, 3, "then enable_features(2)");
        }
        "enable_features/trailers_unsupported" | "enable_features/trailers_supported" => {
            let supported = case == "enable_features/trailers_supported";
            let got = httpwasm::enable_features(feature::TRAILERS);
            if (got & feature::TRAILERS != 0) != supported {
                let what = if supported { "lacks" } else { "has" };
                fail(format_args!("enable_features(4) = {} {} the trailers bit", got, what));
            }
            unsafe {
                expect_int(abi::get_header_names(2, p.as_mut_ptr(), 256), 0, "get_header_names(request trailers)");
                expect_int(abi::get_header_names(3, p.as_mut_ptr(), 256), 0, "get_header_names(response trailers)");
            }
        }
        "get_method/get" => expect_str(httpwasm::method(), b"GET", "get_method"),
        "get_method/post" => expect_str(httpwasm::method(), b"POST", "get_method"),
        "set_method" => {
            httpwasm::set_method(b"PUT");
            expect_str(httpwasm::method(), b"PUT", "get_method after set_method");
        }
        "get_uri/encoded" => expect_str(httpwasm::uri(), b"/a%20b/c%2Fd?x=1&y=%2F", "get_uri"),
        "get_uri/root" => expect_str(httpwasm::uri(), b"/", "get_uri"),
        "set_uri/path_and_query" => {
            httpwasm::set_uri(b"/new/p%2Fq?z=9");
            expect_str(httpwasm::uri(), b"/new/p%2Fq?z=9", "get_uri after set_uri");
        }
        "set_uri/drops_query" => {
            httpwasm::set_uri(b"/plain");
            expect_str(httpwasm::uri(), b"/plain", "get_uri after set_uri");
        }
        "get_protocol_version" => expect_str(httpwasm::protocol_version(), b"HTTP/1.1", "get_protocol_version"),
        "get_protocol_version/http2" => {
            expect_str(httpwasm::protocol_version(), b"HTTP/2.0", "get_protocol_version")
        }
        "get_source_addr" => check_source_addr(httpwasm::source_addr()),
        "buf_limit/too_small" => unsafe {
            fill_probe();
            expect_int(abi::get_uri(p.as_mut_ptr(), 5) as u64, 11, "get_uri(buf, 5)");
            expect(probe_untouched(0), "get_uri(buf, 5) wrote to the buffer");
            expect_int(abi::get_uri(p.as_mut_ptr(), 0) as u64, 11, "get_uri(buf, 0)");
            expect(probe_untouched(0), "get_uri(buf, 0) wrote to the buffer");
        },
        "get_header_names/lowercase" => check_header_names(),
        "get_header_values/single" => expect_raw_values(HeaderKind::Request, b"x-single", 1, b"01234567\0"),
        "get_header_values/multi" => expect_raw_values(HeaderKind::Request, b"x-multi", 2, b"a=b\0c=d\0"),
        "get_header_values/case_insensitive" => expect_raw_values(HeaderKind::Request, b"X-MIXED", 1, b"v\0"),
        "get_header_values/missing" => expect_raw_values(HeaderKind::Request, b"x-not-there", 0, b""),
        "set_header_value/request" => {
            httpwasm::set_header(HeaderKind::Request, b"x-set", b"new");
            expect_values(HeaderKind::Request, b"x-set", &[b"new"]);
        }
        "add_header_value/request" => {
            httpwasm::add_header(HeaderKind::Request, b"x-add", b"second");
            expect_values(HeaderKind::Request, b"x-add", &[b"first", b"second"]);
        }
        "remove_header/request" => {
            httpwasm::remove_header(HeaderKind::Request, b"x-remove");
            let name = b"x-remove";
            let r = unsafe { abi::get_header_values(0, name.as_ptr(), name.len() as u32, p.as_mut_ptr(), 256) };
            expect_int(r, 0, "get_header_values after remove");
        }
        "set_header_value/response_before_next" => httpwasm::set_header(HeaderKind::Response, b"x-from-guest", b"yes"),
        "read_body/request" => {
            httpwasm::enable_features(feature::BUFFER_REQUEST);
            check_request_body();
        }
        "write_body/request" => {
            httpwasm::write_body(BodyKind::Request, b"re");
            httpwasm::write_body(BodyKind::Request, b"written");
        }
        "response_headers/after_next"
        | "read_body/response"
        | "write_body/response"
        | "get_status_code/response"
        | "set_status_code/response" => {
            httpwasm::enable_features(feature::BUFFER_RESPONSE);
        }
        "short_circuit/response" => {
            httpwasm::set_status_code(401);
            httpwasm::set_header(HeaderKind::Response, b"www-authenticate", b"Basic");
            httpwasm::write_body(BodyKind::Response, b"denied");
            return Next::STOP;
        }
        "short_circuit/default" => return Next::STOP,
        "req_ctx" => {
            httpwasm::enable_features(feature::BUFFER_RESPONSE);
            return Next::with_ctx(42);
        }
        _ => fail(format_args!("case '{}' has no checks", case)),
    }
    Next::PROCEED
}

fn check_source_addr(addr: &[u8]) {
    let port = match addr.strip_prefix(b"127.0.0.1:") {
        Some(port) => port,
        None => return fail(format_args!("get_source_addr = '{}'", Printable(addr))),
    };
    if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        fail(format_args!("get_source_addr port = '{}'", Printable(port)));
    }
}

fn check_header_names() {
    fill_probe();
    let p = probe();
    let r = unsafe { abi::get_header_names(0, p.as_mut_ptr(), 256) };
    let count = httpwasm::high(r);
    let len = httpwasm::low(r) as usize;
    if len == 0 || len > p.len() {
        return fail(format_args!("get_header_names len = {}", len));
    }
    let written = &p[..len];
    expect(written[len - 1] == 0, "get_header_names: last name not NUL-terminated");
    expect(probe_untouched(len), "get_header_names wrote past its length");
    let nuls = written.iter().filter(|&&b| b == 0).count();
    expect_int(count as u64, nuls as u64, "get_header_names count vs NULs");
    let (mut a, mut b) = (false, false);
    let list = httpwasm::List { count, bytes: httpwasm::dupe(written) };
    for name in list.iter() {
        if name.iter().any(u8::is_ascii_uppercase) {
            return fail(format_args!("header name '{}' is not lowercase", Printable(name)));
        }
        a = a || name == b"x-case-a";
        b = b || name == b"x-case-b";
    }
    expect(a && b, "x-case-a or x-case-b missing from get_header_names");
    // The library's view (arena read, retry, copy) must be the same list.
    let names = httpwasm::header_names(HeaderKind::Request);
    expect_int(names.count as u64, count as u64, "header_names count");
    expect_str(names.bytes, list.bytes, "header_names bytes");
}

fn check_response_body(body: &[u8]) {
    expect(body.first() == Some(&b'{'), "response body does not start with '{'");
    expect(body.windows(8).any(|w| w == b"\"method\""), "response body lacks \"method\"");
}

/// Read the request body to EOF in chunks of at most 5 bytes, then check it.
fn check_request_body() {
    const LIMIT: usize = 5;
    let mut body = [0u8; 64];
    let mut total = 0;
    let mut chunk = [0u8; LIMIT];
    for _ in 0..10_000 {
        let r = unsafe { abi::read_body(0, chunk.as_mut_ptr(), LIMIT as u32) };
        let len = httpwasm::low(r) as usize;
        if len > LIMIT {
            return fail(format_args!("read_body returned {} bytes for a limit of {}", len, LIMIT));
        }
        let keep = len.min(body.len() - total);
        body[total..total + keep].copy_from_slice(&chunk[..keep]);
        total += keep;
        match httpwasm::high(r) {
            0 => {}
            1 => return expect_str(&body[..total], b"hello conformance body", "request body"),
            eof => return fail(format_args!("read_body eof = {}", eof)),
        }
    }
    fail(format_args!("read_body never reached eof"));
}

// --- handle_response ---------------------------------------------------------------------------

fn on_response(ctx: u32, is_error: bool) {
    let case = match unsafe { CURRENT } {
        Some(case) if buffers_response(case) => case,
        _ => return,
    };
    if is_error {
        fail(format_args!("handle_response is_error = 1"));
    }
    if !failed() {
        match case {
            "response_headers/after_next" => {
                expect_values(HeaderKind::Response, b"content-type", &[b"application/json"]);
                expect_values(HeaderKind::Response, b"x-echo", &[b"1"]);
            }
            "read_body/response" => check_response_body(httpwasm::read_body_all(BodyKind::Response)),
            "write_body/response" => httpwasm::write_body(BodyKind::Response, b"replaced"),
            "get_status_code/response" => expect_int(httpwasm::status_code() as u64, 200, "get_status_code"),
            "set_status_code/response" => httpwasm::set_status_code(418),
            "req_ctx" => expect_int(ctx as u64, 42, "handle_response req_ctx"),
            _ => {}
        }
    }
    report();
}
