//! httpwasm.rs: a small typed library for writing http-wasm guests in Rust, `#![no_std]`, no crates.
//!
//! A guest is one file next to this one that says `#[macro_use] mod httpwasm;` and exports its
//! handlers through `export_handlers!`:
//!
//!     #![no_std]
//!     #[macro_use]
//!     mod httpwasm;
//!     use httpwasm::{HeaderKind, Next};
//!     export_handlers!(on_request);
//!     fn on_request() -> Next { httpwasm::set_header(HeaderKind::Response, b"x-hello", b"world"); Next::PROCEED }
//!
//! Build: `/usr/bin/rustc --edition 2021 --target wasm32-unknown-unknown --crate-type cdylib
//! -C opt-level=s -C panic=abort guest.rs` (guests/rust/build_lang.py has the exact flags).
//!
//! Memory: there is no allocator. Values read from the host are copied into a per-request arena (a
//! bump region above `__heap_base`, grown with `memory.grow`) that is reset at the start of every
//! `handle_request`; the slices this library returns (`&'static`) stay valid until then, so also in
//! `handle_response` of the same request. The config is read once per instance, on the first request,
//! and lives below the arena's floor for the instance's lifetime.
//!
//! Reading a field: the host is handed all the free space of the arena (at least 2 KiB); when it
//! answers with a bigger length (nothing was written), the arena grows to exactly that length and the
//! call is retried once. A host that answers bigger again is broken: the guest traps.
//!
//! A panic (an out-of-bounds index, `unwrap` on `None`...) traps: the host answers 500.

#![allow(dead_code)]

use core::arch::wasm32;
use core::fmt;

/// The raw host functions, exactly as the ABI declares them. Pointers are wasm32 linear-memory
/// offsets; `u64` results pack two `u32` (upper: count or eof).
pub mod abi {
    #[link(wasm_import_module = "http_handler")]
    extern "C" {
        pub fn enable_features(features: u32) -> u32;
        pub fn get_config(buf: *mut u8, buf_limit: u32) -> u32;
        pub fn log_enabled(level: i32) -> u32;
        pub fn log(level: i32, message: *const u8, message_len: u32);
        pub fn get_header_names(kind: u32, buf: *mut u8, buf_limit: u32) -> u64;
        pub fn get_header_values(kind: u32, name: *const u8, name_len: u32, buf: *mut u8, buf_limit: u32) -> u64;
        pub fn set_header_value(kind: u32, name: *const u8, name_len: u32, value: *const u8, value_len: u32);
        pub fn add_header_value(kind: u32, name: *const u8, name_len: u32, value: *const u8, value_len: u32);
        pub fn remove_header(kind: u32, name: *const u8, name_len: u32);
        pub fn read_body(kind: u32, buf: *mut u8, buf_limit: u32) -> u64;
        pub fn write_body(kind: u32, body: *const u8, body_len: u32);
        pub fn get_method(buf: *mut u8, buf_limit: u32) -> u32;
        pub fn set_method(method: *const u8, method_len: u32);
        pub fn get_uri(buf: *mut u8, buf_limit: u32) -> u32;
        pub fn set_uri(uri: *const u8, uri_len: u32);
        pub fn get_protocol_version(buf: *mut u8, buf_limit: u32) -> u32;
        pub fn get_source_addr(buf: *mut u8, buf_limit: u32) -> u32;
        pub fn get_status_code() -> u32;
        pub fn set_status_code(status_code: u32);
    }
}

