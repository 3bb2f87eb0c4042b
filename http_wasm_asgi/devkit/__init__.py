"""Guest authors' tools: `GuestClient` and friends (`testing`), the pytest plugin (`pytest_plugin`), `trace`
and `bench` (`devtools`), the conformance cases (`conformance`)."""
