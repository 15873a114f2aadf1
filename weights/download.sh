#!/bin/sh
# Fetches real Stable Diffusion weights and CLIP's tokenizer vocabulary into weights/.
#   sh weights/download.sh sd15      SD 1.5 single-file checkpoint (fp16 weights, ~2 GB)
#   sh weights/download.sh sd21      SD 2.1 768 (v-prediction) single-file checkpoint (~2.6 GB fp16)
#   sh weights/download.sh merges    only CLIP's merges.txt (needed by every model)
set -eu
cd "$(dirname "$0")"
hub=https://huggingface.co
get() {   # url file
  [ -f "$2" ] && { echo "$2 already here"; return 0; }
  echo "fetching $2"
  curl -fL --retry 3 -o "$2.part" "$1" || wget -O "$2.part" "$1"
  mv "$2.part" "$2"
}
get "$hub/openai/clip-vit-large-patch14/resolve/main/merges.txt" merges.txt
case "${1:-merges}" in
  sd15) get "$hub/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly-fp16.safetensors" sd15.safetensors ;;
  sd21) get "$hub/stabilityai/stable-diffusion-2-1/resolve/main/v2-1_768-ema-pruned.safetensors" sd21.safetensors ;;
  merges) ;;
  *) echo "usage: $0 [sd15|sd21|merges]"; exit 1 ;;
esac
