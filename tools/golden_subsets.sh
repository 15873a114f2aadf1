#!/bin/sh
# `make test-subsets`: golden sets shaped unlike the public one, built from SRC (default
# weights/test) in a temporary folder with nothing but sh and ./test --rewrite, each checked with
# ./test: a set holding only part of the layout passes, with one note: per kind it lacks; a
# damaged set fails. Appends one "N passed, N failed" line per run to LOG (default .test.log).
#   tokenizer-only    tokenizer/ alone
#   one-golden        one model and its unet golden, manifest.json listing absent files, entries
#                     no test reads (models/taesd/, a .gguf) and a pipeline golden of a scheduler
#                     sd.h lacks (noted, skipped)
#   f32-renamed       tiny-sd1 as an F32-only models/renamed.safetensors with its goldens in renamed/
#   te-some-layers    text-encoder goldens holding only hidden_states.0 and the last layer's
#   bumped (fails)    one-golden with one value of the unet golden's case0.out moved by 1 %
#   bad-lora (fails)  one model, lora/ and a lora_unet golden that are other files
#   truncated (fails) tokenizer-only with tokenizer.safetensors cut short
SRC=${1:-weights/test}
LOG=${2:-.test.log}
T=$(mktemp -d "${TMPDIR:-/tmp}/sdh_subsets_XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
failed=0

# check NAME pass|fail: runs ./test on $T/NAME and logs the outcome
check() {
    ./test "$T/$1" > "$T/$1.out" 2>&1
    rc=$?
    dup=$(grep '^note:' "$T/$1.out" | sort | uniq -d)
    last=$(tail -1 "$T/$1.out")
    if [ "$2" = pass ]; then
        case "$last" in *" passed, 0 failed") ;; *" passed, "*" failed") rc=1 ;; *) last="0 passed, 1 failed (exit $rc)" ;; esac
        echo "${last% (*}" >> "$LOG"
        if [ $rc -ne 0 ] || [ -n "$dup" ]; then
            failed=1
            echo "FAIL: ./test $1 (a set that must pass): exit $rc"; grep -E '^(FAIL|note)' "$T/$1.out"
            [ $rc -ne 0 ] || echo "0 passed, 1 failed" >> "$LOG"
            [ -z "$dup" ] || { echo "notes printed twice:"; echo "$dup"; }
        fi
        echo "subset $1: $last, $(grep -c '^note:' "$T/$1.out") notes"
    elif [ $rc -ne 0 ] && grep -q '^FAIL' "$T/$1.out"; then
        echo "1 passed, 0 failed" >> "$LOG"
        echo "subset $1: fails as it must ($(grep -m1 '^FAIL' "$T/$1.out" | cut -c1-150))"
    else
        failed=1
        echo "0 passed, 1 failed" >> "$LOG"
        echo "FAIL: ./test $1 (a damaged set) exited $rc without a FAIL line"
    fi
}

rewrite() { ./test --rewrite "$@" || { echo "FAIL: ./test --rewrite $*"; exit 1; }; }

mkdir -p "$T/tokenizer-only"
cp -R "$SRC/tokenizer" "$T/tokenizer-only/"
check tokenizer-only pass

mkdir -p "$T/one-golden/models/taesd" "$T/one-golden/tiny-sd1"
cp "$SRC/models/tiny-sd1-fp16.safetensors" "$T/one-golden/models/"
cp "$SRC/tiny-sd1/unet.safetensors" "$T/one-golden/tiny-sd1/"
cp "$SRC/manifest.json" "$T/one-golden/"
cp "$SRC/rng/torch_randn.safetensors" "$T/one-golden/models/taesd/taesd_decoder.safetensors"
echo "GGUF" > "$T/one-golden/models/tiny-sd1-q8_0.gguf"
rewrite "$SRC/tiny-sd1/txt2img_4steps_256x256.safetensors" "$T/one-golden/tiny-sd1/txt2img_unipc_4steps_256x256.safetensors" \
    --meta scheduler_class=UniPCMultistepScheduler
check one-golden pass

mkdir -p "$T/f32-renamed/models" "$T/f32-renamed/renamed"
rewrite "$SRC/models/tiny-sd1-fp16.safetensors" "$T/f32-renamed/models/renamed.safetensors" --f32
cp "$SRC/tiny-sd1/"* "$T/f32-renamed/renamed/"
check f32-renamed pass

mkdir -p "$T/te-some-layers/models" "$T/te-some-layers/tiny-sd2" "$T/te-some-layers/tiny-sdxl"
for m in tiny-sd2 tiny-sdxl; do cp "$SRC/models/$m-fp16.safetensors" "$T/te-some-layers/models/"; done
rewrite "$SRC/tiny-sd2/text_encoder.safetensors" "$T/te-some-layers/tiny-sd2/text_encoder.safetensors" \
    --drop hidden_states.1 --drop hidden_states.2
rewrite "$SRC/tiny-sdxl/text_encoder.safetensors" "$T/te-some-layers/tiny-sdxl/text_encoder.safetensors" \
    --drop te1.hidden_states.1 --drop te1.hidden_states.2 --drop te2.hidden_states.1 --drop te2.hidden_states.2
check te-some-layers pass

mkdir -p "$T/bumped/models" "$T/bumped/tiny-sd1"
cp "$SRC/models/tiny-sd1-fp16.safetensors" "$T/bumped/models/"
rewrite "$SRC/tiny-sd1/unet.safetensors" "$T/bumped/tiny-sd1/unet.safetensors" --bump case0.out
check bumped fail

mkdir -p "$T/bad-lora/models" "$T/bad-lora/tiny-sd1" "$T/bad-lora/lora"
cp "$SRC/models/tiny-sd1-fp16.safetensors" "$T/bad-lora/models/"
cp "$SRC/rng/torch_randn.safetensors" "$T/bad-lora/lora/tiny-sd1_kohya_r4.safetensors"
cp "$SRC/rng/torch_randn.safetensors" "$T/bad-lora/tiny-sd1/lora_unet.safetensors"
check bad-lora fail

mkdir -p "$T/truncated/tokenizer"
size=$(wc -c < "$SRC/tokenizer/tokenizer.safetensors")
head -c $((size / 2)) "$SRC/tokenizer/tokenizer.safetensors" > "$T/truncated/tokenizer/tokenizer.safetensors"
check truncated fail

exit $failed
