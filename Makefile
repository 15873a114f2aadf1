# sd.h - build, test, benchmark.  `make` builds ./example, ./test and ./bench; `make test` is what CI runs.
# bash with pipefail: a test binary that crashes inside a pipe fails its target
SHELL    = /bin/bash
.SHELLFLAGS = -o pipefail -c
CC      ?= cc
CXX     ?= c++
WARN     = -std=c99 -Wall -Wextra -pedantic
OPT      = -O2 -march=native
LIBS     = -lm -lpthread
SAN      = -O1 -g1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
GOLDEN  ?= ../shared/golden
MERGES   = weights/merges.txt
MERGES_URL = https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/merges.txt
# every SIMD path this machine can run, each a build of the kernel tests: name=flags
PATHS    = avx512:-mavx512f avx2:-mavx2\ -mfma\ -mf16c sse2: f16c:-mf16c scalar:-DSD_NO_SIMD nothreads:-march=native\ -DSD_NO_THREADS

.PHONY: all run testbin bench-bin test test-run test-subsets test-download test-paths test-neon check-nm check-cxx tsan fuzz bench clean
all: example testbin bench-bin

example: example.c sd.h
	$(CC) $(WARN) $(OPT) -o $@ example.c $(LIBS)

# ./bench (tools/bench.c, built on example.c): the benchmark and the random-checkpoint writer.
# `make bench-bin` builds it; its file is named by full path, as `bench` is the target that runs it.
BENCH = $(CURDIR)/bench
bench-bin: $(BENCH)
$(BENCH): tools/bench.c example.c sd.h
	$(CC) $(WARN) $(OPT) -o $@ tools/bench.c $(LIBS)

# The README's first command: fetch SD 1.5 if missing, build, draw one picture.
PROMPT ?= a lighthouse on a cliff at dusk, oil painting
run: example
	@[ -f weights/sd15.safetensors ] || sh weights/download.sh sd15
	./example -m weights/sd15.safetensors -p "$(PROMPT)" -s 42 -o lighthouse.png $(RUN_ARGS)

# `make` builds ./test (run it as ./test [GOLDEN_DIR] [--only GROUP,...]); `make test` runs the whole check.
testbin: test.c sd.h
	$(CC) $(WARN) $(OPT) -D_DEFAULT_SOURCE -o test test.c $(LIBS)

# The sanitizer build the test target runs: warnings are errors.
test-san: test.c sd.h
	$(CC) $(WARN) -Werror $(SAN) -march=native -D_DEFAULT_SOURCE -o $@ test.c $(LIBS)

# CLIP's vocabulary is not ours to commit: take it from weights/, else ../shared/clip/, else the hub.
$(MERGES):
	@if [ -f ../shared/clip/merges.txt ]; then cp ../shared/clip/merges.txt $@; \
	else echo "fetching CLIP merges.txt from the Hugging Face hub into $@"; \
	  curl -fL --retry 3 -o $@ $(MERGES_URL) || wget -O $@ $(MERGES_URL) || \
	  { echo "could not get merges.txt: put it in weights/ (see weights/README.md)"; rm -f $@; exit 1; }; fi

# sd.h must not call the C allocator: the implementation object may not reference it.
check-nm: sd.h
	@printf '#define SD_IMPLEMENTATION\n#include "sd.h"\n' > .impl.c
	$(CC) $(WARN) -Werror -O1 -c .impl.c -o .impl.o
	@if nm -u .impl.o | grep -E '\b(malloc|calloc|realloc|free|aligned_alloc|posix_memalign|strdup)\b'; then \
	  echo "FAIL: sd.h references the C allocator"; rm -f .impl.c .impl.o; exit 1; fi
	@echo "nm: sd.h references no allocator"; rm -f .impl.c .impl.o

# Many users drop the header into C++ projects.
check-cxx: sd.h
	@printf '#define SD_IMPLEMENTATION\n#include "sd.h"\n' > .impl.cpp
	$(CXX) -x c++ -Wall -Wextra -Werror -O2 -march=native -c .impl.cpp -o .impl-cxx.o
	@echo "c++: sd.h compiles as C++"; rm -f .impl.cpp .impl-cxx.o

