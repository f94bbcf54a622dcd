# The two commands a newcomer needs. Each installs what it needs first
# (libclang for RocksDB's bindgen, the wasm32-wasip2 target; for the tests
# also the real peers they talk to), then runs cargo.

.PHONY: demo test setup peers

demo: setup
	cargo run --release -- demo

test: peers
	cargo test --workspace

setup:
	@scripts/setup.sh

peers:
	@scripts/setup.sh --peers
