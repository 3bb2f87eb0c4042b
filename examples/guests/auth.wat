;; Bearer-token check: the config is the token. Without `authorization: Bearer <token>`
;; the guest answers 401 with `www-authenticate: Bearer` itself (next=0).
(module
  (import "http_handler" "get_config" (func $get_config (param i32 i32) (result i32)))
  (import "http_handler" "get_header_values" (func $get_header_values (param i32 i32 i32 i32 i32) (result i64)))
  (import "http_handler" "set_header_value" (func $set_header_value (param i32 i32 i32 i32 i32)))
  (import "http_handler" "set_status_code" (func $set_status_code (param i32)))
  (import "http_handler" "write_body" (func $write_body (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "authorization")        ;; 13
  (data (i32.const 16) "www-authenticate")    ;; 16
  (data (i32.const 32) "Bearer")              ;; 6
  (data (i32.const 48) "unauthorized\n")      ;; 13
  (data (i32.const 64) "Bearer ")             ;; 7, the expected prefix
  (global $token_len (mut i32) (i32.const 0))
  ;; the token is kept at 1024 (up to 1024 bytes); the header value is read at 4096
  (func $init (global.set $token_len (call $get_config (i32.const 1024) (i32.const 1024))))
  (start $init)
  (func $equal (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $no
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  (func (export "handle_request") (result i64)
    (local $count_len i64) (local $len i32)
    (local.set $count_len (call $get_header_values (i32.const 0) (i32.const 0) (i32.const 13) (i32.const 4096) (i32.const 2048)))
    (local.set $len (i32.wrap_i64 (local.get $count_len)))
    ;; exactly one value "Bearer <token>\0"
    (if (i32.and
          (i32.and (i64.eq (i64.shr_u (local.get $count_len) (i64.const 32)) (i64.const 1))
                   (i32.eq (local.get $len) (i32.add (global.get $token_len) (i32.const 8))))
          (i32.and (call $equal (i32.const 4096) (i32.const 64) (i32.const 7))
                   (call $equal (i32.const 4103) (i32.const 1024) (global.get $token_len))))
      (then (return (i64.const 1))))
    (call $set_status_code (i32.const 401))
    (call $set_header_value (i32.const 1) (i32.const 16) (i32.const 16) (i32.const 32) (i32.const 6))
    (call $write_body (i32.const 1) (i32.const 48) (i32.const 13))
    (i64.const 0))
  (func (export "handle_response") (param i32 i32)))