/// Feature bits for `enable_features`.
pub mod feature {
    pub const BUFFER_REQUEST: u32 = 1;
    pub const BUFFER_RESPONSE: u32 = 2;
    pub const TRAILERS: u32 = 4;
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HeaderKind {
    Request = 0,
    Response = 1,
    RequestTrailers = 2,
    ResponseTrailers = 3,
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BodyKind {
    Request = 0,
    Response = 1,
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum LogLevel {
    Debug = -1,
    Info = 0,
    Warn = 1,
    Error = 2,
    None = 3,
}

/// Upper and lower halves of a packed `count_len` / `eof_len` / `ctx_next`.
pub fn high(v: u64) -> u32 {
    (v >> 32) as u32
}
pub fn low(v: u64) -> u32 {
    v as u32
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    wasm32::unreachable()
}

// --- lifecycle ---------------------------------------------------------------------------------

/// What `handle_request` answers: go on to the next handler (and get `handle_response` called with
/// `ctx`), or stop here with the response as written.
#[derive(Clone, Copy)]
pub struct Next {
    pub next: bool,
    pub ctx: u32,
}

impl Next {
    pub const PROCEED: Next = Next { next: true, ctx: 0 };
    pub const STOP: Next = Next { next: false, ctx: 0 };

    pub fn with_ctx(ctx: u32) -> Next {
        Next { next: true, ctx }
    }

    pub fn pack(self) -> u64 {
        (self.ctx as u64) << 32 | self.next as u64
    }
}

/// Export `handle_request` (resetting the per-request arena first) and `handle_response` (a no-op
/// when only the request handler is given). The handlers are `fn() -> Next` and `fn(u32, bool)`.
#[macro_export]
macro_rules! export_handlers {
    ($on_request:path) => {
        $crate::export_handlers!($on_request, $crate::httpwasm::no_response);
    };
    ($on_request:path, $on_response:path) => {
        #[no_mangle]
        pub extern "C" fn handle_request() -> u64 {
            $crate::httpwasm::begin_request();
            $on_request().pack()
        }
        #[no_mangle]
        pub extern "C" fn handle_response(ctx: u32, is_error: u32) {
            $on_response(ctx, is_error != 0)
        }
    };
}

pub fn no_response(_ctx: u32, _is_error: bool) {}

// --- memory --------------------------------------------------------------------------------------

const PAGE: usize = 65536;
/// The smallest read buffer handed to the host.
const MIN_READ: usize = 2048;

extern "C" {
    static __heap_base: u8;
}

// The arena: [FLOOR, TOP) is this request's, [TOP, END) is free, END is the end of linear memory.
static mut FLOOR: usize = 0;
static mut TOP: usize = 0;
static mut END: usize = 0;
static mut CONFIG: &[u8] = &[];
static mut CONFIG_READ: bool = false;

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Make at least `room` bytes free above the arena's top (grows linear memory, or traps).
fn ensure(room: usize) {
    unsafe {
        if END == 0 {
            FLOOR = align8(&__heap_base as *const u8 as usize);
            TOP = FLOOR;
            END = wasm32::memory_size(0) * PAGE;
        }
        if END - TOP < room {
            let pages = (room - (END - TOP) + PAGE - 1) / PAGE;
            if wasm32::memory_grow(0, pages) == usize::MAX {
                wasm32::unreachable();
            }
            END += pages * PAGE;
        }
    }
}

/// Called by `handle_request` before the guest's handler: frees the last request's values, and on
/// the first request reads the config (kept for the instance's lifetime, below the arena's floor).
pub fn begin_request() {
    ensure(0);
    unsafe {
        TOP = FLOOR;
        if !CONFIG_READ {
            CONFIG = fetch(|buf, limit| abi::get_config(buf, limit) as u64).1;
            CONFIG_READ = true;
            FLOOR = TOP;
        }
    }
}

/// `len` bytes from the request arena.
pub fn alloc(len: usize) -> &'static mut [u8] {
    ensure(len);
    unsafe {
        let p = TOP as *mut u8;
        TOP += align8(len);
        core::slice::from_raw_parts_mut(p, len)
    }
}

/// Copy `bytes` into the request arena.
pub fn dupe(bytes: &[u8]) -> &'static [u8] {
    let out = alloc(bytes.len());
    out.copy_from_slice(bytes);
    out
}

/// Call `f(buf, buf_limit)` with the arena's free space, growing it and retrying once when the value
/// does not fit; the value stays in the arena. Returns (count, bytes).
fn fetch(f: impl Fn(*mut u8, u32) -> u64) -> (u32, &'static [u8]) {
    ensure(MIN_READ);
    unsafe {
        let mut room = END - TOP;
        let mut r = f(TOP as *mut u8, room as u32);
        let mut len = low(r) as usize;
        if len > room {
            ensure(len);
            room = END - TOP;
            r = f(TOP as *mut u8, room as u32);
            len = low(r) as usize;
            if len > room {
                wasm32::unreachable();
            }
        }
        let bytes = core::slice::from_raw_parts(TOP as *const u8, len);
        TOP += align8(len);
        (high(r), bytes)
    }
}

/// Text written into the request arena with `core::fmt` (grows in place; see `format`).
struct ArenaWriter {
    len: usize,
}

impl fmt::Write for ArenaWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        ensure(self.len + s.len());
        unsafe {
            core::ptr::copy_nonoverlapping(s.as_ptr(), (TOP + self.len) as *mut u8, s.len());
        }
        self.len += s.len();
        Ok(())
    }
}