# The kernels once per SIMD path this CPU can run (its /proc/cpuinfo flags), under the sanitizers.
test-paths: test.c sd.h
	@for p in $(PATHS); do name=$${p%%:*}; flags=$${p#*:}; \
	  case $$name in avx512) need="avx512f";; avx2) need="avx2 fma f16c";; f16c) need="f16c";; *) need="";; esac; \
	  for f in $$need; do grep -qw $$f /proc/cpuinfo || { echo "note: no $$f here, the $$name path is not tested"; continue 2; }; done; \
	  $(CC) $(WARN) -Werror $(SAN) $$flags -D_DEFAULT_SOURCE -o test-$$name test.c $(LIBS) || exit 1; \
	  ./test-$$name --kernels | tee -a $(LOG) | tail -1 || exit 1; done

# NEON: cross-compiled for aarch64 and run under qemu-user, when those tools are installed.
test-neon: test.c sd.h
	@if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then \
	  aarch64-linux-gnu-gcc $(WARN) -Werror -O2 -static -D_DEFAULT_SOURCE -o test-neon test.c $(LIBS) && \
	  qemu-aarch64 ./test-neon --kernels | tee -a $(LOG) | tail -2; \
	else echo "note: aarch64-linux-gnu-gcc or qemu-aarch64 missing: NEON path not tested"; fi

# PNG files from an independent encoder (python's zlib) for the reader, when python3 is there.
TEST_ENV = SD_MERGES=$(MERGES) SD_PNG_CASES=.png_cases
test-run: test-san example $(BENCH) $(MERGES)
	@if command -v python3 >/dev/null; then rm -rf .png_cases; python3 tools/png_cases.py .png_cases >/dev/null; \
	else echo "note: no python3, generated PNG cases skipped"; fi
	$(TEST_ENV) ./test-san weights/test 2>&1 | tee -a $(LOG) | grep -v '^  '
	@if [ -d $(GOLDEN) ]; then $(TEST_ENV) ./test-san $(GOLDEN) 2>&1 | tee -a $(LOG) | grep -v '^  '; \
	else echo "note: $(GOLDEN) is absent; the diffusers-folder checks did not run"; fi
	@if command -v python3 >/dev/null; then \
	  for f in png ppm; do ./example -m weights/test/models/tiny-sd1-fp16.safetensors --tokenizer $(MERGES) \
	    -p "$$(printf 'caf\303\251 \347\214\253')" -W 64 -H 48 --steps 2 -s 3 -o .png_cases/cli.$$f 2>/dev/null || exit 1; done; \
	  if python3 tools/png_check.py .png_cases/cli.png; then echo "1 passed, 0 failed" >> $(LOG); \
	  else echo "0 passed, 1 failed" >> $(LOG); fi; \
	else echo "note: no python3, the independent PNG check skipped"; fi

# Golden sets shaped unlike the public one (parts of the layout, an F32-only model under another
# name, text-encoder goldens with some layers), built from weights/test in a temporary folder: each
# must pass with notes for what it lacks; damaged copies must fail. The optimized ./test, ~30 s.
test-subsets: testbin example $(MERGES)
	@SD_MERGES=$(MERGES) sh tools/golden_subsets.sh weights/test $(LOG)

# weights/download.sh and `make run` against a local stand-in for the hub, when python3 is there.
test-download: $(MERGES)
	@if command -v python3 >/dev/null; then sh tools/test_download.sh | tee -a $(LOG) | tail -1; \
	else echo "note: no python3, the download tests skipped"; fi

# The parts run side by side, one per CPU (each part's output shown when it ends); each part
# appends its "N passed, N failed" lines to a log of its own, and the sum of them all decides.
LOG = .test-$@.log
test: check-nm check-cxx
	@rm -f .test-*.log
	@$(MAKE) --no-print-directory -j$$(nproc 2>/dev/null || echo 2) --output-sync=target \
	  test-paths test-neon tsan test-run test-subsets test-download
	@cat .test-*.log > .test.log
	@awk '/^[0-9]+ passed, [0-9]+ failed$$/ { p += $$1; f += $$3 } END { printf "%d passed, %d failed\n", p, f; exit f != 0 }' .test.log

