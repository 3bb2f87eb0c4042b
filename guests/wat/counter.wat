;; Counts the requests this instance has served, in `x-count` (one digit per request, up to 9).
;; Shows whether instance state survives between requests (reuse_instances).
(module
  (import "http_handler" "set_header_value" (func $set_header_value (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "x-count")
  (global $count (mut i32) (i32.const 0))
  (func (export "handle_request") (result i64)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store8 (i32.const 16) (i32.add (i32.const 48) (global.get $count)))
    (call $set_header_value (i32.const 1) (i32.const 0) (i32.const 7) (i32.const 16) (i32.const 1))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
