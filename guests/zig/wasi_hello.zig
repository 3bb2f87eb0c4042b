//! wasi_hello: a WASI reactor guest. The host calls `_initialize` once per
//! instance, which runs `main` below: it prints a line to stdout through WASI
//! `fd_write`. Every response then gets `x-wasi: yes`.

const std = @import("std");
const hw = @import("httpwasm.zig");
const wasi = std.os.wasi;

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, null);
}

pub fn main() void {
    const line = "wasi_hello: initialized\n";
    const iov = [_]wasi.ciovec_t{.{ .base = line, .len = line.len }};
    var written: usize = 0;
    _ = wasi.fd_write(1, &iov, iov.len, &written);
}

fn onRequest() hw.Next {
    hw.setHeader(.response, "x-wasi", "yes");
    return .proceed;
}
