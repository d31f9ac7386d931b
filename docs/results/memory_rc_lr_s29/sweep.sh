set -x
for args in "--memory-lr 1e-3" "--memory-lr 4e-3" "--memory-steps 4 --memory-lr 1e-3"; do
  python scripts/bench_memory.py --task return_cubes --episodes 2 --modes temp-lora $args
done
