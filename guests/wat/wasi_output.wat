;; A WASI guest that prints "hello from wasi" at _initialize with fd_write, split over
;; two buffers ("hello from " + "wasi\n"): the host must log the whole line.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello from ")
  (data (i32.const 120) "wasi\n")
  (func (export "_initialize")
    ;; iovecs at 0: (100, 11), (120, 5)
    (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 11))
    (i32.store (i32.const 8) (i32.const 120)) (i32.store (i32.const 12) (i32.const 5))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 2) (i32.const 64)) (then unreachable))
    (if (i32.ne (i32.load (i32.const 64)) (i32.const 16)) (then unreachable))
    (if (call $random_get (i32.const 200) (i32.const 16)) (then unreachable)))
  (func (export "handle_request") (result i64) (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
