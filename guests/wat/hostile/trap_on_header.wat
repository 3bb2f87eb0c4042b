;; Traps only when the request asks for it: header `x-trap: request` traps in
;; handle_request; `x-trap: response` enables buffer_response for that request
;; and traps in handle_response (so the client gets the error, not the app's
;; response). Any other request passes through untouched: a soak test can fail
;; exactly the requests it picks.
(module
  (import "http_handler" "enable_features" (func $enable_features (param i32) (result i32)))
  (import "http_handler" "get_header_values" (func $get_header_values (param i32 i32 i32 i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "x-trap")
  (data (i32.const 16) "request\00")
  (data (i32.const 32) "response\00")
  (global $trap_response (mut i32) (i32.const 0))
  ;; does the value at 256 (NUL-terminated, $len bytes) equal the string at $s?
  (func $is (param $s i32) (param $n i32) (param $len i64) (result i32)
    (local $i i32)
    (if (i64.ne (local.get $len) (i64.extend_i32_u (local.get $n))) (then (return (i32.const 0))))
    (block $diff
      (loop $each
        (br_if $diff (i32.ne (i32.load8_u (i32.add (i32.const 256) (local.get $i)))
                             (i32.load8_u (i32.add (local.get $s) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $each (i32.lt_u (local.get $i) (local.get $n)))
        (return (i32.const 1))))
    (i32.const 0))
  (func (export "handle_request") (result i64)
    (local $len i64)
    (global.set $trap_response (i32.const 0))
    ;; count_len: only the first value is compared, so one value is expected
    (local.set $len (i64.and (call $get_header_values (i32.const 0) (i32.const 0) (i32.const 6) (i32.const 256) (i32.const 64))
                             (i64.const 0xFFFFFFFF)))
    (if (call $is (i32.const 16) (i32.const 8) (local.get $len)) (then unreachable))
    (global.set $trap_response (call $is (i32.const 32) (i32.const 9) (local.get $len)))
    (if (global.get $trap_response) (then (drop (call $enable_features (i32.const 2)))))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32)
    (if (global.get $trap_response) (then unreachable))))
