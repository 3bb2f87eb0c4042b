//! httpwasm.zig: a small typed library for writing http-wasm guests in Zig.
//!
//! The host functions of the http-wasm handler ABI (module "http_handler") are
//! declared once in `abi`; the rest of this file wraps them in typed calls.
//!
//! A guest exports its two handlers through `exportHandlers`:
//!
//!     const hw = @import("httpwasm.zig");
//!     pub const panic = hw.panic;
//!     comptime { hw.exportHandlers(onRequest, null); }
//!     fn onRequest() hw.Next { hw.setHeader(.response, "x-hello", "world"); return .proceed; }
//!
//! Memory: values read from the host are copied into a per-request arena that
//! is reset at the start of every `handle_request`. Slices returned by this
//! library stay valid until then (so also in `handle_response` of the same
//! request), except for `config()`, which lives as long as the instance.
//!
//! Reading a field: the library calls the host with its current read buffer;
//! when the host answers with a length bigger than the buffer (nothing was
//! written), the buffer grows to exactly that length and the call is retried
//! once. A host that answers bigger again is broken: the guest traps.

const std = @import("std");

/// The raw host functions, exactly as the ABI declares them. Pointers are wasm32
/// linear-memory offsets; `u64` results pack two `u32` (upper: count or eof).
pub const abi = struct {
    pub extern "http_handler" fn enable_features(features: u32) u32;
    pub extern "http_handler" fn get_config(buf: [*]u8, buf_limit: u32) u32;
    pub extern "http_handler" fn log_enabled(level: i32) u32;
    pub extern "http_handler" fn log(level: i32, message: [*]const u8, message_len: u32) void;
    pub extern "http_handler" fn get_header_names(kind: u32, buf: [*]u8, buf_limit: u32) u64;
    pub extern "http_handler" fn get_header_values(kind: u32, name: [*]const u8, name_len: u32, buf: [*]u8, buf_limit: u32) u64;
    pub extern "http_handler" fn set_header_value(kind: u32, name: [*]const u8, name_len: u32, value: [*]const u8, value_len: u32) void;
    pub extern "http_handler" fn add_header_value(kind: u32, name: [*]const u8, name_len: u32, value: [*]const u8, value_len: u32) void;
    pub extern "http_handler" fn remove_header(kind: u32, name: [*]const u8, name_len: u32) void;
    pub extern "http_handler" fn read_body(kind: u32, buf: [*]u8, buf_limit: u32) u64;
    pub extern "http_handler" fn write_body(kind: u32, body: [*]const u8, body_len: u32) void;
    pub extern "http_handler" fn get_method(buf: [*]u8, buf_limit: u32) u32;
    pub extern "http_handler" fn set_method(method: [*]const u8, method_len: u32) void;
    pub extern "http_handler" fn get_uri(buf: [*]u8, buf_limit: u32) u32;
    pub extern "http_handler" fn set_uri(uri: [*]const u8, uri_len: u32) void;
    pub extern "http_handler" fn get_protocol_version(buf: [*]u8, buf_limit: u32) u32;
    pub extern "http_handler" fn get_source_addr(buf: [*]u8, buf_limit: u32) u32;
    pub extern "http_handler" fn get_status_code() u32;
    pub extern "http_handler" fn set_status_code(status_code: u32) void;
};

/// Feature bits for `enableFeatures`.
pub const feature = struct {
    pub const buffer_request: u32 = 1;
    pub const buffer_response: u32 = 2;
    pub const trailers: u32 = 4;
};

pub const HeaderKind = enum(u32) { request = 0, response = 1, request_trailers = 2, response_trailers = 3 };
pub const BodyKind = enum(u32) { request = 0, response = 1 };
pub const LogLevel = enum(i32) { debug = -1, info = 0, warn = 1, err = 2, none = 3 };

/// Any failed safety check or `@panic` traps: the host turns a trap into an error response.
pub const panic = std.debug.no_panic;

/// Upper and lower halves of a packed `count_len` / `eof_len` / `ctx_next`.
pub fn high(v: u64) u32 {
    return @truncate(v >> 32);
}
pub fn low(v: u64) u32 {
    return @truncate(v);
}

// --- lifecycle -------------------------------------------------------------

/// What `handle_request` answers: go on to the next handler (and get
/// `handle_response` called with `ctx`), or stop here with the response as written.
pub const Next = struct {
    next: bool,
    ctx: u32 = 0,

    pub const proceed: Next = .{ .next = true };
    pub const stop: Next = .{ .next = false };

    pub fn pack(self: Next) u64 {
        return @as(u64, self.ctx) << 32 | @intFromBool(self.next);
    }
};

pub const RequestHandler = fn () Next;
pub const ResponseHandler = fn (ctx: u32, is_error: bool) void;

