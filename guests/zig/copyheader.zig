//! copyheader: the benchmark's filter in Zig, the same as guests/wat/copy_header.wat.
//! handle_request reads the request header `x-id` and sets it as the response header `x-id`;
//! handle_response reads the status code: 3 host calls per request, raw ABI, no allocation.

extern "http_handler" fn get_header_values(kind: u32, name: [*]const u8, name_len: u32, buf: [*]u8, buf_limit: u32) u64;
extern "http_handler" fn set_header_value(kind: u32, name: [*]const u8, name_len: u32, value: [*]const u8, value_len: u32) void;
extern "http_handler" fn get_status_code() u32;

const name = "x-id";
var buf: [1024]u8 = undefined;

export fn handle_request() u64 {
    const len: u32 = @truncate(get_header_values(0, name, name.len, &buf, buf.len));
    if (len > buf.len) unreachable;
    if (len > 0) set_header_value(1, name, name.len, &buf, len - 1); // values are NUL-terminated
    return 1;
}

export fn handle_response(req_ctx: u32, is_error: u32) void {
    _ = req_ctx;
    _ = is_error;
    _ = get_status_code();
}