# ThreadSanitizer over the kernels and the thread pool, and over generations on one model from several threads.
tsan: test.c sd.h $(MERGES)
	$(CC) $(WARN) -Werror -O1 -g -fsanitize=thread -march=native -D_DEFAULT_SOURCE -o test-tsan test.c $(LIBS)
	./test-tsan --kernels | tee -a $(LOG) | tail -1
	SD_MERGES=$(MERGES) ./test-tsan weights/test --only threads,reader | tee -a $(LOG) | tail -1

# `make bench`: the speed of every stage on a full-size SD 1.5 with random f16 weights (made once
# into weights/bench/, 2.1 GB, ~15 s, no download): the FP32 FMA peak, GEMM/conv/attention kernels (beside OpenBLAS
# when it is installed), tokenizer, text encoder, UNet at 32x32 and 64x64 latents (batch 2: one
# guided step), VAE decoder to 256x256 and 512x512, a 4-step 256x256 txt2img, a 4-step LCM
# 512x512 txt2img (the LCM-LoRA recipe: guidance 1, one UNet pass a step), and the 64x64 UNet
# again with a random rank-32 LoRA on every attention and resnet layer (its cost). About 6 minutes
# on 2 idle cores. TAESD (a random one, 4.9 MB, made once into weights/bench/): its decode to 512x512
# and 1024x1024 beside the VAE's (the line gives both times and the speedup), and the 1-step
# (Turbo-style, no guidance) and 4-step LCM 512x512 txt2img decoded by each
# (~2 minutes). The UNet in the fast mode (int8 products), then text encoder and UNet of the
# model quantized by sd.h to q8_0 and to q4_0 (GGUF files made once, 1.8 GB together), in both
# modes, each line with its peak RSS, about 3 minutes. Text encoder, UNet and VAE again with f32 weights (the same model written in
# f32 on first use, 4.3 GB), about 4 minutes. Then a full-size SDXL base 1.0 with random f16 weights (made once, 6.9 GB, ~45 s):
# both text encoders and one guided UNet step at 64x64 latents (512 px), about 1.2 minutes more.
# Last, a 2-step 512x512 SD 1.5 txt2img with the exact decode in a 192 MB memory cgroup beside the
# same run without one (tools/memcap.sh, as root where cgroups are writable, else a note; ~1.5
# minutes): the cap, peak RSS, time and whether the images are the same bytes.
# BENCH_FULL=1 adds the whole 20-step 512x512 SD 1.5 txt2img (~3.5 minutes), an SDXL UNet step at
# 128x128 latents (1024 px) and a 1-step 1024x1024 SDXL txt2img with the VAE decoded in 32x32
# tiles (arena 478 MB, 2.2 GB untiled; the two ~4 minutes more, estimated from the GFLOPS), and
# a 1-step 1024x1024 SD 1.5 txt2img in a 640 MB cgroup beside one without (~4 minutes);
# BENCH_ARGS adds options to every run (see ./bench --help), e.g. BENCH_ARGS=--runs\ 1.
BENCH_MODEL = weights/bench/sd15-f16.safetensors
BENCH_MODEL_XL = weights/bench/sdxl-f16.safetensors
BENCH_Q8 = weights/bench/sd15-q8_0.gguf
BENCH_Q4 = weights/bench/sd15-q4_0.gguf
bench: $(BENCH) example $(MERGES) $(BENCH_MODEL) $(BENCH_MODEL_XL) $(BENCH_Q8) $(BENCH_Q4)
	./bench tokenizer,text,unet,vae,kernels --sizes 32,64 --vae-sizes 32 --threads 1,0 $(BENCH_ARGS)
	./bench vae,taesd,txt2img --vae-sizes 64 --taesd-sizes 64,128 --threads 0 --txt2img-size 256 --steps 4 $(BENCH_ARGS)
	./bench txt2img --threads 0 --txt2img-size 512 --steps 1 --guidance 0 --decoder vae,taesd $(BENCH_ARGS)
	./bench txt2img --threads 0 --txt2img-size 512 --steps 4 --sampler lcm --decoder vae,taesd $(BENCH_ARGS)
	./bench unet --sizes 64 --threads 0 --lora-rank 32 $(BENCH_ARGS)
	./bench unet --sizes 32,64 --threads 0 --quant-mode fast $(BENCH_ARGS)
	./bench text,unet --model $(BENCH_Q8) --sizes 32,64 --threads 0 $(BENCH_ARGS)
	./bench text,unet --model $(BENCH_Q4) --sizes 32,64 --threads 0 $(BENCH_ARGS)
	./bench error --model $(BENCH_Q8) --sizes 64 --txt2img-size 256 --steps 4 --threads 0 --quant-mode exact,fast $(BENCH_ARGS)
	./bench error --model $(BENCH_Q4) --sizes 64 --txt2img-size 256 --steps 4 --threads 0 --quant-mode exact,fast $(BENCH_ARGS)
	./bench error --sizes 64 --txt2img-size 256 --steps 4 --threads 0 --quant-mode fast $(BENCH_ARGS)
	./bench text,unet,vae --dtype f32 --sizes 32,64 --threads 1,0 $(BENCH_ARGS)
	./bench text,unet --kind sdxl --sizes 64 --threads 0 $(BENCH_ARGS)
	sh tools/memcap.sh $(BENCH_MODEL) 512 2 192
	sh tools/memcap.sh $(BENCH_MODEL) 512 2 192 0 --read-weights
	@if [ "$(BENCH_FULL)" = 1 ]; then ./bench txt2img --threads 0 --txt2img-size 512 --steps 20 $(BENCH_ARGS) && \
	  ./bench unet --kind sdxl --sizes 128 --threads 0 --runs 1 $(BENCH_ARGS) && \
	  ./bench txt2img --kind sdxl --threads 0 --txt2img-size 1024 --steps 1 --vae-tiling 32 $(BENCH_ARGS) && \
	  sh tools/memcap.sh $(BENCH_MODEL) 1024 1 640; fi

