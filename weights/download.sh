#!/bin/sh
# Fetches Stable Diffusion weights and CLIP's tokenizer vocabulary into weights/, resuming partial
# downloads and checking each file against the SHA-256 the hub reports for it (its LFS object id).
#   sh weights/download.sh            CLIP merges.txt only (every model needs it)
#   sh weights/download.sh sd15       + SD 1.5 single-file checkpoint, fp16 (2.1 GB)
#   sh weights/download.sh sd21       + SD 2.1 768 (v-prediction) single-file checkpoint (5.2 GB)
#   sh weights/download.sh sd-turbo   + SD-Turbo (SD 2.1 architecture, 1-4 steps; 5.2 GB)
#   sh weights/download.sh sdxl       + SDXL base 1.0 single-file checkpoint (6.9 GB)
#   sh weights/download.sh sdxl-turbo + SDXL-Turbo, fp16 (SDXL architecture, 1-4 steps; 6.9 GB)
# SD_HUB=URL points it at a mirror (or tools/hub_standin.py, which the tests use); SD_FETCH=wget
# uses wget even where curl is installed.
set -eu
cd "$(dirname "$0")"
hub=${SD_HUB:-https://huggingface.co}

# headers URL / fetch URL OUT: curl, or wget where curl is missing (both resume a partial OUT).
if [ "${SD_FETCH:-}" != wget ] && command -v curl >/dev/null 2>&1; then
  headers() { curl -sIL "$1"; }
  fetch() { curl -fL --retry 3 -C - -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  headers() { wget -q -S --spider "$1" 2>&1 | sed 's/^ *//'; }
  fetch() { wget -c -t 3 -O "$2" "$1"; }
else
  echo "download.sh needs curl or wget"; exit 1
fi

# get REPO PATH FILE: download with resume, then compare the SHA-256 with the hub's x-linked-etag.
get() {
  url="$hub/$1/resolve/main/$2"
  want=$(headers "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-linked-etag" {gsub(/"/, "", $2); print $2}' | tail -1)
  if [ -f "$3" ] && [ -n "$want" ] && [ "$(sha256sum "$3" | cut -d' ' -f1)" = "$want" ]; then
    echo "$3: already here, checksum ok"; return 0
  fi
  if [ -f "$3" ] && [ -z "$want" ]; then
    echo "$3: already here; the hub gave no checksum (offline?), kept unchecked"; return 0
  fi
  echo "fetching $3 from $1"
  fetch "$url" "$3.part" || { echo "download of $url failed (rerun to resume)"; exit 1; }
  if [ -n "$want" ]; then
    got=$(sha256sum "$3.part" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$3: SHA-256 $got, the hub says $want: removed"; rm -f "$3.part"; exit 1; }
    echo "$3: SHA-256 ok"
  else
    echo "$3: the hub gave no checksum for it (not an LFS file); kept unchecked"
  fi
  mv "$3.part" "$3"
}

get openai/clip-vit-large-patch14 merges.txt merges.txt
case "${1:-}" in
  sd15) get stable-diffusion-v1-5/stable-diffusion-v1-5 v1-5-pruned-emaonly-fp16.safetensors sd15.safetensors ;;
  sd21) get stabilityai/stable-diffusion-2-1 v2-1_768-ema-pruned.safetensors sd21.safetensors ;;
  sd-turbo) get stabilityai/sd-turbo sd_turbo.safetensors sd-turbo.safetensors ;;
  sdxl) get stabilityai/stable-diffusion-xl-base-1.0 sd_xl_base_1.0.safetensors sdxl.safetensors ;;
  sdxl-turbo) get stabilityai/sdxl-turbo sd_xl_turbo_1.0_fp16.safetensors sdxl-turbo.safetensors ;;
  "") ;;
  *) echo "usage: $0 [sd15|sd21|sd-turbo|sdxl|sdxl-turbo]"; exit 1 ;;
esac
