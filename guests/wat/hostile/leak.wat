;; Leaks: every request allocates a fresh 64 KiB page (memory.grow) and touches
;; it, and never frees anything, like a guest with a leaky allocator. When the
;; host refuses to grow memory (memory_limit), it aborts like an allocator
;; would (unreachable): the request fails, the instance must be replaced.
(module
  (memory (export "memory") 1)
  (func (export "handle_request") (result i64)
    (local $page i32)
    (local.set $page (memory.grow (i32.const 1)))
    (if (i32.eq (local.get $page) (i32.const -1)) (then unreachable))
    (memory.fill (i32.shl (local.get $page) (i32.const 16)) (i32.const 0xAB) (i32.const 0x10000))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
