;; A guest with a big, slow initialization, like a WAF that loads a large rule set:
;; its `_initialize` (called once per instance, before any request)
;;   - grows memory to 80 MiB (so it needs a memory_limit above that),
;;   - fills 64 MiB of it, from 1 MiB on, with a pattern of non-zero 64-bit words:
;;     word i = (i + 1) * 0x9E3779B97F4A7C15 (mod 2^64), i < 8 Mi,
;;   - spins on the CPU: 150 million steps of the LCG x = x * 6364136223846793005 + 1442695040888963407
;;     (mod 2^64) from x = 1, about 0.2 s here, and keeps the result in a global.
;; handle_request proves that this state is there: it checks every 4096th word of the
;; pattern and the last one (a wrong word traps: the request gets a 500), then sets the
;; response headers
;;   x-heavy-sample: the sum (mod 2^64) of the checked words i = 4096 j, j < 2048, in 16 hex digits
;;   x-heavy-spin:   the LCG's result, in 16 hex digits
;; and returns next=1. handle_response does nothing. tests/test_waf.py computes both values.
(module
  (import "http_handler" "set_header_value" (func $set_header_value (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "x-heavy-sample")
  (data (i32.const 32) "x-heavy-spin")
  (data (i32.const 48) "0123456789abcdef")
  ;; 64: 16 hex digits of the sample sum; 80: 16 hex digits of the spin result
  (global $spin (mut i64) (i64.const 0))
  (global $ready (mut i32) (i32.const 0))

  (func $word (param $i i64) (result i64)
    (i64.mul (i64.add (local.get $i) (i64.const 1)) (i64.const 0x9E3779B97F4A7C15)))

  (func (export "_initialize")
    (local $i i64) (local $addr i32) (local $x i64) (local $n i64)
    ;; 1 page + 1279 = 1280 pages of 64 KiB: 80 MiB
    (if (i32.eq (memory.grow (i32.const 1279)) (i32.const -1)) (then unreachable))
    (local.set $addr (i32.const 0x100000))
    (loop $fill
      (i64.store (local.get $addr) (call $word (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (local.set $addr (i32.add (local.get $addr) (i32.const 8)))
      (br_if $fill (i64.lt_u (local.get $i) (i64.const 0x800000))))
    (local.set $x (i64.const 1))
    (local.set $n (i64.const 150000000))
    (loop $steps
      (local.set $x (i64.add (i64.mul (local.get $x) (i64.const 6364136223846793005))
                             (i64.const 1442695040888963407)))
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br_if $steps (i64.ne (local.get $n) (i64.const 0))))
    (global.set $spin (local.get $x))
    (global.set $ready (i32.const 1)))

  ;; the 16 hex digits of $v at $at
  (func $hex (param $v i64) (param $at i32)
    (local $k i32)
    (loop $digits
      (i32.store8 (i32.add (local.get $at) (i32.sub (i32.const 15) (local.get $k)))
                  (i32.load8_u (i32.add (i32.const 48) (i32.wrap_i64 (i64.and (local.get $v) (i64.const 15))))))
      (local.set $v (i64.shr_u (local.get $v) (i64.const 4)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $digits (i32.lt_u (local.get $k) (i32.const 16)))))

  (func $check (param $i i64) (result i64)
    (local $w i64)
    (local.set $w (i64.load (i32.add (i32.const 0x100000) (i32.wrap_i64 (i64.shl (local.get $i) (i64.const 3))))))
    (if (i64.ne (local.get $w) (call $word (local.get $i))) (then unreachable))
    (local.get $w))

  (func (export "handle_request") (result i64)
    (local $j i64) (local $sum i64)
    (if (i32.eqz (global.get $ready)) (then unreachable))
    (loop $samples
      (local.set $sum (i64.add (local.get $sum) (call $check (i64.mul (local.get $j) (i64.const 4096)))))
      (local.set $j (i64.add (local.get $j) (i64.const 1)))
      (br_if $samples (i64.lt_u (local.get $j) (i64.const 2048))))
    (drop (call $check (i64.const 0x7fffff)))
    (call $hex (local.get $sum) (i32.const 64))
    (call $set_header_value (i32.const 1) (i32.const 0) (i32.const 14) (i32.const 64) (i32.const 16))
    (call $hex (global.get $spin) (i32.const 80))
    (call $set_header_value (i32.const 1) (i32.const 32) (i32.const 12) (i32.const 80) (i32.const 16))
    (i64.const 1))

  (func (export "handle_response") (param i32 i32)))
