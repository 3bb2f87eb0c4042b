;; Spins forever calling a host function (get_uri): the CPU limit must stop a
;; loop that spends most of its time inside the host, not only pure wasm loops.
(module
  (import "http_handler" "get_uri" (func $get_uri (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "handle_request") (result i64)
    (loop $forever
      (drop (call $get_uri (i32.const 0) (i32.const 1024)))
      (br $forever))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