/// Export `handle_request` (resetting the per-request arena first) and
/// `handle_response` (a no-op when `on_response` is null).
pub fn exportHandlers(comptime on_request: RequestHandler, comptime on_response: ?ResponseHandler) void {
    const S = struct {
        fn handleRequest() callconv(.c) u64 {
            resetRequest();
            return on_request().pack();
        }
        fn handleResponse(ctx: u32, is_error: u32) callconv(.c) void {
            if (on_response) |f| f(ctx, is_error != 0);
        }
    };
    @export(&S.handleRequest, .{ .name = "handle_request" });
    @export(&S.handleResponse, .{ .name = "handle_response" });
}

// --- memory ----------------------------------------------------------------

/// Arena memory kept across requests; anything beyond this is given back on reset.
const arena_keep_bytes = 64 * 1024;

var arena_state = std.heap.ArenaAllocator.init(std.heap.wasm_allocator);

/// The per-request arena: everything allocated here is freed at the next `handle_request`.
pub fn allocator() std.mem.Allocator {
    return arena_state.allocator();
}

pub fn resetRequest() void {
    _ = arena_state.reset(.{ .retain_with_limit = arena_keep_bytes });
}

var first_buffer: [2048]u8 = undefined;
/// The read buffer handed to the host. Starts static; grows (exactly) when a value does not fit.
var read_buffer: []u8 = &first_buffer;

fn growReadBuffer(len: usize) void {
    if (read_buffer.ptr != &first_buffer) std.heap.wasm_allocator.free(read_buffer);
    read_buffer = std.heap.wasm_allocator.alloc(u8, len) catch @panic("out of memory");
}

fn limit() u32 {
    return @intCast(read_buffer.len);
}

/// Result of a read: the bytes the host wrote, and the count for NUL-terminated lists.
const Read = struct { count: u32, bytes: []const u8 };

/// Call `f(args..., buf, buf_limit)`, growing the buffer and retrying once if
/// the value does not fit, and copy the result into the request arena.
fn fetch(comptime f: anytype, args: anytype) Read {
    const Result = @typeInfo(@TypeOf(f)).@"fn".return_type.?;
    var result: Result = @call(.auto, f, args ++ .{ read_buffer.ptr, limit() });
    var len = low(result);
    if (len > read_buffer.len) {
        growReadBuffer(len);
        result = @call(.auto, f, args ++ .{ read_buffer.ptr, limit() });
        len = low(result);
        if (len > read_buffer.len) @panic("host value changed size between calls");
    }
    const count: u32 = if (Result == u64) high(result) else 0;
    return .{ .count = count, .bytes = dupe(read_buffer[0..len]) };
}

/// Copy `bytes` into the request arena.
pub fn dupe(bytes: []const u8) []const u8 {
    return allocator().dupe(u8, bytes) catch @panic("out of memory");
}

/// `std.fmt` into the request arena.
pub fn format(comptime fmt: []const u8, args: anytype) []const u8 {
    return std.fmt.allocPrint(allocator(), fmt, args) catch @panic("out of memory");
}

// --- administrative --------------------------------------------------------

/// Enable features for this request (or for every request when called at
/// init) and return what is enabled now.
pub fn enableFeatures(features: u32) u32 {
    return abi.enable_features(features);
}

var config_cache: ?[]const u8 = null;

/// The guest's configuration (read once per instance; it never changes).
pub fn config() []const u8 {
    if (config_cache) |c| return c;
    const n = abi.get_config(read_buffer.ptr, 0);
    const c = std.heap.wasm_allocator.alloc(u8, n) catch @panic("out of memory");
    if (abi.get_config(c.ptr, n) != n) @panic("config changed size");
    config_cache = c;
    return c;
}

/// The non-empty lines of the config, trimmed, skipping lines starting with '#'.
pub fn configLines() LineIterator {
    return .{ .inner = std.mem.splitScalar(u8, config(), '\n') };
}

pub const LineIterator = struct {
    inner: std.mem.SplitIterator(u8, .scalar),

    pub fn next(self: *LineIterator) ?[]const u8 {
        while (self.inner.next()) |raw| {
            const line = std.mem.trim(u8, raw, " \t\r");
            if (line.len == 0 or line[0] == '#') continue;
            return line;
        }
        return null;
    }
};

pub fn log(level: LogLevel, message: []const u8) void {
    abi.log(@intFromEnum(level), message.ptr, @intCast(message.len));
}

pub fn logEnabled(level: LogLevel) bool {
    return abi.log_enabled(@intFromEnum(level)) != 0;
}

/// Format and log, only when the level is enabled.
pub fn logf(level: LogLevel, comptime fmt: []const u8, args: anytype) void {
    if (logEnabled(level)) log(level, format(fmt, args));
}

