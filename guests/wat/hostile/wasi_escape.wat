;; A WASI guest that tries to get out: open a file under fd 3 (the first
;; preopen, if any) and under stdin, list preopens, read stdin, read the
;; environment and command line, accept a socket. Answers the request itself
;; with one little-endian i32 per attempt (errno, or a count), in this order:
;;   0 fd_prestat_get(3)        errno (8 = EBADF: no preopen)
;;   1 path_open(3, "../../../../../etc/passwd") errno (a way out of a preopen)
;;   2 path_open(0, "../../../../../etc/passwd") errno
;;   3 fd_read(0)               errno
;;   4 bytes read from stdin
;;   5 environ_sizes_get        errno
;;   6 environment variables
;;   7 args_sizes_get           errno
;;   8 command line arguments
;;   9 sock_accept(3)           errno
;;  10 path_open(3, "secret.txt") errno (a file a test may put in a dir it preopens)
;;  11 fd_read of that file     bytes read (0 when it did not open)
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "http_handler" "write_body" (func $write_body (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "../../../../../etc/passwd")
  (data (i32.const 544) "secret.txt")
  (global $out i32 (i32.const 0))
  (func $put (param $i i32) (param $v i32) (i32.store (i32.shl (local.get $i) (i32.const 2)) (local.get $v)))
  (func (export "handle_request") (result i64)
    (i32.store (i32.const 1024) (i32.const 0))
    (call $put (i32.const 0) (call $fd_prestat_get (i32.const 3) (i32.const 128)))
    ;; rights: read only (fd_read = bit 1), lookup flags 0, oflags 0, fdflags 0
    (call $put (i32.const 1) (call $path_open (i32.const 3) (i32.const 0) (i32.const 512) (i32.const 25)
                                               (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 1024)))
    (call $put (i32.const 2) (call $path_open (i32.const 0) (i32.const 0) (i32.const 512) (i32.const 25)
                                               (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 1028)))
    ;; iovec at 160: 256 bytes at 2048
    (i32.store (i32.const 160) (i32.const 2048)) (i32.store (i32.const 164) (i32.const 256))
    (i32.store (i32.const 168) (i32.const 0))
    (call $put (i32.const 3) (call $fd_read (i32.const 0) (i32.const 160) (i32.const 1) (i32.const 168)))
    (call $put (i32.const 4) (i32.load (i32.const 168)))
    (i32.store (i32.const 172) (i32.const 0))
    (call $put (i32.const 5) (call $environ_sizes_get (i32.const 172) (i32.const 176)))
    (call $put (i32.const 6) (i32.load (i32.const 172)))
    (i32.store (i32.const 180) (i32.const 0))
    (call $put (i32.const 7) (call $args_sizes_get (i32.const 180) (i32.const 184)))
    (call $put (i32.const 8) (i32.load (i32.const 180)))
    (call $put (i32.const 9) (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 188)))
    (i32.store (i32.const 1032) (i32.const 0))
    (call $put (i32.const 10) (call $path_open (i32.const 3) (i32.const 0) (i32.const 544) (i32.const 10)
                                                (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 1032)))
    (i32.store (i32.const 168) (i32.const 0))
    (if (i32.eqz (i32.load (i32.const 40)))
      (then (drop (call $fd_read (i32.load (i32.const 1032)) (i32.const 160) (i32.const 1) (i32.const 168)))))
    (call $put (i32.const 11) (i32.load (i32.const 168)))
    (call $write_body (i32.const 1) (i32.const 0) (i32.const 48))
    (i64.const 0))
  (func (export "handle_response") (param i32 i32)))
