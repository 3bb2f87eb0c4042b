;; Imports its memory from the host ("env" "memory"), as some toolchains do:
;; the host provides no memory (or anything else) outside http_handler and WASI,
;; so loading must fail naming the import.
(module
  (import "env" "memory" (memory 1))
  (export "memory" (memory 0))
  (func (export "handle_request") (result i64) (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