# sd.h's own quantized copies of the random SD 1.5 (example --convert, convolutions too): q8_0
# 1.17 GB, q4_0 0.66 GB, ~20 s. Order-only as the models above.
weights/bench/sd15-%.gguf: | $(BENCH_MODEL) example
	./example --convert $(BENCH_MODEL) $@ --type $*

# Order-only: a rebuilt ./bench does not make a new model.
$(BENCH_MODEL) $(BENCH_MODEL_XL): weights/bench/%-f16.safetensors: | $(BENCH)
	@mkdir -p weights/bench
	./bench --make-random-model $* $@

# libFuzzer targets (clang): `make fuzz`, then e.g. ./fuzz_tokenizer -max_total_time=600 corpus/
# (undefined behaviour stops a run as a crash does)
FUZZ = clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -D_DEFAULT_SOURCE
fuzz: fuzz_safetensors fuzz_tokenizer fuzz_gguf fuzz_image fuzz_lora fuzz_embedding
fuzz_safetensors: test.c sd.h
	$(FUZZ) -DSD_FUZZ=1 -o $@ test.c $(LIBS)
fuzz_image: test.c sd.h example.c
	$(FUZZ) -DSD_FUZZ=4 -o $@ test.c $(LIBS)
fuzz_lora: test.c sd.h $(MERGES)
	$(FUZZ) -DSD_FUZZ=5 -o $@ test.c $(LIBS)
fuzz_embedding: test.c sd.h $(MERGES)
	$(FUZZ) -DSD_FUZZ=6 -o $@ test.c $(LIBS)
fuzz_gguf: test.c sd.h
	$(FUZZ) -DSD_FUZZ=3 -o $@ test.c $(LIBS)
fuzz_tokenizer: test.c sd.h $(MERGES)
	$(FUZZ) -DSD_FUZZ=2 -o $@ test.c $(LIBS)

clean:
	rm -rf example bench test test-* .test.log .test-*.log .impl.* fuzz_* .png_cases
