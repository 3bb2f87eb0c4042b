;; A guest that does its set-up in the module's start section: it reads its
;; config, enables buffer_response for every request and logs, before any request.
(module
  (import "http_handler" "enable_features" (func $enable_features (param i32) (result i32)))
  (import "http_handler" "get_config" (func $get_config (param i32 i32) (result i32)))
  (import "http_handler" "log" (func $log (param i32 i32 i32)))
  (import "http_handler" "set_header_value" (func $set_header_value (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "start section ran")
  (data (i32.const 32) "x-config")
  (global $features (mut i32) (i32.const 0))
  (global $config_len (mut i32) (i32.const 0))
  (func $init
    (global.set $features (call $enable_features (i32.const 2)))
    (global.set $config_len (call $get_config (i32.const 256) (i32.const 256)))
    (call $log (i32.const 0) (i32.const 0) (i32.const 17)))
  (start $init)
  (func (export "handle_request") (result i64) (i64.const 1))
  (func (export "handle_response") (param i32 i32)
    ;; allowed after next only because buffer_response was enabled at start
    (call $set_header_value (i32.const 1) (i32.const 32) (i32.const 8) (i32.const 256) (global.get $config_len))))
