#!/bin/sh
# weights/download.sh and `make run` against a local stand-in for the hub (tools/hub_standin.py):
# a fresh download, the resume of a cut transfer, a checksum mismatch, a file without checksum,
# and `make run` fetching "SD 1.5" (the tiny test model in its place) and drawing with it.
# Ends with `N passed, N failed`. Needs python3 and curl (or wget).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
pass=0 fail=0
check() { if eval "$2"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL download: $1"; fi; }

# the hub's files: merges.txt, and the tiny SD1 model in the place of SD 1.5's checkpoint
hub=$tmp/hub
mkdir -p "$hub/openai/clip-vit-large-patch14" "$hub/stable-diffusion-v1-5/stable-diffusion-v1-5" "$hub/stabilityai/sd-turbo" \
         "$hub/stabilityai/stable-diffusion-2-1"
cp "$top/weights/merges.txt" "$hub/openai/clip-vit-large-patch14/merges.txt"
cp "$top/weights/test/models/tiny-sd1-fp16.safetensors" "$hub/stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly-fp16.safetensors"
cp "$top/weights/test/models/tiny-sd2-fp16.safetensors" "$hub/stabilityai/sd-turbo/sd_turbo.safetensors"
cp "$top/weights/test/models/tiny-sd2-fp16.safetensors" "$hub/stabilityai/stable-diffusion-2-1/v2-1_768-ema-pruned.safetensors"
python3 "$top/tools/hub_standin.py" "$hub" --cut stabilityai/sd-turbo/sd_turbo.safetensors \
  --wrong-sum stabilityai/stable-diffusion-2-1/v2-1_768-ema-pruned.safetensors \
  --no-sum openai/clip-vit-large-patch14/merges.txt > "$tmp/port" 2> "$tmp/requests" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$tmp"' EXIT
for i in 1 2 3 4 5 6 7 8 9 10; do [ -s "$tmp/port" ] && break; sleep 0.2; done
export SD_HUB="http://127.0.0.1:$(cat "$tmp/port")"

# a fresh weights/ with the script alone
w=$tmp/weights
mkdir -p "$w" && cp "$top/weights/download.sh" "$w/"
sh "$w/download.sh" sd15 > "$tmp/out1" 2>&1
check "fresh download" "cmp -s '$w/sd15.safetensors' '$top/weights/test/models/tiny-sd1-fp16.safetensors' && grep -q 'sd15.safetensors: SHA-256 ok' '$tmp/out1'"
check "no checksum: kept, said so" "cmp -s '$w/merges.txt' '$top/weights/merges.txt' && grep -q 'merges.txt: the hub gave no checksum' '$tmp/out1'"
sh "$w/download.sh" sd15 > "$tmp/out2" 2>&1
check "a file already here is checked, not fetched again" "grep -q 'sd15.safetensors: already here, checksum ok' '$tmp/out2' && [ \$(grep -c 'GET .*v1-5-pruned' '$tmp/requests') = 1 ]"

# a transfer cut halfway: the run fails, the rerun resumes with a Range request
sh "$w/download.sh" sd-turbo > "$tmp/out3" 2>&1; rc=$?
check "cut transfer: non-zero exit, partial file kept" "[ $rc != 0 ] && [ -s '$w/sd-turbo.safetensors.part' ] && [ ! -e '$w/sd-turbo.safetensors' ]"
sh "$w/download.sh" sd-turbo > "$tmp/out4" 2>&1; rc=$?
check "cut transfer resumed" "[ $rc = 0 ] && cmp -s '$w/sd-turbo.safetensors' '$top/weights/test/models/tiny-sd2-fp16.safetensors' && grep -q 'GET .*sd_turbo.safetensors bytes=[1-9]' '$tmp/requests'"

# the same with wget
rm -f "$w/sd-turbo.safetensors"
SD_FETCH=wget sh "$w/download.sh" sd-turbo > "$tmp/out4w" 2>&1; rc=$?
check "wget: a fresh download" "[ $rc = 0 ] && cmp -s '$w/sd-turbo.safetensors' '$top/weights/test/models/tiny-sd2-fp16.safetensors'"
SD_FETCH=wget sh "$w/download.sh" sd21 > "$tmp/out5w" 2>&1; rc=$?
check "wget: checksum mismatch removed" "[ $rc != 0 ] && [ ! -e '$w/sd21.safetensors' ] && [ ! -e '$w/sd21.safetensors.part' ]"

# a checksum that does not match: the file is removed, the exit is non-zero
sh "$w/download.sh" sd21 > "$tmp/out5" 2>&1; rc=$?
check "checksum mismatch: removed, non-zero exit" "[ $rc != 0 ] && [ ! -e '$w/sd21.safetensors' ] && [ ! -e '$w/sd21.safetensors.part' ] && grep -q 'removed' '$tmp/out5'"

# make run's path: a copy of the project without weights fetches "SD 1.5" and draws with it
r=$tmp/repo
mkdir -p "$r/weights" && cp "$top/Makefile" "$top/sd.h" "$top/example.c" "$r/" && cp "$top/weights/download.sh" "$r/weights/"
make -s -C "$r" run PROMPT="a lighthouse" RUN_ARGS="-W 64 -H 64 --steps 2" > "$tmp/out6" 2>&1; rc=$?
check "make run downloads and draws" "[ $rc = 0 ] && [ -s '$r/lighthouse.png' ] && cmp -s '$r/weights/sd15.safetensors' '$top/weights/test/models/tiny-sd1-fp16.safetensors'"

[ $fail = 0 ] || for f in "$tmp"/out*; do echo "--- $f"; cat "$f"; done
echo "$pass passed, $fail failed"
[ $fail = 0 ]
