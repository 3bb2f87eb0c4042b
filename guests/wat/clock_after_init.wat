;; Reads the WASI monotonic clock in its init (after 20 ms of it have passed) and again in every
;; request: x-clock: ok when time went forwards, backwards otherwise. An instance started from a
;; snapshot carries the init's reading; the host's clock must be one clock for every instance.
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "http_handler" "set_header_value" (func $set (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $t0 (mut i64) (i64.const 0))
  (func $now (result i64)
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 0)))
    (i64.load (i32.const 0)))
  (func (export "_initialize")
    (local $start i64)
    (local.set $start (call $now))
    (loop $wait
      (br_if $wait (i64.lt_u (i64.sub (call $now) (local.get $start)) (i64.const 20000000))))
    (global.set $t0 (call $now)))
  (func (export "handle_request") (result i64)
    (if (i64.ge_u (call $now) (global.get $t0))
      (then (call $set (i32.const 1) (i32.const 16) (i32.const 7) (i32.const 32) (i32.const 2)))
      (else (call $set (i32.const 1) (i32.const 16) (i32.const 7) (i32.const 48) (i32.const 9))))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32))
  (data (i32.const 16) "x-clock")
  (data (i32.const 32) "ok")
  (data (i32.const 48) "backwards"))