/// `format_args!` into the request arena: `httpwasm::format(format_args!("{} {}", a, b))`.
pub fn format(args: fmt::Arguments) -> &'static [u8] {
    let mut w = ArenaWriter { len: 0 };
    let _ = fmt::write(&mut w, args);
    unsafe {
        let bytes = core::slice::from_raw_parts(TOP as *const u8, w.len);
        TOP += align8(w.len);
        bytes
    }
}

/// Bytes shown as text in `format!`-style messages (invalid UTF-8 shows as '?').
pub struct Show<'a>(pub &'a [u8]);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for chunk in self.0.split(|&b| b >= 0x80) {
            f.write_str(core::str::from_utf8(chunk).unwrap_or("?"))?;
        }
        Ok(())
    }
}

// --- administrative --------------------------------------------------------------------------

/// Enable features for this request (or for every request when called before any) and return
/// what is enabled now.
pub fn enable_features(features: u32) -> u32 {
    unsafe { abi::enable_features(features) }
}

/// The guest's configuration (read once per instance; it never changes).
pub fn config() -> &'static [u8] {
    unsafe { CONFIG }
}

/// The non-empty lines of the config, trimmed, skipping lines starting with '#'.
pub fn config_lines() -> impl Iterator<Item = &'static [u8]> {
    config().split(|&b| b == b'\n').map(trim).filter(|l| !l.is_empty() && l[0] != b'#')
}

pub fn log(level: LogLevel, message: &[u8]) {
    unsafe { abi::log(level as i32, message.as_ptr(), message.len() as u32) }
}

pub fn log_enabled(level: LogLevel) -> bool {
    unsafe { abi::log_enabled(level as i32) != 0 }
}

// --- headers -------------------------------------------------------------------------------------

/// A NUL-terminated sequence as the host writes it ("a\0b\0").
#[derive(Clone, Copy)]
pub struct List {
    pub count: u32,
    pub bytes: &'static [u8],
}

impl List {
    pub fn iter(&self) -> impl Iterator<Item = &'static [u8]> {
        let bytes = self.bytes.strip_suffix(b"\0").unwrap_or(self.bytes);
        let empty = self.bytes.is_empty();
        bytes.split(|&b| b == 0).filter(move |_| !empty)
    }

    pub fn first(&self) -> Option<&'static [u8]> {
        self.iter().next()
    }
}

/// All header names of `kind`, lowercase.
pub fn header_names(kind: HeaderKind) -> List {
    let (count, bytes) = fetch(|buf, limit| unsafe { abi::get_header_names(kind as u32, buf, limit) });
    List { count, bytes }
}

/// All values of header `name` (case-insensitive), in order.
pub fn header_values(kind: HeaderKind, name: &[u8]) -> List {
    let (count, bytes) = fetch(|buf, limit| unsafe {
        abi::get_header_values(kind as u32, name.as_ptr(), name.len() as u32, buf, limit)
    });
    List { count, bytes }
}

/// The first value of header `name`, or None when there is none.
pub fn header(kind: HeaderKind, name: &[u8]) -> Option<&'static [u8]> {
    header_values(kind, name).first()
}

pub fn set_header(kind: HeaderKind, name: &[u8], value: &[u8]) {
    unsafe {
        abi::set_header_value(kind as u32, name.as_ptr(), name.len() as u32, value.as_ptr(), value.len() as u32)
    }
}