// --- headers ---------------------------------------------------------------

/// A NUL-terminated sequence as the host writes it ("a\x00b\x00").
pub const List = struct {
    count: u32,
    bytes: []const u8,

    pub const empty: List = .{ .count = 0, .bytes = "" };

    pub fn iterator(self: List) Iterator {
        return .{ .rest = self.bytes };
    }

    pub fn first(self: List) ?[]const u8 {
        var it = self.iterator();
        return it.next();
    }

    pub const Iterator = struct {
        rest: []const u8,

        pub fn next(self: *Iterator) ?[]const u8 {
            const end = std.mem.indexOfScalar(u8, self.rest, 0) orelse return null;
            const item = self.rest[0..end];
            self.rest = self.rest[end + 1 ..];
            return item;
        }
    };
};

/// All header names of `kind`, lowercase.
pub fn headerNames(kind: HeaderKind) List {
    const r = fetch(abi.get_header_names, .{@intFromEnum(kind)});
    return .{ .count = r.count, .bytes = r.bytes };
}

/// All values of header `name` (case-insensitive), in order.
pub fn headerValues(kind: HeaderKind, name: []const u8) List {
    const r = fetch(abi.get_header_values, .{ @intFromEnum(kind), name.ptr, @as(u32, @intCast(name.len)) });
    return .{ .count = r.count, .bytes = r.bytes };
}

/// The first value of header `name`, or null when there is none.
pub fn header(kind: HeaderKind, name: []const u8) ?[]const u8 {
    return headerValues(kind, name).first();
}

pub fn setHeader(kind: HeaderKind, name: []const u8, value: []const u8) void {
    abi.set_header_value(@intFromEnum(kind), name.ptr, @intCast(name.len), value.ptr, @intCast(value.len));
}

pub fn addHeader(kind: HeaderKind, name: []const u8, value: []const u8) void {
    abi.add_header_value(@intFromEnum(kind), name.ptr, @intCast(name.len), value.ptr, @intCast(value.len));
}

pub fn removeHeader(kind: HeaderKind, name: []const u8) void {
    abi.remove_header(@intFromEnum(kind), name.ptr, @intCast(name.len));
}

// --- request ---------------------------------------------------------------

pub fn method() []const u8 {
    return fetch(abi.get_method, .{}).bytes;
}

pub fn setMethod(m: []const u8) void {
    abi.set_method(m.ptr, @intCast(m.len));
}

/// The request URI, still encoded, with its query ("/a%20b?x=1").
pub fn uri() []const u8 {
    return fetch(abi.get_uri, .{}).bytes;
}

/// Replace the URI (path and query, encoded). A URI without '?' drops the query.
pub fn setUri(u: []const u8) void {
    abi.set_uri(u.ptr, @intCast(u.len));
}

pub fn protocolVersion() []const u8 {
    return fetch(abi.get_protocol_version, .{}).bytes;
}

pub fn sourceAddr() []const u8 {
    return fetch(abi.get_source_addr, .{}).bytes;
}

/// Split a URI into its path and its query (without the '?', null when absent).
pub fn splitUri(u: []const u8) struct { path: []const u8, query: ?[]const u8 } {
    if (std.mem.indexOfScalar(u8, u, '?')) |q| return .{ .path = u[0..q], .query = u[q + 1 ..] };
    return .{ .path = u, .query = null };
}

// --- bodies ----------------------------------------------------------------

pub const Chunk = struct { bytes: []u8, eof: bool };

/// Read the next chunk of a body into `buf` (which must not be empty).
pub fn readBody(kind: BodyKind, buf: []u8) Chunk {
    const r = abi.read_body(@intFromEnum(kind), buf.ptr, @intCast(buf.len));
    const len = low(r);
    if (len > buf.len) @panic("host wrote past buf_limit");
    return .{ .bytes = buf[0..len], .eof = high(r) != 0 };
}

/// Read the rest of a body into the request arena.
pub fn readBodyAll(kind: BodyKind) []const u8 {
    var out: std.ArrayList(u8) = .empty;
    while (true) {
        const room = 4096;
        out.ensureUnusedCapacity(allocator(), room) catch @panic("out of memory");
        const chunk = readBody(kind, out.unusedCapacitySlice()[0..room]);
        out.items.len += chunk.bytes.len;
        if (chunk.eof) return out.items;
    }
}

/// Write to a body: the first write in a phase replaces it, the next ones append.
pub fn writeBody(kind: BodyKind, bytes: []const u8) void {
    abi.write_body(@intFromEnum(kind), bytes.ptr, @intCast(bytes.len));
}

// --- response --------------------------------------------------------------

pub fn statusCode() u32 {
    return abi.get_status_code();
}

pub fn setStatusCode(code: u32) void {
    abi.set_status_code(code);
}
