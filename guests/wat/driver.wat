;; ABI driver: a guest whose config is a program of host calls.
;;
;; Tests (tests/support/driver.py builds programs) use it to call every host function
;; with exact pointers and limits, from init, handle_request or handle_response.
;; Config layout: i32 strings_len, strings (loaded at 0x10004), then 32-byte
;; records of 8 little-endian i32: phase, op, a, b, c, d, e, f.
;; phase: 0 = _initialize, 1 = handle_request, 2 = handle_response.
;; op 0..18 call the host function of that index in http_wasm_asgi/abi.py
;; order; every call's result (0 for void ones) is appended as an i64 to the
;; results log at 0x8000. Other ops are listed at $exec.
(module
  (import "http_handler" "enable_features" (func $enable_features (param i32) (result i32)))
  (import "http_handler" "get_config" (func $get_config (param i32 i32) (result i32)))
  (import "http_handler" "log" (func $log (param i32 i32 i32)))
  (import "http_handler" "log_enabled" (func $log_enabled (param i32) (result i32)))
  (import "http_handler" "get_method" (func $get_method (param i32 i32) (result i32)))
  (import "http_handler" "set_method" (func $set_method (param i32 i32)))
  (import "http_handler" "get_uri" (func $get_uri (param i32 i32) (result i32)))
  (import "http_handler" "set_uri" (func $set_uri (param i32 i32)))
  (import "http_handler" "get_protocol_version" (func $get_protocol_version (param i32 i32) (result i32)))
  (import "http_handler" "get_header_names" (func $get_header_names (param i32 i32 i32) (result i64)))
  (import "http_handler" "get_header_values" (func $get_header_values (param i32 i32 i32 i32 i32) (result i64)))
  (import "http_handler" "set_header_value" (func $set_header_value (param i32 i32 i32 i32 i32)))
  (import "http_handler" "add_header_value" (func $add_header_value (param i32 i32 i32 i32 i32)))
  (import "http_handler" "remove_header" (func $remove_header (param i32 i32 i32)))
  (import "http_handler" "read_body" (func $read_body (param i32 i32 i32) (result i64)))
  (import "http_handler" "write_body" (func $write_body (param i32 i32 i32)))
  (import "http_handler" "get_status_code" (func $get_status_code (result i32)))
  (import "http_handler" "set_status_code" (func $set_status_code (param i32)))
  (import "http_handler" "get_source_addr" (func $get_source_addr (param i32 i32) (result i32)))

  (memory (export "memory") 2)
  (global $results i32 (i32.const 0x8000))
  (global $config i32 (i32.const 0x10000))
  (global $nres (mut i32) (i32.const 0))
  (global $last (mut i64) (i64.const 0))
  (global $ret (mut i64) (i64.const 1))
  (global $cfg_len (mut i32) (i32.const 0))
  (global $req_ctx (mut i32) (i32.const 0))
  (global $is_error (mut i32) (i32.const 0))

  (func $record (param $v i64)
    (global.set $last (local.get $v))
    (i64.store (i32.add (global.get $results) (i32.shl (global.get $nres) (i32.const 3))) (local.get $v))
    (global.set $nres (i32.add (global.get $nres) (i32.const 1))))

  (func $u (param $v i32) (result i64) (i64.extend_i32_u (local.get $v)))
  (func $last32 (param $minus i32) (result i32) (i32.sub (i32.wrap_i64 (global.get $last)) (local.get $minus)))

  ;; Runs one op; returns 1 to stop this phase.
  (func $exec (param $op i32) (param $a i32) (param $b i32) (param $c i32) (param $d i32) (param $e i32)
              (result i32)
    (if (i32.eq (local.get $op) (i32.const 0)) (then (call $record (call $u (call $enable_features (local.get $a)))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 1)) (then (call $record (call $u (call $get_config (local.get $a) (local.get $b)))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 2)) (then (call $log (local.get $a) (local.get $b) (local.get $c)) (call $record (i64.const 0)) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 3)) (then (call $record (call $u (call $log_enabled (local.get $a)))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 4)) (then (call $record (call $u (call $get_method (local.get $a) (local.get $b)))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 5)) (then (call $set_method (local.get $a) (local.get $b)) (call $record (i64.const 0)) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 6)) (then (call $record (call $u (call $get_uri (local.get $a) (local.get $b)))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 7)) (then (call $set_uri (local.get $a) (local.get $b)) (call $record (i64.const 0)) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 8)) (then (call $record (call $u (call $get_protocol_version (local.get $a) (local.get $b)))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 9)) (then (call $record (call $get_header_names (local.get $a) (local.get $b) (local.get $c))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 10)) (then (call $record (call $get_header_values (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 11)) (then (call $set_header_value (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e)) (call $record (i64.const 0)) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 12)) (then (call $add_header_value (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e)) (call $record (i64.const 0)) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 13)) (then (call $remove_header (local.get $a) (local.get $b) (local.get $c)) (call $record (i64.const 0)) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 14)) (then (call $record (call $read_body (local.get $a) (local.get $b) (local.get $c))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 15)) (then (call $write_body (local.get $a) (local.get $b) (local.get $c)) (call $record (i64.const 0)) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 16)) (then (call $record (call $u (call $get_status_code))) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 17)) (then (call $set_status_code (local.get $a)) (call $record (i64.const 0)) (return (i32.const 0))))
    (if (i32.eq (local.get $op) (i32.const 18)) (then (call $record (call $u (call $get_source_addr (local.get $a) (local.get $b)))) (return (i32.const 0))))
    ;; 100 RETURN: handle_request returns a | b << 32 (next | ctx << 32) and the phase stops
    (if (i32.eq (local.get $op) (i32.const 100)) (then
      (global.set $ret (i64.or (call $u (local.get $a)) (i64.shl (call $u (local.get $b)) (i64.const 32))))
      (return (i32.const 1))))
    ;; 101 EMIT_RESULTS: write_body(a, results log)
    (if (i32.eq (local.get $op) (i32.const 101)) (then
      (call $write_body (local.get $a) (global.get $results) (i32.shl (global.get $nres) (i32.const 3)))
      (return (i32.const 0))))
    ;; 102 TRAP
    (if (i32.eq (local.get $op) (i32.const 102)) (then unreachable))
    ;; 103 LOOP forever
    (if (i32.eq (local.get $op) (i32.const 103)) (then (loop $forever (br $forever))))
    ;; 104 FILL: memory [a, a+b) = c
    (if (i32.eq (local.get $op) (i32.const 104)) (then (memory.fill (local.get $a) (local.get $c) (local.get $b)) (return (i32.const 0))))
    ;; 105 WRITE_LAST: write_body(a, b, low32(last) - c)
    (if (i32.eq (local.get $op) (i32.const 105)) (then (call $write_body (local.get $a) (local.get $b) (call $last32 (local.get $c))) (return (i32.const 0))))
    ;; 106 SET_HEADER_LAST: set_header_value(a, b, c, d, low32(last) - e)
    (if (i32.eq (local.get $op) (i32.const 106)) (then (call $set_header_value (local.get $a) (local.get $b) (local.get $c) (local.get $d) (call $last32 (local.get $e))) (return (i32.const 0))))
    ;; 107 GROW: record memory.grow(a)
    (if (i32.eq (local.get $op) (i32.const 107)) (then (call $record (i64.extend_i32_s (memory.grow (local.get $a)))) (return (i32.const 0))))
    ;; 108 RECORD_CTX: record req_ctx << 32 | is_error (as seen by handle_response)
    (if (i32.eq (local.get $op) (i32.const 108)) (then (call $record (i64.or (i64.shl (call $u (global.get $req_ctx)) (i64.const 32)) (call $u (global.get $is_error)))) (return (i32.const 0))))
    ;; 109 READ_ALL: read_body(a, b, c) until EOF, appending at b; records the total length
    (if (i32.eq (local.get $op) (i32.const 109)) (then (call $record (call $read_all (local.get $a) (local.get $b) (local.get $c))) (return (i32.const 0))))
    ;; 110 LOG_IF_ERROR: log(0, a, b) only when handle_response got is_error=1
    (if (i32.eq (local.get $op) (i32.const 110)) (then
      (if (global.get $is_error) (then (call $log (i32.const 0) (local.get $a) (local.get $b))))
      (return (i32.const 0))))
    unreachable)

  (func $read_all (param $kind i32) (param $buf i32) (param $chunk i32) (result i64)
    (local $total i32) (local $r i64)
    (loop $more
      (local.set $r (call $read_body (local.get $kind) (i32.add (local.get $buf) (local.get $total)) (local.get $chunk)))
      (local.set $total (i32.add (local.get $total) (i32.wrap_i64 (local.get $r))))
      (br_if $more (i64.eqz (i64.shr_u (local.get $r) (i64.const 32)))))
    (call $u (local.get $total)))

  (func $run (param $phase i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.add (i32.add (global.get $config) (i32.const 4)) (i32.load (global.get $config))))
    (local.set $end (i32.add (global.get $config) (global.get $cfg_len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (if (i32.eq (i32.load (local.get $p)) (local.get $phase))
          (then
            (br_if $done (call $exec
              (i32.load offset=4 (local.get $p)) (i32.load offset=8 (local.get $p)) (i32.load offset=12 (local.get $p))
              (i32.load offset=16 (local.get $p)) (i32.load offset=20 (local.get $p)) (i32.load offset=24 (local.get $p))))))
        (local.set $p (i32.add (local.get $p) (i32.const 32)))
        (br $next))))

  (func (export "_initialize")
    (global.set $cfg_len (call $get_config (global.get $config) (i32.const 0x10000)))
    (if (i32.gt_u (global.get $cfg_len) (i32.const 0x10000)) (then unreachable))
    (global.set $nres (i32.const 0))
    (call $run (i32.const 0)))

  (func (export "handle_request") (result i64)
    (global.set $nres (i32.const 0))
    (global.set $ret (i64.const 1))
    (call $run (i32.const 1))
    (global.get $ret))

  (func (export "handle_response") (param $req_ctx i32) (param $is_error i32)
    (global.set $req_ctx (local.get $req_ctx))
    (global.set $is_error (local.get $is_error))
    (call $run (i32.const 2))))
