#!/usr/bin/env bash
# Run the jobs of benchmark presets on a lent GPU machine (many cores, one GPU) and pack the work folder, so
# that the CPU timing runs later on the machine the results name:
#
#   benchmarks/gpu_jobs.sh OUT_DIR [DEADLINE_S]      # on the GPU machine
#   tar xf <parts...> && python -m benchmarks.compare --preset fashion-resnet20   # here: all cached, only timing
#
# Jobs run in worker processes that share the GPU (`--workers`); both presets run at once. After DEADLINE_S
# every job still running is killed (finished jobs are cached; a rerun resumes). The packed work folder is
# split into 15 MiB parts: the first PARTS_NOW go to OUT_DIR, the rest stay in benchmarks/work/parts (fetch
# them with further calls; `cat parts... | tar xf -` extracts whatever whole files the parts hold).
# Needs: torch with CUDA, torch-pruning (CARRY/whl/*.whl is installed into /tmp/site when present) and the
# Fashion-MNIST IDX files (CARRY/fashion, or the Debian package).
set -uo pipefail
out=${1:?usage: benchmarks/gpu_jobs.sh OUT_DIR [DEADLINE_S]}
deadline=${2:-420}
carry=${CARRY:-.devcarry}
parts_now=${PARTS_NOW:-4}
work=benchmarks/work
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if compgen -G "$carry/whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$carry"/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d "$carry/fashion" ] && export IDAP_DATA_ROOT=$carry/fashion
python3 -c "import os, torch, torch_pruning; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0), 'cores', os.cpu_count())" || exit 1
mkdir -p "$out" "$work"
touch "$work/.started"
started=$(date +%s)
# One line per preset: "PRESET WORKERS [more benchmarks.compare arguments]"; all run at once.
# Default: the two main budget-mode presets (issue 17); the committed equal-MACs ResNet results came from
# RUNS="fashion-resnet20 6
# fashion-resnet56 8 --targets 3". VGG-16 and the ViT (budget-fashion-vgg16 / -vit) fit a second slot:
# every finished job is cached, so a later slot resumes.
runs=${RUNS:-"budget-fashion-resnet56 6
budget-fashion-mobilenetv2 6"}
while read -r preset workers extra; do
  [ -n "$preset" ] || continue
  # shellcheck disable=SC2086  # extra holds several arguments
  timeout -k 10 "$deadline" python3 -m benchmarks.compare --preset "$preset" --device "${DEVICE:-cuda}" --threads 1 \
    --workers "$workers" --skip-speed $extra >"$out/$preset.log" 2>&1 &
done <<<"$runs"
wait
echo "jobs ended after $(($(date +%s) - started)) s"
dirs=()
while read -r preset _; do
  [ -n "$preset" ] || continue
  echo "$preset: $(find "$work/$preset" -name result.json 2>/dev/null | wc -l) jobs with results"
  dirs+=("$work/$preset")
done <<<"$runs"
grep -h "FAILED\|Error\|error:" "$out"/*.log | head -20
# Results first, so that a truncated set of parts still extracts every result.json; then the bundles, the
# big near-dense ones of the depth comparison last; a dense model that came with the call is not sent back.
find "$work/dense" "${dirs[@]}" -name '*.json' >"$work/files.txt"
find "$work/dense" -type f ! -name '*.json' -newer "$work/.started" >>"$work/files.txt"
find "${dirs[@]}" -type f ! -name '*.json' ! -name .claim ! -path '*/depth-*' >>"$work/files.txt"
find "${dirs[@]}" -type f ! -name '*.json' ! -name .claim -path '*/depth-*' >>"$work/files.txt"
rm -rf "$work/parts" && mkdir -p "$work/parts"
tar cf - -T "$work/files.txt" | split -b 15M -d - "$work/parts/work.tar.part"
ls -la "$work/parts"
n=0
for part in "$work"/parts/work.tar.part*; do
  if [ "$n" -lt "$parts_now" ]; then mv "$part" "$out/"; fi
  n=$((n + 1))
done
echo "parts: $n, in OUT: $((n < parts_now ? n : parts_now)), left in $work/parts: $(ls "$work/parts" | wc -l)"
tail -n 3 "$out"/*.log
