;; Spins on request (a stand-in for a catastrophic regex in a WAF rule): with the request header
;; `x-spin: forever` handle_request loops forever calling get_header_values; with `x-spin: N`
;; (decimal) it makes N such calls, then sets the response header `x-spun` to the request's
;; `x-id`. Without x-spin it passes the request on at once. Host calls (native ones with the
;; accelerator) run inside calls that yield, and each request's own headers must come back.
(module
  (import "http_handler" "get_header_values" (func $get (param i32 i32 i32 i32 i32) (result i64)))
  (import "http_handler" "set_header_value" (func $set (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "x-spin")
  (data (i32.const 16) "x-id")
  (data (i32.const 32) "x-spun")
  ;; the decimal number at 256 (len bytes), or -1 when it is not one
  (func $number (param $len i32) (result i32)
    (local $i i32) (local $n i32) (local $c i32)
    (if (i32.eqz (local.get $len)) (then (return (i32.const -1))))
    (loop $digits
      (local.set $c (i32.sub (i32.load8_u (i32.add (i32.const 256) (local.get $i))) (i32.const 48)))
      (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i32.const -1))))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (local.get $c)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $digits (i32.lt_u (local.get $i) (local.get $len))))
    (local.get $n))
  ;; reads x-id into 512; its length (without the NUL)
  (func $x_id (result i32)
    (i32.sub (i32.wrap_i64 (call $get (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 512) (i32.const 64)))
             (i32.const 1)))
  (func (export "handle_request") (result i64)
    (local $r i64) (local $n i32) (local $len i32)
    (local.set $r (call $get (i32.const 0) (i32.const 0) (i32.const 6) (i32.const 256) (i32.const 64)))
    (if (i64.eqz (i64.shr_u (local.get $r) (i64.const 32))) (then (return (i64.const 1))))
    (local.set $n (call $number (i32.sub (i32.wrap_i64 (local.get $r)) (i32.const 1))))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (loop $forever (drop (call $x_id)) (br $forever))))
    (block $done
      (loop $spin
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $len (call $x_id))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $spin)))
    (local.set $len (call $x_id))
    (call $set (i32.const 1) (i32.const 32) (i32.const 6) (i32.const 512) (local.get $len))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
