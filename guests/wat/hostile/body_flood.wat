;; Writes 64 KiB chunks to a body forever: the response body in handle_request
;; when the request header `x-flood` is absent, else the request body (value is
;; ignored). Only max_body_size (a trap) or the CPU limit stops it.
(module
  (import "http_handler" "write_body" (func $write_body (param i32 i32 i32)))
  (import "http_handler" "get_header_values" (func $get_header_values (param i32 i32 i32 i32 i32) (result i64)))
  (memory (export "memory") 2)
  (data (i32.const 0) "x-flood")
  (func (export "handle_request") (result i64)
    (local $kind i32)
    (local.set $kind (i32.const 1))
    (if (i64.ne (call $get_header_values (i32.const 0) (i32.const 0) (i32.const 7) (i32.const 0) (i32.const 0)) (i64.const 0))
      (then (local.set $kind (i32.const 0))))
    (loop $forever
      (call $write_body (local.get $kind) (i32.const 0x10000) (i32.const 0x10000))
      (br $forever))
    (i64.const 0))
  (func (export "handle_response") (param i32 i32)))
