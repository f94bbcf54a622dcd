# The two commands a newcomer needs. Each installs what it needs first
# (libclang for RocksDB's bindgen, the wasm32-wasip2 target), then runs cargo.

.PHONY: demo test setup

demo: setup
	cargo run --release -- demo

test: setup
	cargo test --workspace

setup:
	@scripts/setup.sh
