;; Declares 125 MiB of initial memory (2000 pages): over the default 64 MiB
;; memory_limit, so the host must refuse to load it rather than allocate it.
(module
  (memory (export "memory") 2000)
  (func (export "handle_request") (result i64) (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
