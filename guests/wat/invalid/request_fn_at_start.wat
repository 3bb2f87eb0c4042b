;; Calls a request-scoped function (get_method) from its start section: must fail at load.
(module
  (import "http_handler" "get_method" (func $get_method (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $init (drop (call $get_method (i32.const 0) (i32.const 16))))
  (start $init)
  (func (export "handle_request") (result i64) (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
