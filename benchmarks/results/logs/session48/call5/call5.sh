BENCH_ARGS="--sections activations --budget-s 420" OUT=$OUT/q timeout 540 bash benchmarks/device_run.sh bench-quick