pub fn add_header(kind: HeaderKind, name: &[u8], value: &[u8]) {
    unsafe {
        abi::add_header_value(kind as u32, name.as_ptr(), name.len() as u32, value.as_ptr(), value.len() as u32)
    }
}

pub fn remove_header(kind: HeaderKind, name: &[u8]) {
    unsafe { abi::remove_header(kind as u32, name.as_ptr(), name.len() as u32) }
}

// --- request -------------------------------------------------------------------------------------

pub fn method() -> &'static [u8] {
    fetch(|buf, limit| unsafe { abi::get_method(buf, limit) as u64 }).1
}

pub fn set_method(method: &[u8]) {
    unsafe { abi::set_method(method.as_ptr(), method.len() as u32) }
}

/// The request URI, still encoded, with its query ("/a%20b?x=1").
pub fn uri() -> &'static [u8] {
    fetch(|buf, limit| unsafe { abi::get_uri(buf, limit) as u64 }).1
}

/// Replace the URI (path and query, encoded). A URI without '?' drops the query.
pub fn set_uri(uri: &[u8]) {
    unsafe { abi::set_uri(uri.as_ptr(), uri.len() as u32) }
}

pub fn protocol_version() -> &'static [u8] {
    fetch(|buf, limit| unsafe { abi::get_protocol_version(buf, limit) as u64 }).1
}

pub fn source_addr() -> &'static [u8] {
    fetch(|buf, limit| unsafe { abi::get_source_addr(buf, limit) as u64 }).1
}

/// Split a URI into its path and its query (without the '?', None when absent).
pub fn split_uri(uri: &[u8]) -> (&[u8], Option<&[u8]>) {
    match uri.iter().position(|&b| b == b'?') {
        Some(q) => (&uri[..q], Some(&uri[q + 1..])),
        None => (uri, None),
    }
}

// --- bodies --------------------------------------------------------------------------------------

/// Read the next chunk of a body into `buf` (which must not be empty): (bytes read, eof).
pub fn read_body(kind: BodyKind, buf: &mut [u8]) -> (usize, bool) {
    let r = unsafe { abi::read_body(kind as u32, buf.as_mut_ptr(), buf.len() as u32) };
    let len = low(r) as usize;
    if len > buf.len() {
        wasm32::unreachable();
    }
    (len, high(r) != 0)
}

/// Read the rest of a body into the request arena.
pub fn read_body_all(kind: BodyKind) -> &'static [u8] {
    const ROOM: usize = 4096;
    let mut len = 0;
    loop {
        ensure(len + ROOM);
        let r = unsafe { abi::read_body(kind as u32, (TOP + len) as *mut u8, ROOM as u32) };
        if low(r) as usize > ROOM {
            wasm32::unreachable();
        }
        len += low(r) as usize;
        if high(r) != 0 {
            break;
        }
    }
    unsafe {
        let bytes = core::slice::from_raw_parts(TOP as *const u8, len);
        TOP += align8(len);
        bytes
    }
}

/// Write to a body: the first write in a phase replaces it, the next ones append.
pub fn write_body(kind: BodyKind, bytes: &[u8]) {
    unsafe { abi::write_body(kind as u32, bytes.as_ptr(), bytes.len() as u32) }
}

// --- response ------------------------------------------------------------------------------------

pub fn status_code() -> u32 {
    unsafe { abi::get_status_code() }
}

pub fn set_status_code(code: u32) {
    unsafe { abi::set_status_code(code) }
}

// --- bytes ---------------------------------------------------------------------------------------

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r' || b == b'\n'
}

/// `bytes` without leading and trailing spaces, tabs, CR and LF.
pub fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| !is_space(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| !is_space(b)).map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// The first word of `bytes` (split at spaces and tabs) and the rest after it, unstripped.
pub fn first_word(bytes: &[u8]) -> (&[u8], &[u8]) {
    let bytes = trim(bytes);
    let end = bytes.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(bytes.len());
    (&bytes[..end], &bytes[end..])
}

/// Compare without returning early on the first differing byte (for secrets).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}
