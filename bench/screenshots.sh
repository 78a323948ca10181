#!/usr/bin/env bash
# Renders each question's TensorBoard dashboard (the Custom Scalars tab) in headless Chromium to
# docs/screenshots/<model>.png, so that what the README shows is what a browser draws.
#
#   bash bench/screenshots.sh            # from the repository root, its venv active, MNIST_DIR set
#   bash bench/screenshots.sh cnn        # only these questions (cnn deep-sigmoid dense-mlp scaled-conv)
#
# For each question it trains a short run (a few hundred steps at most, into a temporary folder),
# starts the real TensorBoard server on a free loopback port, waits until the run's layout and the
# question's series are served (bench/screenshots.py wait), screenshots
# http://127.0.0.1:PORT/#custom_scalars with smoothing off, stops the server and shrinks the PNG.
# It installs nothing: without Debian's chromium package it says so and stops. The four runs and
# screenshots took 2.9 minutes at load average 2 (5.6 at load 4) on 2 shared cores (the cnn's 448 steps are most of it).
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
if [ -z "$CHROMIUM" ]; then
    echo "bench/screenshots.sh: needs headless Chromium: apt-get install -y chromium (Debian's package)," \
         "or CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
PYTHON="${PYTHON:-python}"
OUT="${OUT:-docs/screenshots}"
SIZE="${SIZE:-1280,1000}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
SERVER=""
cleanup() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

SANDBOX=()
if [ "$(id -u)" = 0 ]; then SANDBOX=(--no-sandbox); fi  # Chromium refuses to run as root with its sandbox

ONLY=("$@")
shot() {  # shot NAME TRAIN.PY-ARGS...: train, serve, screenshot
    local name="$1"; shift
    if [ ${#ONLY[@]} -gt 0 ] && [[ " ${ONLY[*]} " != *" $name "* ]]; then return; fi
    local run="$WORK/$name"
    echo "== $name: python train.py $*"
    "$PYTHON" train.py "$@" --run-dir "$run" > "$WORK/$name.log" 2>&1 || { tail -20 "$WORK/$name.log" >&2; exit 1; }
    grep '^summary:' "$WORK/$name.log" || true
    local port; port="$("$PYTHON" bench/screenshots.py port)"
    "$PYTHON" -m tensorboard.main --logdir "$run" --host 127.0.0.1 --port "$port" > "$WORK/$name.tb.log" 2>&1 &
    SERVER=$!
    "$PYTHON" bench/screenshots.py wait "http://127.0.0.1:$port"
    # TensorBoard is a JavaScript app: the virtual-time budget lets it fetch and draw the charts
    "$CHROMIUM" --headless "${SANDBOX[@]}" --disable-gpu --hide-scrollbars --window-size="$SIZE" \
        --virtual-time-budget=20000 --screenshot="$OUT/$name.png" \
        "http://127.0.0.1:$port/#custom_scalars&_smoothingWeight=0" > "$WORK/$name.chromium.log" 2>&1 \
        || { tail -5 "$WORK/$name.chromium.log" >&2; exit 1; }
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
    "$PYTHON" bench/screenshots.py shrink "$OUT/$name.png"
    echo "   $OUT/$name.png ($(wc -c < "$OUT/$name.png") bytes)"
}

# 448 small steps: enough for the smallest target probability to cross the clip
shot cnn --model cnn --train-size 1024 --batch-size 32 --epochs 14 --log-every 16 --test-size 300 \
    --scan-images 300 --scan-norm-images 0
shot deep-sigmoid --model deep-sigmoid --train-size 6000 --log-every 5 --test-size 500
shot dense-mlp --model dense-mlp --train-size 6400 --log-every 5 --test-size 500
shot scaled-conv --model scaled-conv --compare --train-size 3200 --test-size 500 --log-every 5
