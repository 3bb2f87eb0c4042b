;; Unbounded recursion in handle_request: the wasm stack overflows (a trap),
;; which must not take the host's own stack with it.
(module
  (memory (export "memory") 1)
  (func $down (param $n i64) (result i64)
    (i64.add (call $down (i64.add (local.get $n) (i64.const 1))) (i64.const 1)))
  (func (export "handle_request") (result i64) (call $down (i64.const 0)))
  (func (export "handle_response") (param i32 i32)))
