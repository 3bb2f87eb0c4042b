;; Copies the request header `x-id` into the response header `x-id` (3 host calls
;; per request: get in handle_request, set in handle_request, and a status read
;; in handle_response). Used by the concurrency tests and the benchmark.
(module
  (import "http_handler" "get_header_values" (func $get_header_values (param i32 i32 i32 i32 i32) (result i64)))
  (import "http_handler" "set_header_value" (func $set_header_value (param i32 i32 i32 i32 i32)))
  (import "http_handler" "get_status_code" (func $get_status_code (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "x-id")
  (func (export "handle_request") (result i64)
    (local $len i32)
    (local.set $len (i32.wrap_i64 (call $get_header_values (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 1024) (i32.const 1024))))
    (if (i32.gt_u (local.get $len) (i32.const 1024)) (then unreachable))
    (if (local.get $len) (then
      ;; the value is NUL-terminated: send it without the NUL
      (call $set_header_value (i32.const 1) (i32.const 0) (i32.const 4) (i32.const 1024) (i32.sub (local.get $len) (i32.const 1)))))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32)
    (drop (call $get_status_code))))
