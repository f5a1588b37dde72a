# Walbrook's two commands. Both install what is missing first (scripts/setup.sh).
.PHONY: demo test setup bench chaos fuzz

## make demo: run the pipeline on a demo table next to throwaway PostgreSQL + NATS
demo:
	bash scripts/demo.sh

## make test: every Rust and Python test, against real servers, plus fmt and clippy
test:
	bash scripts/test.sh

## make setup: only install what is missing
setup:
	bash scripts/setup.sh

## make bench: pipeline benchmarks against the physical references (release build).
## ROWS sets the backlog size; BENCH_ARGS passes more walbrook-bench flags (see
## `walbrook-bench --help`); BENCH_OUT is where results go (default results);
## BENCH_PROFILE=dev runs the same parts on the debug build (the test command's smoke run,
## scripts/bench-smoke.sh: figures from it mean nothing).
DECODE_ARGS ?=
ROWS ?= 1000000
BENCH_ARGS ?=
BENCH_OUT ?= results
BENCH_PROFILE ?= release
BENCH_BIN = $${CARGO_TARGET_DIR:-target}/$(if $(filter dev,$(BENCH_PROFILE)),debug,$(BENCH_PROFILE))
bench:
	bash scripts/setup.sh
	cargo build --profile $(BENCH_PROFILE) -p walbrook-cli -p walbrook-harness
	$(BENCH_BIN)/walbrook-bench --rows $(ROWS) --out $(BENCH_OUT) $(BENCH_ARGS)
	mkdir -p $(BENCH_OUT)
	# decode: Rust client on one core, then the Python client versus fastavro (docs/python.md)
	cargo run --profile $(BENCH_PROFILE) -q -p walbrook-bindings --example decode_bench -- $(DECODE_ARGS) --out $(BENCH_OUT)/decode | tee $(BENCH_OUT)/decode-rust.json
	VIRTUAL_ENV="$$PWD/.venv" .venv/bin/maturin develop $(if $(filter dev,$(BENCH_PROFILE)),,--profile $(BENCH_PROFILE)) --quiet -m bindings/Cargo.toml
	.venv/bin/python bindings/bench/decode_bench.py $(BENCH_OUT)/decode | tee $(BENCH_OUT)/decode-python.json

## make chaos: the fault-injection suite at full length (30 producer kill cycles and the
## 3-node cluster case), then the sinks (postgres, webhook, search) each killed with SIGKILL
## 20 times under load, then the bad-input corpus (cli/tests/bad_input.rs). The test command
## runs the suite shorter in its workspace run (10 cycles, no cluster case, 4-5 sink kills)
## and this target itself with CHAOS_CYCLES=3 SINK_CHAOS_CYCLES=2.
## CHAOS_CYCLES, SINK_CHAOS_CYCLES and TEST_CHAOS_SEED override.
CHAOS_CYCLES ?= 30
SINK_CHAOS_CYCLES ?= 20
chaos:
	bash scripts/setup.sh
	TEST_CHAOS_CYCLES=$(CHAOS_CYCLES) cargo test -p walbrook-cli --test produce_faults -- --include-ignored --nocapture --test-threads 1
	TEST_SINK_CHAOS_CYCLES=$(SINK_CHAOS_CYCLES) cargo test -p walbrook-cli --test sink_postgres --test sink_webhook --test sink_search -- --nocapture --test-threads 1 killed_mid_stream
	cargo test -p walbrook-cli --test bad_input

## make fuzz: coverage-guided fuzzing of every cargo-fuzz target with AddressSanitizer
## (scripts/fuzz-smoke.sh; FUZZ_SECONDS per target, default 60). The test command runs the
## targets on their committed inputs only (fuzz/tests); see docs/fuzzing.md.
FUZZ_SECONDS ?= 60
fuzz:
	bash scripts/setup.sh
	bash scripts/fuzz-smoke.sh -t $(FUZZ_SECONDS)
