;; memory.grow bomb: asks for 4 GiB at once, then grows 16 pages at a time
;; until the host says no (-1), touching each new page. Answers the request
;; itself with an 8-byte body: the 4 GiB grow's result (i32, must be -1) and
;; the pages it ended up with (i32), so a test can check both against the limit.
(module
  (import "http_handler" "write_body" (func $write_body (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "handle_request") (result i64)
    (local $old i32)
    (i32.store (i32.const 0) (memory.grow (i32.const 0x10000)))
    (block $refused
      (loop $more
        (local.set $old (memory.grow (i32.const 16)))
        (br_if $refused (i32.eq (local.get $old) (i32.const -1)))
        (memory.fill (i32.shl (local.get $old) (i32.const 16)) (i32.const 1) (i32.const 0x100000))
        (br $more)))
    (i32.store (i32.const 4) (memory.size))
    (call $write_body (i32.const 1) (i32.const 0) (i32.const 8))
    (i64.const 0))
  (func (export "handle_response") (param i32 i32)))
