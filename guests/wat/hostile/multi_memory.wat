;; Eight extra (unexported) linear memories of 15 pages (960 KiB) each, all
;; touched at _initialize: 7.5 MiB in one instance. Each memory alone is under
;; a 1 MiB memory_limit; the instance as a whole is not, and must be refused.
(module
  (memory (export "memory") 1)
  (memory $m1 15) (memory $m2 15) (memory $m3 15) (memory $m4 15)
  (memory $m5 15) (memory $m6 15) (memory $m7 15) (memory $m8 15)
  (func (export "_initialize")
    (memory.fill $m1 (i32.const 0) (i32.const 1) (i32.const 983040))
    (memory.fill $m2 (i32.const 0) (i32.const 1) (i32.const 983040))
    (memory.fill $m3 (i32.const 0) (i32.const 1) (i32.const 983040))
    (memory.fill $m4 (i32.const 0) (i32.const 1) (i32.const 983040))
    (memory.fill $m5 (i32.const 0) (i32.const 1) (i32.const 983040))
    (memory.fill $m6 (i32.const 0) (i32.const 1) (i32.const 983040))
    (memory.fill $m7 (i32.const 0) (i32.const 1) (i32.const 983040))
    (memory.fill $m8 (i32.const 0) (i32.const 1) (i32.const 983040)))
  (func (export "handle_request") (result i64) (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
