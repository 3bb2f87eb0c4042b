;; Table bomb: grows a funcref table by 32 Mi elements (8 bytes each: 256 MiB
;; of host memory) on each request and fills it. memory_limit only caps linear
;; memory; the host must also cap tables (table.grow gives -1), or one instance
;; costs the host hundreds of MiB. A refused grow makes the guest trap.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func $f)
  (elem declare func $f)
  (func (export "handle_request") (result i64)
    (local $old i32)
    (local.set $old (table.grow $t (ref.func $f) (i32.const 0x2000000)))
    (if (i32.eq (local.get $old) (i32.const -1)) (then unreachable))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
