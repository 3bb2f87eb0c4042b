;; Declares 312.5 MiB of initial memory (5000 pages): over the default 256 MiB
;; memory_limit, so the host must refuse to load it rather than allocate it.
(module
  (memory (export "memory") 5000)
  (func (export "handle_request") (result i64) (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
