/* sd.h - Stable Diffusion inference in one C99 header.            MIT license, see end of file.

   Text prompt (optionally an init image) in, image out, on a CPU, with nothing but libc and
   optionally pthreads, and no memory but one arena that the caller hands in.

   USAGE
     In exactly one C or C++ file:
         #define SD_IMPLEMENTATION
         #include "sd.h"
     Everywhere else just #include "sd.h". Keep the implementation in a file of its own: its
     internal helpers are `static` and have plain names (gemm, layernorm, ...).

   A GENERATION, START TO END (error checks shortened; example.c does it in full)
         sd_source src = {0};                        // bytes the caller read or mmap'd
         src.data[0] = checkpoint; src.size[0] = checkpoint_size; src.count = 1;
         src.merges = merges_txt; src.merges_size = merges_size;
         sd_arena a;  sd_error err;  sd_model *model;
         sd_arena_init(&a, malloc(sd_model_arena_bytes(&src)), sd_model_arena_bytes(&src));
         if (sd_model_load(&model, &src, &a, &err)) puts(err.message);

         sd_params p;  sd_params_init(&p);           // 512x512, 20 DDIM steps, guidance 7.5
         p.prompt = "a lighthouse at dusk";  p.seed = 42;  p.threads = 4;
         size_t need = sd_generate_arena_bytes(model, &p);   // ask once ...
         sd_arena g;  sd_arena_init(&g, malloc(need + SD_ARENA_ALIGN), need + SD_ARENA_ALIGN);
         uint8_t *rgb = malloc(3 * 512 * 512);
         if (sd_generate(model, &p, &g, rgb, &err)) puts(err.message);   // ... never fail midway
     The same call runs SD 1.x, SD 2.x and SDXL (two text encoders, size conditioning), single
     files or diffusers folders; sd_params picks the sampler (DDIM, Euler, Euler a, DPM++ 2M
     with Karras sigmas, LCM) and reads AUTOMATIC1111's prompt syntax ("(castle:1.3)", "[fog]",
     BREAK) at any length up to 64 chunks of 75 tokens. LCM-distilled models take the guidance
     scale as a UNet input. LoRAs come as A1111's <lora:NAME:0.8> tags in the prompt
     (p.lora_resolve, a callback, hands over the file NAME stands for) or as a list (p.loras), and
     are applied at run time: the model's weights stay untouched (see sd_lora).
     Every stage is callable on its own too: sd_clip_tokenize, sd_prompt_chunks, sd_text_encode,
     sd_unet, sd_vae_decode / sd_vae_encode, sd_sampler_init / sd_sampler_step, sd_randn; and
     TAESD, the tiny autoencoder (sd_taesd_load, sd_taesd_decode / sd_taesd_encode), for fast
     final images and live RGB previews (sd_params.taesd, preview_rgb).

   CONFIGURATION (define before including the implementation)
     SD_ASSERT(x)     internal consistency checks (default: assert from <assert.h>)
     SD_NO_THREADS    no pthreads; everything runs on the calling thread
     SD_NO_SIMD       plain C kernels only, whatever the compiler targets
     SD_API           decoration of public functions (default: extern)
     SD_POOL_STACK_BYTES  stack of each worker thread, carved from the arena (default 1 MiB)
     SD_WEIGHT_STAGE_BYTES  staging area for weights read through a callback (default 4 MiB)

   CONTRACTS
     Memory   sd.h never calls malloc/free. Everything comes from an sd_arena the caller
              initialises over a block of its own; weights are used in place from the caller's
              safetensors or GGUF bytes (read or mmap'd), never copied whole; quantized GGUF
              blocks are dequantized to float32 as the kernels read them.
     Errors   every fallible call returns 0 on success or an SD_ERR_* code, and fills the
              caller's sd_error with a message that says what and where. On failure the arena
              is put back where it was, so the caller's state is intact.
     Input    bad input (malformed files, absurd sizes, wrong shapes) never crashes and never
              reads outside the caller's buffer.

   CONTENTS
     1. Public API and configuration
     2. Arena
     3. safetensors and GGUF readers (the small strict JSON parser safetensors needs, GGUF's
        quantized blocks)
     4. Compute kernels: GEMM, conv2d, LoRA updates, norms, attention, activations; thread pool
     5. Tokenizer (CLIP BPE), prompt weighting and long prompts
     6. Text encoder (CLIP ViT-L/14 for SD1, OpenCLIP ViT-H for SD2, both of SDXL's)
     7. UNet (SD1, SD2, SDXL)
    7b. LoRA: which layer each tensor of a LoRA file updates (the run-time half is in 4)
     8. VAE (decoder, encoder)
    8b. TAESD, the tiny autoencoder (decoder, encoder)
     9. Samplers (DDIM, Euler, Euler a, DPM++ 2M, LCM)
    10. Pipeline (txt2img, img2img)
*/
#ifndef SD_H
#define SD_H

#include <stddef.h>
#include <stdint.h>

#ifndef SD_API
#define SD_API extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- 1. Public API ------------------------------------------------------------------------ */

enum {
    SD_OK = 0,
    SD_ERR_ARG,          /* a bad argument from the caller (NULL pointer, size out of range) */
    SD_ERR_MEMORY,       /* the arena is too small */
    SD_ERR_FORMAT,       /* malformed file or header */
    SD_ERR_MISSING,      /* a tensor the model needs is not there */
    SD_ERR_SHAPE,        /* a tensor has the wrong shape or dtype */
    SD_ERR_UNSUPPORTED,  /* valid input that sd.h cannot handle */
    SD_ERR_CANCELLED,    /* the progress callback asked to stop */
    SD_ERR_IO            /* the caller's read callback (sd_source.read) failed */
};

/* What went wrong and where. Filled by every fallible call; may be NULL. */
typedef struct sd_error { int code; char message[256]; } sd_error;

/* One block of caller memory, handed out in 64-byte aligned pieces from the bottom up.
   `peak` is the high-water mark of `used`; mark/reset gives stack-like scratch. sd_arena_init
   skips up to SD_ARENA_ALIGN - 1 bytes to align the start: the *_arena_bytes functions give
   the free space a call needs, so a block from malloc should be SD_ARENA_ALIGN bytes larger. */
#define SD_ARENA_ALIGN 64
typedef struct sd_arena { unsigned char *base; size_t size, used, peak; } sd_arena;

SD_API void   sd_arena_init(sd_arena *a, void *memory, size_t size);
SD_API void  *sd_arena_alloc(sd_arena *a, size_t bytes, sd_error *err); /* NULL + err if full */
SD_API size_t sd_arena_mark(const sd_arena *a);
SD_API void   sd_arena_reset(sd_arena *a, size_t mark);

/* Element types of safetensors and GGUF files. The Q types are GGUF's quantized blocks (ggml's
   q8_0 ... q6_K): a row's values come in blocks of 32 or 256 (sd_dtype_block), each a few bits
   per value with fp16 scales; sd.h dequantizes them to float32 as the kernels read them. */
typedef enum sd_dtype {
    SD_F32, SD_F16, SD_BF16, SD_F64, SD_I64, SD_I32, SD_I16, SD_I8, SD_U8, SD_BOOL,
    SD_Q8_0, SD_Q4_0, SD_Q4_1, SD_Q5_0, SD_Q5_1, SD_Q2_K, SD_Q3_K, SD_Q4_K, SD_Q5_K, SD_Q6_K,
    SD_DTYPE_COUNT
} sd_dtype;

#define SD_MAX_DIMS 8

typedef struct sd_reader sd_reader;   /* opaque: a file read through sd_source.read */

/* A tensor as stored in a file: its bytes stay in the caller's buffer. shape is PyTorch's order
   (outermost first; a GGUF file's ne reversed); nbytes is the stored size. A tensor of a file
   that sd_source.read serves has data == NULL: its bytes are read on use from `offset`. */
typedef struct sd_tensor {
    const char *name;
    sd_dtype dtype;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    const void *data;
    size_t nbytes;
    uint64_t offset;             /* where the bytes start in the file */
    const sd_reader *reader;     /* not NULL: not in memory, read through the caller's callback */
} sd_tensor;

/* One opened safetensors (or GGUF) file: a table of tensors and the string pairs of
   `__metadata__` (GGUF: its key-value pairs, see sd_gguf_open). */
typedef struct sd_safetensors {
    const unsigned char *bytes;  /* the caller's buffer (read through a callback: the header's copy) */
    size_t size;                 /* the file's size */
    const sd_reader *reader;     /* NULL, or how the tensors' bytes are read (sd_source.read) */
    sd_tensor *tensors;
    int count;
    const char **meta_keys, **meta_values;
    int meta_count;
    int32_t *hash;               /* open addressing table of tensor indices, -1 = empty */
    uint32_t hash_mask;
} sd_safetensors;

/* Parses the header of a safetensors file held in `data` (which must outlive `st`), validating
   every entry. Tables live in the arena; tensor data is pointed to, not copied. */
SD_API int sd_safetensors_open(sd_safetensors *st, const void *data, size_t size,
                               sd_arena *a, sd_error *err);
SD_API const sd_tensor *sd_safetensors_find(const sd_safetensors *st, const char *name);
SD_API const char *sd_safetensors_meta(const sd_safetensors *st, const char *key);

/* The same for a GGUF file (version 2 or 3, as stable-diffusion.cpp's converter writes them):
   the same table, shapes in PyTorch order, types F32, F16, BF16, the Q block types (and ggml's
   I8..I64, F64). Every count, size and offset is checked against the buffer; tensors may not
   overlap; a block type's rows (the last dimension) must be whole blocks. Metadata: string,
   number and bool values become pairs (numbers as decimal text, bools "true"/"false"); arrays
   are checked and skipped. */
SD_API int sd_gguf_open(sd_safetensors *st, const void *data, size_t size, sd_arena *a, sd_error *err);

/* The header of a GGUF file (version 3) holding tensors[0..n) (their name, dtype, shape) and
   nkv string metadata pairs: written into buf when cap is enough; returns its size (0 for a
   type GGUF lacks or rows that are not whole blocks). The tensors' bytes follow it in the
   given order, each padded with zeros to a multiple of 32 bytes. A block-typed tensor of more
   than 2 dimensions (a quantized convolution weight) is stored as [shape[0], the rest], since
   GGUF's blocks run along the last dimension; sd.h reads such a file back as it was written. */
SD_API size_t sd_gguf_header(void *buf, size_t cap, const sd_tensor *tensors, int n, const char *const *keys,
                             const char *const *values, int nkv);

SD_API const char *sd_dtype_name(sd_dtype t);  /* "F32", "F16", ..., "Q8_0", "Q4_K" */
SD_API size_t sd_dtype_size(sd_dtype t);       /* bytes of one element; 0 for the block types */
SD_API size_t sd_dtype_block(sd_dtype t, int *elements);   /* bytes of one block of *elements
                                                              values (1 for the other types) */
SD_API int64_t sd_tensor_numel(const sd_tensor *t);
SD_API float sd_f16_to_f32(uint16_t h);
SD_API float sd_bf16_to_f32(uint16_t h);
SD_API uint16_t sd_f32_to_f16(float f); /* round to nearest even */

/* Quantizes n values (a multiple of 32) to the block type t: SD_Q8_0, SD_Q4_0, SD_Q4_1, SD_Q5_0
   or SD_Q5_1, as ggml's reference quantizers do (the bytes stable-diffusion.cpp's converter
   writes); dst gets n / 32 blocks. Returns the bytes written, 0 for another type or n. */
SD_API size_t sd_quantize(sd_dtype t, const float *src, size_t n, void *dst);

/* The type sd.h gives tensor t when it quantizes a model to `type` (sd_model_quantize, example
   --convert): `type` for F32, F16 and BF16 weights of 2 or more dimensions whose rows (all but the
   first dimension: a convolution's Cin·k·k too) are whole blocks of 32, except biases and the
   embeddings (names with ".bias" at the end, "time_embed.", "label_emb." or "embedding", as
   stable-diffusion.cpp's converter spares them); t's own type otherwise. */
SD_API sd_dtype sd_quantize_choice(const sd_tensor *t, sd_dtype type);

/* Tensor t (any weight type) as `type` into dst (dtype-sized: t->nbytes for its own type, 34
   bytes per 32 values for SD_Q8_0, ...): a copy, or its values quantized row by row as
   sd_quantize does. row: scratch for one row (numel / shape[0] floats). */
SD_API int sd_tensor_convert(const sd_tensor *t, sd_dtype type, void *dst, float *row);

/* The compute context of the stage functions (sd_text_encode, sd_unet, sd_vae_*): worker threads
   and their scratch, started once and used for any number of calls (sd_generate makes its own).
   It lives in the arena: sd_pool_arena_bytes(threads) bytes, given back by resetting the arena
   after sd_pool_destroy. Results are bit-identical for any number of threads. */
typedef struct sd_pool sd_pool;
SD_API size_t sd_pool_arena_bytes(int threads);
SD_API int sd_pool_create(sd_pool **pool, int threads, sd_arena *a, sd_error *err);
SD_API void sd_pool_destroy(sd_pool *pool);

/* How the stages that run on a pool multiply activations by weights. SD_QUANT_EXACT (what a new
   pool does): float32 activations, weights of any type converted to float32 as they are read,
   float32 sums; a block-typed weight gives the very products of its dequantized copy. SD_QUANT_FAST
   (opt-in): the linear layers, attention projections and convolutions quantize their input per
   block of 32 values along K to int8 with a float scale, and the weight likewise (q8_0 blocks as
   they are, q4_0 and q5_0 exactly, other types requantized), then sum int8 products in int32
   per block and the blocks in float, as ggml's q8_0 x q8_0 dot product does: about 3x faster
   with AVX-512 VNNI, and an error of the order of q8_0's own (README, "Quantized weights").
   Attention's QKᵀ and PV go int8 too (a scale per query, per key and per value channel over
   128 keys; softmax weights rounded to multiples of 1/127 of the largest), where a head's keys
   and values fit the thread's scratch; the norms and the time embeddings stay float32.
   Deterministic for any thread count either way. Memory: the same (the thread's scratch). */
enum { SD_QUANT_EXACT = 0, SD_QUANT_FAST = 1 };
SD_API void sd_pool_set_quant(sd_pool *pool, int mode);

/* A model whose weights come from a read callback (sd_source.read) runs its stages on a pool
   with a staging area: sd_pool_set_stage gives it one of sd_pool_stage_bytes(model) from the
   arena (SD_WEIGHT_STAGE_BYTES, more if one weight row is longer). sd_generate does this itself. */
typedef struct sd_model sd_model;
SD_API size_t sd_pool_stage_bytes(const sd_model *model);
SD_API int sd_pool_set_stage(sd_pool *pool, const sd_model *model, sd_arena *a, sd_error *err);

/* CLIP tokenizer: prompt text -> token ids, exactly as the diffusers pipelines tokenize. */
typedef struct sd_clip_vocab sd_clip_vocab;   /* opaque; lives in the arena it was loaded into */

enum { SD_CLIP_BOS = 49406, SD_CLIP_EOS = 49407, SD_CLIP_VOCAB_SIZE = 49408, SD_CLIP_CONTEXT = 77 };

/* How a prompt is padded to 77 ids. SD1 (and SDXL's first text encoder) pads with <|endoftext|>.
   SD2 (and SDXL's second encoder) configures "!" as its pad token: it pads with id 0 and, as
   transformers' tokenizer does with any special token, turns every literal '!' in the prompt
   into that token (id 0) instead of byte-pair encoding it. */
typedef enum sd_clip_pad { SD_CLIP_PAD_EOS = 0, SD_CLIP_PAD_EXCLAMATION = 1 } sd_clip_pad;

/* Loads the vocabulary from the bytes of Hugging Face's merges.txt (header line, then 48894
   "left right" lines), building the ids as CLIP does: 256 byte symbols, the same with </w>,
   one token per merge, <|startoftext|>, <|endoftext|>. `vocab_json` (may be NULL) is checked
   against that numbering. The vocabulary and its Unicode tables live in `a`
   (sd_clip_vocab_arena_bytes(merges_size) bytes suffice); the caller's buffers are not kept. */
SD_API size_t sd_clip_vocab_arena_bytes(size_t merges_size);
SD_API int sd_clip_vocab_load(sd_clip_vocab **vocab, const void *merges, size_t merges_size,
                              const void *vocab_json, size_t vocab_json_size, sd_arena *a, sd_error *err);

/* Scratch arena bytes that a tokenizer call on `text_size` bytes of prompt may use: 64 KiB + 320
   per byte (the worst inputs measured use ~200 per byte: a word that grows 3x in NFC and is then
   byte-pair encoded). Calls reset the arena before they return. */
SD_API size_t sd_clip_scratch_bytes(size_t text_size);

/* All token ids of a prompt, without <|startoftext|>/<|endoftext|> and without truncation:
   *count gets the number of ids, the first min(*count, cap) are written to ids (cap may be 0).
   The text is UTF-8; invalid bytes are read as Python's bytes.decode("utf-8", "replace") does
   (each maximal invalid subsequence becomes U+FFFD) and NUL bytes are ordinary characters. */
SD_API int sd_clip_token_ids(const sd_clip_vocab *v, const char *text, size_t text_size, sd_clip_pad pad,
                             int32_t *ids, size_t cap, size_t *count, sd_arena *scratch, sd_error *err);

/* The 77 ids a pipeline feeds the text encoder: <|startoftext|>, the first 75 token ids,
   <|endoftext|>, padding. *length (may be NULL) gets the untruncated count including the two
   special tokens, so a caller can tell that a prompt was cut (or split long prompts itself). */
SD_API int sd_clip_tokenize(const sd_clip_vocab *v, const char *text, size_t text_size, sd_clip_pad pad,
                            int32_t ids[SD_CLIP_CONTEXT], size_t *length, sd_arena *scratch, sd_error *err);

/* The text of token `id` in the vocabulary's byte-symbol alphabet (e.g. "cat</w>"); NULL if out of range. */
SD_API const char *sd_clip_token_text(const sd_clip_vocab *v, int32_t id, size_t *size);

/* Prompt weighting and long prompts as AUTOMATIC1111's web UI reads them
   (modules/prompt_parser.py parse_prompt_attention, modules/sd_hijack_clip.py):
     (text) x1.1   ((text)) x1.21   [text] /1.1   (text:1.5) x1.5 (signed/decimal number)
     \( \) \[ \] \\ are the literal characters; nesting multiplies; an unclosed ( or [ applies
     to the rest of the prompt; a stray ) or ] is text; BREAK (upper case, a word of its own)
     starts a new chunk of 75 tokens. */
enum { SD_PROMPT_MAX_CHUNKS = 64,          /* 64 x 75 tokens: longer prompts are refused */
       SD_PROMPT_MAX_BYTES = 1 << 20,      /* longer prompt texts are refused */
       SD_PROMPT_MAX_NESTING = 256 };      /* open brackets at once (round and square together) */

/* One run of prompt text with its weight. `text` (unescaped, `size` bytes, not 0-terminated)
   lives in the arena; `weight` is the product of the brackets around it, in A1111's order, in
   double precision (a Python float); `chunk_break` is 1 when a BREAK comes right before it. */
typedef struct sd_prompt_run { const char *text; size_t size; double weight; int chunk_break; } sd_prompt_run;

/* Splits a prompt into runs, as parse_prompt_attention does: adjacent runs of equal weight are
   merged, an empty prompt is one run ("", 1.0), a BREAK is always followed by a run (maybe
   empty). `v` (may be NULL) supplies Python's Unicode \w and \d (for BREAK's word boundaries
   and weights written in other scripts' digits, e.g. fullwidth); without it only ASCII letters
   and digits count. Invalid UTF-8 passes through unchanged. A weight that Python's float()
   refuses (e.g. "(a:1.2.3)", where A1111 raises ValueError) is an SD_ERR_ARG. */
SD_API int sd_prompt_parse(const sd_clip_vocab *v, const char *text, size_t size, sd_prompt_run **runs,
                           int *count, sd_arena *a, sd_error *err);

/* Arena bytes that sd_prompt_chunks on `text_size` bytes may use (its results included). */
SD_API size_t sd_prompt_arena_bytes(size_t text_size);

/* A prompt as the text encoder's chunks, as A1111's tokenize_line makes them: each run's text
   through sd_clip_token_ids, every token carrying its run's weight, packed 75 to a chunk (a new
   chunk when a token finds the chunk full, and at every BREAK); each chunk is 77 ids laid out as
   sd_clip_tokenize lays them out ([BOS] tokens [EOS] padding per `pad`), weight 1 at BOS, EOS and
   padding. weighting = 0 reads every character as text (A1111's emphasis "None"; BREAK too).
   comma_wrap (A1111's comma_padding_backtrack, 0..74; its default is 20, 0 turns it off): when a
   chunk is full and one of its last comma_wrap tokens is a comma, the tokens after that comma
   move on to the next chunk. At least max(1, min_chunks) chunks: the extra ones are the chunks
   of "" (so that a negative prompt matches the positive one's count). *ids and *weights (weights
   may be NULL) get chunks x 77 values in the arena. */
SD_API int sd_prompt_chunks(const sd_clip_vocab *v, const char *text, size_t size, sd_clip_pad pad, int weighting,
                            int comma_wrap, int min_chunks, int32_t **ids, float **weights, int *chunks,
                            sd_arena *a, sd_error *err);

/* Applies a chunk's weights to its text-encoder output context [tokens, width] as A1111's
   "Original" emphasis does: the mean of the whole chunk is kept, z[t] *= weights[t], then
   z *= old mean / new mean (means in double). All weights 1: z is left untouched, bit for bit;
   a weighted mean of exactly 0 leaves z weighted but not rescaled (A1111 would divide by 0). */
SD_API void sd_prompt_weight(float *context, const float *weights, int tokens, int width);

/* The text encoder of a checkpoint: sizes read from tensor shapes, the rest from the file's
   metadata or the model family, and the weights (views into the caller's file bytes). */
#define SD_TEXT_TOKENS 77   /* token ids per prompt: CLIP's context length */

typedef struct sd_text_encoder {
    int vocab, positions, width, layers, heads, mlp;
    int gelu;             /* 1: gelu (OpenCLIP, SD2), 0: quick_gelu (OpenAI CLIP, SD1) */
    int output_layer;     /* the hidden state the UNet reads: layers (SD1) or layers - 1 (SD2) */
    int output_final_ln;  /* whether that state goes through the final LayerNorm (SD1, SD2: yes; SDXL: no) */
    float eps;            /* LayerNorm epsilon */
    sd_tensor token_embedding, position_embedding, final_ln_w, final_ln_b;
    int proj_dim;         /* text_projection's output width (SDXL's pooled embedding); 0: none */
    int proj_openclip;    /* 1: stored [width, proj] and used as x·P (OpenCLIP); 0: a linear weight [proj, width] */
    sd_tensor projection;
    struct sd_clip_layer *layer;   /* [layers], in the arena */
    /* textual inversion: token id SD_CLIP_VOCAB_SIZE + i stands for extra_tokens[i], a learned
       [1, width] vector (a view into an embedding file) instead of a row of the token table;
       NULL / 0: none. sd_embeddings_text_encoder fills them in a copy of a model's encoder. */
    const sd_tensor *extra_tokens;
    int extra_token_count;
} sd_text_encoder;

/* Finds text encoder `index` in `files` and describes it: index 0 is the one of SD1/SD2
   single files (or diffusers' text_encoder/model.safetensors), and SDXL's first (CLIP ViT-L);
   index 1 is SDXL's second (OpenCLIP bigG, conditioner.embedders.1 or text_encoder_2/).
   `meta` is the file whose __metadata__ holds sd.version / sd.clip.* (sd.clip2.* for index 1;
   NULL: files[0]); without those keys the family defaults apply. The layer table takes a few
   KB of the arena; the files must stay open while te is used. */
SD_API int sd_text_encoder_load(sd_text_encoder *te, const sd_safetensors *files, int nfiles,
                                const sd_safetensors *meta, int index, sd_arena *a, sd_error *err);

/* Exact arena bytes that sd_text_encode / sd_text_encoder_hidden take for n_prompts prompts,
   with or without the pooled output (the thread pool is set up separately). SIZE_MAX if it
   cannot be met. */
SD_API size_t sd_text_encoder_arena_bytes(const sd_text_encoder *te, int n_prompts, int pooled);

/* ids [n_prompts, 77] → out [n_prompts, 77, width]: the UNet's context (ids below the
   vocabulary size, or an extra_tokens vector's id). clip_skip 0 or 1 is the
   model's own output (SD1: last layer, SD2: penultimate, both through the final LayerNorm;
   SDXL: penultimate without it); clip_skip N stops N - 1 layers earlier (A1111/ComfyUI "clip
   skip"). pooled (may be NULL; needs a text_projection) gets [n_prompts, proj_dim]: the last
   layer's final-LayerNorm state at each prompt's end-of-text token, projected (SDXL's pooled
   text embedding). With extra tokens in the prompt that is still the end-of-text token, as in
   AUTOMATIC1111 and Stability's SGM code; diffusers pools at the highest id, which is then the
   learned token's (a quirk of its argmax rule). */
SD_API int sd_text_encode(const sd_text_encoder *te, const int32_t *ids, int n_prompts, int clip_skip,
                          float *out, float *pooled, sd_pool *pool, sd_arena *a, sd_error *err);

/* The hidden state after `layer` layers (0 = token + position embeddings), through the final
   LayerNorm when final_ln is set: any layer, e.g. SDXL's penultimate without the LayerNorm. */
SD_API int sd_text_encoder_hidden(const sd_text_encoder *te, const int32_t *ids, int n_prompts,
                                  int layer, int final_ln, float *out, sd_pool *pool,
                                  sd_arena *a, sd_error *err);

/* The denoiser: opaque, lives in the arena it was loaded into. */
typedef struct sd_unet_model sd_unet_model;

/* Finds the denoiser of an SD1.x / SD2.x / SDXL checkpoint in `files` (a single-file
   checkpoint, `model.diffusion_model.*`, or diffusers' unet/diffusion_pytorch_model.safetensors)
   and describes it: channels, levels, resnets per level, attention levels, transformer depth and
   SDXL's added conditioning from the tensors; attention heads from `meta`'s sd.unet.num_heads
   (one value or one per level) / sd.unet.num_head_channels (meta NULL: files[0]), else SD1's
   8 heads or SD2's and SDXL's 64-wide heads. The description takes a few KB of the arena; the
   files must stay open while the model is used. */
SD_API int sd_unet_load(sd_unet_model **unet, const sd_safetensors *files, int nfiles,
                        const sd_safetensors *meta, sd_arena *a, sd_error *err);

/* What the denoiser is conditioned on besides the timestep. */
typedef struct sd_unet_cond {
    const float *context;   /* [batch, context_len, context_dim]: the text encoder's output */
    int context_len;        /* tokens per item: 77 per prompt chunk */
    const float *y;         /* SDXL: [batch, sd_unet_add_dim()] from sd_unet_add_vector; else NULL */
    const float *guidance;  /* guidance-distilled (LCM) UNets: [batch, sd_unet_guidance_dim()], each
                               row sd_guidance_embedding(guidance scale - 1) (diffusers'
                               timestep_cond); NULL for the others */
} sd_unet_cond;

/* Exact arena bytes that sd_unet takes for `batch` latents of h x w attending to context_len
   tokens (the thread pool is set up separately). SIZE_MAX if it cannot be met. */
SD_API size_t sd_unet_arena_bytes(const sd_unet_model *unet, int batch, int h, int w, int context_len);

/* One denoiser evaluation of a batch (batch 2: classifier-free guidance's unconditional and
   conditional halves in one pass). x [batch, in_channels, h, w] (NCHW): the latents, and for
   inpainting UNets (9 input channels) the latent mask and the masked image's latent after them,
   for InstructPix2Pix UNets (8) the image's latent; timesteps [batch] (may be fractional); out [batch, 4, h, w] gets the prediction (epsilon, or v for v-prediction
   models). Any h, w: odd sizes are rounded up on the way down and come back as diffusers
   brings them back. A guidance-distilled (LCM) UNet needs cond->guidance, the others must not
   get it. The arena is scratch only. */
SD_API int sd_unet(const sd_unet_model *unet, const float *x, const float *timesteps,
                   const sd_unet_cond *cond, int batch, int h, int w, float *out,
                   sd_pool *pool, sd_arena *a, sd_error *err);

/* SDXL's added conditioning: the width of y (0 for SD1/SD2 UNets), and y itself for one item:
   the pooled text embedding [pooled_dim] followed by the sinusoidal embedding of each of the six
   size numbers (original height, width, crop top, left, target height, width), as SDXL's
   conditioner builds it. */
SD_API int sd_unet_add_dim(const sd_unet_model *unet);
SD_API int sd_unet_add_vector(const sd_unet_model *unet, const float *pooled, int pooled_dim,
                              const float size_ids[6], float *y, sd_error *err);

/* Latent Consistency Models (Luo et al. 2023) distil classifier-free guidance into the UNet: the
   guidance scale enters as an embedding (time_cond_proj_dim wide; LCM_Dreamshaper_v7: 256),
   projected by time_embedding.cond_proj and added to the sinusoidal timestep embedding, so a
   guided step needs no unconditional pass. sd_unet_guidance_dim is that width (0: an ordinary
   UNet). sd_guidance_embedding writes the embedding of w (LatentConsistencyModelPipeline passes
   w = guidance scale - 1) as diffusers' get_guidance_scale_embedding does: sin(1000·w·f_k) for
   k < dim/2, then the cosines, f_k = 10000^(-k/(dim/2 - 1)), float32; dim >= 4. */
SD_API int sd_unet_guidance_dim(const sd_unet_model *unet);
SD_API void sd_guidance_embedding(float w, int dim, float *out);

/* LoRA (Hu et al. 2021): low-rank updates of the text encoders' and the UNet's linear layers and
   convolutions, y = W·x + b + s·(alpha/rank)·up·(down·x), applied at run time: the model's
   weights are never copied or changed, so one loaded model serves any number of generations, on
   any threads, each with LoRAs of its own. sd_generate does all of this from sd_params (the
   prompt's <lora:NAME:w> tags, or a list); the calls below are for the stage functions.

   Files (.safetensors, used in place): kohya / AUTOMATIC1111 (what civitai serves): per module
   .lora_down.weight, .lora_up.weight and an optional 0-dim .alpha (absent: alpha = rank), named
   lora_unet_<module path with '.' as '_'> (diffusers' or the original SGM paths: SD1 files use the
   first, SDXL files the second), lora_te_ (one text encoder), lora_te1_ / lora_te2_ (SDXL); LoCon
   convolutions (a k x k down with the layer's stride and padding, a 1x1 up); diffusers / PEFT:
   unet.<path>.lora_A.weight / .lora_B.weight (also the older .lora.down / .lora.up), text_encoder.*
   and text_encoder_2.*, alpha = rank unless given. Every Linear and Conv2d of the model is named
   as each format names it, under both name maps, and looked up; shapes must fit. Every tensor of
   a file must find its module, else sd_lora_load fails naming the file and the tensor. Two kinds
   are skipped with a warning instead, as AUTOMATIC1111 skips them: text-encoder layers the model
   lacks (diffusers' SD2 encoder drops the last layer, which SD2 never runs) and embeddings bundled
   in the file (bundle_emb.*). LoHa, LoKr, DoRA and other LyCORIS kinds are refused. */
typedef struct sd_lora {
    const void *data;   /* the .safetensors bytes (read or mmap'd), kept by the caller while used */
    size_t size;
    float text_scale;   /* strength on the text encoder(s): A1111's <lora:NAME:w> sets both to w */
    float unet_scale;   /* strength on the UNet (<lora:NAME:w:u>: u); negative values are allowed */
    const char *name;   /* for messages: the tag's NAME or the file's; may be NULL */
} sd_lora;

typedef struct sd_lora_set sd_lora_set;   /* opaque: LoRAs matched to one model's layers, read-only */

/* Arena bytes that sd_lora_load takes at most for these files (a bound from their header sizes). */
SD_API size_t sd_lora_arena_bytes(const sd_lora *loras, int count);

/* Reads `count` LoRA files and matches them to the UNet (may be NULL) and the n_te text encoders
   te[0..n_te) (SDXL: 2; may be 0) of one model. The set lives in the arena and points into the
   files, the UNet and te[]. On failure the arena is put back and *set is NULL. */
SD_API int sd_lora_load(sd_lora_set **set, const sd_unet_model *unet, const sd_text_encoder *te, int n_te,
                        const sd_lora *loras, int count, sd_arena *a, sd_error *err);

/* What sd_lora_load skipped, and why; "" when nothing was. */
SD_API const char *sd_lora_warnings(const sd_lora_set *set);

/* Stage functions run on `pool` apply `set` from now on (NULL: none). The first set attached
   takes SD_LORA_SCRATCH_BYTES of `a` for the pool (the low-rank products, a chunk of rows at a
   time); reset the arena below it only with the pool. One set may serve several pools at once. */
#define SD_LORA_SCRATCH_BYTES ((size_t)1 << 20)
SD_API int sd_pool_set_lora(sd_pool *pool, const sd_lora_set *set, sd_arena *a, sd_error *err);

#define SD_VAE_MAX_LEVELS 8   /* resolution levels (SD: 4, i.e. a factor 8 between image and latent) */
#define SD_VAE_MAX_RESNETS 8   /* ResNet blocks per level (SD: 2 in the encoder, 3 in the decoder) */

/* The architecture of an AutoencoderKL. sd_vae_load reads it from tensor shapes (and checks it
   against the file's sd.vae.* metadata when present); the arena-size functions take it alone,
   without weights, so a caller can size memory before loading anything. */
typedef struct sd_vae_config {
    int levels;   /* 4 in SD */
    int channels[SD_VAE_MAX_LEVELS];   /* per level, fine to coarse: 128, 256, 512, 512 in SD */
    int num_res_blocks;   /* ResNets per encoder level (the decoder has one more) */
    int z_channels;   /* decoder input / half the encoder output (4) */
    int embed_dim;   /* latent channels the diffusion model sees (4) */
    int norm_groups;   /* GroupNorm groups (32) */
    float norm_eps;   /* GroupNorm epsilon (1e-6) */
    float scaling_factor;   /* pipeline scale of latents: 0.18215 SD1/2, 0.13025 SDXL */
    int has_encoder;   /* 0 for a decoder-only file */
} sd_vae_config;
typedef struct sd_vae sd_vae;   /* opaque; lives in the arena it was loaded into */

/* The VAE of SD 1.x/2.x and SDXL checkpoints (SDXL's has scaling_factor 0.13025). */
SD_API void sd_vae_config_default(sd_vae_config *c);

/* Finds the VAE in one opened file: a single-file checkpoint (`first_stage_model.*`), a
   standalone VAE in the same original layout (no prefix), or diffusers'
   `vae/diffusion_pytorch_model.safetensors`. scaling_factor comes from the `sd.vae.scaling_factor`
   metadata, else 0.18215: a diffusers vae/ file has no metadata, so for SDXL the caller sets
   0.13025 (from vae/config.json) with sd_vae_set_scaling_factor. The file must stay open. */
SD_API int sd_vae_load(sd_vae **vae, const sd_safetensors *file, sd_arena *a, sd_error *err);
SD_API const sd_vae_config *sd_vae_get_config(const sd_vae *vae);
SD_API void sd_vae_set_scaling_factor(sd_vae *vae, float scaling_factor);

/* Exact arena bytes (free space in the arena; the pool is set up separately) that one call
   takes, from the configuration alone; 0 for invalid sizes. The calls give it all back. */
SD_API size_t sd_vae_decode_arena_bytes(const sd_vae_config *c, int h, int w);
SD_API size_t sd_vae_decode_tiled_arena_bytes(const sd_vae_config *c, int h, int w, int tile, int overlap);
SD_API size_t sd_vae_encode_arena_bytes(const sd_vae_config *c, int height, int width);

/* Decoder: latents [1, embed_dim, h, w] NCHW, *already divided by scaling_factor* (the
   pipeline's job, as in diffusers) → image [1, 3, f·h, f·w] (f = 8 in SD), the raw decoder
   output: about [-1, 1], not clamped. */
SD_API int sd_vae_decode(const sd_vae *vae, const float *latents, int h, int w, float *image,
                         sd_pool *pool, sd_arena *a, sd_error *err);

/* The same in overlapping tiles of tile x tile latent pixels (neighbours share at least
   `overlap`, 0 <= overlap < tile), blended with linear ramps across the shared part. Memory
   depends on the tile size only, not on h and w. Each tile is normalised on its own, so the
   result is close to, not equal to, sd_vae_decode's; tile >= h and w gives exactly the latter. */
SD_API int sd_vae_decode_tiled(const sd_vae *vae, const float *latents, int h, int w, int tile,
                               int overlap, float *image, sd_pool *pool, sd_arena *a, sd_error *err);

/* Encoder: image [1, 3, H, W] NCHW with values in [-1, 1] (uint8/255·2−1), H and W multiples of
   f → moments [1, 2·embed_dim, H/f, W/f]: the posterior's mean, then its raw log-variance
   (diffusers' quant_conv output). */
SD_API int sd_vae_encode(const sd_vae *vae, const float *image, int height, int width,
                         float *moments, sd_pool *pool, sd_arena *a, sd_error *err);

/* The diagonal Gaussian of moments [2·channels, h, w]: mean, logvar = clamp(raw, -30, 20),
   std = exp(logvar / 2), each [channels, h, w]; any of them may be NULL. */
SD_API void sd_vae_posterior(const float *moments, int channels, int h, int w,
                             float *mean, float *logvar, float *std);
/* A latent drawn from it with the caller's standard normal noise: out = mean + std·noise
   (unscaled: the pipeline multiplies by scaling_factor). */
SD_API void sd_vae_sample(const float *mean, const float *std, const float *noise, size_t n, float *out);

/* TAESD, the tiny autoencoder (madebyollin/taesd; diffusers' AutoencoderTiny): a decoder of 1.2 M
   parameters that turns the pipeline's latents into an image about 20 times faster than the VAE,
   close to (not equal to) the VAE's image, and an encoder of the same size. Used for live
   previews, for fast final images, or both. TAESD decodes SD 1.x / 2.x latents, TAESDXL SDXL's;
   nothing in the files tells the two apart (only the file names do), so the caller says which. */
enum { SD_TAESD_SD = 1, SD_TAESD_XL = 2 };
typedef struct sd_taesd sd_taesd;   /* opaque; lives in the arena it was loaded into */

typedef struct sd_taesd_info {
    int variant;           /* SD_TAESD_SD or SD_TAESD_XL, as the caller said */
    int latent_channels;   /* 4 for TAESD and TAESDXL */
    int channels;          /* width of every layer (64) */
    int has_encoder, has_decoder;
    float scaling_factor;  /* pipeline latents = scaling_factor · raw latents: 1.0 (config.json may say otherwise) */
} sd_taesd_info;

/* Finds the two halves in the files users download: the original pair taesd_encoder.safetensors
   and taesd_decoder.safetensors (keys of taesd.py's nn.Sequential, "1.weight", "3.conv.0.weight",
   ...), or diffusers' AutoencoderTiny folder, whose diffusion_pytorch_model.safetensors holds both
   ("encoder.layers.N.*", "decoder.layers.N.*": pass it as encoder and as decoder). Either file may
   be NULL (decoder only is the common case: previews and final images need no encoder). config
   (may be NULL, config_size bytes) is the folder's config.json: the architecture it describes is
   checked and its scaling_factor taken. variant: SD_TAESD_SD or SD_TAESD_XL. A few KB of the
   arena; the files must stay open while the model is used. */
SD_API int sd_taesd_load(sd_taesd **taesd, const sd_safetensors *encoder, const sd_safetensors *decoder,
                         const char *config, size_t config_size, int variant, sd_arena *a, sd_error *err);
SD_API void sd_taesd_get_info(const sd_taesd *taesd, sd_taesd_info *info);

/* Exact arena bytes of one decode of h x w latents or one encode of a height x width image (the
   pool is set up separately); 0 for sizes that cannot be run or a missing half. The calls give it
   all back. About 60 MB to decode a 512 x 512 image (the VAE: 240 MB), 225 MB for 1024 x 1024. */
SD_API size_t sd_taesd_decode_arena_bytes(const sd_taesd *taesd, int h, int w);
SD_API size_t sd_taesd_encode_arena_bytes(const sd_taesd *taesd, int height, int width);

/* Decoder: latents [1, C, h, w] NCHW as the pipeline holds them (what the UNet makes, not divided
   by the VAE's 0.18215 / 0.13025: TAESD decodes them directly) → image [1, 3, 8h, 8w] in the VAE
   decoder's convention, about [-1, 1], not clamped: image = 2·D(tanh(z/3)·3) − 1 with
   z = latents / scaling_factor, D the decoder's layers (whose own output is a [0, 1] image), as
   diffusers' AutoencoderTiny.decode returns it. So it can stand in for sd_vae_decode after the
   pipeline's division: pixels = round(255·clamp(image/2 + 1/2, 0, 1)). */
SD_API int sd_taesd_decode(const sd_taesd *taesd, const float *latents, int h, int w, float *image,
                           sd_pool *pool, sd_arena *a, sd_error *err);

/* Encoder: image [1, 3, H, W] NCHW in [-1, 1] (uint8/255·2−1), any size → latents
   [1, C, ceil(H/8), ceil(W/8)] on the pipeline's scale: scaling_factor · E((image + 1)/2). There is
   no posterior and nothing random: img2img uses these latents as they are. */
SD_API int sd_taesd_encode(const sd_taesd *taesd, const float *image, int height, int width, float *latents,
                           sd_pool *pool, sd_arena *a, sd_error *err);

/* PyTorch's CPU random generator, bit for bit: after sd_rng_seed(&r, seed), sd_randn(&r, x, n)
   gives what g = torch.Generator("cpu").manual_seed(seed); torch.randn(n, generator=g) gives
   (float32, any shape of n elements), and further calls continue the same generator, so a seed
   gives the initial latents (and DDIM eta noise) that diffusers draws on the CPU. No global state. */
typedef struct sd_rng {
    uint32_t mt[624];   /* Mersenne Twister (mt19937) state */
    int next;   /* index of the next state word to hand out; 624: twist first */
    int has_spare;   /* short tensors draw normals in pairs and keep the second ... */
    double spare;   /* ... here, as torch's generator does */
} sd_rng;

SD_API void sd_rng_seed(sd_rng *r, uint64_t seed);   /* torch.manual_seed(seed) */
SD_API void sd_randn(sd_rng *r, float *out, size_t n);   /* torch.randn: N(0, 1) */
SD_API void sd_rand(sd_rng *r, float *out, size_t n);   /* torch.rand: uniform in [0, 1) */

/* The training noise schedule every sampler starts from (diffusers' beta_schedule values). */
enum { SD_BETA_SCALED_LINEAR, SD_BETA_LINEAR };
/* How inference timesteps are spread over the training ones (diffusers' timestep_spacing). */
enum { SD_SPACING_LEADING, SD_SPACING_TRAILING, SD_SPACING_LINSPACE };
/* What the UNet predicts: the noise (SD1, SDXL) or v = sqrt(a)·noise - sqrt(1-a)·x0 (SD2 768). */
enum { SD_PREDICT_EPSILON, SD_PREDICT_V };

#define SD_MAX_TRAIN_TIMESTEPS 1000

/* Tables over the training timesteps t = 0 .. num_train_timesteps-1, written once by
   sd_schedule_init and shared by the samplers (float32, as diffusers computes them). */
typedef struct sd_schedule {
    int num_train_timesteps;
    float betas[SD_MAX_TRAIN_TIMESTEPS];   /* noise added at step t */
    float alphas_cumprod[SD_MAX_TRAIN_TIMESTEPS];   /* a_t = prod over s <= t of (1 - beta_s) */
    float sigmas[SD_MAX_TRAIN_TIMESTEPS];   /* sqrt((1 - a_t) / a_t), for Euler / DPM++ */
    float final_alpha_cumprod;   /* a after t = 0, DDIM's last step: a_0 as SD configures it */
                                /* (set_alpha_to_one = false); set it to 1 for set_alpha_to_one */
} sd_schedule;

/* SD uses (1000, 0.00085, 0.012, SD_BETA_SCALED_LINEAR). */
SD_API int sd_schedule_init(sd_schedule *s, int num_train_timesteps, double beta_start,
                            double beta_end, int beta_schedule, sd_error *err);

/* The `steps` timesteps of a DDIM run, first (noisiest) first, as diffusers'
   DDIMScheduler.set_timesteps: leading = i·(T/steps) + steps_offset (SD: 1), trailing, linspace
   (steps_offset only applies to leading). out holds `steps` ints. */
SD_API int sd_ddim_timesteps(const sd_schedule *s, int steps, int spacing, int steps_offset,
                             int *out, sd_error *err);
/* The timestep DDIM steps to from t: t - T/steps whatever the spacing (diffusers does so); < 0
   after the last step. */
SD_API int sd_ddim_prev_timestep(const sd_schedule *s, int t, int steps);

/* One DDIM step (Song et al. 2021, eq. 12) over n floats: from the sample x at timestep t and
   the UNet's prediction, the sample at t_prev (prev_out) and the predicted clean sample x0
   (x0_out, may be NULL). eta = 0 is deterministic; eta > 0 adds sigma_t·noise with noise from
   the caller, or drawn from rng when noise is NULL (torch.randn of n elements, as diffusers
   draws it; prev_out must then not be x or model_out). prev_out may be x otherwise. */
SD_API int sd_ddim_step(const sd_schedule *s, int t, int t_prev, int prediction, float eta,
                        const float *x, const float *model_out, size_t n,
                        const float *noise, sd_rng *rng,
                        float *prev_out, float *x0_out, sd_error *err);

/* img2img: how many of the `steps` timesteps to skip so that `strength` of them remain, as
   diffusers' get_timesteps (strength 1: none skipped). Strength is a double so that 0.7 gives
   int(10 · 0.7) = 7 steps as in Python (0.7f would give 6). */
SD_API int sd_img2img_start(int steps, double strength, int *start, sd_error *err);
/* The forward process q(x_t | x_0): out = sqrt(a_t)·x0 + sqrt(1 - a_t)·noise (scheduler.add_noise). */
SD_API int sd_add_noise(const sd_schedule *s, int t, const float *x0, const float *noise,
                        size_t n, float *out, sd_error *err);

/* Classifier-free guidance: out = uncond + scale·(cond - uncond). */
SD_API void sd_guidance(const float *uncond, const float *cond, float scale, size_t n, float *out);
/* InstructPix2Pix's guidance over its three predictions (text + image, image only, neither):
   out = uncond + scale·(text - image) + image_scale·(image - uncond). */
SD_API void sd_image_guidance(const float *text, const float *image, const float *uncond, float scale,
                              float image_scale, size_t n, float *out);

/* Inpainting's inputs, as diffusers' VaeImageProcessor prepares them. mask: 8-bit grey height x
   width (>= 128 = repaint, as mask / 255 >= 0.5); mask_image (may be NULL) gets it binarized,
   [height, width] of 0 and 1; mask_latent (may be NULL) the latent mask [height/8, width/8]: the
   top-left pixel of each 8 x 8 block (nearest downsampling), 0 or 1. */
SD_API void sd_inpaint_mask(const uint8_t *mask, int height, int width, float *mask_image, float *mask_latent);
/* The masked image [3, height, width] NCHW in [-1, 1]: rgb (RGB8 HWC) where the mask keeps it,
   0 (mid grey) where it repaints. */
SD_API void sd_masked_image(const uint8_t *rgb, const uint8_t *mask, int height, int width, float *out);

/* Which sampler walks the UNet back from noise (diffusers' scheduler classes). DDIM stays first,
   so that 0 means DDIM. LCM is LCMScheduler: the multi-step consistency sampling of Latent
   Consistency Models (2-8 steps), for LCM-distilled UNets and for ordinary ones with an LCM-LoRA. */
enum { SD_SAMPLER_DDIM, SD_SAMPLER_EULER, SD_SAMPLER_EULER_A, SD_SAMPLER_DPMPP_2M, SD_SAMPLER_LCM };

/* One sampler run: the timesteps the UNet sees and what each step needs, for any kind, so
   that a pipeline has one loop. Written by sd_sampler_init; the steps keep DPM++'s
   bookkeeping in it. No pointers into the caller's memory besides the schedule. */
typedef struct sd_sampler {
    int kind, steps, prediction, karras;
    float eta;                                   /* DDIM's eta (0 elsewhere) */
    const sd_schedule *schedule;                 /* the training tables it was made from */
    float timesteps[SD_MAX_TRAIN_TIMESTEPS];     /* what the UNet receives at step k: integers,
                                                    but fractional for Euler's linspace spacing */
    float sigmas[SD_MAX_TRAIN_TIMESTEPS + 1];    /* noise level of step k, sigmas[steps] = 0 */
    float init_noise_sigma;                      /* txt2img latents = N(0, 1) noise times this */
    int history_step;                            /* DPM++ 2M: the step whose x0 the caller's
                                                    history buffer holds, -1 if none */
} sd_sampler;

/* Sets up `steps` steps of a sampler over the schedule s (which must outlive it), as diffusers'
   scheduler classes do from SD's scheduler config: spacing and steps_offset as there (SD 1.x/2.x
   configs give no spacing, so each class's default applies: DDIM leading, the others linspace;
   SDXL's config says leading, which sd_generate takes for SDXL models), karras (DPM++ 2M only):
   Karras et al. (2022) sigmas with rho 7, prediction SD_PREDICT_EPSILON / SD_PREDICT_V, eta:
   DDIM's stochasticity (0 for the others). LCM takes 1..50 steps from its own schedule (every
   20th timestep of 1000, as distilled: 4 steps are 999, 759, 499, 259) whatever the spacing. */
SD_API int sd_sampler_init(sd_sampler *smp, const sd_schedule *s, int kind, int steps, int spacing,
                           int steps_offset, int karras, int prediction, float eta, sd_error *err);

/* What the UNet input is multiplied by at step k (diffusers' scale_model_input):
   1/sqrt(sigma² + 1) for Euler and Euler a, 1 for DDIM and DPM++ (and for k out of range). */
SD_API float sd_sampler_input_scale(const sd_sampler *smp, int k);

/* Step k over n floats: from the latents x at step k and the (guided) UNet output, the latents
   of step k + 1 (out; may be x unless noise is drawn into it) and the predicted clean latents
   (x0_out, may be NULL). Euler a adds fresh noise every step, also the last: `noise` (n floats)
   if given, else drawn from rng as diffusers' randn_tensor inside step() draws it (into out,
   which must then differ from x and model_out). DDIM with eta > 0 likewise, and LCM at every
   step but the last (whose output is its x0_out, the denoised latents). DPM++ 2M keeps the
   previous step's x0 in `history` (n floats of the caller's, untouched between steps, not
   overlapping the other buffers); the other kinds ignore it (may be NULL). */
SD_API int sd_sampler_step(sd_sampler *smp, int k, const float *x, const float *model_out, size_t n,
                           const float *noise, sd_rng *rng, float *history, float *out,
                           float *x0_out, sd_error *err);

/* img2img: the clean latents x0 noised to the level of step k, where the run then starts
   (k from sd_img2img_start), as the sampler's scheduler.add_noise: DDIM and LCM sqrt(a)·x0 +
   sqrt(1-a)·noise, Euler x0 + sigma·noise, DPM++ the latter times 1/sqrt(sigma² + 1). */
SD_API int sd_sampler_add_noise(const sd_sampler *smp, int k, const float *x0, const float *noise,
                                size_t n, float *out, sd_error *err);

/* LCM's boundary-condition scalings at timestep t (consistency models' c_skip and c_out with
   sigma_data 0.5, the timestep scaled by 10 as LCMScheduler does): the step's denoised latents
   are c_out·x0 + c_skip·x, so that t = 0 gives x itself. */
SD_API void sd_lcm_scalings(float t, float *c_skip, float *c_out);

/* What a model is made of: one single-file checkpoint (safetensors or GGUF, told apart by the
   GGUF magic), or the safetensors files of a diffusers folder (unet, vae and text_encoder files,
   in any order), plus CLIP's merges.txt. The bytes stay the caller's (read or mmap'd) and must
   outlive the model. The file whose metadata has `sd.version` describes the model (sd.* keys,
   see the golden set's README); a file without any (a GGUF from stable-diffusion.cpp's
   converter) can be described by adding a safetensors file that holds only a `__metadata__`
   table ({"__metadata__": {"sd.version": "1", ...}}, no tensors).
   Weights need not be in memory: a safetensors file whose data[i] is NULL is read through
   `read` (for WebAssembly, boards without mmap, weights in flash or behind a bus). Its header is
   read once into the model's arena; each weight is then read where it is used, a slab of its
   rows at a time into a staging area of the generation's arena (SD_WEIGHT_STAGE_BYTES), so every
   weight byte is read once per use (the UNet's once per evaluation) and biases and norms, a
   few KB, as the kernels need them. `read` fills dst with `size` bytes of file `file` (its
   index in data[]) from byte `offset` and returns 0, or non-zero on failure, which the running
   call reports as SD_ERR_IO. It is called from the pool's worker threads too, and from several
   generations at once when they share the model: it must be thread-safe (pread is). GGUF
   files must be in memory. */
#define SD_MAX_FILES 4
typedef int (*sd_read_fn)(void *user, int file, uint64_t offset, void *dst, size_t size);
typedef struct sd_source {
    const void *data[SD_MAX_FILES];
    size_t size[SD_MAX_FILES];
    int count;
    const char *merges;   /* Hugging Face merges.txt bytes */
    size_t merges_size;
    /* optional, for diffusers folders: the config.json texts of the parts (unet, text_encoder,
       text_encoder_2, vae, scheduler/scheduler_config.json) in any order; they say what shapes
       cannot (heads, activation, prediction type, spacing, VAE scale). Single files carry that
       in sd.* metadata. */
    const char *config[SD_MAX_FILES + 2];
    size_t config_size[SD_MAX_FILES + 2];
    int config_count;
    sd_read_fn read;      /* optional: how files whose data[i] is NULL are read (size[i]: the file's size) */
    void *read_user;      /* its first argument */
} sd_source;

/* Opens the files, finds the tokenizer, text encoder(s), UNet and VAE, and works out the family
   (SD1, SD2 or SDXL, epsilon or v prediction) from the tensors and metadata. Tables only: a few
   MB of the arena (the tokenizer's) and no weight copies. */
SD_API int sd_model_load(sd_model **model, const sd_source *src, sd_arena *a, sd_error *err);

/* Arena bytes that are enough for sd_model_load of these files (a bound from the header sizes,
   for GGUF files from their counts of tensors and metadata; the tables are a few MB: nothing is
   copied). */
SD_API size_t sd_model_arena_bytes(const sd_source *src);

/* What was found, for display. */
enum { SD_VERSION_1 = 1, SD_VERSION_2 = 2, SD_VERSION_XL = 3 };
typedef struct sd_model_info {
    int version;   /* SD_VERSION_1 (SD 1.x), SD_VERSION_2 (SD 2.x, SD-Turbo), SD_VERSION_XL (SDXL, SDXL-Turbo) */
    int prediction;   /* SD_PREDICT_EPSILON or SD_PREDICT_V */
    int diffusers;   /* 1 if loaded from a diffusers folder's files */
    int text_width, text_layers;   /* context width (SDXL: both encoders'), first encoder's layers */
    int unet_in_channels;   /* 4, or 9 for inpainting and 8 for InstructPix2Pix models */
    float vae_scale;
    int guidance_dim;   /* > 0: an LCM-distilled UNet (sd_unet_guidance_dim): the guidance scale is an
                           input, a generation runs no unconditional pass and reads no negative prompt */
} sd_model_info;
SD_API void sd_model_get_info(const sd_model *model, sd_model_info *info);

/* What sd_params.taesd is used for (sd_params.taesd_use, any of them). */
enum { SD_TAESD_USE_DECODE = 1, SD_TAESD_USE_ENCODE = 2, SD_TAESD_USE_PREVIEW = 4, SD_TAESD_USE_ALL = 7 };

/* Textual inversion (Gal et al. 2022): an embedding file holds learned vectors that a word of the
   prompt stands for. Formats: AUTOMATIC1111's (`emb_params` [n, width], or `string_to_param.*`
   as its .pt files convert), SDXL's (`clip_l` [n, 768] for the first text encoder and `clip_g`
   [n, 1280] for the second), and diffusers' learned_embeds (one tensor named after its token,
   [width] or [n, width]). The name is the caller's: AUTOMATIC1111 uses the file name without
   .safetensors (example.c's --embd-dir does).
   A prompt uses an embedding as AUTOMATIC1111 does: wherever its tokens spell the name's tokens
   (so case does not matter, "TinyStyle" calls "tinystyle", and only whole words match), the n
   vectors take n token positions, count towards the chunk's 75 and never straddle two chunks (an
   embedding that does not fit moves to the next chunk); weights apply as to words. diffusers'
   load_textual_inversion differs: its tokens match case-sensitively, inside words too. A word
   that names no embedding is just text. The vectors get ids SD_CLIP_VOCAB_SIZE + 0, 1, ... in
   file order, as diffusers numbers the tokens it adds. */
typedef struct sd_embedding_file {
    const char *name;   /* what a prompt writes to use it (copied) */
    const void *data;   /* the safetensors bytes, used in place: they must outlive the set */
    size_t size;
} sd_embedding_file;
typedef struct sd_embeddings sd_embeddings;   /* opaque; read-only once loaded, lives in the arena */

/* Arena bytes that are enough for sd_embeddings_load of these files (a bound from the header sizes). */
SD_API size_t sd_embeddings_arena_bytes(const sd_embedding_file *files, int count);
/* Opens the files for `model`, checking each vector's width against its text encoder (an error
   names the embedding and the tensor); the model itself is not touched, so threads may use
   different sets with one model. Hand the set to sd_params.embeddings. */
SD_API int sd_embeddings_load(sd_embeddings **set, const sd_model *model, const sd_embedding_file *files, int count,
                              sd_arena *a, sd_error *err);
/* The stages with a set: sd_prompt_chunks for text encoder `encoder` (0, or 1: SDXL's second) of
   the set's model, embedding names becoming vector ids; and in *te that encoder's description
   with the set's vectors as its extra tokens (nothing is copied but the description), for
   sd_text_encode of those ids. */
SD_API int sd_embeddings_prompt_chunks(const sd_embeddings *set, int encoder, const char *text, size_t size, int weighting,
                                       int comma_wrap, int min_chunks, int32_t **ids, float **weights, int *chunks,
                                       sd_arena *a, sd_error *err);
SD_API int sd_embeddings_text_encoder(const sd_embeddings *set, int encoder, sd_text_encoder *te, sd_error *err);

/* Load-time quantization: the model's F32/F16/BF16 weights that sd_quantize_choice picks
   (linear and convolution weights of the text encoders, UNet and VAE) quantized to `type`
   (SD_Q8_0, SD_Q4_0, SD_Q4_1, SD_Q5_0 or SD_Q5_1) as sd_quantize does, into the arena, which
   must then stay as long as the model; the model uses them from then on (both modes). The
   caller's file bytes are only read: pages of a mapped file that held those weights may be
   given back (madvise) afterwards. Exact arena bytes first: sd_model_quantize_arena_bytes (the
   quantized weights and one row of floats: SD 1.5 in q8_0 ~1.1 GB). Fails before changing
   anything if the arena is short. */
SD_API size_t sd_model_quantize_arena_bytes(const sd_model *model, sd_dtype type);
SD_API int sd_model_quantize(sd_model *model, sd_dtype type, sd_arena *a, sd_error *err);

/* One generation. sd_params_init() fills the defaults; change what you need. */
typedef struct sd_params {
    const char *prompt, *negative_prompt;   /* UTF-8; NULL = "" (SDXL: NULL = an all-zero negative
                                               context, diffusers' force_zeros_for_empty_prompt) */
    int weighting;   /* 1 (default): A1111's (text:1.2) [text] BREAK syntax (sd_prompt_parse); 0: plain text */
    int comma_wrap;   /* long prompts: A1111's comma_padding_backtrack (its default 20); 0 (default):
                         plain chunks of 75 tokens (sd_prompt_chunks) */
    /* LoRA (see sd_lora): AUTOMATIC1111's tags in `prompt`, <lora:NAME:w> (text encoders and UNet
       at w), <lora:NAME:w:u> (UNet at u), <lora:NAME> (1), are taken out of the text before it is
       parsed and their NAME passed to lora_resolve, which sets the file's bytes and returns 0, or
       returns non-zero when it has no such LoRA (an error). sd_generate_arena_bytes calls it too
       (the tables are planned from the files' headers): it must give the same bytes each time.
       As in A1111 and stable-diffusion.cpp, tags in negative_prompt stay plain text; other
       <word:...> tags (hypernetworks, ...) are removed with a warning, as A1111 does. */
    int (*lora_resolve)(void *lora_user, const char *name, const void **data, size_t *size);
    void *lora_user;   /* lora_resolve's first argument */
    const sd_lora *loras;   /* more LoRAs, not from tags: applied after the tags' ones */
    int lora_count;
    char *warnings;   /* optional: what was skipped (LoRA tensors, tags), one line each; "" if nothing */
    size_t warnings_size;
    int width, height;   /* pixels, multiples of 8 (default 512 x 512) */
    int steps;   /* default 20 */
    float guidance;   /* classifier-free guidance scale, default 7.5; <= 1: no unconditional pass (diffusers);
                         an LCM-distilled model takes it as an input instead (w = guidance - 1) */
    uint64_t seed;   /* torch.manual_seed(seed): the same noise diffusers draws on the CPU */
    int sampler;   /* SD_SAMPLER_DDIM (default), _EULER, _EULER_A, _DPMPP_2M, _LCM */
    int karras;   /* DPM++ 2M: Karras et al.'s sigmas (rho 7) instead of the training schedule's */
    int spacing;   /* -1 (default): the model's scheduler config, else SDXL's leading, else diffusers'
                      class default (DDIM leading, the others linspace); or SD_SPACING_LEADING /
                      _TRAILING / _LINSPACE */
    float eta;   /* DDIM eta, default 0 (deterministic) */
    int batch_count;   /* images made, with seeds seed, seed + 1, ... (default 1); rgb_out holds them
                          one after another; the optional outputs and given noise serve the first */
    int prediction;   /* -1 (default): the model's own; or SD_PREDICT_EPSILON / SD_PREDICT_V */
    int clip_skip;   /* 0 or 1: the model's own text layer; N: stop N - 1 layers earlier */
    int threads;   /* default 1 */
    int quant;   /* SD_QUANT_EXACT (default) or SD_QUANT_FAST: int8 products (sd_pool_set_quant) */
    int vae_tile;   /* 0 (default): decode the whole latent at once, exactly as diffusers; N: in
                       overlapping N x N latent tiles (memory flat in the image size, seams
                       blended, colours within a few percent of the whole decode) */
    const uint8_t *init_rgb;   /* img2img: RGB8 width x height image, or NULL for txt2img; needed
                                  by inpainting and InstructPix2Pix models (UNets with 9 and 8 input
                                  channels), which take it as extra UNet input channels */
    const uint8_t *mask;   /* inpainting: 8-bit grey width x height, >= 128 = repaint (white), or
                              NULL. With a 9-channel model: its mask and masked-image latent are UNet
                              inputs; with an ordinary model: after each step the kept area is reset
                              to the init image's latent noised to the next step (diffusers' blend) */
    double strength;   /* how much of the schedule to run, in (0, 1]; 0 (default): the pipeline's
                          own, 0.8 for img2img, 1 for inpainting (SDXL 0.9999, as diffusers); an
                          inpainting strength of exactly 1 starts from pure noise */
    float image_guidance;   /* InstructPix2Pix: how closely to follow the init image (default 1.5);
                               guidance runs when guidance > 1 and image_guidance >= 1 */
    int original_size[2], crop_top_left[2], target_size[2];   /* SDXL size conditioning, pixels
                       (height, width), (top, left); 0, 0 = the defaults: the image size, 0, 0, the image size */
    /* Optional given noise instead of draws from the seed (diffusers' latents= and the tests'
       fixed draws), each [1, 4, h/8, w/8], for the first image of a batch: */
    const float *initial_latents;   /* txt2img and InstructPix2Pix: the starting noise */
    const float *posterior_noise;   /* img2img and inpainting: the init image's posterior sample */
    const float *noise;   /* img2img and inpainting: the noise added at the start timestep (the
                             starting noise of an inpainting at strength 1) */
    const float *masked_image_noise;   /* inpainting: the masked image's posterior sample */
    const float *step_noise;   /* optional [steps, 4, h/8, w/8]: the noise Euler a, LCM (and DDIM
                                  with eta > 0) add at each step, instead of draws from the seed */
    const sd_embeddings *embeddings;   /* textual inversion: a set loaded for this model, or NULL */
    float *latents_out;   /* optional: the final latents [1, 4, h/8, w/8] */
    float *image_out;   /* optional: the decoded image [1, 3, h, w] before clamping */
    int (*progress)(void *user, int step, int steps);   /* non-zero return cancels */
    /* optional: the latents [4, h/8, w/8] after each step, to watch the image form */
    void (*preview)(void *user, int step, const float *latents, int h, int w);
    /* optional: TAESD (sd_taesd_load; TAESDXL for SDXL models) and what it does instead of the VAE,
       a set of SD_TAESD_USE_* (default all three): DECODE the final image, ENCODE img2img's init
       image (TAESD's latents as they are: no posterior draw), PREVIEW each step for preview_rgb.
       A use needs the half of TAESD it runs on; without it the VAE does that work (and there are
       no RGB previews). */
    const sd_taesd *taesd;
    int taesd_use;
    /* optional, with a TAESD decoder: each step's latents decoded by it, RGB8 width x height,
       valid during the call (about 20x cheaper than the VAE: a fraction of a UNet step) */
    void (*preview_rgb)(void *user, int step, const uint8_t *rgb, int width, int height);
    void *user;
} sd_params;

SD_API void sd_params_init(sd_params *p);

/* Arena bytes sd_generate needs with these parameters (0 if they are invalid): allocate once,
   and the generation never fails midway for lack of memory. Exact but for the text: memory is
   planned for the most chunks of 75 tokens the prompts' lengths allow (a chunk per 50 bytes of
   ASCII, 25 of other text, and per "BREAK"; fewer bytes with embeddings whose names are shorter
   than their vectors), so long prompts reserve a few MB they may not use. */
SD_API size_t sd_generate_arena_bytes(const sd_model *model, const sd_params *p);

/* Prompt in, RGB8 pixels out (rgb_out: batch_count x height x width x 3). Checks the
   parameters and the arena before any work; gives the arena back as it was. */
SD_API int sd_generate(const sd_model *model, const sd_params *p, sd_arena *a, uint8_t *rgb_out,
                       sd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* SD_H */

/* ============================================================================================ */
#ifdef SD_IMPLEMENTATION
#ifndef SD_IMPLEMENTATION_DONE
#define SD_IMPLEMENTATION_DONE

#include <math.h>
#include <stdarg.h>
#include <stdio.h>   /* vsnprintf only: the core does no I/O */
#include <string.h>
#ifndef SD_NO_THREADS
#include <pthread.h>
#if !defined(__cplusplus) && (!defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200112L)
/* Strict C99 hides this POSIX.1-2001 function; the library has it all the same. */
int pthread_attr_setstack(pthread_attr_t *attr, void *stackaddr, size_t stacksize);
#endif
#endif

#ifndef SD_ASSERT
#include <assert.h>
#define SD_ASSERT(x) assert(x)
#endif

/* Helpers that some builds (tests, tools) use and others do not. */
#if defined(__GNUC__) || defined(__clang__)
#define SD_MAYBE_UNUSED __attribute__((unused))
#else
#define SD_MAYBE_UNUSED
#endif

/* Fills err (if given) and returns code, so that failures read `return fail(err, ...)`. */
static int fail(sd_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

/* ---- 2. Arena ----------------------------------------------------------------------------- */

#define SD_ALIGN SD_ARENA_ALIGN

SD_API void sd_arena_init(sd_arena *a, void *memory, size_t size)
{
    /* Start at the first 64-byte boundary so every piece is aligned in absolute terms. */
    uintptr_t p = (uintptr_t)memory, q = (p + SD_ALIGN - 1) & ~(uintptr_t)(SD_ALIGN - 1);
    size_t skip = (size_t)(q - p);
    a->used = a->peak = 0;
    if (!memory || skip >= size) {   /* no usable memory: every allocation will fail cleanly */
        a->base = (unsigned char *)memory;
        a->size = 0;
        return;
    }
    a->base = (unsigned char *)memory + skip;
    a->size = size - skip;
}

/* Plan, then run: every *_arena_bytes function runs the same code as the call it plans, on a
   measuring arena (no memory, size SIZE_MAX) that counts what would be handed out and gives
   every allocation the same dummy address. Kernels see the arena's pool in measuring mode and do
   nothing, so a dry run touches no weights or activations; the arena's peak is the plan. */
static const float arena_dummy[SD_ALIGN / sizeof(float)] = {0};   /* read-only: a stray write in a dry run faults */

static void arena_measure(sd_arena *a) { a->base = NULL; a->size = (size_t)-1; a->used = a->peak = 0; }
static int arena_measuring(const sd_arena *a) { return !a->base && a->size; }
static float *dummy_floats(void) { return (float *)(uintptr_t)arena_dummy; }   /* a dry run's inputs and outputs */

SD_API void *sd_arena_alloc(sd_arena *a, size_t bytes, sd_error *err)
{
    size_t left = a->size - a->used, need;
    if (bytes > (size_t)-1 - SD_ALIGN) need = (size_t)-1;
    else need = (bytes + SD_ALIGN - 1) & ~(size_t)(SD_ALIGN - 1);
    if (need > left) {
        fail(err, SD_ERR_MEMORY, "arena too small: asked for %zu bytes, %zu of %zu left",
             bytes, left, a->size);
        return NULL;
    }
    void *p = arena_measuring(a) ? (void *)dummy_floats() : a->base + a->used;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

SD_API size_t sd_arena_mark(const sd_arena *a) { return a->used; }

SD_API void sd_arena_reset(sd_arena *a, size_t mark)
{
    SD_ASSERT(mark <= a->used);
    a->used = mark;
}

/* Allocation helpers that read better in model code: count × size with overflow check. */
static void *arena_array(sd_arena *a, size_t count, size_t size, sd_error *err)
{
    if (size && count > (size_t)-1 / size) {
        fail(err, SD_ERR_MEMORY, "arena: %zu x %zu bytes overflows size_t", count, size);
        return NULL;
    }
    return sd_arena_alloc(a, count * size, err);
}
#define arena_floats(a, n, err) ((float *)arena_array((a), (size_t)(n), sizeof(float), (err)))

/* n floats for a forward pass that stops at its first failure (*rc): NULL once one happened,
   or now if the arena is full. */
static float *pass_floats(sd_arena *a, size_t n, sd_error *err, int *rc)
{
    float *p;
    if (*rc) return NULL;
    if (!(p = arena_floats(a, n, err))) *rc = SD_ERR_MEMORY;
    return p;
}

/* ---- 3. safetensors and GGUF readers ------------------------------------------------------ */
/* Format: 8-byte little-endian header length N, N bytes of JSON
   {"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ...,
    "__metadata__": {"key": "value", ...}}, then the data region that the offsets index.
   GGUF files (below the safetensors reader) fill the same table. */

/* name, bytes of a block, values in a block (1: a plain element type) */
static const struct { const char *name; size_t size; int block; } dtype_info[SD_DTYPE_COUNT] = {
    {"F32", 4, 1}, {"F16", 2, 1}, {"BF16", 2, 1}, {"F64", 8, 1}, {"I64", 8, 1},
    {"I32", 4, 1}, {"I16", 2, 1}, {"I8", 1, 1}, {"U8", 1, 1}, {"BOOL", 1, 1},
    {"Q8_0", 34, 32}, {"Q4_0", 18, 32}, {"Q4_1", 20, 32}, {"Q5_0", 22, 32}, {"Q5_1", 24, 32},
    {"Q2_K", 84, 256}, {"Q3_K", 110, 256}, {"Q4_K", 144, 256}, {"Q5_K", 176, 256}, {"Q6_K", 210, 256},
};
#define DTYPE_MAX_BLOCK 256   /* the most values in one block (the K types') */

static int dtype_is_block(sd_dtype t) { return (unsigned)t < SD_DTYPE_COUNT && dtype_info[t].block > 1; }
/* The types a weight may have: the kernels convert these to f32 as they read them. */
static int dtype_is_weight(sd_dtype t) { return t == SD_F32 || t == SD_F16 || t == SD_BF16 || dtype_is_block(t); }

SD_API const char *sd_dtype_name(sd_dtype t) { return (unsigned)t < SD_DTYPE_COUNT ? dtype_info[t].name : "?"; }
SD_API size_t sd_dtype_size(sd_dtype t) { return (unsigned)t < SD_DTYPE_COUNT && !dtype_is_block(t) ? dtype_info[t].size : 0; }
SD_API size_t sd_dtype_block(sd_dtype t, int *elements)
{
    if (elements) *elements = (unsigned)t < SD_DTYPE_COUNT ? dtype_info[t].block : 0;
    return (unsigned)t < SD_DTYPE_COUNT ? dtype_info[t].size : 0;
}

/* Bytes that n values of type t take from a block boundary on (n a whole number of blocks):
   how views into rows of a weight find their bytes whatever the type. */
static size_t dtype_bytes(sd_dtype t, uint64_t n)
{
    SD_ASSERT(n % (uint64_t)dtype_info[t].block == 0);
    return (size_t)(n / (uint64_t)dtype_info[t].block * dtype_info[t].size);
}

SD_API int64_t sd_tensor_numel(const sd_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

SD_API float sd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 0x3ff, bits;
    if (exp == 31) bits = sign | 0x7f800000u | (man << 13);           /* inf, nan */
    else if (exp) bits = sign | ((exp + 112) << 23) | (man << 13);    /* normal */
    else if (!man) bits = sign;                                       /* zero */
    else {                                                            /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

SD_API float sd_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

SD_API uint16_t sd_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, e = (x >> 23) & 0xff, man = x & 0x7fffff;
    if (e == 255) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int exp = (int)e - 127 + 15;
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {                                   /* subnormal or zero in f16 */
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - exp;
        uint32_t half = man >> shift, rest = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)exp << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;   /* may carry into exp: ok */
    return (uint16_t)(sign | half);
}

/* ---- quantized blocks: GGUF's weight types, dequantized as ggml defines them ----
   A block type stores each row of a tensor (its last PyTorch dimension, GGUF's ne[0]) as whole
   blocks of 32 values (q4_0 ... q8_0) or 256 (the "K" types), so element e of the tensor is
   value e % n of block e / n. A block holds small integers and fp16 scales (little-endian,
   subnormals included); a value is d·q, d·q + m or (d·s)·q - dmin·m with s, m small sub-block
   scales. Each product is exact in float32 (at most 24 significant bits) and at most one add
   rounds, so every value is one correctly rounded float, whatever the order of evaluation: the
   very numbers ggml's dequantize_row_* (its to_float) gives, -0.0 included. Written from the
   layouts below (README of the golden set, section 13), one decoder per type. */

static float f16_le(const unsigned char *p) { return sd_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* q4_K / q5_K: the 6-bit scale and min of sub-block i (of 8), packed in 12 bytes: for i < 4 in
   the low 6 bits of bytes i and i + 4; for i >= 4 a nibble of byte i + 4 plus the top 2 bits of
   bytes i - 4 (scale) and i (min). */
static void k_scale_min(const unsigned char *s, int i, float *sc, float *m)
{
    *sc = (float)(i < 4 ? s[i] & 63 : (s[i + 4] & 15) | (s[i - 4] >> 6) << 4);
    *m = (float)(i < 4 ? s[i + 4] & 63 : (s[i + 4] >> 4) | (s[i] >> 6) << 4);
}

/* One block of type t at b → its dtype_info[t].block values in y. */
static void dequant_block(sd_dtype t, const unsigned char *b, float *y)
{
    switch (t) {
    case SD_Q8_0: {   /* d f16, qs[32] int8: qs[e]·d */
        float d = f16_le(b);
        for (int e = 0; e < 32; e++) y[e] = (float)(int8_t)b[2 + e] * d;
        return;
    }
    case SD_Q4_0: case SD_Q4_1: case SD_Q5_0: case SD_Q5_1: {
        /* d f16, (q4_1, q5_1: m f16), (q5: qh u32), qs[16]: element e < 16 is the low nibble of
           qs[e], element e >= 16 the high nibble of qs[e - 16]; the q5 types take bit e of qh as
           a fifth bit. q4_0: (n - 8)·d, q5_0: (n - 16)·d, q4_1 and q5_1: n·d + m. */
        int with_min = t == SD_Q4_1 || t == SD_Q5_1, five = t == SD_Q5_0 || t == SD_Q5_1;
        float d = f16_le(b), m = with_min ? f16_le(b + 2) : 0.0f;
        const unsigned char *q = b + (with_min ? 4 : 2);
        uint32_t qh = 0;
        if (five) { qh = q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24; q += 4; }
        int offset = with_min ? 0 : five ? 16 : 8;
        for (int e = 0; e < 32; e++) {
            int n = (e < 16 ? q[e] & 15 : q[e - 16] >> 4) | (int)((qh >> e & 1) << 4);
            y[e] = with_min ? (float)n * d + m : (float)(n - offset) * d;
        }
        return;
    }
    case SD_Q4_K: case SD_Q5_K: {
        /* d, dmin f16, scales[12], (q5_K: qh[32]), qs[128]: eight sub-blocks of 32; the 64 values
           of sub-blocks 2j, 2j + 1 are the low, then the high nibbles of qs[32j .. 32j + 31];
           q5_K's fifth bit of value l of sub-block i is bit i of qh[l]. (d·sc)·n - dmin·m. */
        float d = f16_le(b), dmin = f16_le(b + 2);
        const unsigned char *scales = b + 4, *qh = b + 16, *qs = b + (t == SD_Q5_K ? 48 : 16);
        for (int i = 0; i < 8; i++) {
            float sc, m;
            k_scale_min(scales, i, &sc, &m);
            float ds = d * sc, dm = dmin * m;
            for (int l = 0; l < 32; l++) {
                int n = qs[32 * (i / 2) + l] >> 4 * (i & 1) & 15;
                if (t == SD_Q5_K) n |= (qh[l] >> i & 1) << 4;
                y[32 * i + l] = ds * (float)n - dm;
            }
        }
        return;
    }
    case SD_Q6_K: {
        /* ql[128], qh[64], scales[16] int8, d f16 last. Value e = 128h + 32k + l (k < 4, l < 32):
           4 low bits from ql[64h + 32(k & 1) + l] (low nibble for k < 2, high for k >= 2), 2
           high bits from qh[32h + l] >> 2k; d·scales[e / 16]·(q - 32). */
        float d = f16_le(b + 208);
        for (int e = 0; e < 256; e++) {
            int h = e / 128, k = e / 32 % 4, l = e % 32;
            int lo = b[64 * h + 32 * (k & 1) + l] >> 4 * (k >> 1) & 15, hi = b[128 + 32 * h + l] >> 2 * k & 3;
            y[e] = d * (float)(int8_t)b[192 + e / 16] * (float)((lo | hi << 4) - 32);
        }
        return;
    }
    case SD_Q2_K: case SD_Q3_K: {
        /* 2-bit quants q of value e = 128h + 32j + l (l < 32): (qs[32h + l] >> 2j) & 3, with 16
           sub-blocks of 16 values. q2_K: scales[16], qs[64], d, dmin f16 last; sub-block s has
           scale and min nibbles: (d·(sc & 15))·q - dmin·(sc >> 4). q3_K: hmask[32], qs[64],
           scales[12], d f16 last; a clear bit e / 32 of hmask[e % 32] subtracts 4 from q, and the
           6-bit scale S of sub-block s = 4g + i comes from a nibble of byte i (g even) or i + 4
           (g odd), low for g < 2, plus bits 2g, 2g + 1 of byte 8 + i: (d·(S - 32))·q. */
        int q3 = t == SD_Q3_K;
        const unsigned char *qs = b + (q3 ? 32 : 16), *sb = b + (q3 ? 96 : 0);
        float d = f16_le(b + (q3 ? 108 : 80)), dmin = q3 ? 0.0f : f16_le(b + 82);
        for (int s = 0; s < 16; s++) {
            int g = s / 4, i = s % 4;
            float scale, min = 0.0f;
            if (q3) scale = d * (float)(((sb[i + 4 * (g & 1)] >> 4 * (g >> 1) & 15) | (sb[8 + i] >> 2 * g & 3) << 4) - 32);
            else { scale = d * (float)(sb[s] & 15); min = dmin * (float)(sb[s] >> 4); }
            for (int e = 16 * s; e < 16 * s + 16; e++) {
                int q = qs[32 * (e / 128) + e % 32] >> 2 * (e / 32 % 4) & 3;
                if (q3) y[e] = scale * (float)(q - ((b[e % 32] >> e / 32 & 1) ? 0 : 4));
                else y[e] = scale * (float)q - min;
            }
        }
        return;
    }
    default:
        SD_ASSERT(0);
        return;
    }
}

/* Values first .. first + n - 1 of a block-typed tensor's data into dst: whole blocks straight
   into dst, a block cut at either end through a one-block buffer. The one dequantizer that
   every reader of weights (tensor_get, tensor_floats, the GEMM's packing) goes through. */
static void dequant_row(sd_dtype t, const void *data, size_t first, size_t n, float *dst)
{
    size_t per = (size_t)dtype_info[t].block, skip = first % per;
    const unsigned char *b = (const unsigned char *)data + first / per * dtype_info[t].size;
    float tmp[DTYPE_MAX_BLOCK];
    for (; n; b += dtype_info[t].size, skip = 0) {
        size_t take = per - skip < n ? per - skip : n;
        if (take == per) dequant_block(t, b, dst);
        else { dequant_block(t, b, tmp); memcpy(dst, tmp + skip, take * sizeof(float)); }
        dst += take;
        n -= take;
    }
}

static void tensor_floats(float *dst, const sd_tensor *t, size_t i, int n);   /* section 4 */

/* ---- quantizing: sd.h's own quantized weights (sd_model_quantize, example --convert) ----
   The reverse of the decoders above for the 32-value types, computed as ggml's reference
   quantizers (quantize_row_*_ref, which stable-diffusion.cpp's converter runs) compute them, so
   that sd.h writes the bytes that converter writes. Per block of 32 values x, with x/d standing
   for x times the float 1/d (0 when d is 0), taken before d is rounded to fp16:
     q8_0  d = max|x| / 127                q = x/d rounded half away from zero
     q4_0  d = m / -8, m the value of largest magnitude (the first such, with its sign);
           q = min(15, trunc(x/d + 8.5))   (so m itself is q = 0)
     q5_0  d = m / -16                     q = min(31, trunc(x/d + 16.5)), bit 4 into qh
     q4_1  d = (max - min) / 15, m = min   q = min(15, trunc((x - min)/d + 0.5))
     q5_1  d = (max - min) / 31, m = min   q = trunc((x - min)/d + 0.5), bit 4 into qh
   Nibbles and fifth bits go where dequant_block reads them. */
static int quant_trunc(float v, int hi)   /* trunc(v) within 0..hi (a NaN gives 0) */
{
    return v >= (float)hi ? hi : v >= 0.0f ? (int)v : 0;
}

static void quant_block(sd_dtype t, const float *x, unsigned char *b)
{
    float amax = 0.0f, m = 0.0f, lo = x[0], hi = x[0], d, id;
    int q[32];
    for (int e = 0; e < 32; e++) {
        if (fabsf(x[e]) > amax) { amax = fabsf(x[e]); m = x[e]; }
        lo = x[e] < lo ? x[e] : lo;
        hi = x[e] > hi ? x[e] : hi;
    }
    switch (t) {
    case SD_Q8_0:
        d = amax / 127.0f;
        id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int e = 0; e < 32; e++) q[e] = quant_trunc(roundf(x[e] * id) + 127.0f, 254) - 127;   /* (a NaN or Inf weight: no UB) */
        break;
    case SD_Q4_0: case SD_Q5_0: {
        float half = t == SD_Q4_0 ? 8.0f : 16.0f;
        d = m / -half;
        id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int e = 0; e < 32; e++) q[e] = quant_trunc(x[e] * id + (half + 0.5f), 2 * (int)half - 1);
        break;
    }
    default: {   /* q4_1, q5_1 */
        int top = t == SD_Q4_1 ? 15 : 31;
        d = (hi - lo) / (float)top;
        id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int e = 0; e < 32; e++) q[e] = quant_trunc((x[e] - lo) * id + 0.5f, top);
        break;
    }
    }
    uint16_t h = sd_f32_to_f16(d);
    b[0] = (unsigned char)h, b[1] = (unsigned char)(h >> 8);
    if (t == SD_Q8_0) {
        for (int e = 0; e < 32; e++) b[2 + e] = (unsigned char)(q[e] & 255);
        return;
    }
    int with_min = t == SD_Q4_1 || t == SD_Q5_1, five = t == SD_Q5_0 || t == SD_Q5_1;
    unsigned char *qs = b + 2;
    if (with_min) { h = sd_f32_to_f16(lo); b[2] = (unsigned char)h, b[3] = (unsigned char)(h >> 8); qs += 2; }
    if (five) {
        uint32_t qh = 0;
        for (int e = 0; e < 32; e++) qh |= (uint32_t)(q[e] >> 4 & 1) << e;
        for (int i = 0; i < 4; i++) qs[i] = (unsigned char)(qh >> 8 * i);
        qs += 4;
    }
    for (int j = 0; j < 16; j++) qs[j] = (unsigned char)((q[j] & 15) | (q[j + 16] & 15) << 4);
}

/* The types sd.h quantizes to. */
static int quant_type_ok(sd_dtype t) { return t == SD_Q8_0 || t == SD_Q4_0 || t == SD_Q4_1 || t == SD_Q5_0 || t == SD_Q5_1; }

SD_API size_t sd_quantize(sd_dtype t, const float *src, size_t n, void *dst)
{
    if (!quant_type_ok(t) || n % 32 || !src || !dst) return 0;
    for (size_t i = 0; i < n; i += 32) quant_block(t, src + i, (unsigned char *)dst + i / 32 * dtype_info[t].size);
    return dtype_bytes(t, (uint64_t)n);
}

/* Values per row of a tensor: all but the first dimension (a matrix's columns, a convolution
   weight's Cin·k·k). */
static int64_t tensor_row_length(const sd_tensor *t)
{
    return t->ndim > 0 && t->shape[0] > 0 ? sd_tensor_numel(t) / t->shape[0] : sd_tensor_numel(t);
}

static int name_has(const char *s, const char *part) { return s && strstr(s, part) != NULL; }

SD_API sd_dtype sd_quantize_choice(const sd_tensor *t, sd_dtype type)
{
    size_t len;
    if (!t) return SD_DTYPE_COUNT;
    if (!quant_type_ok(type) || (t->dtype != SD_F32 && t->dtype != SD_F16 && t->dtype != SD_BF16) || t->ndim < 2 ||
        t->shape[0] < 1 || tensor_row_length(t) % 32)
        return t->dtype;
    len = t->name ? strlen(t->name) : 0;
    if ((len >= 5 && !strcmp(t->name + len - 5, ".bias")) || name_has(t->name, "time_embed.") || name_has(t->name, "label_emb.") ||
        name_has(t->name, "embedding"))
        return t->dtype;
    return type;
}

/* ---- weights read through the caller's callback (sd_source.read) ----
   A file whose bytes are not in memory: its tensors have data == NULL and a reader. Everything
   that reads weight values goes through tensor_read (raw bytes) or tensor_floats (values); the
   GEMM stages whole slabs of rows (gemm_staged). A failed read leaves zeros and is counted,
   under a lock since worker threads read too; the calls that run on the model compare counts. */
struct sd_reader {
    sd_read_fn read;
    void *user;
    int file;                   /* its index in sd_source */
    unsigned failures;          /* failed reads so far, and the last one's place (reader_lock) */
    uint64_t failed_offset;
    size_t failed_size;
};

#ifndef SD_NO_THREADS
static pthread_mutex_t reader_lock = PTHREAD_MUTEX_INITIALIZER;
#define READER_LOCK() pthread_mutex_lock(&reader_lock)
#define READER_UNLOCK() pthread_mutex_unlock(&reader_lock)
#else
#define READER_LOCK() ((void)0)
#define READER_UNLOCK() ((void)0)
#endif

/* n bytes of tensor t from byte `at` of its data into dst, from memory or through its reader. */
static void tensor_read(const sd_tensor *t, uint64_t at, size_t n, void *dst)
{
    if (!t->reader) { memcpy(dst, (const unsigned char *)t->data + at, n); return; }
    sd_reader *r = (sd_reader *)(uintptr_t)t->reader;   /* only its failure count changes */
    if (r->read(r->user, r->file, t->offset + at, dst, n)) {
        memset(dst, 0, n);
        READER_LOCK();
        r->failures++, r->failed_offset = t->offset + at, r->failed_size = n;
        READER_UNLOCK();
    }
}

static unsigned reader_failures(const sd_reader *r)
{
    unsigned n;
    if (!r) return 0;
    READER_LOCK();
    n = r->failures;
    READER_UNLOCK();
    return n;
}

/* SD_ERR_IO if reader r failed since it had `before` failures (what a call that used it says). */
static int reader_check(const sd_reader *r, unsigned before, sd_error *err)
{
    unsigned now = reader_failures(r);
    if (now == before) return SD_OK;
    READER_LOCK();
    uint64_t at = r->failed_offset;
    size_t n = r->failed_size;
    READER_UNLOCK();
    return fail(err, SD_ERR_IO, "weights: the read callback failed for %zu bytes at offset %llu of file %d (%u failed read%s)",
                n, (unsigned long long)at, r->file, now - before, now - before == 1 ? "" : "s");
}

/* tensor_floats of a tensor not in memory: whole blocks read a few KB at a time and converted. */
static void tensor_floats_read(float *dst, const sd_tensor *t, size_t i, int n)
{
    unsigned char buf[4096];
    int per = 1;
    size_t bs = sd_dtype_block(t->dtype, &per), fit = sizeof buf / bs * (size_t)per;
    while (n > 0) {
        size_t skip = i % (size_t)per, take = (size_t)n < fit - skip ? (size_t)n : fit - skip;
        size_t blocks = (skip + take + (size_t)per - 1) / (size_t)per;
        sd_tensor piece = *t;
        tensor_read(t, i / (size_t)per * bs, blocks * bs, buf);
        piece.data = buf, piece.reader = NULL, piece.nbytes = blocks * bs;
        tensor_floats(dst, &piece, skip, (int)take);
        dst += take, i += take, n -= (int)take;
    }
}

/* A view of t that starts `first` values further on (whole blocks), in memory or not. */
static sd_tensor tensor_from(const sd_tensor *t, uint64_t first)
{
    sd_tensor v = *t;
    uint64_t skip = dtype_bytes(t->dtype, first);
    if (t->data) v.data = (const unsigned char *)t->data + skip;
    v.offset += skip;
    return v;
}

SD_API int sd_tensor_convert(const sd_tensor *t, sd_dtype type, void *dst, float *row)
{
    if (!t || !dst) return SD_ERR_ARG;
    if (type == t->dtype) { tensor_read(t, 0, t->nbytes, dst); return SD_OK; }
    if (!dtype_is_weight(t->dtype)) return SD_ERR_ARG;
    int64_t len = tensor_row_length(t), rows = len ? sd_tensor_numel(t) / len : 0;
    if (!quant_type_ok(type) || len % 32 || !row) return SD_ERR_ARG;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t k = 0; k < len; k += 1 << 20)   /* tensor_floats takes an int count */
            tensor_floats(row + k, t, (size_t)(r * len + k), (int)(len - k < (1 << 20) ? len - k : 1 << 20));
        sd_quantize(type, row, (size_t)len, (unsigned char *)dst + dtype_bytes(type, (uint64_t)(r * len)));
    }
    return SD_OK;
}

/* Element i of a float tensor of any float dtype, as f32 (for small vectors: norms, biases). */
SD_MAYBE_UNUSED static float tensor_get(const sd_tensor *t, size_t i)
{
    if (t->reader) { float v; tensor_floats_read(&v, t, i, 1); return v; }
    switch (t->dtype) {
    case SD_F32: { float v; memcpy(&v, (const char *)t->data + 4 * i, 4); return v; }
    case SD_F16: { uint16_t v; memcpy(&v, (const char *)t->data + 2 * i, 2); return sd_f16_to_f32(v); }
    case SD_BF16: { uint16_t v; memcpy(&v, (const char *)t->data + 2 * i, 2); return sd_bf16_to_f32(v); }
    case SD_F64: { double v; memcpy(&v, (const char *)t->data + 8 * i, 8); return (float)v; }
    default: {
        float v = 0.0f;
        if (dtype_is_block(t->dtype)) dequant_row(t->dtype, t->data, i, 1, &v);
        return v;
    }
    }
}

/* A strict JSON reader over [p, end): just what safetensors headers (and the tests' JSON files)
   need. Every function returns 0 on success and leaves `error` set on the first failure. */
typedef struct json {
    const char *start, *p, *end;
    const char *error;   /* static message, NULL while all is well */
} json;

static int json_fail(json *j, const char *msg)
{
    if (!j->error) j->error = msg;
    return -1;
}

static void json_ws(json *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* Consumes character c after optional whitespace; returns 1 if it was there. */
static int json_eat(json *j, char c)
{
    json_ws(j);
    if (j->p < j->end && *j->p == c) { j->p++; return 1; }
    return 0;
}

static int json_hex4(json *j, uint32_t *v)
{
    *v = 0;
    if (j->end - j->p < 4) return json_fail(j, "truncated \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *j->p++;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return json_fail(j, "bad hex digit in \\u escape");
        *v = *v * 16 + (uint32_t)d;
    }
    return 0;
}

/* Reads a string, decoding escapes to UTF-8 into out[0..cap) (out may be NULL to measure).
   *len gets the decoded length; the output is NUL-terminated when it fits. */
static int json_string(json *j, char *out, size_t cap, size_t *len)
{
    size_t n = 0;
    json_ws(j);
    if (j->p >= j->end || *j->p != '"') return json_fail(j, "expected a string");
    j->p++;
    for (;;) {
        if (j->p >= j->end) return json_fail(j, "unterminated string");
        unsigned char c = (unsigned char)*j->p++;
        uint32_t cp;
        if (c == '"') break;
        if (c < 0x20) return json_fail(j, "control character in string");
        if (c != '\\') { if (out && n < cap) out[n] = (char)c; n++; continue; }
        if (j->p >= j->end) return json_fail(j, "unterminated escape");
        switch (*j->p++) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = 8; break;
        case 'f': cp = 12; break;
        case 'n': cp = 10; break;
        case 'r': cp = 13; break;
        case 't': cp = 9; break;
        case 'u':
            if (json_hex4(j, &cp)) return -1;
            if (cp >= 0xd800 && cp < 0xdc00) {        /* high surrogate: a low one must follow */
                uint32_t lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return json_fail(j, "lone surrogate in \\u escape");
                j->p += 2;
                if (json_hex4(j, &lo)) return -1;
                if (lo < 0xdc00 || lo >= 0xe000) return json_fail(j, "lone surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                return json_fail(j, "lone surrogate in \\u escape");
            }
            break;
        default: return json_fail(j, "unknown escape in string");
        }
        unsigned char u[4];
        int k;
        if (cp < 0x80) { u[0] = (unsigned char)cp; k = 1; }
        else if (cp < 0x800) { u[0] = (unsigned char)(0xc0 | cp >> 6); u[1] = (unsigned char)(0x80 | (cp & 63)); k = 2; }
        else if (cp < 0x10000) { u[0] = (unsigned char)(0xe0 | cp >> 12); u[1] = (unsigned char)(0x80 | ((cp >> 6) & 63)); u[2] = (unsigned char)(0x80 | (cp & 63)); k = 3; }
        else { u[0] = (unsigned char)(0xf0 | cp >> 18); u[1] = (unsigned char)(0x80 | ((cp >> 12) & 63)); u[2] = (unsigned char)(0x80 | ((cp >> 6) & 63)); u[3] = (unsigned char)(0x80 | (cp & 63)); k = 4; }
        for (int i = 0; i < k; i++, n++) if (out && n < cap) out[n] = (char)u[i];
    }
    if (out && n < cap) out[n] = 0;
    *len = n;
    return 0;
}

/* Reads a non-negative integer (no sign, fraction or exponent), failing above 2^63. */
static int json_uint(json *j, uint64_t *v)
{
    json_ws(j);
    const char *s = j->p;
    *v = 0;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return json_fail(j, "expected a non-negative integer");
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        uint64_t d = (uint64_t)(*j->p - '0');
        if (*v > (UINT64_C(0x7fffffffffffffff) - d) / 10) return json_fail(j, "integer too large");
        *v = *v * 10 + d;
        j->p++;
    }
    if (j->p - s > 1 && *s == '0') return json_fail(j, "leading zero in number");
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) return json_fail(j, "expected an integer");
    return 0;
}

/* Skips any JSON value (used by the tests for files whose fields they do not need). */
static int json_skip(json *j, int depth)
{
    size_t len;
    uint64_t v;
    if (depth > 64) return json_fail(j, "nesting too deep");
    json_ws(j);
    if (j->p >= j->end) return json_fail(j, "unexpected end of JSON");
    switch (*j->p) {
    case '"': return json_string(j, NULL, 0, &len);
    case '{': case '[': {
        char close = *j->p == '{' ? '}' : ']';
        j->p++;
        if (json_eat(j, close)) return 0;
        do {
            if (close == '}') {
                if (json_string(j, NULL, 0, &len)) return -1;
                if (!json_eat(j, ':')) return json_fail(j, "expected ':'");
            }
            if (json_skip(j, depth + 1)) return -1;
        } while (json_eat(j, ','));
        return json_eat(j, close) ? 0 : json_fail(j, "expected ',' or closing bracket");
    }
    case 't': case 'f': case 'n': {
        const char *w = *j->p == 't' ? "true" : *j->p == 'f' ? "false" : "null";
        size_t n = strlen(w);
        if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n)) return json_fail(j, "bad literal");
        j->p += n;
        return 0;
    }
    case '-': j->p++; /* fall through */
    default:
        if (json_uint(j, &v) && !(j->error && !strcmp(j->error, "expected an integer"))) return -1;
        j->error = NULL;   /* a fraction or exponent is fine here */
        if (j->p < j->end && *j->p == '.') { j->p++; while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++; }
        if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
            j->p++;
            if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
            while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
        }
        return 0;
    }
}

/* A decimal number ("0.18215", "1e-06", "32") as metadata spells it, independent of the C
   locale (strtod would read "0,5" in some); 1 on success. */
static int parse_number(const char *s, double *out)
{
    double m = 0.0;
    int e = 0, digits = 0, neg = 0;
    if (*s == '-' || *s == '+') neg = *s++ == '-';
    for (; *s >= '0' && *s <= '9'; s++, digits++) m = m * 10 + (*s - '0');
    if (*s == '.')
        for (s++; *s >= '0' && *s <= '9'; s++, digits++, e--) m = m * 10 + (*s - '0');
    if (!digits || digits > 17) return 0;
    if (*s == 'e' || *s == 'E') {
        int sign = 1, x = 0, xd = 0;
        s++;
        if (*s == '-' || *s == '+') sign = *s++ == '-' ? -1 : 1;
        for (; *s >= '0' && *s <= '9'; s++, xd++) if (x < 1000) x = x * 10 + (*s - '0');
        if (!xd) return 0;
        e += sign * x;
    }
    if (*s || e < -300 || e > 300) return 0;
    m = e < 0 ? m / pow(10.0, -e) : m * pow(10.0, e);   /* exact powers for |e| <= 22: correctly rounded */
    *out = neg ? -m : m;
    return 1;
}

/* Leaves j at the value of `key` in the top-level JSON object text[0..len) (a diffusers
   config.json); 0 if it is absent or the text is not an object. */
static int json_find(json *j, const char *text, size_t len, const char *key)
{
    char name[128];
    size_t n;
    j->start = j->p = text;
    j->end = text + len;
    j->error = NULL;
    if (!json_eat(j, '{') || json_eat(j, '}')) return 0;
    do {
        if (json_string(j, name, sizeof name, &n) || !json_eat(j, ':')) return 0;
        if (n < sizeof name && !strcmp(name, key)) { json_ws(j); return 1; }
        if (json_skip(j, 0)) return 0;
    } while (json_eat(j, ','));
    return 0;
}

/* The scalar value at j into buf: a string decoded, a number or true/false as written, a flat
   array of those joined by commas ([2, 2, 4] → "2,2,4", as sd.* metadata writes lists); 0 for
   null, objects, nested arrays and values that do not fit. */
static int json_scalar(json *j, char *buf, size_t cap)
{
    size_t n;
    const char *at = j->p;
    if (j->p < j->end && *j->p == '[') {
        size_t used = 0;
        j->p++;
        if (json_eat(j, ']')) return cap > 0 && (buf[0] = 0, 1);
        do {
            json_ws(j);
            if (j->p < j->end && *j->p == '[') return 0;
            if (used && used < cap) buf[used++] = ',';
            if (used >= cap || !json_scalar(j, buf + used, cap - used)) return 0;
            used += strlen(buf + used);
        } while (json_eat(j, ','));
        return json_eat(j, ']');
    }
    if (j->p < j->end && *j->p == '"') return !json_string(j, buf, cap, &n) && n < cap && strlen(buf) == n;
    if (j->p >= j->end || *j->p == '{' || *j->p == 'n' || json_skip(j, 0)) return 0;
    n = (size_t)(j->p - at);
    if (n >= cap) return 0;
    memcpy(buf, at, n);
    buf[n] = 0;
    return 1;
}

static uint32_t hash_string(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

/* One pass over the header. With st->tensors NULL it only validates and counts (so that the
   second pass can allocate exact tables); otherwise it fills them. */
static int st_parse(sd_safetensors *st, json *j, size_t data_size, sd_arena *a,
                    int *n_tensors, int *n_meta, sd_error *err)
{
    char name[1024], field[32], dt[16];
    size_t len;
    *n_tensors = *n_meta = 0;
    if (!json_eat(j, '{')) { json_fail(j, "header is not a JSON object"); goto bad_json; }
    if (json_eat(j, '}')) goto done;
    do {
        const char *entry = j->p;
        if (json_string(j, name, sizeof name, &len)) goto bad_json;
        if (len >= sizeof name) return fail(err, SD_ERR_FORMAT, "safetensors: tensor name longer than %zu bytes at header byte %ld", sizeof name - 1, (long)(entry - j->start));
        if (strlen(name) != len) return fail(err, SD_ERR_FORMAT, "safetensors: NUL byte in a name at header byte %ld", (long)(entry - j->start));
        if (!json_eat(j, ':') || !json_eat(j, '{')) { json_fail(j, "expected ':' and an object after a name"); goto bad_json; }
        if (!strcmp(name, "__metadata__")) {
            if (json_eat(j, '}')) continue;
            do {
                const char *k = j->p, *v;
                size_t klen, vlen;
                if (json_string(j, NULL, 0, &klen) || !json_eat(j, ':')) { json_fail(j, "expected ':' in __metadata__"); goto bad_json; }
                v = j->p;
                json_ws(j);
                if (j->p < j->end && *j->p != '"') return fail(err, SD_ERR_FORMAT, "safetensors: __metadata__ value at header byte %ld is not a string", (long)(j->p - j->start));
                if (json_string(j, NULL, 0, &vlen)) goto bad_json;
                if (st->tensors) {   /* second pass: decode key and value into the arena */
                    json kj = *j, vj = *j;
                    char *ks = (char *)sd_arena_alloc(a, klen + 1, err), *vs = (char *)sd_arena_alloc(a, vlen + 1, err);
                    if (!ks || !vs) return SD_ERR_MEMORY;
                    kj.p = k; vj.p = v;
                    json_string(&kj, ks, klen + 1, &klen);
                    json_string(&vj, vs, vlen + 1, &vlen);
                    st->meta_keys[*n_meta] = ks;
                    st->meta_values[*n_meta] = vs;
                }
                (*n_meta)++;
            } while (json_eat(j, ','));
            if (!json_eat(j, '}')) { json_fail(j, "expected ',' or '}' in __metadata__"); goto bad_json; }
            continue;
        }
        /* a tensor entry */
        sd_tensor t;
        int have = 0;   /* bit 0 dtype, 1 shape, 2 data_offsets */
        uint64_t begin = 0, end = 0;
        memset(&t, 0, sizeof t);
        t.dtype = SD_DTYPE_COUNT;
        if (json_eat(j, '}')) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' has no dtype, shape or data_offsets", name);
        do {
            if (json_string(j, field, sizeof field, &len)) goto bad_json;
            if (len >= sizeof field) field[0] = 0;
            if (!json_eat(j, ':')) { json_fail(j, "expected ':'"); goto bad_json; }
            if (!strcmp(field, "dtype")) {
                if (json_string(j, dt, sizeof dt, &len)) goto bad_json;
                for (int d = 0; d < SD_DTYPE_COUNT; d++)   /* block types are GGUF's, not safetensors' */
                    if (len < sizeof dt && !dtype_is_block((sd_dtype)d) && !strcmp(dt, dtype_info[d].name)) t.dtype = (sd_dtype)d;
                if (t.dtype == SD_DTYPE_COUNT)
                    return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' has unknown dtype '%.15s'", name, len < sizeof dt ? dt : "(too long)");
                have |= 1;
            } else if (!strcmp(field, "shape")) {
                if (!json_eat(j, '[')) { json_fail(j, "shape is not an array"); goto bad_json; }
                if (!json_eat(j, ']')) {
                    do {
                        uint64_t v;
                        if (t.ndim == SD_MAX_DIMS) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' has more than %d dimensions", name, SD_MAX_DIMS);
                        if (json_uint(j, &v)) goto bad_json;
                        t.shape[t.ndim++] = (int64_t)v;
                    } while (json_eat(j, ','));
                    if (!json_eat(j, ']')) { json_fail(j, "expected ',' or ']' in shape"); goto bad_json; }
                }
                have |= 2;
            } else if (!strcmp(field, "data_offsets")) {
                if (!json_eat(j, '[') || json_uint(j, &begin) || !json_eat(j, ',') || json_uint(j, &end) || !json_eat(j, ']')) {
                    json_fail(j, "data_offsets is not [begin, end]");
                    goto bad_json;
                }
                have |= 4;
            } else {
                return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' has unknown field '%.31s'", name, field);
            }
        } while (json_eat(j, ','));
        if (!json_eat(j, '}')) { json_fail(j, "expected ',' or '}' in a tensor entry"); goto bad_json; }
        if (have != 7) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' lacks %s", name, !(have & 1) ? "dtype" : !(have & 2) ? "shape" : "data_offsets");
        /* sizes: product of dims times element size, checked for overflow at every step */
        uint64_t bytes = sd_dtype_size(t.dtype);
        for (int d = 0; d < t.ndim; d++) {
            uint64_t n = (uint64_t)t.shape[d];
            if (n && bytes > UINT64_C(0x7fffffffffffffff) / n) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s': size of shape overflows", name);
            bytes *= n;
        }
        if (begin > end) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s': data_offsets [%llu, %llu] are reversed", name, (unsigned long long)begin, (unsigned long long)end);
        if (end > data_size) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s': data_offsets end %llu is past the data region (%zu bytes)", name, (unsigned long long)end, data_size);
        if (end - begin != bytes) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s': %llu bytes in data_offsets but shape x %s needs %llu", name, (unsigned long long)(end - begin), dtype_info[t.dtype].name, (unsigned long long)bytes);
        if (st->tensors) {
            size_t at = (size_t)((const unsigned char *)j->end - st->bytes) + (size_t)begin;   /* file offset of the data */
            char *s = (char *)sd_arena_alloc(a, strlen(name) + 1, err);
            if (!s) return SD_ERR_MEMORY;
            if (at % sd_dtype_size(t.dtype))
                return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' at file offset %zu is not aligned for %s (sd.h uses data in place and will not copy it)", name, at, dtype_info[t.dtype].name);
            if (!st->reader && (uintptr_t)(st->bytes + at) % sd_dtype_size(t.dtype))
                return fail(err, SD_ERR_ARG, "safetensors: the caller's buffer is not aligned for tensor '%s' (%s); pass a buffer from malloc or mmap", name, dtype_info[t.dtype].name);
            memcpy(s, name, strlen(name) + 1);
            t.name = s;
            t.data = st->reader ? NULL : st->bytes + at;
            t.offset = at;
            t.reader = st->reader;
            t.nbytes = (size_t)bytes;
            st->tensors[*n_tensors] = t;
        }
        (*n_tensors)++;
        if (*n_tensors > 1000000) return fail(err, SD_ERR_FORMAT, "safetensors: more than a million tensors");
    } while (json_eat(j, ','));
    if (!json_eat(j, '}')) { json_fail(j, "expected ',' or '}' after an entry"); goto bad_json; }
done:
    json_ws(j);
    if (j->p != j->end) { json_fail(j, "trailing bytes after the header object"); goto bad_json; }
    return 0;
bad_json:
    return fail(err, SD_ERR_FORMAT, "safetensors: bad header JSON at byte %ld: %s", (long)(j->p - j->start), j->error ? j->error : "syntax error");
}

static int st_compare_offsets(const sd_tensor *x, const sd_tensor *y)
{
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Sort indices by data offset (heap sort: no recursion, no libc qsort callback casts). */
static void st_sort_by_offset(const sd_tensor *t, int32_t *idx, int n)
{
    for (int k = n / 2 - 1, m = n;; ) {
        int root;
        if (k >= 0) root = k--;
        else { if (--m <= 0) break; int32_t s = idx[0]; idx[0] = idx[m]; idx[m] = s; root = 0; }
        for (;;) {
            int c = 2 * root + 1;
            if (c >= m) break;
            if (c + 1 < m && st_compare_offsets(&t[idx[c + 1]], &t[idx[c]]) > 0) c++;
            if (st_compare_offsets(&t[idx[c]], &t[idx[root]]) <= 0) break;
            int32_t s = idx[c]; idx[c] = idx[root]; idx[root] = s;
            root = c;
        }
    }
}

/* Checks that the tensors cover the data region exactly: no overlaps, no holes, no tail. */
static int st_check_coverage(const sd_safetensors *st, size_t region, size_t data_size, sd_arena *a, sd_error *err)
{
    size_t pos = 0, mark = sd_arena_mark(a);
    int32_t *idx = (int32_t *)arena_array(a, (size_t)st->count + 1, sizeof(int32_t), err);
    if (!idx) return SD_ERR_MEMORY;
    for (int i = 0; i < st->count; i++) idx[i] = i;
    st_sort_by_offset(st->tensors, idx, st->count);
    for (int i = 0; i < st->count; i++) {
        const sd_tensor *t = &st->tensors[idx[i]];
        size_t off = (size_t)t->offset - region;
        if (off < pos) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' at data offset %zu overlaps the tensor before it (which ends at %zu)", t->name, off, pos);
        if (off > pos) return fail(err, SD_ERR_FORMAT, "safetensors: hole in the data region before tensor '%s' (it starts at %zu, the data before ends at %zu)", t->name, off, pos);
        pos += t->nbytes;
    }
    sd_arena_reset(a, mark);   /* the index was scratch */
    if (pos != data_size) return fail(err, SD_ERR_FORMAT, "safetensors: data region is %zu bytes but the tensors cover %zu", data_size, pos);
    return SD_OK;
}

/* Slots of the name hash for nt tensors: a power of two, at most half full. */
static uint32_t st_hash_slots(int nt)
{
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)nt) cap *= 2;
    return cap;
}

/* The tables of an opened file, sized by a first pass over its header: nt tensors, nm metadata
   pairs, the name hash. st_tables_bytes is what they take of the arena. */
static int st_alloc_tables(sd_safetensors *st, int nt, int nm, sd_arena *a, sd_error *err)
{
    uint32_t cap = st_hash_slots(nt);
    st->tensors = (sd_tensor *)arena_array(a, (size_t)nt + 1, sizeof(sd_tensor), err);
    st->meta_keys = (const char **)arena_array(a, (size_t)nm + 1, sizeof(char *), err);
    st->meta_values = (const char **)arena_array(a, (size_t)nm + 1, sizeof(char *), err);
    st->hash = (int32_t *)arena_array(a, cap, sizeof(int32_t), err);
    st->hash_mask = cap - 1;
    return st->tensors && st->meta_keys && st->meta_values && st->hash ? SD_OK : SD_ERR_MEMORY;
}

static uint64_t arena_piece(uint64_t bytes) { return (bytes + SD_ALIGN - 1) / SD_ALIGN * SD_ALIGN; }

static uint64_t st_tables_bytes(int nt, int nm)
{
    return arena_piece(((uint64_t)nt + 1) * sizeof(sd_tensor)) + 2 * arena_piece(((uint64_t)nm + 1) * sizeof(char *)) +
           arena_piece((uint64_t)st_hash_slots(nt) * sizeof(int32_t));
}

/* Fills the name hash of the st->count tensors; a name twice is an error (`format` says whose). */
static int st_index(sd_safetensors *st, const char *format, sd_error *err)
{
    memset(st->hash, 0xff, ((size_t)st->hash_mask + 1) * sizeof(int32_t));
    for (int i = 0; i < st->count; i++) {
        uint32_t h = hash_string(st->tensors[i].name) & st->hash_mask;
        for (; st->hash[h] >= 0; h = (h + 1) & st->hash_mask)
            if (!strcmp(st->tensors[st->hash[h]].name, st->tensors[i].name))
                return fail(err, SD_ERR_FORMAT, "%s: duplicate tensor name '%s'", format, st->tensors[i].name);
        st->hash[h] = i;
    }
    return SD_OK;
}

/* The header length in a file's first 8 bytes, checked against the file's size. */
static int st_header_length(const unsigned char *b, size_t size, uint64_t *hlen, sd_error *err)
{
    *hlen = 0;
    if (size < 8) return fail(err, SD_ERR_FORMAT, "safetensors: file of %zu bytes is shorter than the 8-byte header length", size);
    if (!memcmp(b, "GGUF", 4)) return fail(err, SD_ERR_FORMAT, "safetensors: this is a GGUF file (sd_gguf_open reads those)");
    for (int i = 7; i >= 0; i--) *hlen = *hlen << 8 | b[i];
    if (*hlen > 100u << 20) return fail(err, SD_ERR_FORMAT, "safetensors: header length %llu is absurd (over 100 MB)", (unsigned long long)*hlen);
    if (*hlen > size - 8) return fail(err, SD_ERR_FORMAT, "safetensors: header length %llu is larger than the %zu bytes after it", (unsigned long long)*hlen, size - 8);
    return SD_OK;
}

/* Opens a file of `size` bytes whose first bytes (all of them, or with st->reader set the
   8-byte length and the header) are at b. */
static int st_open(sd_safetensors *st, const unsigned char *b, size_t size, sd_arena *a, sd_error *err)
{
    uint64_t hlen = 0;
    int nt, nm, rc;
    if ((rc = st_header_length(b, size, &hlen, err))) return rc;
    st->bytes = b;
    st->size = size;
    json j = { (const char *)b + 8, (const char *)b + 8, (const char *)b + 8 + hlen, NULL };
    size_t data_size = size - 8 - (size_t)hlen;
    if ((rc = st_parse(st, &j, data_size, a, &nt, &nm, err))) return rc;

    /* the second pass fills tables sized by the first */
    if ((rc = st_alloc_tables(st, nt, nm, a, err))) return rc;
    j.p = j.start;
    if ((rc = st_parse(st, &j, data_size, a, &nt, &nm, err))) return rc;
    st->count = nt;
    st->meta_count = nm;
    if ((rc = st_index(st, "safetensors", err))) return rc;
    return st_check_coverage(st, 8 + (size_t)hlen, data_size, a, err);
}

static int gguf_open(sd_safetensors *st, const unsigned char *b, size_t size, sd_arena *a, sd_error *err);

/* The public open calls: arguments checked, and on failure the arena and table as they were. */
static int file_open(int gguf, sd_safetensors *st, const void *data, size_t size, sd_arena *a, sd_error *err)
{
    if (!st || !a || (!data && size)) return fail(err, SD_ERR_ARG, "%s: NULL argument", gguf ? "gguf" : "safetensors");
    size_t mark = sd_arena_mark(a);
    memset(st, 0, sizeof *st);
    int rc = (gguf ? gguf_open : st_open)(st, (const unsigned char *)data, size, a, err);
    if (rc) {
        sd_arena_reset(a, mark);
        memset(st, 0, sizeof *st);
    }
    return rc;
}

SD_API int sd_safetensors_open(sd_safetensors *st, const void *data, size_t size,
                               sd_arena *a, sd_error *err)
{
    return file_open(0, st, data, size, a, err);
}

SD_API const sd_tensor *sd_safetensors_find(const sd_safetensors *st, const char *name)
{
    if (!st || !st->hash || !name) return NULL;
    for (uint32_t h = hash_string(name) & st->hash_mask; st->hash[h] >= 0; h = (h + 1) & st->hash_mask)
        if (!strcmp(st->tensors[st->hash[h]].name, name)) return &st->tensors[st->hash[h]];
    return NULL;
}

/* The header length a file's first 8 bytes give (0 if they do not: opening it says why). */
static size_t safetensors_header_bytes(const void *data, size_t size)
{
    const unsigned char *b = (const unsigned char *)data;
    uint64_t hlen = 0;
    if (!b || size < 8) return 0;
    for (int k = 7; k >= 0; k--) hlen = hlen << 8 | b[k];
    return hlen <= size - 8 && hlen <= 100u << 20 ? (size_t)hlen : 0;
}

/* Arena bytes that sd_safetensors_open of a file takes at most, from its header length: per
   header byte, a metadata pair ("":"", 6 bytes) becomes two 64-byte arena pieces and two pointers
   (144 bytes, 24 per byte); a tensor entry (at least 48 bytes) a table row, its name and hash
   slots (about 200). */
static size_t safetensors_arena_bound(const void *data, size_t size)
{
    return 24 * safetensors_header_bytes(data, size) + 65536;
}

SD_API const char *sd_safetensors_meta(const sd_safetensors *st, const char *key)
{
    if (!st || !key) return NULL;
    for (int i = 0; i < st->meta_count; i++)
        if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
    return NULL;
}

/* ---- GGUF reader ----
   stable-diffusion.cpp's (and llama.cpp's) container, versions 2 and 3, little-endian:
     "GGUF" · u32 version · u64 n_tensors · u64 n_kv
     n_kv key-value pairs:   string key · u32 value type · the value
     n_tensors tensor infos: string name · u32 n_dims · n_dims × u64 ne · u32 ggml type · u64 offset
     zero padding to a multiple of the alignment (u32 metadata general.alignment, else 32)
     the data section: a tensor's bytes at data section start + its offset.
   A string is a u64 length and that many bytes (no NUL). ne[0] is the innermost, contiguous
   dimension: the PyTorch shape is ne reversed, and a block type's blocks run along ne[0].
   Two passes, like the safetensors reader's: the first checks everything it can without the
   tables and counts what they need (so the arena is asked once, for the exact size, and
   sd_model_arena_bytes can plan it); the second fills them. */

enum { GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STRING,
       GGUF_ARRAY, GGUF_U64, GGUF_I64, GGUF_F64, GGUF_VALUE_TYPES };
static const unsigned char gguf_value_bytes[GGUF_VALUE_TYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* ggml's type numbers (ggml.h enum ggml_type) of the types sd.h reads. */
static const struct { uint32_t ggml; sd_dtype dtype; } gguf_types[] = {
    {0, SD_F32}, {1, SD_F16}, {2, SD_Q4_0}, {3, SD_Q4_1}, {6, SD_Q5_0}, {7, SD_Q5_1}, {8, SD_Q8_0},
    {10, SD_Q2_K}, {11, SD_Q3_K}, {12, SD_Q4_K}, {13, SD_Q5_K}, {14, SD_Q6_K},
    {24, SD_I8}, {25, SD_I16}, {26, SD_I32}, {27, SD_I64}, {28, SD_F64}, {30, SD_BF16},
};

#define GGUF_MAX_TENSORS 1000000   /* as the safetensors reader */
#define GGUF_MAX_KV (1 << 24)
#define GGUF_MAX_NAME 1023

typedef struct gguf_reader {
    const unsigned char *b;
    size_t size, pos;
    sd_error *err;
    int fill;                    /* second pass: write the tables */
    uint64_t n_tensors, n_kv;
    uint64_t alignment;
    size_t data_start;           /* file offset of the data section */
    int n_meta;                  /* pairs kept as metadata */
    uint64_t strings;            /* bytes of the names and metadata texts, NULs included */
    char *pool;                  /* second pass: where those go */
} gguf_reader;

static uint64_t gguf_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    while (n-- > 0) v = v << 8 | p[n];
    return v;
}

/* That n more bytes are there, else an error naming the part (`what` number `index`). */
static int gguf_need(gguf_reader *r, uint64_t n, const char *what, uint64_t index)
{
    if (n <= r->size - r->pos) return SD_OK;
    return fail(r->err, SD_ERR_FORMAT, "gguf: %s %llu is cut off at byte %zu (it needs %llu more bytes, the file has %zu)",
                what, (unsigned long long)index, r->pos, (unsigned long long)n, r->size - r->pos);
}

static int gguf_uint(gguf_reader *r, int bytes, uint64_t *v, const char *what, uint64_t index)
{
    int rc = gguf_need(r, (uint64_t)bytes, what, index);
    if (rc) return rc;
    *v = gguf_le(r->b + r->pos, bytes);
    r->pos += (size_t)bytes;
    return SD_OK;
}

static int gguf_string(gguf_reader *r, const unsigned char **s, uint64_t *len, const char *what, uint64_t index)
{
    int rc = gguf_uint(r, 8, len, what, index);
    if (!rc) rc = gguf_need(r, *len, what, index);
    if (rc) return rc;
    *s = r->b + r->pos;
    r->pos += (size_t)*len;
    return SD_OK;
}

/* A scalar value as metadata text (buf: 32 bytes): integers in decimal, floats to round trip. */
static void gguf_scalar_text(int type, const unsigned char *p, char *buf)
{
    int bytes = gguf_value_bytes[type];
    uint64_t v = gguf_le(p, bytes), sign = (uint64_t)1 << (8 * bytes - 1), mask = sign * 2 - 1;
    if (type == GGUF_F32 || type == GGUF_F64) {
        uint32_t u = (uint32_t)v;
        float f;
        double d;
        memcpy(&f, &u, 4);
        memcpy(&d, &v, 8);
        snprintf(buf, 32, type == GGUF_F32 ? "%.9g" : "%.17g", type == GGUF_F32 ? (double)f : d);
    } else if (type == GGUF_BOOL) {
        snprintf(buf, 32, "%s", v ? "true" : "false");
    } else if ((type == GGUF_I8 || type == GGUF_I16 || type == GGUF_I32 || type == GGUF_I64) && (v & sign)) {
        snprintf(buf, 32, "-%llu", (unsigned long long)((~v & mask) + 1));   /* two's complement */
    } else {
        snprintf(buf, 32, "%llu", (unsigned long long)v);
    }
}

/* Checks a value of `type` at r->pos and moves past it; *text gets scalar and string values as
   metadata text (NULL for arrays), *len its length. Arrays of any type but arrays are read
   through; a bool must be 0 or 1. */
static int gguf_value(gguf_reader *r, uint64_t type, uint64_t k, const char **text, uint64_t *len, char *buf)
{
    uint64_t n, et;
    int rc;
    *text = NULL;
    if (type >= GGUF_VALUE_TYPES) return fail(r->err, SD_ERR_FORMAT, "gguf: key-value pair %llu has unknown value type %llu", (unsigned long long)k, (unsigned long long)type);
    if (type == GGUF_STRING) {
        const unsigned char *s;
        if ((rc = gguf_string(r, &s, len, "the value of key-value pair", k))) return rc;
        *text = (const char *)s;
        return SD_OK;
    }
    if (type != GGUF_ARRAY) {
        if ((rc = gguf_need(r, gguf_value_bytes[type], "the value of key-value pair", k))) return rc;
        if (type == GGUF_BOOL && r->b[r->pos] > 1) return fail(r->err, SD_ERR_FORMAT, "gguf: key-value pair %llu: a bool of value %d", (unsigned long long)k, r->b[r->pos]);
        gguf_scalar_text((int)type, r->b + r->pos, buf);
        r->pos += gguf_value_bytes[type];
        *text = buf;
        *len = strlen(buf);
        return SD_OK;
    }
    if ((rc = gguf_uint(r, 4, &et, "the array of key-value pair", k)) || (rc = gguf_uint(r, 8, &n, "the array of key-value pair", k))) return rc;
    if (et >= GGUF_VALUE_TYPES || et == GGUF_ARRAY)
        return fail(r->err, SD_ERR_FORMAT, "gguf: key-value pair %llu: an array of %s", (unsigned long long)k, et == GGUF_ARRAY ? "arrays (not supported)" : "an unknown type");
    uint64_t least = et == GGUF_STRING ? 8 : gguf_value_bytes[et];   /* bytes per element at least */
    if (n > (r->size - r->pos) / least)
        return fail(r->err, SD_ERR_FORMAT, "gguf: key-value pair %llu: an array of %llu elements cannot fit in the %zu bytes left",
                    (unsigned long long)k, (unsigned long long)n, r->size - r->pos);
    if (et != GGUF_STRING && et != GGUF_BOOL) { r->pos += (size_t)(n * least); return SD_OK; }
    for (uint64_t i = 0; i < n; i++) {
        const char *t;
        uint64_t l;
        if ((rc = gguf_value(r, et, k, &t, &l, buf))) return rc;
    }
    return SD_OK;
}

/* Copies s[0..len) and a NUL into the second pass's string pool. */
static const char *gguf_keep(gguf_reader *r, const void *s, uint64_t len)
{
    char *p = r->pool;
    memcpy(p, s, (size_t)len);
    p[len] = 0;
    r->pool += len + 1;
    return p;
}

/* The key-value pairs: general.alignment, and the metadata pairs. `keys` (may be NULL) gets each
   key's file offset, for the duplicate check. */
static int gguf_kvs(gguf_reader *r, sd_safetensors *st, uint64_t *keys)
{
    char buf[32];
    int rc;
    r->alignment = 32;
    r->n_meta = 0;
    for (uint64_t k = 0; k < r->n_kv; k++) {
        const unsigned char *key;
        const char *text;
        uint64_t klen, type, vlen = 0;
        size_t at = r->pos;
        if ((rc = gguf_string(r, &key, &klen, "the key of key-value pair", k))) return rc;
        if (klen == 0 || memchr(key, 0, (size_t)klen))
            return fail(r->err, SD_ERR_FORMAT, "gguf: key-value pair %llu at byte %zu has an empty key or a NUL in it", (unsigned long long)k, at);
        if ((rc = gguf_uint(r, 4, &type, "the value type of key-value pair", k))) return rc;
        size_t value_at = r->pos;
        if ((rc = gguf_value(r, type, k, &text, &vlen, buf))) return rc;
        if (klen == 17 && !memcmp(key, "general.alignment", 17)) {
            if (type != GGUF_U32) return fail(r->err, SD_ERR_FORMAT, "gguf: general.alignment has value type %llu; it must be a u32", (unsigned long long)type);
            r->alignment = gguf_le(r->b + value_at, 4);
            if (!r->alignment || (r->alignment & (r->alignment - 1)))
                return fail(r->err, SD_ERR_FORMAT, "gguf: general.alignment %llu is not a power of two", (unsigned long long)r->alignment);
        }
        if (keys) keys[k] = at;
        if (!text) continue;   /* arrays are not kept */
        if (r->fill) {
            st->meta_keys[r->n_meta] = gguf_keep(r, key, klen);
            st->meta_values[r->n_meta] = gguf_keep(r, text, vlen);
        }
        r->n_meta++;
        r->strings += klen + 1 + vlen + 1;
    }
    return SD_OK;
}

/* The tensor infos (the first pass checks them, the second fills st->tensors), and where the
   data section starts. */
static int gguf_tensor_infos(gguf_reader *r, sd_safetensors *st)
{
    int rc;
    for (uint64_t i = 0; i < r->n_tensors; i++) {
        const unsigned char *name;
        uint64_t len, nd, type, offset, ne[4], numel = 1, nonzero = 1;
        sd_tensor t;
        memset(&t, 0, sizeof t);
        if ((rc = gguf_string(r, &name, &len, "the name of tensor info", i))) return rc;
        if (len == 0 || len > GGUF_MAX_NAME || memchr(name, 0, (size_t)len))
            return fail(r->err, SD_ERR_FORMAT, "gguf: tensor info %llu: a name of %llu bytes (1..%d, no NUL)", (unsigned long long)i, (unsigned long long)len, GGUF_MAX_NAME);
        if ((rc = gguf_uint(r, 4, &nd, "tensor info", i))) return rc;
        if (nd > 4) return fail(r->err, SD_ERR_FORMAT, "gguf: tensor '%.*s' has %llu dimensions (at most 4)", (int)len, name, (unsigned long long)nd);
        for (uint64_t d = 0; d < nd; d++) {   /* the product of the non-zero dims must fit, so that any order of multiplying them does */
            if ((rc = gguf_uint(r, 8, &ne[d], "tensor info", i))) return rc;
            if (ne[d] > (uint64_t)INT64_MAX || (ne[d] && nonzero > (uint64_t)INT64_MAX / ne[d]))
                return fail(r->err, SD_ERR_FORMAT, "gguf: tensor '%.*s': dimensions overflow (ne[%llu] = %llu)", (int)len, name, (unsigned long long)d, (unsigned long long)ne[d]);
            if (ne[d]) nonzero *= ne[d];
            numel *= ne[d];
            t.shape[nd - 1 - d] = (int64_t)ne[d];
        }
        if ((rc = gguf_uint(r, 4, &type, "tensor info", i)) || (rc = gguf_uint(r, 8, &offset, "tensor info", i))) return rc;
        t.dtype = SD_DTYPE_COUNT;
        for (size_t k = 0; k < sizeof gguf_types / sizeof gguf_types[0]; k++)
            if (gguf_types[k].ggml == type) t.dtype = gguf_types[k].dtype;
        if (t.dtype == SD_DTYPE_COUNT)
            return fail(r->err, SD_ERR_UNSUPPORTED, "gguf: tensor '%.*s' has ggml type %llu, which sd.h does not read (it reads F32, F16, BF16, "
                        "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)", (int)len, name, (unsigned long long)type);
        int per = dtype_info[t.dtype].block;
        if ((nd == 0 ? 1 : ne[0]) % (uint64_t)per)
            return fail(r->err, SD_ERR_FORMAT, "gguf: tensor '%.*s' (%s): its rows of %llu values are not a whole number of %d-value blocks",
                        (int)len, name, sd_dtype_name(t.dtype), (unsigned long long)(nd == 0 ? 1 : ne[0]), per);
        uint64_t bytes = numel / (uint64_t)per;   /* blocks, then bytes, checked against the file below */
        if (bytes > r->size / dtype_info[t.dtype].size)
            return fail(r->err, SD_ERR_FORMAT, "gguf: tensor '%.*s': %llu values of %s are larger than the file", (int)len, name, (unsigned long long)numel, sd_dtype_name(t.dtype));
        bytes *= dtype_info[t.dtype].size;
        t.ndim = (int)nd;
        t.nbytes = (size_t)bytes;
        r->strings += len + 1;
        if (!r->fill) continue;
        /* the second pass knows where the data section starts */
        t.name = gguf_keep(r, name, len);
        if (offset % r->alignment)
            return fail(r->err, SD_ERR_FORMAT, "gguf: tensor '%s': offset %llu is not a multiple of the alignment %llu", t.name, (unsigned long long)offset, (unsigned long long)r->alignment);
        if (offset > r->size - r->data_start || bytes > r->size - r->data_start - offset)
            return fail(r->err, SD_ERR_FORMAT, "gguf: tensor '%s': %llu bytes at offset %llu run past the end of the data section (%zu bytes)",
                        t.name, (unsigned long long)bytes, (unsigned long long)offset, r->size - r->data_start);
        size_t at = r->data_start + (size_t)offset, es = sd_dtype_size(t.dtype);
        if (es && at % es)
            return fail(r->err, SD_ERR_FORMAT, "gguf: tensor '%s' at file offset %zu is not aligned for %s (sd.h uses data in place and will not copy it)", t.name, at, sd_dtype_name(t.dtype));
        if (es && (uintptr_t)(r->b + at) % es)
            return fail(r->err, SD_ERR_ARG, "gguf: the caller's buffer is not aligned for tensor '%s' (%s); pass a buffer from malloc or mmap", t.name, sd_dtype_name(t.dtype));
        t.data = r->b + at;
        t.offset = at;
        st->tensors[i] = t;
    }
    /* the data section: after the infos, at the next multiple of the alignment */
    uint64_t start = ((uint64_t)r->pos + r->alignment - 1) / r->alignment * r->alignment;
    if (start > r->size && r->n_tensors)
        return fail(r->err, SD_ERR_FORMAT, "gguf: the data section would start at byte %llu, past the end of the file (%zu bytes)", (unsigned long long)start, r->size);
    r->data_start = start > r->size ? r->size : (size_t)start;
    return SD_OK;
}

/* Header and both tables, one pass. */
static int gguf_pass(gguf_reader *r, sd_safetensors *st, uint64_t *keys)
{
    uint64_t version;
    int rc;
    r->pos = 0;
    r->strings = 0;
    if (r->size < 24 || memcmp(r->b, "GGUF", 4))
        return fail(r->err, SD_ERR_FORMAT, "gguf: %s", r->size >= 4 && !memcmp(r->b, "GGUF", 4) ? "file shorter than its 24-byte header" : "no GGUF magic at the start");
    version = gguf_le(r->b + 4, 4);
    if (version != 2 && version != 3)
        return fail(r->err, SD_ERR_UNSUPPORTED, "gguf: version %llu%s; sd.h reads versions 2 and 3", (unsigned long long)version,
                    version == 1 ? " (2023's first format)" : version == 0x02000000 || version == 0x03000000 ? " (a big-endian file)" : "");
    r->n_tensors = gguf_le(r->b + 8, 8);
    r->n_kv = gguf_le(r->b + 16, 8);
    r->pos = 24;
    /* every pair takes at least 14 bytes (key length, a 1-byte key, type, a 1-byte value), every
       tensor info 25: counts that cannot fit are refused before anything is sized by them */
    if (r->n_kv > (r->size - 24) / 14 || r->n_kv > GGUF_MAX_KV)
        return fail(r->err, SD_ERR_FORMAT, "gguf: %llu key-value pairs cannot fit in the %zu bytes of the file (or are over %d)", (unsigned long long)r->n_kv, r->size, GGUF_MAX_KV);
    if (r->n_tensors > (r->size - 24) / 25 || r->n_tensors > GGUF_MAX_TENSORS)
        return fail(r->err, SD_ERR_FORMAT, "gguf: %llu tensors cannot fit in the %zu bytes of the file (or are over %d)", (unsigned long long)r->n_tensors, r->size, GGUF_MAX_TENSORS);
    if ((rc = gguf_kvs(r, st, keys))) return rc;
    return gguf_tensor_infos(r, st);
}

/* Arena bytes of the tables and strings, then of the scratch the checks use (given back). */
static uint64_t gguf_tables_bytes(const gguf_reader *r) { return st_tables_bytes((int)r->n_tensors, r->n_meta) + arena_piece(r->strings + 1); }
static uint64_t gguf_scratch_bytes(const gguf_reader *r)
{
    uint64_t keys = arena_piece((r->n_kv + 1) * sizeof(uint64_t)) + arena_piece((uint64_t)st_hash_slots((int)r->n_kv) * sizeof(int32_t));
    uint64_t order = arena_piece((r->n_tensors + 1) * sizeof(int32_t));
    return keys > order ? keys : order;
}

/* No key twice (keys[k]: the file offset of key k's length). */
static int gguf_check_keys(const gguf_reader *r, const uint64_t *keys, sd_arena *a)
{
    size_t mark = sd_arena_mark(a);
    uint32_t cap = st_hash_slots((int)r->n_kv);
    int32_t *slot = (int32_t *)arena_array(a, cap, sizeof(int32_t), r->err);
    if (!slot) return SD_ERR_MEMORY;
    memset(slot, 0xff, cap * sizeof(int32_t));
    for (uint64_t k = 0; k < r->n_kv; k++) {
        uint64_t len = gguf_le(r->b + keys[k], 8), h = 2166136261u;   /* FNV-1a, as hash_string */
        const unsigned char *s = r->b + keys[k] + 8;
        for (uint64_t i = 0; i < len; i++) h = ((h ^ s[i]) * 16777619u) & 0xffffffffu;
        for (h &= cap - 1; slot[h] >= 0; h = (h + 1) & (cap - 1)) {
            const unsigned char *o = r->b + keys[slot[h]];
            if (gguf_le(o, 8) == len && !memcmp(o + 8, s, (size_t)len))
                return fail(r->err, SD_ERR_FORMAT, "gguf: key '%.*s' appears twice", (int)(len < 200 ? len : 200), (const char *)s);
        }
        slot[h] = (int32_t)k;
    }
    sd_arena_reset(a, mark);
    return SD_OK;
}

/* No two tensors share a byte (holes are padding, allowed). */
static int gguf_check_overlaps(const sd_safetensors *st, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a);
    int32_t *idx = (int32_t *)arena_array(a, (size_t)st->count + 1, sizeof(int32_t), err);
    if (!idx) return SD_ERR_MEMORY;
    for (int i = 0; i < st->count; i++) idx[i] = i;
    st_sort_by_offset(st->tensors, idx, st->count);
    for (int i = 1; i < st->count; i++) {
        const sd_tensor *p = &st->tensors[idx[i - 1]], *t = &st->tensors[idx[i]];
        if ((const unsigned char *)t->data < (const unsigned char *)p->data + p->nbytes)
            return fail(err, SD_ERR_FORMAT, "gguf: tensor '%s' (file offset %zu) overlaps tensor '%s' (bytes %zu..%zu)", t->name,
                        (size_t)((const unsigned char *)t->data - st->bytes), p->name, (size_t)((const unsigned char *)p->data - st->bytes),
                        (size_t)((const unsigned char *)p->data - st->bytes) + p->nbytes);
    }
    sd_arena_reset(a, mark);
    return SD_OK;
}

static int gguf_open(sd_safetensors *st, const unsigned char *b, size_t size, sd_arena *a, sd_error *err)
{
    gguf_reader r;
    int rc;
    memset(&r, 0, sizeof r);
    r.b = b;
    r.size = size;
    r.err = err;
    if ((rc = gguf_pass(&r, st, NULL))) return rc;
    /* the second pass: tables, the string pool, then the key offsets as scratch */
    st->bytes = b;
    st->size = size;
    if ((rc = st_alloc_tables(st, (int)r.n_tensors, r.n_meta, a, err))) return rc;
    if (!(r.pool = (char *)sd_arena_alloc(a, (size_t)r.strings + 1, err))) return SD_ERR_MEMORY;
    size_t mark = sd_arena_mark(a);
    uint64_t *keys = (uint64_t *)arena_array(a, (size_t)r.n_kv + 1, sizeof(uint64_t), err);
    if (!keys) return SD_ERR_MEMORY;
    r.fill = 1;
    if ((rc = gguf_pass(&r, st, keys)) || (rc = gguf_check_keys(&r, keys, a))) return rc;
    sd_arena_reset(a, mark);
    st->count = (int)r.n_tensors;
    st->meta_count = r.n_meta;
    if ((rc = st_index(st, "gguf", err))) return rc;
    return gguf_check_overlaps(st, a, err);
}

SD_API int sd_gguf_open(sd_safetensors *st, const void *data, size_t size, sd_arena *a, sd_error *err)
{
    return file_open(1, st, data, size, a, err);
}

/* ---- GGUF writer (sd.h's quantized files: example --convert) ----
   The reader's format the other way round, version 3, string metadata only, the default
   alignment of 32. A block-typed tensor of more than two dimensions (a convolution weight
   [Cout, Cin, k, k] quantized along its Cin·k·k values) is written as the matrix [Cout, Cin·k·k]
   it is in memory, since GGUF's blocks run along ne[0], the last PyTorch dimension (k for a
   convolution). */
typedef struct gguf_writer { unsigned char *b; size_t cap, pos; } gguf_writer;

static void gguf_put(gguf_writer *w, const void *p, size_t n)
{
    if (w->b && w->pos + n <= w->cap) memcpy(w->b + w->pos, p, n);
    w->pos += n;
}

static void gguf_put_uint(gguf_writer *w, uint64_t v, int bytes)
{
    unsigned char le[8];
    for (int i = 0; i < bytes; i++) le[i] = (unsigned char)(v >> 8 * i);
    gguf_put(w, le, (size_t)bytes);
}

static void gguf_put_string(gguf_writer *w, const char *s)
{
    gguf_put_uint(w, strlen(s), 8);
    gguf_put(w, s, strlen(s));
}

/* ggml's number of an sd_dtype; 0 with *ok = 0 if GGUF has none. */
static uint32_t gguf_type_of(sd_dtype t, int *ok)
{
    for (size_t k = 0; k < sizeof gguf_types / sizeof gguf_types[0]; k++)
        if (gguf_types[k].dtype == t) { *ok = 1; return gguf_types[k].ggml; }
    *ok = 0;
    return 0;
}

SD_API size_t sd_gguf_header(void *buf, size_t cap, const sd_tensor *tensors, int n, const char *const *keys,
                             const char *const *values, int nkv)
{
    gguf_writer w;
    uint64_t offset = 0;
    if (n < 0 || nkv < 0 || (n && !tensors) || (nkv && (!keys || !values))) return 0;
    w.b = (unsigned char *)buf, w.cap = buf ? cap : 0, w.pos = 0;
    gguf_put(&w, "GGUF", 4);
    gguf_put_uint(&w, 3, 4);
    gguf_put_uint(&w, (uint64_t)n, 8);
    gguf_put_uint(&w, (uint64_t)nkv, 8);
    for (int i = 0; i < nkv; i++) {
        gguf_put_string(&w, keys[i]);
        gguf_put_uint(&w, GGUF_STRING, 4);
        gguf_put_string(&w, values[i]);
    }
    for (int i = 0; i < n; i++) {
        const sd_tensor *t = &tensors[i];
        int ok, nd = t->ndim;
        uint32_t type = gguf_type_of(t->dtype, &ok);
        int64_t ne[SD_MAX_DIMS], numel = sd_tensor_numel(t);
        if (!ok || !t->name || nd < 0 || nd > 4) return 0;
        for (int d = 0; d < nd; d++) ne[d] = t->shape[nd - 1 - d];
        if (dtype_is_block(t->dtype) && nd > 2) { nd = 2; ne[1] = t->shape[0]; ne[0] = t->shape[0] ? numel / t->shape[0] : 0; }
        if (nd && ne[0] % dtype_info[t->dtype].block) return 0;
        gguf_put_string(&w, t->name);
        gguf_put_uint(&w, (uint64_t)nd, 4);
        for (int d = 0; d < nd; d++) gguf_put_uint(&w, (uint64_t)ne[d], 8);
        gguf_put_uint(&w, type, 4);
        gguf_put_uint(&w, offset, 8);
        offset += (dtype_bytes(t->dtype, (uint64_t)numel) + 31) / 32 * 32;
    }
    while (w.pos % 32) gguf_put(&w, "", 1);
    return w.pos;
}

/* Arena bytes that sd_gguf_open of these bytes takes at most (its first pass, run here); 0 if
   the first pass already fails (the open will then say why, taking no more than the tables). */
static uint64_t gguf_arena_bytes(const void *data, size_t size)
{
    gguf_reader r;
    memset(&r, 0, sizeof r);
    r.b = (const unsigned char *)data;
    r.size = size;
    if (!data || gguf_pass(&r, NULL, NULL)) return 0;
    return gguf_tables_bytes(&r) + gguf_scratch_bytes(&r);
}


/* Model weights are looked up by name in one or more opened files (a single checkpoint, or the
   unet/vae/text_encoder files of a diffusers folder). `prefix` is prepended to every name
   ("model.diffusion_model." in single files); `diffusers` says which of the two name maps applies.
   The first missing or mis-shaped tensor is recorded in err; loaders fetch everything, then check. */
typedef struct weights {
    const sd_safetensors *files[4];
    int nfiles;
    const char *prefix;
    int diffusers;
    sd_error *err;
    int failed;     /* SD_OK until the first problem */
} weights;

static const sd_tensor *weights_find(const weights *w, const char *name)
{
    char full[512];
    snprintf(full, sizeof full, "%s%s", w->prefix ? w->prefix : "", name);
    for (int i = 0; i < w->nfiles; i++) {
        const sd_tensor *t = sd_safetensors_find(w->files[i], full);
        if (t) return t;
    }
    return NULL;
}

/* "4, 32, 3, 3": a tensor's shape for messages. */
static const char *shape_text(const sd_tensor *t, char *buf, size_t cap)
{
    buf[0] = 0;
    for (int i = 0; i < t->ndim; i++) snprintf(buf + strlen(buf), cap - strlen(buf), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    return buf;
}

/* The tensor named by fmt, checked to be a float tensor of shape [d0, d1, d2, d3] where a 0 ends
   the shape and -1 accepts any size. A linear weight [N, K] is also accepted as a 1x1
   convolution [N, K, 1, 1] and vice versa, since checkpoints store both. NULL on failure. */
static const sd_tensor *need(weights *w, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
{
    char name[400];
    int64_t want[4] = {d0, d1, d2, d3};
    int nd = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    while (nd < 4 && want[nd] != 0) nd++;
    const sd_tensor *t = weights_find(w, name);
    if (w->failed) return t;
    if (!t) {
        w->failed = fail(w->err, SD_ERR_MISSING, "missing tensor '%s%s'", w->prefix ? w->prefix : "", name);
        return NULL;
    }
    if (!dtype_is_weight(t->dtype)) {
        w->failed = fail(w->err, SD_ERR_SHAPE, "tensor '%s' is %s; sd.h needs F32, F16, BF16 or a GGUF block type", t->name, sd_dtype_name(t->dtype));
        return NULL;
    }
    int ok = 1, tnd = t->ndim;
    if (nd == 2 && tnd == 4 && t->shape[2] == 1 && t->shape[3] == 1) tnd = 2;   /* 1x1 conv as linear */
    if (nd == 4 && tnd == 2 && want[2] == 1 && want[3] == 1) nd = 2;            /* linear as 1x1 conv */
    if (nd == 4 && tnd == 2 && dtype_is_block(t->dtype) && want[2] > 0 && want[3] > 0 && t->shape[1] % (want[2] * want[3]) == 0 &&
        (want[0] < 0 || t->shape[0] == want[0]) && (want[1] < 0 || t->shape[1] == want[1] * want[2] * want[3]))
        return t;   /* a quantized convolution weight [Cout, Cin·k·k], as GGUF files hold them (sd_gguf_header) */
    ok = tnd == nd;
    for (int i = 0; ok && i < nd; i++) ok = want[i] < 0 || t->shape[i] == want[i];
    if (!ok) {
        char got[128], exp[128] = "";
        shape_text(t, got, sizeof got);
        for (int i = 0; i < nd; i++) {
            if (want[i] < 0) snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s*", i ? ", " : "");
            else snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%lld", i ? ", " : "", (long long)want[i]);
        }
        w->failed = fail(w->err, SD_ERR_SHAPE, "tensor '%s' has shape [%s], expected [%s]", t->name, got, exp);
        return NULL;
    }
    return t;
}

/* Like need() for tensors that may be absent (returns NULL without an error). */
static const sd_tensor *maybe(weights *w, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
{
    char name[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (!weights_find(w, name)) return NULL;
    return need(w, d0, d1, d2, d3, "%s", name);
}

/* A view of rows [r0, r0 + n) of a 2-D (or [N, K, 1, 1]) weight, or of a 1-D bias: how the fused
   q/k/v `in_proj` of OpenCLIP is split without copying. */
static sd_tensor tensor_rows(const sd_tensor *t, int64_t r0, int64_t n)
{
    uint64_t row = 1;   /* values per row: whole blocks, as the last dimension is */
    for (int i = 1; i < t->ndim; i++) row *= (uint64_t)t->shape[i];
    sd_tensor v = tensor_from(t, (uint64_t)r0 * row);
    v.shape[0] = n;
    v.nbytes = dtype_bytes(t->dtype, (uint64_t)n * row);
    return v;
}

/* ---- 4. Compute kernels ------------------------------------------------------------------- */
/* API: none. Everything here is internal (static): the thread pool, GEMM, conv2d, attention,
   norms and activations that the model sections call.

   Activations are float32 and channels-last (NHWC): a [B, H, W, C] image is a [B·H·W, C] matrix,
   so 1x1 convolutions and linear layers are one GEMM, and the transformer blocks of the UNet
   work on the same buffer without transposes. Weights keep PyTorch's layout ([out, in, kh, kw]),
   in whatever float type the file has; kernels convert them as they go (while packing a block
   of the weight into per-thread scratch, never the whole tensor).

   SIMD is chosen at compile time from the compiler's target macros: AVX-512F, AVX2+FMA (with
   F16C for half weights), NEON on aarch64, SSE2 (any x86-64 build without -m flags), else plain
   C (also forced by SD_NO_SIMD). All of it is written once against a tiny vector layer
   (vfloat, vf_*), so every kernel has one body; only the vector layer is per-ISA.

   Determinism: every output element is computed by exactly one task, along a summation order
   that depends only on the shapes (never on the thread count or the task split), so results
   are bit-identical for any number of threads. */

#if defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__)
/* g++ 12 sees "maybe uninitialized" in its own avx512fintrin.h (_mm512_undefined_ps) wherever
   those intrinsics inline; popped at the end of this section. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

/* Loops over a vector's lanes or a tile's registers are unrolled so their arrays stay in
   registers (gcc -O2 does not unroll them by itself), and the transposes that take such arrays
   are always inlined (called from a few places, gcc stops inlining them, and the array goes
   through memory). */
#if defined(__GNUC__) || defined(__clang__)
#define VF_UNROLL _Pragma("GCC unroll 16")
#define VF_INLINE static inline __attribute__((always_inline))
#define VF_NOINLINE __attribute__((noinline))
#else
#define VF_UNROLL
#define VF_INLINE static inline
#define VF_NOINLINE
#endif

#if !defined(SD_NO_SIMD) && defined(__AVX512F__)
#define SD_SIMD "avx512"
#elif !defined(SD_NO_SIMD) && defined(__AVX2__) && defined(__FMA__)
#define SD_SIMD "avx2"
#elif !defined(SD_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#define SD_SIMD "neon"
#elif !defined(SD_NO_SIMD) && defined(__SSE2__)
#define SD_SIMD "sse2"
#else
#define SD_SIMD "c"
#endif

/* The vector layer: vfloat holds VF_WIDTH floats. GEMM_MR is the micro-kernel's row count
   (GEMM_MR x 2 vectors of accumulators fill most of the register file). */
#if defined(__AVX512F__) && !defined(SD_NO_SIMD)
#include <immintrin.h>
#define VF_WIDTH 16
#define GEMM_MR 12
#define VF_HAS_F16 1
#define VF_HAS_BF16 1
typedef __m512 vfloat;
static inline vfloat vf_zero(void) { return _mm512_setzero_ps(); }
static inline vfloat vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vfloat vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vfloat v) { _mm512_storeu_ps(p, v); }
static inline vfloat vf_load_n(const float *p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
static inline void vf_store_n(float *p, vfloat v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v); }
static inline vfloat vf_add(vfloat a, vfloat b) { return _mm512_add_ps(a, b); }
static inline vfloat vf_sub(vfloat a, vfloat b) { return _mm512_sub_ps(a, b); }
static inline vfloat vf_mul(vfloat a, vfloat b) { return _mm512_mul_ps(a, b); }
static inline vfloat vf_div(vfloat a, vfloat b) { return _mm512_div_ps(a, b); }
static inline vfloat vf_max(vfloat a, vfloat b) { return _mm512_max_ps(a, b); }
static inline vfloat vf_min(vfloat a, vfloat b) { return _mm512_min_ps(a, b); }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vf_sum(vfloat v) { return _mm512_reduce_add_ps(v); }
static inline vfloat vf_round(vfloat x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vfloat vf_pow2i(vfloat n)   /* 2^n for integral n in [-127, 127]; 2^-127 gives 0 */
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
static inline vfloat vf_abs(vfloat x) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff))); }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), b, a); }
static inline vfloat vf_load_f16(const void *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline vfloat vf_load_bf16(const void *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

#elif defined(__AVX2__) && defined(__FMA__) && !defined(SD_NO_SIMD)
#include <immintrin.h>
#define VF_WIDTH 8
#define GEMM_MR 6
#define VF_HAS_BF16 1
typedef __m256 vfloat;
static inline vfloat vf_zero(void) { return _mm256_setzero_ps(); }
static inline vfloat vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vfloat vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vfloat v) { _mm256_storeu_ps(p, v); }
#define VF_TAIL_VIA_BUFFER 1
static inline vfloat vf_add(vfloat a, vfloat b) { return _mm256_add_ps(a, b); }
static inline vfloat vf_sub(vfloat a, vfloat b) { return _mm256_sub_ps(a, b); }
static inline vfloat vf_mul(vfloat a, vfloat b) { return _mm256_mul_ps(a, b); }
static inline vfloat vf_div(vfloat a, vfloat b) { return _mm256_div_ps(a, b); }
static inline vfloat vf_max(vfloat a, vfloat b) { return _mm256_max_ps(a, b); }
static inline vfloat vf_min(vfloat a, vfloat b) { return _mm256_min_ps(a, b); }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vf_sum(vfloat v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vfloat vf_round(vfloat x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vfloat vf_pow2i(vfloat n)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
static inline vfloat vf_abs(vfloat x) { return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ)); }
#ifdef __F16C__
#define VF_HAS_F16 1
static inline vfloat vf_load_f16(const void *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
#endif
static inline vfloat vf_load_bf16(const void *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SD_NO_SIMD)
#include <arm_neon.h>
#define VF_WIDTH 4
#define GEMM_MR 8
#define VF_HAS_F16 1
#define VF_HAS_BF16 1
typedef float32x4_t vfloat;
static inline vfloat vf_zero(void) { return vdupq_n_f32(0.0f); }
static inline vfloat vf_set1(float x) { return vdupq_n_f32(x); }
static inline vfloat vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vfloat v) { vst1q_f32(p, v); }
#define VF_TAIL_VIA_BUFFER 1
static inline vfloat vf_add(vfloat a, vfloat b) { return vaddq_f32(a, b); }
static inline vfloat vf_sub(vfloat a, vfloat b) { return vsubq_f32(a, b); }
static inline vfloat vf_mul(vfloat a, vfloat b) { return vmulq_f32(a, b); }
static inline vfloat vf_div(vfloat a, vfloat b) { return vdivq_f32(a, b); }
static inline vfloat vf_max(vfloat a, vfloat b) { return vmaxq_f32(a, b); }
static inline vfloat vf_min(vfloat a, vfloat b) { return vminq_f32(a, b); }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { return vfmaq_f32(c, a, b); }
static inline float vf_sum(vfloat v) { return vaddvq_f32(v); }
static inline vfloat vf_round(vfloat x) { return vrndnq_f32(x); }
static inline vfloat vf_pow2i(vfloat n)
{
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23));
}
static inline vfloat vf_abs(vfloat x) { return vabsq_f32(x); }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b) { return vbslq_f32(vcltq_f32(x, vdupq_n_f32(0.0f)), a, b); }
static inline vfloat vf_load_f16(const void *p)
{
    uint16_t h[4];
    memcpy(h, p, sizeof h);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}
static inline vfloat vf_load_bf16(const void *p)
{
    uint16_t h[4];
    memcpy(h, p, sizeof h);
    return vreinterpretq_f32_u32(vshlq_n_u32(vmovl_u16(vld1_u16(h)), 16));
}

#elif defined(__SSE2__) && !defined(SD_NO_SIMD)
/* x86-64 without -m flags: SSE2, 4 lanes, no FMA. */
#include <emmintrin.h>
#define VF_WIDTH 4
#define GEMM_MR 6
#define VF_HAS_BF16 1
typedef __m128 vfloat;
static inline vfloat vf_zero(void) { return _mm_setzero_ps(); }
static inline vfloat vf_set1(float x) { return _mm_set1_ps(x); }
static inline vfloat vf_load(const float *p) { return _mm_loadu_ps(p); }
static inline void vf_store(float *p, vfloat v) { _mm_storeu_ps(p, v); }
#define VF_TAIL_VIA_BUFFER 1
static inline vfloat vf_add(vfloat a, vfloat b) { return _mm_add_ps(a, b); }
static inline vfloat vf_sub(vfloat a, vfloat b) { return _mm_sub_ps(a, b); }
static inline vfloat vf_mul(vfloat a, vfloat b) { return _mm_mul_ps(a, b); }
static inline vfloat vf_div(vfloat a, vfloat b) { return _mm_div_ps(a, b); }
static inline vfloat vf_max(vfloat a, vfloat b) { return _mm_max_ps(a, b); }
static inline vfloat vf_min(vfloat a, vfloat b) { return _mm_min_ps(a, b); }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
static inline float vf_sum(vfloat v)
{
    __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
static inline vfloat vf_round(vfloat x) { return _mm_cvtepi32_ps(_mm_cvtps_epi32(x)); }   /* |x| < 2^31 here */
static inline vfloat vf_pow2i(vfloat n)
{
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23));
}
static inline vfloat vf_abs(vfloat x) { return _mm_and_ps(x, _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff))); }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b)
{
    __m128 m = _mm_cmplt_ps(x, _mm_setzero_ps());
    return _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b));
}
static inline vfloat vf_load_bf16(const void *p)
{
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)p)));
}

#else
/* Plain C: a 4-float struct; compilers turn the lane loops into SSE2 or NEON where they can. */
#define VF_WIDTH 4
#define GEMM_MR 4
typedef struct vfloat { float v[4]; } vfloat;
#define VF_LANES(r, expr) do { for (int l_ = 0; l_ < 4; l_++) (r).v[l_] = (expr); } while (0)
static inline vfloat vf_zero(void) { vfloat r; VF_LANES(r, 0.0f); return r; }
static inline vfloat vf_set1(float x) { vfloat r; VF_LANES(r, x); return r; }
static inline vfloat vf_load(const float *p) { vfloat r; memcpy(r.v, p, sizeof r.v); return r; }
static inline void vf_store(float *p, vfloat v) { memcpy(p, v.v, sizeof v.v); }
static inline vfloat vf_load_n(const float *p, int n) { vfloat r = vf_zero(); memcpy(r.v, p, (size_t)n * sizeof(float)); return r; }
static inline void vf_store_n(float *p, vfloat v, int n) { memcpy(p, v.v, (size_t)n * sizeof(float)); }
static inline vfloat vf_add(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] + b.v[l_]); return r; }
static inline vfloat vf_sub(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] - b.v[l_]); return r; }
static inline vfloat vf_mul(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] * b.v[l_]); return r; }
static inline vfloat vf_div(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] / b.v[l_]); return r; }
static inline vfloat vf_max(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] > b.v[l_] ? a.v[l_] : b.v[l_]); return r; }
static inline vfloat vf_min(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] < b.v[l_] ? a.v[l_] : b.v[l_]); return r; }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { vfloat r; VF_LANES(r, a.v[l_] * b.v[l_] + c.v[l_]); return r; }
static inline float vf_sum(vfloat v) { return (v.v[0] + v.v[2]) + (v.v[1] + v.v[3]); }
static inline vfloat vf_round(vfloat x) { vfloat r; VF_LANES(r, floorf(x.v[l_] + 0.5f)); return r; }
static inline vfloat vf_pow2i(vfloat n)
{
    vfloat r;
    for (int l = 0; l < 4; l++) { uint32_t b = (uint32_t)((int32_t)n.v[l] + 127) << 23; memcpy(&r.v[l], &b, 4); }
    return r;
}
static inline vfloat vf_abs(vfloat x) { vfloat r; VF_LANES(r, fabsf(x.v[l_])); return r; }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b) { vfloat r; VF_LANES(r, x.v[l_] < 0 ? a.v[l_] : b.v[l_]); return r; }
#endif

#ifdef VF_TAIL_VIA_BUFFER
/* The first n < VF_WIDTH lanes, through a small buffer, for ISAs without masked loads. */
static inline vfloat vf_load_n(const float *p, int n)
{
    float t[VF_WIDTH] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return vf_load(t);
}
static inline void vf_store_n(float *p, vfloat v, int n)
{
    float t[VF_WIDTH];
    vf_store(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
}
#endif

/* r[i] lane j <-> r[j] lane i: a VF_WIDTH x VF_WIDTH transpose in registers (weight packing). */
#if defined(__AVX512F__) && !defined(SD_NO_SIMD)
VF_INLINE void vf_transpose(vfloat *r)
{
    __m512 t[16];
    VF_UNROLL
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    VF_UNROLL
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* r[4g + j], 128-bit lane L, now holds column 4L + j of rows 4g..4g+3 */
    VF_UNROLL
    for (int j = 0; j < 4; j++) {
        __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
        __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88), u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
        t[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
        t[j + 8] = _mm512_shuffle_f32x4(u0, u2, 0xdd);
        t[j + 4] = _mm512_shuffle_f32x4(u1, u3, 0x88);
        t[j + 12] = _mm512_shuffle_f32x4(u1, u3, 0xdd);
    }
    VF_UNROLL
    for (int i = 0; i < 16; i++) r[i] = t[i];
}
/* r[c] = column c, as f32, of the 16 x 16 block of type dt (f32, f16, bf16) at p, rows `stride`
   bytes apart: pack_weights' load and transpose in one. The 128-bit lanes are gathered by masked
   broadcast loads, which the load ports do, so only 4 x 4 transposes within lanes are left to the
   shuffle unit (16 shuffles where 16 row loads and vf_transpose take 64): pack_weights 1.8x
   faster on an L2-resident block on Zen 5. */
#define VF_HAS_LOAD_TRANSPOSED 1
VF_INLINE __m512 vf_gather_lanes(const unsigned char *p, size_t stride4, sd_dtype dt)   /* lane g: 4 values at p + g·stride4 */
{
    if (dt == SD_F32) {
        __m512 v = _mm512_broadcast_f32x4(_mm_loadu_ps((const float *)(const void *)p));
        v = _mm512_mask_broadcast_f32x4(v, 0x00f0, _mm_loadu_ps((const float *)(const void *)(p + stride4)));
        v = _mm512_mask_broadcast_f32x4(v, 0x0f00, _mm_loadu_ps((const float *)(const void *)(p + 2 * stride4)));
        return _mm512_mask_broadcast_f32x4(v, 0xf000, _mm_loadu_ps((const float *)(const void *)(p + 3 * stride4)));
    }
    long long q[4];
    memcpy(&q[0], p, 8); memcpy(&q[1], p + stride4, 8); memcpy(&q[2], p + 2 * stride4, 8); memcpy(&q[3], p + 3 * stride4, 8);
    __m512i v = _mm512_set1_epi64(q[0]);
    v = _mm512_mask_set1_epi64(v, 0x02, q[1]);
    v = _mm512_mask_set1_epi64(v, 0x04, q[2]);
    __m256i h = _mm512_castsi512_si256(_mm512_mask_set1_epi64(v, 0x08, q[3]));   /* 16 halves */
    return dt == SD_F16 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
VF_INLINE void vf_load_transposed(vfloat *r, const unsigned char *p, size_t stride, sd_dtype dt)
{
    size_t es = dt == SD_F32 ? 4 : 2;
    VF_UNROLL
    for (int q = 0; q < 4; q++) {   /* columns 4q..4q+3: a[i], lane g, holds them for row 4g + i */
        __m512 a0 = vf_gather_lanes(p + 4 * q * es, 4 * stride, dt), a1 = vf_gather_lanes(p + stride + 4 * q * es, 4 * stride, dt);
        __m512 a2 = vf_gather_lanes(p + 2 * stride + 4 * q * es, 4 * stride, dt), a3 = vf_gather_lanes(p + 3 * stride + 4 * q * es, 4 * stride, dt);
        __m512d t0 = _mm512_castps_pd(_mm512_unpacklo_ps(a0, a1)), t1 = _mm512_castps_pd(_mm512_unpackhi_ps(a0, a1));
        __m512d t2 = _mm512_castps_pd(_mm512_unpacklo_ps(a2, a3)), t3 = _mm512_castps_pd(_mm512_unpackhi_ps(a2, a3));
        r[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        r[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        r[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        r[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
}
#elif defined(__AVX2__) && defined(__FMA__) && !defined(SD_NO_SIMD)
VF_INLINE void vf_transpose(vfloat *r)
{
    __m256 t[8], u[8];
    VF_UNROLL
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    VF_UNROLL
    for (int i = 0; i < 2; i++) {   /* u[4i + j], 128-bit lane L: column 4L + j of rows 4i..4i+3 */
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    VF_UNROLL
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SD_NO_SIMD)
VF_INLINE void vf_transpose(vfloat *r)
{
    float32x4x2_t p = vtrnq_f32(r[0], r[1]), q = vtrnq_f32(r[2], r[3]);
    r[0] = vcombine_f32(vget_low_f32(p.val[0]), vget_low_f32(q.val[0]));
    r[1] = vcombine_f32(vget_low_f32(p.val[1]), vget_low_f32(q.val[1]));
    r[2] = vcombine_f32(vget_high_f32(p.val[0]), vget_high_f32(q.val[0]));
    r[3] = vcombine_f32(vget_high_f32(p.val[1]), vget_high_f32(q.val[1]));
}
#elif defined(__SSE2__) && !defined(SD_NO_SIMD)
VF_INLINE void vf_transpose(vfloat *r) { _MM_TRANSPOSE4_PS(r[0], r[1], r[2], r[3]); }
#else
VF_INLINE void vf_transpose(vfloat *r)
{
    VF_UNROLL
    for (int i = 0; i < 4; i++)
        VF_UNROLL
        for (int j = i + 1; j < 4; j++) { float t = r[i].v[j]; r[i].v[j] = r[j].v[i]; r[j].v[i] = t; }
}
#endif

/* Conversions to f32 of VF_WIDTH stored values, for the builds that have no vector form. */
#ifndef VF_HAS_F16
static inline vfloat vf_load_f16(const void *p)
{
    float t[VF_WIDTH];
    for (int i = 0; i < VF_WIDTH; i++) { uint16_t h; memcpy(&h, (const char *)p + 2 * i, 2); t[i] = sd_f16_to_f32(h); }
    return vf_load(t);
}
#endif
#ifndef VF_HAS_BF16
static inline vfloat vf_load_bf16(const void *p)
{
    float t[VF_WIDTH];
    for (int i = 0; i < VF_WIDTH; i++) { uint16_t h; memcpy(&h, (const char *)p + 2 * i, 2); t[i] = sd_bf16_to_f32(h); }
    return vf_load(t);
}
#endif

/* Elsewhere the transposing load is VF_WIDTH row loads and vf_transpose. */
#ifndef VF_HAS_LOAD_TRANSPOSED
VF_INLINE void vf_load_transposed(vfloat *r, const unsigned char *p, size_t stride, sd_dtype dt)
{
    if (dt == SD_F16) {
        VF_UNROLL
        for (int i = 0; i < VF_WIDTH; i++, p += stride) r[i] = vf_load_f16(p);
    } else if (dt == SD_BF16) {
        VF_UNROLL
        for (int i = 0; i < VF_WIDTH; i++, p += stride) r[i] = vf_load_bf16(p);
    } else {
        VF_UNROLL
        for (int i = 0; i < VF_WIDTH; i++, p += stride) r[i] = vf_load((const float *)(const void *)p);
    }
    vf_transpose(r);
}
#endif

/* 2^x on vectors (softmax): splits x = n + f with |f| <= 1/2, evaluates 2^f with a
   degree-6 polynomial (Cephes exp2f, ~2 ulp) and scales by 2^n built in the exponent bits.
   x <= -126.5 gives exactly 0 (so masked softmax scores vanish), x is clamped at 127.5. */
static inline vfloat vf_exp2(vfloat x)
{
    x = vf_max(vf_min(x, vf_set1(127.5f)), vf_set1(-127.0f));
    vfloat n = vf_round(x), f = vf_sub(x, n);
    vfloat p = vf_set1(1.535336188319500e-4f);
    p = vf_fma(p, f, vf_set1(1.339887440266574e-3f));
    p = vf_fma(p, f, vf_set1(9.618437357674640e-3f));
    p = vf_fma(p, f, vf_set1(5.550332471162809e-2f));
    p = vf_fma(p, f, vf_set1(2.402264791363012e-1f));
    p = vf_fma(p, f, vf_set1(6.931472028550421e-1f));
    p = vf_fma(p, f, vf_set1(1.0f));
    return vf_mul(p, vf_pow2i(n));
}

/* e^x: x = n·ln2 + r with ln2 in two parts (Cody-Waite) so r is exact, then Cephes expf's
   polynomial for e^r; relative error ~1e-7 over the whole range (below e^-87 it gives 0). */
static inline vfloat vf_exp(vfloat x)
{
    x = vf_max(vf_min(x, vf_set1(88.0f)), vf_set1(-88.0f));
    vfloat n = vf_round(vf_mul(x, vf_set1(1.4426950408889634f)));
    vfloat r = vf_fma(n, vf_set1(-0.693359375f), x);
    r = vf_fma(n, vf_set1(2.12194440e-4f), r);
    vfloat p = vf_set1(1.9875691500e-4f);
    p = vf_fma(p, r, vf_set1(1.3981999507e-3f));
    p = vf_fma(p, r, vf_set1(8.3334519073e-3f));
    p = vf_fma(p, r, vf_set1(4.1665795894e-2f));
    p = vf_fma(p, r, vf_set1(1.6666665459e-1f));
    p = vf_fma(p, r, vf_set1(5.0000001201e-1f));
    p = vf_fma(p, vf_mul(r, r), vf_add(r, vf_set1(1.0f)));
    return vf_mul(p, vf_pow2i(n));
}

/* erfc(a) for a >= 0 with relative error < 1.2e-7 everywhere (Numerical Recipes' erfcc, a
   Chebyshev fit): t = 1/(1 + a/2), erfc = t·exp(-a² + P(t)). GELU uses it so that its negative
   tail keeps its relative precision instead of cancelling in 1 + erf. */
static inline vfloat vf_erfc_pos(vfloat a)
{
    vfloat t = vf_div(vf_set1(1.0f), vf_fma(vf_set1(0.5f), a, vf_set1(1.0f)));
    vfloat p = vf_set1(0.17087277f);
    p = vf_fma(p, t, vf_set1(-0.82215223f));
    p = vf_fma(p, t, vf_set1(1.48851587f));
    p = vf_fma(p, t, vf_set1(-1.13520398f));
    p = vf_fma(p, t, vf_set1(0.27886807f));
    p = vf_fma(p, t, vf_set1(-0.18628806f));
    p = vf_fma(p, t, vf_set1(0.09678418f));
    p = vf_fma(p, t, vf_set1(0.37409196f));
    p = vf_fma(p, t, vf_set1(1.00002368f));
    p = vf_fma(p, t, vf_set1(-1.26551223f));
    return vf_mul(t, vf_exp(vf_sub(p, vf_mul(a, a))));
}

static inline vfloat vf_silu(vfloat x) { return vf_div(x, vf_add(vf_set1(1.0f), vf_exp(vf_sub(vf_zero(), x)))); }
/* GELU(x) = x·Φ(x) with Φ(x) = erfc(-x/√2)/2: for x < 0 that is erfc(|x|/√2)/2, else 1 minus it. */
static inline vfloat vf_gelu(vfloat x)
{
    vfloat h = vf_mul(vf_set1(0.5f), vf_erfc_pos(vf_mul(vf_abs(x), vf_set1(0.70710678118654752f))));
    return vf_mul(x, vf_select_neg(x, h, vf_sub(vf_set1(1.0f), h)));
}

/* The int8 layer of the fast mode (matmul and conv2d on a pool set to SD_QUANT_FAST, below the
   GEMM): vbytes holds VF_WIDTH groups of 4 int8 values and vint VF_WIDTH int32 sums, one per
   float lane, so that an output column keeps its lane from the int8 products to the float
   accumulation. vi_dot4(acc, a, b) adds to lane j the dot product of group j of a with group j
   of b: the micro-kernel broadcasts 4 activations of a row (vb_bcast4) and multiplies them with
   4 values of K of VF_WIDTH weight columns.
   AVX-512 VNNI's vpdpbusd multiplies unsigned bytes by signed ones: there the quantized
   activations are stored plus 128 (Q8_OFFSET), and the packed weights carry per column and
   block -128 times the sum of their values, which the int32 sums start from. Elsewhere the
   activations stay signed: AVX2's vpmaddubsw is unsigned x signed too, but it saturates pairs
   in 16 bits, so it gets |b| and a with b's sign (activations are within ±127 and a weight
   byte may be -128, whose magnitude is 128 unsigned: a pair stays within 2·128·127); NEON's
   sdot is signed x signed; SSE2 and plain C widen to 16 and 32 bits. Without VNNI an int8
   product is no faster than a float FMA: those paths exist for correctness, not speed. */
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && !defined(SD_NO_SIMD)
#define Q8_OFFSET 128
#define Q8_MR 8
typedef __m512i vbytes;
typedef __m512i vint;
static inline vbytes vb_load(const unsigned char *p) { return _mm512_loadu_si512((const void *)p); }
static inline vbytes vb_bcast4(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return _mm512_set1_epi32(v); }
static inline vint vi_load(const void *p) { return _mm512_loadu_si512(p); }
static inline vint vi_dot4(vint acc, vbytes a, vbytes b) { return _mm512_dpbusd_epi32(acc, a, b); }
static inline vfloat vi_to_vf(vint v) { return _mm512_cvtepi32_ps(v); }
#elif (defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))) && !defined(SD_NO_SIMD)
#define Q8_OFFSET 0
#define Q8_MR 4
/* the four-byte dot products of 8 groups: |b| x (a with b's sign), pairs, then quads */
static inline __m256i q8_dot_avx2(__m256i a, __m256i b)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(b, b), _mm256_sign_epi8(a, b)), _mm256_set1_epi16(1));
}
#if defined(__AVX512F__)
/* AVX-512F without VNNI (and without byte instructions): the AVX2 form on each half */
typedef __m512i vbytes;
typedef __m512i vint;
static inline vbytes vb_load(const unsigned char *p) { return _mm512_loadu_si512((const void *)p); }
static inline vbytes vb_bcast4(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return _mm512_set1_epi32(v); }
static inline vint vi_load(const void *p) { return _mm512_loadu_si512(p); }
static inline vint vi_dot4(vint acc, vbytes a, vbytes b)
{
    __m256i lo = q8_dot_avx2(_mm512_castsi512_si256(a), _mm512_castsi512_si256(b));
    __m256i hi = q8_dot_avx2(_mm512_extracti64x4_epi64(a, 1), _mm512_extracti64x4_epi64(b, 1));
    return _mm512_add_epi32(acc, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
}
static inline vfloat vi_to_vf(vint v) { return _mm512_cvtepi32_ps(v); }
#else
typedef __m256i vbytes;
typedef __m256i vint;
static inline vbytes vb_load(const unsigned char *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
static inline vbytes vb_bcast4(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return _mm256_set1_epi32(v); }
static inline vint vi_load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline vint vi_dot4(vint acc, vbytes a, vbytes b) { return _mm256_add_epi32(acc, q8_dot_avx2(a, b)); }
static inline vfloat vi_to_vf(vint v) { return _mm256_cvtepi32_ps(v); }
#endif
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SD_NO_SIMD)
#define Q8_OFFSET 0
#define Q8_MR 8
typedef int8x16_t vbytes;
typedef int32x4_t vint;
static inline vbytes vb_load(const unsigned char *p) { return vld1q_s8((const int8_t *)(const void *)p); }
static inline vbytes vb_bcast4(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return vreinterpretq_s8_s32(vdupq_n_s32(v)); }
static inline vint vi_load(const void *p) { return vld1q_s32((const int32_t *)p); }
#ifdef __ARM_FEATURE_DOTPROD
static inline vint vi_dot4(vint acc, vbytes a, vbytes b) { return vdotq_s32(acc, a, b); }
#else
/* 16 products in 16 bits, summed in pairs and then pairs of pairs */
static inline vint vi_dot4(vint acc, vbytes a, vbytes b)
{
    int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b)), hi = vmull_s8(vget_high_s8(a), vget_high_s8(b));
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
}
#endif
static inline vfloat vi_to_vf(vint v) { return vcvtq_f32_s32(v); }
#elif defined(__SSE2__) && !defined(SD_NO_SIMD)
#define Q8_OFFSET 0
#define Q8_MR 4
typedef __m128i vbytes;
typedef __m128i vint;
static inline vbytes vb_load(const unsigned char *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }
static inline vbytes vb_bcast4(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return _mm_set1_epi32(v); }
static inline vint vi_load(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
/* bytes sign-extended to 16 bits, multiplied and summed in pairs, the pairs summed per group */
static inline vint vi_dot4(vint acc, vbytes a, vbytes b)
{
    __m128i lo = _mm_madd_epi16(_mm_srai_epi16(_mm_unpacklo_epi8(a, a), 8), _mm_srai_epi16(_mm_unpacklo_epi8(b, b), 8));
    __m128i hi = _mm_madd_epi16(_mm_srai_epi16(_mm_unpackhi_epi8(a, a), 8), _mm_srai_epi16(_mm_unpackhi_epi8(b, b), 8));
    __m128 l = _mm_castsi128_ps(lo), h = _mm_castsi128_ps(hi);
    return _mm_add_epi32(acc, _mm_add_epi32(_mm_castps_si128(_mm_shuffle_ps(l, h, _MM_SHUFFLE(2, 0, 2, 0))),
                                            _mm_castps_si128(_mm_shuffle_ps(l, h, _MM_SHUFFLE(3, 1, 3, 1)))));
}
static inline vfloat vi_to_vf(vint v) { return _mm_cvtepi32_ps(v); }
#else
#define Q8_OFFSET 0
#define Q8_MR 4
typedef struct vbytes { signed char b[4 * VF_WIDTH]; } vbytes;
typedef struct vint { int32_t v[VF_WIDTH]; } vint;
static inline vbytes vb_load(const unsigned char *p) { vbytes r; memcpy(r.b, p, sizeof r.b); return r; }
static inline vbytes vb_bcast4(const unsigned char *p) { vbytes r; for (int l = 0; l < VF_WIDTH; l++) memcpy(r.b + 4 * l, p, 4); return r; }
static inline vint vi_load(const void *p) { vint r; memcpy(r.v, p, sizeof r.v); return r; }
static inline vint vi_dot4(vint acc, vbytes a, vbytes b)
{
    for (int l = 0; l < VF_WIDTH; l++)
        for (int t = 0; t < 4; t++) acc.v[l] += (int32_t)a.b[4 * l + t] * b.b[4 * l + t];
    return acc;
}
static inline vfloat vi_to_vf(vint v) { vfloat r; VF_LANES(r, (float)v.v[l_]); return r; }
static inline int32_t vq_round(float x)   /* half to even; NaN as 0, clamped to int8 (an int cast must not overflow) */
{
    float r = nearbyintf(x);
    return r > 127.0f ? 127 : r < -128.0f ? -128 : r == r ? (int32_t)r : 0;
}
#endif

/* The largest lane. */
static inline float vf_hmax(vfloat v)
{
#if defined(__AVX512F__) && !defined(SD_NO_SIMD)
    return _mm512_reduce_max_ps(v);
#else
    float t[VF_WIDTH], m;
    vf_store(t, v);
    m = t[0];
    for (int i = 1; i < VF_WIDTH; i++) m = t[i] > m ? t[i] : m;
    return m;
#endif
}

/* The VF_WIDTH values of v (whole numbers within ±127 after rounding half to even, as the
   conversions of every ISA round) as int8 bytes, XOR mask (Q8_OFFSET for activations). */
static inline void vq_store(unsigned char *q, vfloat v, int mask)
{
#if defined(__AVX512F__) && !defined(SD_NO_SIMD)
    _mm_storeu_si128((__m128i *)(void *)q, _mm_xor_si128(_mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)), _mm_set1_epi8((char)mask)));
#elif defined(__AVX2__) && defined(__FMA__) && !defined(SD_NO_SIMD)
    __m256i i = _mm256_cvtps_epi32(v);
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    _mm_storel_epi64((__m128i *)(void *)q, _mm_xor_si128(_mm_packs_epi16(w, w), _mm_set1_epi8((char)mask)));
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SD_NO_SIMD)
    int16x4_t h = vmovn_s32(vcvtnq_s32_f32(v));
    int8x8_t b = veor_s8(vmovn_s16(vcombine_s16(h, h)), vdup_n_s8((int8_t)mask));
    int32_t t = vget_lane_s32(vreinterpret_s32_s8(b), 0);
    memcpy(q, &t, 4);
#elif defined(__SSE2__) && !defined(SD_NO_SIMD)
    __m128i w = _mm_cvtps_epi32(v);
    w = _mm_packs_epi32(w, w);
    int32_t b = _mm_cvtsi128_si32(_mm_xor_si128(_mm_packs_epi16(w, w), _mm_set1_epi8((char)mask)));
    memcpy(q, &b, 4);
#else
    for (int l = 0; l < VF_WIDTH; l++) q[l] = (unsigned char)((vq_round(v.v[l]) & 0xff) ^ mask);
#endif
}

/* VF_WIDTH int8 values as floats (the block types' integers, decoded in tensor_floats). */
static inline vfloat vf_from_i8(const signed char *p)
{
#if defined(__AVX512F__) && !defined(SD_NO_SIMD)
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)));
#elif defined(__AVX2__) && defined(__FMA__) && !defined(SD_NO_SIMD)
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p)));
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SD_NO_SIMD)
    int8x8_t b = vcreate_s8(0);
    int32_t t;
    memcpy(&t, p, 4);
    b = vreinterpret_s8_s32(vset_lane_s32(t, vreinterpret_s32_s8(b), 0));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b))));
#elif defined(__SSE2__) && !defined(SD_NO_SIMD)
    int32_t t;
    memcpy(&t, p, 4);
    __m128i b = _mm_cvtsi32_si128(t);
    b = _mm_unpacklo_epi8(b, b);
    return _mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpacklo_epi16(b, b), 24));
#else
    vfloat r;
    VF_LANES(r, (float)p[l_]);
    return r;
#endif
}

/* The few int32 operations the weight packing needs: vi_round converts to int32 (nearest, half
   to even), vi_byte(v, s) puts the low byte of each lane at bit s, vi_load2 loads a vector's
   two halves from two places (int8 rows' values beside their blocks' scales). */
#if defined(__AVX512F__) && !defined(SD_NO_SIMD)
static inline vint vi_zero(void) { return _mm512_setzero_si512(); }
static inline void vi_store(void *p, vint v) { _mm512_storeu_si512(p, v); }
static inline vint vi_round(vfloat v) { return _mm512_cvtps_epi32(v); }
static inline vint vi_add(vint a, vint b) { return _mm512_add_epi32(a, b); }
static inline vint vi_or(vint a, vint b) { return _mm512_or_si512(a, b); }
static inline vint vi_byte(vint v, int s) { return _mm512_sll_epi32(_mm512_and_si512(v, _mm512_set1_epi32(255)), _mm_cvtsi32_si128(s)); }
#define VI_TO_VF(v) _mm512_castsi512_ps(v)   /* the bits as they are */
#define VF_TO_VI(v) _mm512_castps_si512(v)
static inline vint vi_load2(const void *lo, const void *hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lo)), _mm256_loadu_si256((const __m256i *)hi), 1);
}
#elif defined(__AVX2__) && defined(__FMA__) && !defined(SD_NO_SIMD)
static inline vint vi_zero(void) { return _mm256_setzero_si256(); }
static inline void vi_store(void *p, vint v) { _mm256_storeu_si256((__m256i *)p, v); }
static inline vint vi_round(vfloat v) { return _mm256_cvtps_epi32(v); }
static inline vint vi_add(vint a, vint b) { return _mm256_add_epi32(a, b); }
static inline vint vi_or(vint a, vint b) { return _mm256_or_si256(a, b); }
static inline vint vi_byte(vint v, int s) { return _mm256_sll_epi32(_mm256_and_si256(v, _mm256_set1_epi32(255)), _mm_cvtsi32_si128(s)); }
#define VI_TO_VF(v) _mm256_castsi256_ps(v)   /* the bits as they are */
#define VF_TO_VI(v) _mm256_castps_si256(v)
static inline vint vi_load2(const void *lo, const void *hi)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)lo)), _mm_loadu_si128((const __m128i *)hi), 1);
}
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SD_NO_SIMD)
static inline vint vi_zero(void) { return vdupq_n_s32(0); }
static inline void vi_store(void *p, vint v) { vst1q_s32((int32_t *)p, v); }
static inline vint vi_round(vfloat v) { return vcvtnq_s32_f32(v); }
static inline vint vi_add(vint a, vint b) { return vaddq_s32(a, b); }
static inline vint vi_or(vint a, vint b) { return vorrq_s32(a, b); }
static inline vint vi_byte(vint v, int s) { return vshlq_s32(vandq_s32(v, vdupq_n_s32(255)), vdupq_n_s32(s)); }
#define VI_TO_VF(v) vreinterpretq_f32_s32(v)   /* the bits as they are */
#define VF_TO_VI(v) vreinterpretq_s32_f32(v)
static inline vint vi_load2(const void *lo, const void *hi)
{
    return vreinterpretq_s32_u8(vcombine_u8(vld1_u8((const uint8_t *)lo), vld1_u8((const uint8_t *)hi)));
}
#elif defined(__SSE2__) && !defined(SD_NO_SIMD)
static inline vint vi_zero(void) { return _mm_setzero_si128(); }
static inline void vi_store(void *p, vint v) { _mm_storeu_si128((__m128i *)p, v); }
static inline vint vi_round(vfloat v) { return _mm_cvtps_epi32(v); }
static inline vint vi_add(vint a, vint b) { return _mm_add_epi32(a, b); }
static inline vint vi_or(vint a, vint b) { return _mm_or_si128(a, b); }
static inline vint vi_byte(vint v, int s) { return _mm_sll_epi32(_mm_and_si128(v, _mm_set1_epi32(255)), _mm_cvtsi32_si128(s)); }
#define VI_TO_VF(v) _mm_castsi128_ps(v)   /* the bits as they are */
#define VF_TO_VI(v) _mm_castps_si128(v)
static inline vint vi_load2(const void *lo, const void *hi) { return _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)lo), _mm_loadl_epi64((const __m128i *)hi)); }
#else
static inline vint vi_zero(void) { vint r; memset(r.v, 0, sizeof r.v); return r; }
static inline void vi_store(void *p, vint v) { memcpy(p, v.v, sizeof v.v); }
static inline vint vi_round(vfloat v) { vint r; for (int l = 0; l < VF_WIDTH; l++) r.v[l] = vq_round(v.v[l]); return r; }
static inline vint vi_add(vint a, vint b) { for (int l = 0; l < VF_WIDTH; l++) a.v[l] += b.v[l]; return a; }
static inline vint vi_or(vint a, vint b) { for (int l = 0; l < VF_WIDTH; l++) a.v[l] = (int32_t)((uint32_t)a.v[l] | (uint32_t)b.v[l]); return a; }
static inline vint vi_byte(vint v, int s) { for (int l = 0; l < VF_WIDTH; l++) v.v[l] = (int32_t)(((uint32_t)v.v[l] & 255u) << s); return v; }
static inline vint vi_load2(const void *lo, const void *hi)
{
    vint r;
    memcpy(r.v, lo, sizeof r.v / 2);
    memcpy(r.v + VF_WIDTH / 2, hi, sizeof r.v / 2);
    return r;
}
#endif

/* r[i] lane j <-> r[j] lane i for int32 lanes (4 int8 weights each, the packing of quantized
   rows): the vector paths move the bits through vf_transpose; plain C swaps integers (copying
   them as floats could change a NaN's bits). */
VF_INLINE void vi_transpose(vint *r)
{
#ifdef VI_TO_VF
    vfloat f[VF_WIDTH];
    VF_UNROLL
    for (int i = 0; i < VF_WIDTH; i++) f[i] = VI_TO_VF(r[i]);
    vf_transpose(f);
    VF_UNROLL
    for (int i = 0; i < VF_WIDTH; i++) r[i] = VF_TO_VI(f[i]);
#else
    for (int i = 0; i < VF_WIDTH; i++)
        for (int j = i + 1; j < VF_WIDTH; j++) { int32_t t = r[i].v[j]; r[i].v[j] = r[j].v[i]; r[j].v[i] = t; }
#endif
}

/* Four vectors of whole numbers within int8 (k, k+1, k+2, k+3 of VF_WIDTH weight columns) as the
   int8 groups of vi_dot4: lane j gets the bytes of lane j of a, b, c, d, lowest first. Their
   int32 sum is added to *sum (the VNNI offset's correction). */
static inline vint vq_pack4(vfloat a, vfloat b, vfloat c, vfloat d, vint *sum)
{
    vint ia = vi_round(a), ib = vi_round(b), ic = vi_round(c), id = vi_round(d);
    *sum = vi_add(*sum, vi_add(vi_add(ia, ib), vi_add(ic, id)));
    return vi_or(vi_or(vi_byte(ia, 0), vi_byte(ib, 8)), vi_or(vi_byte(ic, 16), vi_byte(id, 24)));
}

/* Q8_BLOCK floats times id, rounded, as int8 bytes XOR mask. */
#define Q8_BLOCK 32
static void q8_store_block(const float *x, unsigned char *q, float id, int mask)
{
    for (int i = 0; i < Q8_BLOCK / VF_WIDTH; i++) vq_store(q + i * VF_WIDTH, vf_mul(vf_load(x + i * VF_WIDTH), vf_set1(id)), mask);
}

/* One block of Q8_BLOCK floats as int8 with one scale, as ggml's q8_0 makes it: with a =
   max|x| (at least 1e-30, so that a block of zeros needs no special case), d = a/127 and q =
   x·(127/a) rounded (here half to even, as vector conversions round). The bytes (XOR mask)
   go to q, d is returned. */
#define Q8_TINY 1e-30f
static float q8_quantize(const float *x, unsigned char *q, int mask)
{
    vfloat m = vf_set1(Q8_TINY);
    for (int i = 0; i < Q8_BLOCK / VF_WIDTH; i++) m = vf_max(m, vf_abs(vf_load(x + i * VF_WIDTH)));
    float amax = vf_hmax(m);
    q8_store_block(x, q, 127.0f / amax, mask);
    return amax / 127.0f;
}

/* The integers of a block of a 32-value type, as dequant_block reads them: q8_0's bytes; the
   nibbles (and fifth bits) of the others, minus q4_0's 8 or q5_0's 16. */
static void block_ints(sd_dtype t, const unsigned char *b, signed char *q)
{
    int with_min = t == SD_Q4_1 || t == SD_Q5_1, five = t == SD_Q5_0 || t == SD_Q5_1;
    const unsigned char *qs = b + (with_min ? 4 : 2);
    uint32_t qh = 0;
    if (t == SD_Q8_0) { memcpy(q, b + 2, 32); return; }
    if (five) { qh = qs[0] | (uint32_t)qs[1] << 8 | (uint32_t)qs[2] << 16 | (uint32_t)qs[3] << 24; qs += 4; }
    int offset = with_min ? 0 : five ? 16 : 8;
    for (int e = 0; e < 16; e++) {
        q[e] = (signed char)(((qs[e] & 15) | (int)((qh >> e & 1) << 4)) - offset);
        q[e + 16] = (signed char)(((qs[e] >> 4) | (int)((qh >> (e + 16) & 1) << 4)) - offset);
    }
}

/* A block's fp16 scale: one instruction with F16C, else sd_f16_to_f32. */
#if defined(__F16C__) && !defined(SD_NO_SIMD)
#include <immintrin.h>   /* (the SSE2 path's CPUs may have F16C: Ivy Bridge, Jaguar) */
#endif
static inline float f16_fast(const unsigned char *p)
{
#if defined(__F16C__) && !defined(SD_NO_SIMD)
    return _cvtsh_ss((unsigned short)(p[0] | p[1] << 8));
#else
    return f16_le(p);
#endif
}

/* dequant_row for the kernels: whole blocks of the 32-value types through vectors (their integers
   as int8, then q·d or q·d + m: each product exact, so the very floats dequant_block gives);
   the K types and blocks cut at either end through dequant_row. */
static void dequant_row_fast(sd_dtype t, const void *data, size_t first, size_t n, float *dst)
{
    size_t per = (size_t)dtype_info[t].block, head = (per - first % per) % per, bs = dtype_info[t].size;
    if (per != 32) { dequant_row(t, data, first, n, dst); return; }
    if (head > n) head = n;
    if (head) dequant_row(t, data, first, head, dst);
    first += head, dst += head, n -= head;
    const unsigned char *b = (const unsigned char *)data + first / 32 * bs;
    for (; n >= 32; n -= 32, dst += 32, b += bs) {
        signed char q[32];
        int with_min = t == SD_Q4_1 || t == SD_Q5_1;
        float d = f16_fast(b), m = with_min ? f16_fast(b + 2) : 0.0f;
        block_ints(t, b, q);
        for (int e = 0; e < 32; e += VF_WIDTH) {
            vfloat v = vf_mul(vf_from_i8(q + e), vf_set1(d));
            vf_store(dst + e, with_min ? vf_add(v, vf_set1(m)) : v);
        }
    }
    if (n) dequant_row(t, data, (size_t)(b - (const unsigned char *)data) / bs * 32, n, dst);
}

/* n values of a float tensor starting at element i, as f32 into dst. */
static void tensor_floats(float *dst, const sd_tensor *t, size_t i, int n)
{
    const unsigned char *src = (const unsigned char *)t->data;
    int k = 0;
    if (t->reader) { tensor_floats_read(dst, t, i, n); return; }
    switch (t->dtype) {
    case SD_F32:
        memcpy(dst, src + 4 * i, (size_t)n * 4);
        return;
    case SD_F16:
        src += 2 * i;
        for (; k + VF_WIDTH <= n; k += VF_WIDTH) vf_store(dst + k, vf_load_f16(src + 2 * k));
        for (; k < n; k++) { uint16_t h; memcpy(&h, src + 2 * k, 2); dst[k] = sd_f16_to_f32(h); }
        return;
    case SD_BF16:
        src += 2 * i;
        for (; k + VF_WIDTH <= n; k += VF_WIDTH) vf_store(dst + k, vf_load_bf16(src + 2 * k));
        for (; k < n; k++) { uint16_t h; memcpy(&h, src + 2 * k, 2); dst[k] = sd_bf16_to_f32(h); }
        return;
    default:
        if (dtype_is_block(t->dtype)) dequant_row_fast(t->dtype, t->data, i, (size_t)n, dst);
        else for (; k < n; k++) dst[k] = tensor_get(t, i + (size_t)k);
        return;
    }
}

/* ---- thread pool ---- */

/* A compute context: worker threads and per-thread scratch, set up once per run (from the
   arena) so that kernels never allocate. Workers sleep on a condition variable between
   pool_run calls. The struct must stay where pool_init put it until pool_free, and the arena
   must not be reset below the pool while it lives (worker stacks are in it). */
#define SD_MAX_THREADS 64
#define SD_POOL_SCRATCH_FLOATS (1u << 18)   /* per thread: packed weight blocks, attention tiles */
#ifndef SD_POOL_STACK_BYTES
#define SD_POOL_STACK_BYTES (1u << 20)      /* per worker thread: kernels use a few KiB, sanitizers more */
#endif
#ifndef SD_WEIGHT_STAGE_BYTES
#define SD_WEIGHT_STAGE_BYTES (4u << 20)    /* weights read through a callback: slabs of rows (gemm_staged) */
#endif

typedef void (*pool_task)(void *arg, int task, int thread);

struct sd_pool;
typedef struct pool_worker { struct sd_pool *pool; int index; } pool_worker;

struct sd_pool {
    int threads;
    int measure;               /* set up on a measuring arena: a dry run, the kernels do nothing */
    int quant;                 /* SD_QUANT_EXACT or SD_QUANT_FAST: how matmul and conv2d multiply */
    float *scratch[SD_MAX_THREADS];
    size_t scratch_floats;
    const struct sd_lora_set *lora;   /* LoRA adapters matmul and conv2d add (sd_pool_set_lora), or NULL */
    float *lora_scratch;       /* the calling thread's [rows, rank] low-rank products, SD_LORA_SCRATCH_BYTES */
    unsigned char *stage;      /* weights read through a callback: a slab of rows at a time (sd_pool_set_stage) */
    size_t stage_bytes;
#ifndef SD_NO_THREADS
    int started, sync_ready;
    pthread_t tid[SD_MAX_THREADS];
    pool_worker worker[SD_MAX_THREADS];
    pthread_mutex_t lock;
    pthread_cond_t wake, idle;
    pool_task fn;              /* the current job, valid while busy > 0 */
    void *arg;
    int ntasks, next, busy, quit;
    unsigned long generation;  /* bumped by each pool_run, so sleeping workers know it is new */
#endif
};

/* A stage function's run on weights that may come through a callback (t: one of the part's):
   refused without a stage on the pool, and a read that failed during the run is its error. */
typedef struct weights_use { const sd_reader *reader; unsigned before; } weights_use;

static int weights_begin(weights_use *u, const sd_pool *pool, const sd_tensor *t, const char *who, sd_error *err)
{
    u->reader = t ? t->reader : NULL;
    u->before = reader_failures(u->reader);
    if (u->reader && pool && !pool->measure && !pool->stage)
        return fail(err, SD_ERR_ARG, "%s: the model's weights are read through a callback: give the pool a stage first (sd_pool_set_stage)", who);
    return SD_OK;
}

static int weights_end(const weights_use *u, int rc, sd_error *err) { return rc ? rc : reader_check(u->reader, u->before, err); }

#ifdef SD_NO_THREADS
#define POOL_THREADS(t) 1
#else
#define POOL_THREADS(t) (t)
#endif
#define POOL_PAGE 4096u

#ifndef SD_NO_THREADS
static void *pool_worker_main(void *p)
{
    pool_worker *w = (pool_worker *)p;
    sd_pool *pool = w->pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->quit && pool->generation == seen) pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->quit) break;
        seen = pool->generation;
        while (pool->next < pool->ntasks) {
            int task = pool->next++;
            pool_task fn = pool->fn;
            void *arg = pool->arg;
            pthread_mutex_unlock(&pool->lock);
            fn(arg, task, w->index);
            pthread_mutex_lock(&pool->lock);
        }
        if (--pool->busy == 0) pthread_cond_signal(&pool->idle);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}
#endif

static void pool_free(sd_pool *p)
{
#ifndef SD_NO_THREADS
    if (p->sync_ready) {
        pthread_mutex_lock(&p->lock);
        p->quit = 1;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (int i = 0; i < p->started; i++) pthread_join(p->tid[i], NULL);
        pthread_cond_destroy(&p->idle);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        p->sync_ready = 0;
    }
    p->started = 0;
#endif
    p->threads = 0;
}

static int pool_init(sd_pool *p, int threads, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a);
    unsigned char *stack[SD_MAX_THREADS];
    memset(p, 0, sizeof *p);
    if (threads < 1 || threads > SD_MAX_THREADS) return fail(err, SD_ERR_ARG, "threads = %d: must be 1..%d", threads, SD_MAX_THREADS);
    p->threads = POOL_THREADS(threads);
    p->scratch_floats = SD_POOL_SCRATCH_FLOATS;
    p->measure = arena_measuring(a);
    for (int t = 0; t < p->threads; t++)
        if (!(p->scratch[t] = arena_floats(a, p->scratch_floats, err))) { sd_arena_reset(a, mark); return SD_ERR_MEMORY; }
    for (int t = 1; t < p->threads; t++)
        if (!(stack[t] = (unsigned char *)sd_arena_alloc(a, SD_POOL_STACK_BYTES + POOL_PAGE, err))) { sd_arena_reset(a, mark); return SD_ERR_MEMORY; }
    if (p->measure) return SD_OK;   /* a dry run: the threads' memory counted, no threads started */
#ifndef SD_NO_THREADS
    if (p->threads > 1) {
        if (pthread_mutex_init(&p->lock, NULL)) {
            sd_arena_reset(a, mark);
            return fail(err, SD_ERR_UNSUPPORTED, "thread pool: pthread_mutex_init failed");
        }
        if (pthread_cond_init(&p->wake, NULL) || pthread_cond_init(&p->idle, NULL)) {
            pthread_mutex_destroy(&p->lock);
            sd_arena_reset(a, mark);
            return fail(err, SD_ERR_UNSUPPORTED, "thread pool: pthread_cond_init failed");
        }
        p->sync_ready = 1;
        for (int t = 1; t < p->threads; t++) {
            pthread_attr_t attr;
            int rc;
            p->worker[t].pool = p;
            p->worker[t].index = t;
            pthread_attr_init(&attr);
            rc = pthread_attr_setstack(&attr, stack[t] + (POOL_PAGE - (uintptr_t)stack[t] % POOL_PAGE) % POOL_PAGE, SD_POOL_STACK_BYTES);
            if (!rc) rc = pthread_create(&p->tid[p->started], &attr, pool_worker_main, &p->worker[t]);
            pthread_attr_destroy(&attr);
            if (rc) {
                pool_free(p);
                sd_arena_reset(a, mark);
                return fail(err, SD_ERR_UNSUPPORTED, "thread pool: cannot start thread %d of %d (error %d)", t, threads, rc);
            }
            p->started++;
        }
    }
#endif
    return SD_OK;
}

/* Arena bytes pool_init takes for `threads` (clamped to 1..SD_MAX_THREADS): a dry run of it. */
static size_t pool_arena_bytes(int threads)
{
    sd_arena m;
    sd_pool p;
    arena_measure(&m);
    return pool_init(&p, threads < 1 ? 1 : threads > SD_MAX_THREADS ? SD_MAX_THREADS : threads, &m, NULL) ? 0 : m.peak;
}

/* The pool of a stage's dry run, whose own memory is not part of the stage's plan. */
static void pool_measure(sd_pool *p)
{
    sd_arena m;
    arena_measure(&m);
    pool_init(p, 1, &m, NULL);   /* cannot fail on a measuring arena */
}

SD_API size_t sd_pool_arena_bytes(int threads)
{
    return (sizeof(sd_pool) + SD_ALIGN - 1) / SD_ALIGN * SD_ALIGN + pool_arena_bytes(threads);
}

SD_API int sd_pool_create(sd_pool **pool, int threads, sd_arena *a, sd_error *err)
{
    if (!pool || !a) return fail(err, SD_ERR_ARG, "thread pool: NULL argument");
    size_t mark = sd_arena_mark(a);
    sd_pool *p = (sd_pool *)sd_arena_alloc(a, sizeof *p, err);
    int rc = p ? pool_init(p, threads, a, err) : SD_ERR_MEMORY;
    if (rc) { sd_arena_reset(a, mark); return rc; }
    *pool = p;
    return SD_OK;
}

SD_API void sd_pool_destroy(sd_pool *pool)
{
    if (pool) pool_free(pool);
}

SD_API void sd_pool_set_quant(sd_pool *pool, int mode)
{
    if (pool) pool->quant = mode == SD_QUANT_FAST ? SD_QUANT_FAST : SD_QUANT_EXACT;
}

/* Runs fn(arg, task, thread) for task = 0..ntasks-1 on the pool's threads (the caller is thread
   0) and returns when all are done. Tasks are handed out first come first served; each task
   writes its own part of the output, so the result does not depend on which thread ran it. */
static void pool_run(sd_pool *pool, pool_task fn, void *arg, int ntasks)
{
    if (pool->measure) return;   /* a dry run */
#ifndef SD_NO_THREADS
    if (pool->started > 0 && ntasks > 1) {
        pthread_mutex_lock(&pool->lock);
        pool->fn = fn;
        pool->arg = arg;
        pool->ntasks = ntasks;
        pool->next = 0;
        pool->busy = pool->started;
        pool->generation++;
        pthread_cond_broadcast(&pool->wake);
        while (pool->next < pool->ntasks) {
            int task = pool->next++;
            pthread_mutex_unlock(&pool->lock);
            fn(arg, task, 0);
            pthread_mutex_lock(&pool->lock);
        }
        while (pool->busy > 0) pthread_cond_wait(&pool->idle, &pool->lock);
        pthread_mutex_unlock(&pool->lock);
        return;
    }
#endif
    (void)pool;
    for (int t = 0; t < ntasks; t++) fn(arg, t, 0);
}

/* ---- GEMM ---- */

/* y = x·wᵀ is computed BLIS-style: the weight is packed, one block of GEMM_KC x GEMM_NC at
   a time and converted to f32 on the way, into panels of GEMM_NR columns laid out k-major in
   the thread's scratch; a register-blocked micro-kernel then multiplies GEMM_MR rows of x
   (read in place, one broadcast per element) by a panel, accumulating in registers.
   Convolutions use the same kernel as an implicit GEMM: the K axis runs over (tap, channel),
   and a row of "x" for tap (ky, kx) is just the input pixel that tap sees, or a zero row in the
   padding, so no im2col buffer is ever built. */
#define GEMM_NR (2 * VF_WIDTH)
/* K per packed block (a 3x3 conv's 9 taps x 128 channels) and N: 1152 x 128 floats = 576 KiB,
   in L2. Deep and narrow rather than shallow and wide (288 x 512 before): the tiles of y are
   read back and written a quarter as often, which made the 32x32x640 and 16x16x1280 convolutions
   11% and 22% faster (2 threads). */
#define GEMM_KC 1152
#define GEMM_NC 128
#define GEMM_PIECE 288           /* values of a row dequantized at a time (a block type), and the
                                    int8 path's pass through its float panel: 9 taps x 32 channels */
/* A packing task's part of the thread's scratch: the packed block, the bias, the row pointers of
   `taps` taps, and VF_WIDTH rows of a block-typed weight dequantized before they are packed. */
#define GEMM_SCRATCH_FLOATS(taps) ((size_t)GEMM_KC * GEMM_NC + GEMM_NC + (size_t)(taps) * GEMM_MR * 2 + (size_t)VF_WIDTH * GEMM_PIECE)

static const float zero_row[GEMM_KC] = {0};   /* the input "pixel" in the padding */

/* Lists of a tile's rows for the macros that write out its registers: TILE_ROWS_n(X) is X(0) .. X(n - 1). */
#define TILE_ROWS_2(X) X(0) X(1)
#define TILE_ROWS_4(X) TILE_ROWS_2(X) X(2) X(3)
#define TILE_ROWS_6(X) TILE_ROWS_4(X) X(4) X(5)
#define TILE_ROWS_8(X) TILE_ROWS_6(X) X(6) X(7)
#define TILE_ROWS_12(X) TILE_ROWS_8(X) X(8) X(9) X(10) X(11)
#if GEMM_MR == 12
#define GEMM_ROWS TILE_ROWS_12
#elif GEMM_MR == 8
#define GEMM_ROWS TILE_ROWS_8
#elif GEMM_MR == 6
#define GEMM_ROWS TILE_ROWS_6
#else
#define GEMM_ROWS TILE_ROWS_4
#endif

/* How a tile's sums are stored: added to what c holds (a later K block, or accumulate), and
   through ReLU after the bias (TAESD's convs, on the last K block). */
enum { TILE_LOAD = 1, TILE_RELU = 2 };

/* c[0..nr) (+)= v0:v1, + bias, for one row of a tile. */
static inline void tile_store_row(float *c, vfloat v0, vfloat v1, int nr, int mode, const float *bias)
{
    if (nr == GEMM_NR) {
        if (mode & TILE_LOAD) { v0 = vf_add(vf_load(c), v0); v1 = vf_add(vf_load(c + VF_WIDTH), v1); }
        if (bias) { v0 = vf_add(v0, vf_load(bias)); v1 = vf_add(v1, vf_load(bias + VF_WIDTH)); }
        if (mode & TILE_RELU) { v0 = vf_max(v0, vf_zero()); v1 = vf_max(v1, vf_zero()); }
        vf_store(c, v0);
        vf_store(c + VF_WIDTH, v1);
    } else {
        int n0 = nr < VF_WIDTH ? nr : VF_WIDTH, n1 = nr - n0;
        if (mode & TILE_LOAD) { v0 = vf_add(vf_load_n(c, n0), v0); if (n1) v1 = vf_add(vf_load_n(c + VF_WIDTH, n1), v1); }
        if (bias) { v0 = vf_add(v0, vf_load_n(bias, n0)); if (n1) v1 = vf_add(v1, vf_load_n(bias + VF_WIDTH, n1)); }
        if (mode & TILE_RELU) { v0 = vf_max(v0, vf_zero()); v1 = vf_max(v1, vf_zero()); }
        vf_store_n(c, v0, n0);
        if (n1) vf_store_n(c + VF_WIDTH, v1, n1);
    }
}

/* The micro-kernel: a GEMM_MR x GEMM_NR tile of c (row stride ldc) (+)= Σ_k a_i[k] · bp[k][j].
   The K axis is nseg segments of len values; a[s·GEMM_MR + i] points at row i's values for
   segment s, and bp holds nseg·len packed rows of GEMM_NR. Only rows < mr and columns < nr
   are stored (the others compute on duplicated or zero data); bias (if not NULL) is added; mode:
   TILE_LOAD, TILE_RELU. It is written once for a list of rows, ROWS, and made for GEMM_MR rows
   and for the last tile's 4 or 8 (M = 256 = 21·12 + 4 would otherwise compute 8 rows for nothing). */
#define TILE_DECL(i) vfloat c##i##0 = vf_zero(), c##i##1 = vf_zero();
#define TILE_PTR(i) const float *a##i = a[i];
#define TILE_FMA(i) t = vf_set1(a##i[k]); c##i##0 = vf_fma(t, b0, c##i##0); c##i##1 = vf_fma(t, b1, c##i##1);
#define TILE_STORE(i) if (i < mr) tile_store_row(c + (size_t)i * ldc, c##i##0, c##i##1, nr, mode, bias);
#define GEMM_TILE(name, ROWS)                                                                             \
    static void name(const float *const *a, int nseg, int len, const float *bp, float *c, int ldc,       \
                     int mr, int nr, int mode, const float *bias)                                         \
    {                                                                                                     \
        ROWS(TILE_DECL)                                                                                   \
        for (int s = 0; s < nseg; s++, a += GEMM_MR) {                                                    \
            ROWS(TILE_PTR)                                                                                \
            for (int k = 0; k < len; k++, bp += GEMM_NR) {                                                \
                vfloat b0 = vf_load(bp), b1 = vf_load(bp + VF_WIDTH), t;                                  \
                ROWS(TILE_FMA)                                                                            \
            }                                                                                             \
        }                                                                                                 \
        ROWS(TILE_STORE)                                                                                  \
    }
GEMM_TILE(gemm_tile_mr, GEMM_ROWS)
GEMM_TILE(gemm_tile4, TILE_ROWS_4)
GEMM_TILE(gemm_tile8, TILE_ROWS_8)

static void gemm_tile(const float *const *a, int nseg, int len, const float *bp, float *c, int ldc,
                      int mr, int nr, int mode, const float *bias)
{
    if (GEMM_MR > 4 && mr <= 4) gemm_tile4(a, nseg, len, bp, c, ldc, mr, nr, mode, bias);
    else if (GEMM_MR > 8 && mr <= 8) gemm_tile8(a, nseg, len, bp, c, ldc, mr, nr, mode, bias);
    else gemm_tile_mr(a, nseg, len, bp, c, ldc, mr, nr, mode, bias);
}

#if defined(__GNUC__) || defined(__clang__)
#define prefetch_l2(p) __builtin_prefetch((p), 0, 2)
#else
#define prefetch_l2(p) ((void)(p))
#endif

/* VF_WIDTH consecutive weights of type dt at p as f32 (only n of them exist; zeros after). */
static inline vfloat pack_load(const unsigned char *p, sd_dtype dt, int n)
{
    unsigned char t[4 * VF_WIDTH];
    if (n < VF_WIDTH) { memset(t, 0, sizeof t); memcpy(t, p, (size_t)n * sd_dtype_size(dt)); p = t; }
    if (dt == SD_F32) { float f[VF_WIDTH]; memcpy(f, p, sizeof f); return vf_load(f); }
    return dt == SD_F16 ? vf_load_f16(p) : vf_load_bf16(p);
}

/* The next VF_WIDTH values of VF_WIDTH q8_0 rows, `stride` bytes apart, from value `off` of the
   block at b on, as f32: q·d, as dequant_row_fast computes them. */
static inline void pack_load_rows_q8(vfloat *r, const unsigned char *b, size_t stride, int off)
{
    VF_UNROLL
    for (int i = 0; i < VF_WIDTH; i++, b += stride) r[i] = vf_mul(vf_from_i8((const signed char *)b + 2 + off), vf_set1(f16_fast(b)));
}

/* The byte where value e of a weight lies (its block's first, for a block type). */
static inline const unsigned char *weight_at(const sd_tensor *w, int64_t e)
{
    return (const unsigned char *)w->data + (size_t)(e / dtype_info[w->dtype].block) * dtype_info[w->dtype].size;
}

/* Stores the first n vectors of r as packed k-rows (k = tap·len + channel) from source value
   (channel *ch, tap *tap) on, and steps those along: pack_weights' stores, in either of its loops. */
VF_INLINE void pack_store(float *dst, const vfloat *r, int n, int len, int taps, int *tap, int *ch)
{
    VF_UNROLL   /* (r stays in registers) */
    for (int c = 0; c < VF_WIDTH; c++)
        if (c < n) {
            vf_store(dst + (size_t)(*tap * len + *ch) * GEMM_NR, r[c]);
            if (++*tap == taps) *tap = 0, ++*ch;
        }
}

/* pack_weights' common case: values 0..full (a multiple of VF_WIDTH) of VF_WIDTH rows of a float
   type dt at src, `stride` bytes apart, loaded transposed and stored as packed k-rows, prefetching
   the next group's `ahead` rows as pack_weights does. A function of its own, made for each type,
   so that its loop keeps its pointers in registers (inside pack_weights they went through xmm
   registers and the stack, and the gain of the transposing load was lost). */
VF_INLINE void pack_rows_typed(float *dst, const unsigned char *src, size_t stride, sd_dtype dt, int full, int len, int taps, int ahead)
{
    size_t es = sd_dtype_size(dt);
    for (int s0 = 0, tap = 0, ch = 0; s0 < full; s0 += VF_WIDTH) {   /* source s0 is channel ch of tap `tap` */
        vfloat r[VF_WIDTH];
        if (s0 * es % 64 == 0)
            for (int i = 0; i < ahead; i++) prefetch_l2(src + (size_t)(VF_WIDTH + i) * stride + s0 * es);
        vf_load_transposed(r, src + s0 * es, stride, dt);
        pack_store(dst, r, VF_WIDTH, len, taps, &tap, &ch);
    }
}
static VF_NOINLINE void pack_rows_float(float *dst, const unsigned char *src, size_t stride, sd_dtype dt, int full, int len, int taps, int ahead)
{
    if (dt == SD_F32) pack_rows_typed(dst, src, stride, SD_F32, full, len, taps, ahead);
    else if (dt == SD_F16) pack_rows_typed(dst, src, stride, SD_F16, full, len, taps, ahead);
    else pack_rows_typed(dst, src, stride, SD_BF16, full, len, taps, ahead);
}

/* Packs columns n0..n0+nc of the weight's K block into GEMM_NR-wide k-major panels:
   bp[panel][k][j] = w[n0 + panel·NR + j][src0 + s] where the block's source values s run over
   `len` channels x `taps` taps (PyTorch's [Cout, Cin, kh, kw] order) and the packed k puts the
   taps outermost (k = tap·len + channel), matching the micro-kernel's segments. It goes
   VF_WIDTH weight rows x VF_WIDTH values at a time: converted as loaded, transposed in
   registers, stored as VF_WIDTH packed k-rows (several times faster than a scalar scatter,
   which matters when few rows of x share each packed block). q8_0 rows whose values line up
   with VF_WIDTH are converted as loaded too. Other types (GGUF's blocks, F64) have their
   VF_WIDTH rows' values converted into `rowbuf` first, GEMM_PIECE of each row at a time
   (VF_WIDTH x GEMM_PIECE floats; a block is longer), which are then packed as f32: the same
   floats the f32 weight would give. */
static void pack_weights(float *bp, const sd_tensor *w, int64_t row_len, int n0, int nc, int64_t src0,
                         int len, int taps, float *rowbuf)
{
    int kb = len * taps, panels = (nc + GEMM_NR - 1) / GEMM_NR;
    int fast = w->dtype == SD_F32 || w->dtype == SD_F16 || w->dtype == SD_BF16;
    sd_dtype dt = fast ? w->dtype : SD_F32;
    size_t es = sd_dtype_size(dt);
    for (int p = 0; p < panels; p++)
        for (int g = 0; g < GEMM_NR; g += VF_WIDTH) {
            float *dst = bp + (size_t)p * kb * GEMM_NR + g;
            int rows = nc - p * GEMM_NR - g, piece = 0;
            int64_t first = (int64_t)(n0 + p * GEMM_NR + g) * row_len + src0;
            int q8 = w->dtype == SD_Q8_0 && rows >= VF_WIDTH && row_len % Q8_BLOCK == 0 && first % VF_WIDTH == 0 && kb % VF_WIDTH == 0;
            int ahead = fast || q8 ? (rows - VF_WIDTH < VF_WIDTH ? rows - VF_WIDTH : VF_WIDTH) : 0;   /* rows of the next group */
            int done = fast && rows >= VF_WIDTH ? kb - kb % VF_WIDTH : 0;
            if (done) pack_rows_float(dst, (const unsigned char *)w->data + (size_t)first * es, (size_t)row_len * es, dt, done, len, taps, ahead);
            for (int s0 = done, tap = done % taps, ch = done / taps; s0 < kb; s0 += VF_WIDTH) {   /* source s0 is channel ch of tap `tap` */
                int ns = kb - s0 < VF_WIDTH ? kb - s0 : VF_WIDTH;
                vfloat r[VF_WIDTH];
                if (!fast && !q8 && s0 % GEMM_PIECE == 0) {   /* the next GEMM_PIECE values of each row (VF_WIDTH divides it) */
                    piece = kb - s0 < GEMM_PIECE ? kb - s0 : GEMM_PIECE;
                    for (int i = 0; i < VF_WIDTH && i < rows; i++)
                        tensor_floats(rowbuf + (size_t)i * GEMM_PIECE, w, (size_t)(first + (int64_t)i * row_len + s0), piece);
                }
                if (fast ? s0 * es % 64 == 0 : (first + s0) % Q8_BLOCK == 0)   /* the next group's rows from memory, a line
                                            (a q8_0 block) each as these go (a burst of them all at the start stalled:
                                            2-3% of a deep GEMM) */
                    for (int i = 0; i < ahead; i++) {
                        const unsigned char *f = weight_at(w, first + (int64_t)(VF_WIDTH + i) * row_len + s0);
                        prefetch_l2(f);
                        if (q8) prefetch_l2(f + 33);
                    }
                if (q8)
                    pack_load_rows_q8(r, weight_at(w, first + s0), (size_t)(row_len / Q8_BLOCK) * dtype_info[SD_Q8_0].size, (int)((first + s0) % Q8_BLOCK));
                else
                    for (int i = 0; i < VF_WIDTH; i++) {
                        const void *src = fast ? (const unsigned char *)w->data + (size_t)(first + (int64_t)i * row_len + s0) * es
                                               : (const void *)(rowbuf + (size_t)i * GEMM_PIECE + s0 % GEMM_PIECE);
                        r[i] = i < rows ? pack_load((const unsigned char *)src, dt, ns) : vf_zero();
                    }
                vf_transpose(r);
                pack_store(dst, r, ns, len, taps, &tap, &ch);
            }
        }
}

/* One matmul or convolution, split into a grid of gm x gn tasks over (rows, columns). */
typedef struct gemm_job {
    sd_pool *pool;
    float *y;
    int ldy;
    const float *x;
    int ldx, M, N;
    const sd_tensor *w, *b;
    int accumulate, relu;                        /* y += the product; y = max(y, 0) at the end */
    int conv, H, W, Cin, Ho, Wo, k, s, pad;      /* implicit GEMM geometry when conv */
    int y0, x_y0;                                /* conv2d_rows: the first output row made, x's first row */
    int row0;                                    /* conv: output pixel of row 0 (a band of B·Ho·Wo) */
    int64_t row_len;                             /* weight values per output column */
    int depth, taps, nblocks, blen;              /* K = depth x taps, in blocks of blen x taps */
    int q8_nc;                                   /* fast mode: most columns per packed block */
    int gm, gn, mb, nb;                          /* task grid and its block sizes */
} gemm_job;

/* The source rows that output row r reads, one per tap (a convolution's k·k taps in PyTorch's
   order; a matmul's one row of x): the input pixel or row, or -1 where a tap falls into the
   padding. Pixels count from x's first row (x_y0); output rows from the band's first (row0, y0),
   as in gemm_rows. */
static void gemm_sources(const gemm_job *j, int r, int *src)
{
    if (!j->conv) { src[0] = r; return; }
    r += j->row0;
    int hw = j->Ho * j->Wo, bi = r / hw, oy = (r % hw) / j->Wo + j->y0, ox = r % j->Wo;
    for (int ky = 0, t = 0; ky < j->k; ky++) {
        int iy = oy * j->s + ky - j->pad;
        for (int kx = 0; kx < j->k; kx++, t++) {
            int ix = ox * j->s + kx - j->pad;
            src[t] = iy < 0 || iy >= j->H || ix < 0 || ix >= j->W ? -1 : (bi * j->H + iy - j->x_y0) * j->W + ix;
        }
    }
}

/* Row pointers of the micro-tile at output rows m.. (mr valid) for the K block starting at
   channel c0: GEMM_MR of them per tap. Rows past mr repeat row m. A conv's output pixel (bi, oy,
   ox) is worked out once for row m and stepped along after, and each tap row's start once per
   pixel: at 64 channels this bookkeeping is a tenth of a conv's time. */
static void gemm_rows(const gemm_job *j, int m, int mr, int c0, const float **rows)
{
    const float *x = j->x;
    int k = j->k, s = j->s, pad = j->pad, H = j->H, W = j->W, Ho = j->Ho, Wo = j->Wo, taps = k * k;
    size_t C = (size_t)j->Cin;
    if (!j->conv) {
        for (int i = 0; i < GEMM_MR; i++) rows[i] = x + (size_t)(m + (i < mr ? i : 0)) * j->ldx + c0;
        return;
    }
    int r = m + j->row0, bi = r / (Ho * Wo), oy = r % (Ho * Wo) / Wo, ox = r % Wo;   /* row0: a band of the output's pixels */
    for (int i = 0; i < mr; i++) {
        int iy0 = (j->y0 + oy) * s - pad, ix0 = ox * s - pad;
        for (int ky = 0; ky < k; ky++) {
            int iy = iy0 + ky;
            const float *line = iy < 0 || iy >= H ? NULL : x + ((size_t)bi * H + iy - j->x_y0) * W * C + c0;
            for (int kx = 0, ix = ix0; kx < k; kx++, ix++)
                rows[(ky * k + kx) * GEMM_MR + i] = !line || ix < 0 || ix >= W ? zero_row : line + (size_t)ix * C;
        }
        if (++ox == Wo) { ox = 0; if (++oy == Ho) { oy = 0; bi++; } }
    }
    for (int i = mr; i < GEMM_MR; i++)
        for (int t = 0; t < taps; t++) rows[t * GEMM_MR + i] = rows[t * GEMM_MR];
}

/* The width of a task's blocks of columns (n of them, packed `most` at a time at most): as even as
   whole panels allow, 160 as 96 + 64 rather than 128 + 32, since each block reads x again and a
   block of one panel does so for little work (deep f32 GEMMs 0.7-2% faster). */
static int gemm_block_cols(int n, int most)
{
    int parts = (n + most - 1) / most;
    return ((n + parts - 1) / parts + GEMM_NR - 1) / GEMM_NR * GEMM_NR;
}

static void gemm_task(void *arg, int task, int thread)
{
    const gemm_job *j = (const gemm_job *)arg;
    int m_lo = (task / j->gn) * j->mb, n_lo = (task % j->gn) * j->nb;
    int m_hi = m_lo + j->mb < j->M ? m_lo + j->mb : j->M, n_hi = n_lo + j->nb < j->N ? n_lo + j->nb : j->N;
    float *bp = j->pool->scratch[thread], *bias = bp + GEMM_KC * GEMM_NC, *rowbuf = bias + GEMM_NC + (size_t)j->taps * GEMM_MR * 2;
    const float **rows = (const float **)(void *)(bias + GEMM_NC);
    int step = gemm_block_cols(n_hi - n_lo, GEMM_NC);
    for (int jc = n_lo; jc < n_hi; jc += step) {
        int nc = n_hi - jc < step ? n_hi - jc : step;
        if (j->b) tensor_floats(bias, j->b, (size_t)jc, nc);
        for (int p = 0; p < j->nblocks; p++) {
            int c0 = p * j->blen, len = j->depth - c0 < j->blen ? j->depth - c0 : j->blen, kb = len * j->taps;
            int mode = (p > 0 || j->accumulate ? TILE_LOAD : 0) | (p == j->nblocks - 1 && j->relu ? TILE_RELU : 0);
            const float *bb = p == j->nblocks - 1 && j->b ? bias : NULL;
            pack_weights(bp, j->w, j->row_len, jc, nc, (int64_t)c0 * j->taps, len, j->taps, rowbuf);
            for (int m = m_lo; m < m_hi; m += GEMM_MR) {
                int mr = m_hi - m < GEMM_MR ? m_hi - m : GEMM_MR;
                gemm_rows(j, m, mr, c0, rows);
                for (int pn = 0; pn * GEMM_NR < nc; pn++) {
                    int nr = nc - pn * GEMM_NR < GEMM_NR ? nc - pn * GEMM_NR : GEMM_NR;
                    gemm_tile(rows, j->taps, len, bp + (size_t)pn * kb * GEMM_NR,
                              j->y + (size_t)m * j->ldy + jc + pn * GEMM_NR, j->ldy, mr, nr, mode,
                              bb ? bb + pn * GEMM_NR : NULL);
                }
            }
        }
    }
}

/* Splits the M x N output over the pool: the grid with the smallest estimated time, counting
   rounds of tasks over the threads, each task's multiply-adds per k, its weight packing (about
   16 multiply-adds' time per packed value) and its rereading of x (8), plus a quarter of a task for
   the thread that finishes last when others are slowed down (shared machines): so with several
   threads a few more, smaller tasks win as long as they do not repack much. */
static void gemm_plan_costs(gemm_job *j, int threads, int mr, double pack, double reread)
{
    int tm = (j->M + mr - 1) / mr, tn = (j->N + GEMM_NR - 1) / GEMM_NR;
    double best = -1;
    for (int gn = 1; gn <= tn && gn <= 4 * threads; gn++)
        for (int gm = 1; gm <= tm && gm * gn <= 4 * threads; gm++) {
            int mt = (tm + gm - 1) / gm, nt = (tn + gn - 1) / gn, rounds = (gm * gn + threads - 1) / threads;
            double mb = (double)mt * mr, nb = (double)nt * GEMM_NR;
            double task_cost = mb * nb + pack * nb + reread * mb;
            double cost = (rounds + (threads > 1 ? 0.25 : 0.0)) * task_cost;
            if (best < 0 || cost < best * 0.999) {
                best = cost;
                j->gm = (tm + mt - 1) / mt;
                j->gn = (tn + nt - 1) / nt;
                j->mb = mt * mr;
                j->nb = nt * GEMM_NR;
            }
        }
}

static void gemm_plan(gemm_job *j, int threads) { gemm_plan_costs(j, threads, GEMM_MR, 16.0, 8.0); }


/* With few rows of x (the UNet's 4x4 level, time embeddings) packing the weight costs more
   than the products it feeds, so there the weight rows are read as they are and dotted with
   the rows of x: DOT_MG rows of x x 4 weight rows of accumulators, vectorised along K, one
   chunk of DOT_KC values of K at a time (the chunk of the 4 weight rows is converted to f32
   first; a convolution's input is gathered into the chunk's im2col rows, which for so few
   rows is cheap). Tasks split N only. */
#define DOT_MAX_M 8              /* measured (EPYC, 2 threads, AVX-512 and AVX2): dot products win up to ~8 rows, packing from 12 */
#define DOT_KC 2304              /* 256 channels x 9 taps */
#if (defined(__AVX512F__) || defined(__aarch64__)) && !defined(SD_NO_SIMD)
#define DOT_MG 4
#define DOT_ROWS TILE_ROWS_4
#else
#define DOT_MG 2
#define DOT_ROWS TILE_ROWS_2
#endif

/* out[j·4 + i] = Σ_k a_j[k] · wb[i·kl + k] for j < DOT_MG, i < 4. */
static void dot_tile(const float *const *a, const float *wb, int kl, float *out)
{
    const float *w0 = wb, *w1 = wb + kl, *w2 = wb + 2 * (size_t)kl, *w3 = wb + 3 * (size_t)kl;
    int k = 0;
#define DOT_DECL(j) const float *a##j = a[j]; vfloat s##j##0 = vf_zero(), s##j##1 = vf_zero(), s##j##2 = vf_zero(), s##j##3 = vf_zero();
#define DOT_FMA(j) s##j##0 = vf_fma(x##j, v0, s##j##0); s##j##1 = vf_fma(x##j, v1, s##j##1); \
                   s##j##2 = vf_fma(x##j, v2, s##j##2); s##j##3 = vf_fma(x##j, v3, s##j##3);
#define DOT_LOAD(j) vfloat x##j = vf_load(a##j + k);
#define DOT_LOAD_N(j) vfloat x##j = vf_load_n(a##j + k, kl - k);
#define DOT_OUT(j) out[j * 4] = vf_sum(s##j##0); out[j * 4 + 1] = vf_sum(s##j##1); \
                   out[j * 4 + 2] = vf_sum(s##j##2); out[j * 4 + 3] = vf_sum(s##j##3);
    DOT_ROWS(DOT_DECL)
    for (; k + VF_WIDTH <= kl; k += VF_WIDTH) {
        vfloat v0 = vf_load(w0 + k), v1 = vf_load(w1 + k), v2 = vf_load(w2 + k), v3 = vf_load(w3 + k);
        DOT_ROWS(DOT_LOAD)
        DOT_ROWS(DOT_FMA)
    }
    if (k < kl) {
        int n = kl - k;
        vfloat v0 = vf_load_n(w0 + k, n), v1 = vf_load_n(w1 + k, n), v2 = vf_load_n(w2 + k, n), v3 = vf_load_n(w3 + k, n);
        DOT_ROWS(DOT_LOAD_N)
        DOT_ROWS(DOT_FMA)
    }
    DOT_ROWS(DOT_OUT)
#undef DOT_DECL
#undef DOT_FMA
#undef DOT_LOAD
#undef DOT_LOAD_N
#undef DOT_OUT
}

/* The convolution's im2col rows for K values k0..k0+kl, in the weight's (channel, tap) order. */
static void dot_im2col(const gemm_job *j, float *col, int64_t k0, int kl)
{
    for (int m = 0; m < j->M; m++) {
        int hw = j->Ho * j->Wo, r = j->row0 + m, bi = r / hw, oy = (r % hw) / j->Wo, ox = r % j->Wo;
        int ci = (int)(k0 / j->taps), t = (int)(k0 % j->taps);
        float *o = col + (size_t)m * kl;
        for (int kk = 0; kk < kl; kk++) {
            int iy = (j->y0 + oy) * j->s + t / j->k - j->pad, ix = ox * j->s + t % j->k - j->pad;
            o[kk] = iy < 0 || iy >= j->H || ix < 0 || ix >= j->W ? 0.0f
                  : j->x[(((size_t)bi * j->H + iy - j->x_y0) * j->W + ix) * j->Cin + ci];
            if (++t == j->taps) { t = 0; ci++; }
        }
    }
}

static void gemm_dot_task(void *arg, int task, int thread)
{
    const gemm_job *j = (const gemm_job *)arg;
    int n_lo = task * j->nb, n_hi = n_lo + j->nb < j->N ? n_lo + j->nb : j->N, M = j->M;
    int64_t K = j->row_len;
    float *col = j->pool->scratch[thread], *wb = col + (j->conv ? (size_t)M * DOT_KC : 0);
    const float *a[DOT_MAX_M];
    for (int64_t k0 = 0; k0 < K; k0 += DOT_KC) {
        int kl = K - k0 < DOT_KC ? (int)(K - k0) : DOT_KC, load = k0 > 0 || j->accumulate, last = k0 + kl == K;
        if (j->conv) dot_im2col(j, col, k0, kl);
        for (int m = 0; m < M; m++) a[m] = j->conv ? col + (size_t)m * kl : j->x + (size_t)m * j->ldx + k0;
        for (int n = n_lo; n < n_hi; n += 4) {
            int nn = n_hi - n < 4 ? n_hi - n : 4;
            for (int i = 0; i < 4; i++) tensor_floats(wb + (size_t)i * kl, j->w, (size_t)((n + (i < nn ? i : 0)) * K + k0), kl);
            if (n + 4 < n_hi) {   /* start fetching the next 4 weight rows while these compute */
                size_t bytes = dtype_bytes(j->w->dtype, (uint64_t)kl);   /* K and k0: whole blocks */
                for (int i = 0; i < 4 && n + 4 + i < n_hi; i++) {
                    const char *p = (const char *)j->w->data + dtype_bytes(j->w->dtype, (uint64_t)(n + 4 + i) * K + k0);
                    for (size_t o = 0; o < bytes; o += 64) prefetch_l2(p + o);
                }
            }
            for (int m = 0; m < M; m += DOT_MG) {
                const float *ap[DOT_MG];
                float s[DOT_MG * 4];
                for (int r = 0; r < DOT_MG; r++) ap[r] = a[m + r < M ? m + r : m];
                dot_tile(ap, wb, kl, s);
                for (int r = 0; r < DOT_MG && m + r < M; r++)
                    for (int i = 0; i < nn; i++) {
                        float *yo = j->y + (size_t)(m + r) * j->ldy + n + i, v = s[r * 4 + i];
                        if (load) v = *yo + v;
                        if (last && j->b) v += tensor_get(j->b, (size_t)(n + i));
                        if (last && j->relu && v < 0) v = 0;
                        *yo = v;
                    }
            }
        }
    }
}

/* ---- int8 GEMM: the fast mode ----

   On a pool set to SD_QUANT_FAST, matmul and conv2d compute y = x·wᵀ as ggml's q8_0 x q8_0
   dot products do: K is cut into blocks of Q8_BLOCK values, each row of x and each column of w
   is quantized per block to int8 with one float scale, the int8 products of a block are summed
   exactly in int32, and the block sums times both scales are added up in float, block after
   block in K order: the summation order depends on the shapes only, so the results stay
   bit-identical for any thread count. The weight is converted as it is packed, as the exact
   mode dequantizes it there: q8_0 rows are used as they are, q4_0 and q5_0 rows exactly (their
   n - 8 and n - 16 are int8 values with the block's own scale), any other type is requantized
   per block from its float values. A convolution's K blocks are 32 channels of one tap, so
   that an input pixel is quantized as it is stored, whichever tap reads it; its weight is
   therefore requantized in that order whatever its type (a q8_0 conv weight, whose blocks run
   over PyTorch's (channel, tap) order, gets a second rounding). The activations are quantized
   per micro-tile, from the row pointers the exact kernel reads, into the thread's scratch.
   Left to the exact path: products of at most Q8_MIN_M rows (time embeddings: they read each
   weight once, their cost is the weight's bytes, not the arithmetic) and depths (a
   convolution's input channels) that are not a multiple of Q8_BLOCK (SD's 4-channel conv_in,
   the VAE's post_quant_conv). */

/* A packed block of a panel: per column the int32 sums' start (-Q8_OFFSET·Σq, which undoes the
   activations' offset), the float scale, then Q8_BLOCK / 4 groups of 4 values per column. */
#define Q8_PANEL_BLOCK (GEMM_NR * (4 + 4 + Q8_BLOCK))
#define Q8_KC_MAX 1152           /* K per packed block: 128 channels of 9 taps, so that y is read
                                    and written back a quarter as often (int8 products make it count) */
#define Q8_PACK_VALUES (256 * Q8_KC_MAX)   /* values per packed block (360 KiB with their scales) */
#define Q8_NC 1024               /* columns per packed block at most (shallow K) */
#define Q8_BAND_BYTES (512u << 10)   /* a task's quantized source rows (pixels), scales included */
#if Q8_MR == 12
#define Q8_ROWS TILE_ROWS_12
#elif Q8_MR == 8
#define Q8_ROWS TILE_ROWS_8
#else
#define Q8_ROWS TILE_ROWS_4
#endif
/* Row i's 4 bytes at a_i + o broadcast and multiplied with the two vectors of a panel's group
   (b0, b1) into row i's int32 sums s_i0, s_i1: the step of the int8 micro-kernels. */
#define Q8_DOT(i) t = vb_bcast4(a##i + o); s##i##0 = vi_dot4(s##i##0, t, b0); s##i##1 = vi_dot4(s##i##1, t, b1);

/* Packs columns n0..n0+nc of the weight's K chunk (as pack_weights: len channels x taps from
   source value src0) into GEMM_NR-column panels of Q8_PANEL_BLOCK blocks. Each panel is packed
   as floats first (pack_weights: conversion, tap-major order, transposition), then quantized
   down its columns, VF_WIDTH columns at a time; q8_0, q4_0 and q5_0 rows of a matmul go in as
   they are, their integers (q4_0's n - 8, q5_0's n - 16) and their blocks' scales.
   Columns past nc come out as zeros with scale 0. fp: GEMM_PIECE x GEMM_NR floats, so a deeper
   chunk goes through it a few channels (all their taps) at a time; rowbuf as pack_weights wants it. */
static void pack_q8(unsigned char *bp, const sd_tensor *w, int64_t row_len, int n0, int nc, int64_t src0,
                    int len, int taps, float *fp, float *rowbuf)
{
    int kb = len * taps, nb = kb / Q8_BLOCK, panels = (nc + GEMM_NR - 1) / GEMM_NR;
    sd_dtype t = w->dtype;
    int own = taps == 1 && (t == SD_Q8_0 || t == SD_Q4_0 || t == SD_Q5_0);
    int32_t start[VF_WIDTH];
    int step = GEMM_PIECE / taps / Q8_BLOCK * Q8_BLOCK;   /* channels per pass through fp */
    SD_ASSERT(kb <= Q8_KC_MAX && len % Q8_BLOCK == 0 && step > 0);
    for (int p = 0; p < panels; p++) {
        int cols = nc - p * GEMM_NR < GEMM_NR ? nc - p * GEMM_NR : GEMM_NR;
        if (own) {   /* their integers and scales as they are: VF_WIDTH columns' next 4·VF_WIDTH values at a
                        time, transposed in groups of 4 (vi_transpose) */
            const unsigned char *zero = (const unsigned char *)zero_row;
            size_t bsz = dtype_info[t].size;
            int half = 2 * VF_WIDTH;   /* half a vector's values lie in one block */
            signed char *ints = (signed char *)rowbuf;   /* q4_0 and q5_0 rows' integers, kb apart */
            SD_ASSERT(kb <= GEMM_PIECE * (int)sizeof(float));   /* VF_WIDTH of them fit rowbuf */
            for (int v = 0; v < GEMM_NR; v += VF_WIDTH) {
                const unsigned char *row[VF_WIDTH], *next[VF_WIDTH];   /* this group's rows, the next group's */
                int col = p * GEMM_NR + v;
                for (int i = 0; i < VF_WIDTH; i++) {
                    row[i] = col + i < nc ? weight_at(w, (n0 + col + i) * row_len + src0) : NULL;
                    next[i] = col + VF_WIDTH + i < nc ? weight_at(w, (n0 + col + VF_WIDTH + i) * row_len + src0) : NULL;
                }
                for (int i = 0; t != SD_Q8_0 && i < VF_WIDTH; i++)   /* decoded first: a vector loads no fresh stores */
                    for (int k = 0; row[i] && k < nb; k++) block_ints(t, row[i] + (size_t)k * bsz, ints + (size_t)i * kb + k * Q8_BLOCK);
                vint sum = vi_zero();
                for (int e0 = 0; e0 < kb; e0 += 2 * half) {
                    vint r[VF_WIDTH];
                    for (int i = 0; i < VF_WIDTH; i++) {
                        const unsigned char *h[2] = {zero, zero};   /* the vector's halves: values e0.., e0 + half.. */
                        if (next[i]) {   /* the next group's row from memory, as this one goes */
                            const unsigned char *f = next[i] + (size_t)(e0 / Q8_BLOCK) * bsz;
                            prefetch_l2(f);
                            prefetch_l2(f + 63);
                        }
                        for (int s = 0, e = e0; s < 2 && e < kb && row[i]; s++, e += half)   /* q8_0's after its block's 2-byte scale */
                            h[s] = t == SD_Q8_0 ? row[i] + (size_t)(e / Q8_BLOCK) * bsz + 2 + e % Q8_BLOCK : (const unsigned char *)ints + (size_t)i * kb + e;
                        r[i] = vi_load2(h[0], h[1]);
                    }
                    vi_transpose(r);   /* r[g] lane i: values e0 + 4g.. of column col + i */
                    for (int g = 0; g < VF_WIDTH && e0 + 4 * g < kb; g++) {
                        int k = (e0 + 4 * g) / Q8_BLOCK, kg = (e0 + 4 * g) % Q8_BLOCK / 4;
                        unsigned char *pb = bp + ((size_t)p * nb + k) * Q8_PANEL_BLOCK, *dst = pb + 8 * GEMM_NR + (size_t)kg * 4 * GEMM_NR + 4 * v;
                        vi_store(dst, r[g]);
                        if (Q8_OFFSET) sum = vi_dot4(sum, vb_bcast4((const unsigned char *)"\1\1\1\1"), vb_load(dst));
                        if (kg == Q8_BLOCK / 4 - 1) {   /* block k done: its columns' starts and scales */
                            int32_t st[VF_WIDTH];
                            float d[VF_WIDTH];
                            vi_store(st, sum);
                            sum = vi_zero();
                            for (int i = 0; i < VF_WIDTH; i++) {
                                st[i] *= -Q8_OFFSET;
                                d[i] = row[i] ? f16_fast(row[i] + (size_t)k * bsz) : 0.0f;
                            }
                            memcpy(pb + 4 * v, st, sizeof st);
                            memcpy(pb + 4 * GEMM_NR + 4 * v, d, sizeof d);
                        }
                    }
                }
            }
            continue;
        }
        for (int c0 = 0; c0 < len; c0 += step) {
            int sl = len - c0 < step ? len - c0 : step, sb = sl / Q8_BLOCK;
            pack_weights(fp, w, row_len, n0 + p * GEMM_NR, cols, src0 + (int64_t)c0 * taps, sl, taps, rowbuf);
            for (int k = 0; k < sb * taps; k++) {   /* fp's block k: tap k / sb, channels c0 + 32·(k % sb) on */
                unsigned char *pb = bp + ((size_t)p * nb + (size_t)(k / sb) * (len / Q8_BLOCK) + c0 / Q8_BLOCK + k % sb) * Q8_PANEL_BLOCK;
                const float *rows = fp + (size_t)k * Q8_BLOCK * GEMM_NR;
                for (int v = 0; v < GEMM_NR; v += VF_WIDTH) {   /* the rule of q8_quantize, down the columns */
                    vfloat a = vf_set1(Q8_TINY), d, id;
                    vint sum = vi_zero();
                    for (int e = 0; e < Q8_BLOCK; e++) a = vf_max(a, vf_abs(vf_load(rows + (size_t)e * GEMM_NR + v)));
                    d = vf_div(a, vf_set1(127.0f));
                    id = vf_div(vf_set1(127.0f), a);
                    for (int g = 0; g < Q8_BLOCK / 4; g++) {
                        const float *r = rows + (size_t)4 * g * GEMM_NR + v;
                        vi_store(pb + 8 * GEMM_NR + (size_t)g * 4 * GEMM_NR + 4 * v,
                                 vq_pack4(vf_mul(vf_load(r), id), vf_mul(vf_load(r + GEMM_NR), id), vf_mul(vf_load(r + 2 * GEMM_NR), id),
                                          vf_mul(vf_load(r + 3 * GEMM_NR), id), &sum));
                    }
                    vi_store(start, sum);
                    for (int l = 0; l < VF_WIDTH; l++) start[l] *= -Q8_OFFSET;
                    memcpy(pb + 4 * v, start, sizeof start);
                    vf_store((float *)(void *)(pb + 4 * GEMM_NR + 4 * v), d);
                }
            }
        }
    }
}

/* The micro-kernel: a Q8_MR x GEMM_NR tile of c (row stride ldc) (+)= the block sums of nseg
   segments (taps) of nblk blocks. a[s·Q8_MR + i] points at row i's quantized values for
   segment s, as[s·Q8_MR + i] at their scales; bp at the panel's packed blocks in the same order.
   The 8 groups of a block are written out, so that the 2·Q8_MR int32 sums stay in registers
   (a loop over them made GCC copy and spill the sums). The float sums live in acc, where each
   block adds its int32 sum x (weight scale x activation scale). Rows < mr and columns < nr
   are stored. */
static void q8_tile(const unsigned char *const *a, const float *const *as, int nseg, int nblk, const unsigned char *bp,
                    float *c, int ldc, int mr, int nr, int load, const float *bias)
{
    float acc[Q8_MR][GEMM_NR];
#define Q8_DECL(i) vint s##i##0, s##i##1; const unsigned char *a##i;
#define Q8_PTR(i) a##i = a[seg * Q8_MR + i];
#define Q8_START(i) s##i##0 = z0; s##i##1 = z1;
#define Q8_GROUP(g) { vbytes b0 = vb_load(bp + 8 * GEMM_NR + g * 4 * GEMM_NR), t;                      \
                      vbytes b1 = vb_load(bp + 8 * GEMM_NR + g * 4 * GEMM_NR + 4 * VF_WIDTH);          \
                      Q8_ROWS(Q8_DOT) o += 4; }
#define Q8_SUM(i) x = vf_set1(as[seg * Q8_MR + i][blk]);                                                   \
    vf_store(acc[i], vf_fma(vi_to_vf(s##i##0), vf_mul(w0, x), vf_load(acc[i])));                        \
    vf_store(acc[i] + VF_WIDTH, vf_fma(vi_to_vf(s##i##1), vf_mul(w1, x), vf_load(acc[i] + VF_WIDTH)));
    Q8_ROWS(Q8_DECL)
    SD_ASSERT(Q8_BLOCK == 32);   /* 8 groups of 4 below */
    memset(acc, 0, sizeof acc);
    for (int seg = 0; seg < nseg; seg++) {
        Q8_ROWS(Q8_PTR)
        for (int blk = 0, o = 0; blk < nblk; blk++, bp += Q8_PANEL_BLOCK) {
            {
                vint z0 = vi_load(bp), z1 = vi_load(bp + 4 * VF_WIDTH);
                Q8_ROWS(Q8_START)
            }
            Q8_GROUP(0) Q8_GROUP(1) Q8_GROUP(2) Q8_GROUP(3) Q8_GROUP(4) Q8_GROUP(5) Q8_GROUP(6) Q8_GROUP(7)
            {   /* the scales, loaded only now: the int32 sums need every register above */
                vfloat w0 = vf_load((const float *)(const void *)(bp + 4 * GEMM_NR));
                vfloat w1 = vf_load((const float *)(const void *)(bp + 4 * GEMM_NR + 4 * VF_WIDTH)), x;
                Q8_ROWS(Q8_SUM)
            }
        }
    }
    for (int i = 0; i < mr; i++) tile_store_row(c + (size_t)i * ldc, vf_load(acc[i]), vf_load(acc[i] + VF_WIDTH), nr, load, bias);
#undef Q8_DECL
#undef Q8_PTR
#undef Q8_START
#undef Q8_GROUP
#undef Q8_SUM
}

/* The source rows (input pixels of a convolution, rows of a matmul's x) that output rows
   m0..m1-1 read: [*lo, *hi). Rows of the output are in the input's order, so the first and
   the last output row bound them. */
static void q8_span(const gemm_job *j, int m0, int m1, int *lo, int *hi)
{
    if (!j->conv) { *lo = m0; *hi = m1; return; }
    m0 += j->row0, m1 += j->row0;
    int hw = j->Ho * j->Wo, b0 = m0 / hw, b1 = (m1 - 1) / hw;
    int y0 = ((m0 % hw) / j->Wo + j->y0) * j->s - j->pad, y1 = (((m1 - 1) % hw) / j->Wo + j->y0) * j->s - j->pad + j->k - 1;
    int x1 = ((m1 - 1) % j->Wo) * j->s - j->pad + j->k - 1;   /* the last pixel the last output row reads */
    if (y1 > j->H - 1) x1 = j->W - 1;   /* clamped: the rows before it read row H - 1 whole */
    x1 = x1 > j->W - 1 ? j->W - 1 : x1;
    y0 = y0 < 0 ? 0 : y0 > j->H - 1 ? j->H - 1 : y0;
    y1 = y1 < 0 ? 0 : y1 > j->H - 1 ? j->H - 1 : y1;
    *lo = (b0 * j->H + y0 - j->x_y0) * j->W;
    *hi = (b1 * j->H + y1 - j->x_y0) * j->W + x1 + 1;   /* not past it: a band may end there (vae_phase_conv) */
    if (*hi < *lo) *hi = *lo;
}

/* Bytes of one quantized source row of a K chunk of len channels: values, then scales. */
static size_t q8_row_bytes(int len) { return (size_t)len + (size_t)len / Q8_BLOCK * sizeof(float); }

/* A fast-mode task's part of its thread's scratch. */
typedef struct q8_scratch {
    unsigned char *bp;          /* the packed weight block */
    float *bias, *fp, *rowbuf;  /* the block's bias; a panel in floats; pack_weights' rows */
    unsigned char *band;        /* quantized source rows: values, then their scales */
    unsigned char *zero;        /* the padding's row: Q8_KC_MAX zeros (+ Q8_OFFSET), scales 0 */
    const unsigned char **a;    /* the tile's rows, Q8_MR per tap, and their scales */
    const float **as;
    int *src;                   /* an output row's source rows, per tap */
} q8_scratch;

/* Carves the scratch; returns the bytes it takes (the same for every job). */
static size_t q8_scratch_carve(q8_scratch *s, void *base)
{
    unsigned char *p = (unsigned char *)base;
    size_t at = 0, taps = GEMM_PIECE / Q8_BLOCK;
#define Q8_CARVE(field, type, count) s->field = (type)(void *)(p + at); at += ((count) + SD_ALIGN - 1) / SD_ALIGN * SD_ALIGN;
    Q8_CARVE(bp, unsigned char *, (size_t)Q8_PACK_VALUES / GEMM_NR / Q8_BLOCK * Q8_PANEL_BLOCK)
    Q8_CARVE(bias, float *, Q8_NC * sizeof(float))
    Q8_CARVE(fp, float *, (size_t)GEMM_PIECE * GEMM_NR * sizeof(float))
    Q8_CARVE(rowbuf, float *, (size_t)VF_WIDTH * GEMM_PIECE * sizeof(float))
    Q8_CARVE(band, unsigned char *, Q8_BAND_BYTES)
    Q8_CARVE(zero, unsigned char *, q8_row_bytes(Q8_KC_MAX))
    Q8_CARVE(a, const unsigned char **, taps * Q8_MR * sizeof(unsigned char *))
    Q8_CARVE(as, const float **, taps * Q8_MR * sizeof(float *))
    Q8_CARVE(src, int *, taps * sizeof(int))
#undef Q8_CARVE
    return at;
}

static void gemm_q8_task(void *arg, int task, int thread)
{
    const gemm_job *j = (const gemm_job *)arg;
    int m_lo = (task / j->gn) * j->mb, n_lo = (task % j->gn) * j->nb;
    int m_hi = m_lo + j->mb < j->M ? m_lo + j->mb : j->M, n_hi = n_lo + j->nb < j->N ? n_lo + j->nb : j->N;
    size_t stride = j->conv ? (size_t)j->Cin : (size_t)j->ldx;
    q8_scratch s;
    q8_scratch_carve(&s, j->pool->scratch[thread]);
    memset(s.zero, Q8_OFFSET, Q8_KC_MAX);
    memset(s.zero + Q8_KC_MAX, 0, q8_row_bytes(Q8_KC_MAX) - Q8_KC_MAX);
    int cstep = gemm_block_cols(n_hi - n_lo, j->q8_nc);
    for (int jc = n_lo; jc < n_hi; jc += cstep) {
        int nc = n_hi - jc < cstep ? n_hi - jc : cstep;
        if (j->b) tensor_floats(s.bias, j->b, (size_t)jc, nc);
        for (int p = 0; p < j->nblocks; p++) {
            int c0 = p * j->blen, len = j->depth - c0 < j->blen ? j->depth - c0 : j->blen, nblk = len / Q8_BLOCK;
            int load = p > 0 || j->accumulate, cap = (int)(Q8_BAND_BYTES / q8_row_bytes(len));
            const float *bb = p == j->nblocks - 1 && j->b ? s.bias : NULL;
            unsigned char *bq = s.band;
            float *bd = (float *)(void *)(s.band + (size_t)cap * len);
            pack_q8(s.bp, j->w, j->row_len, jc, nc, (int64_t)c0 * j->taps, len, j->taps, s.fp, s.rowbuf);
            for (int m0 = m_lo, m1; m0 < m_hi; m0 = m1) {
                /* a band of tiles whose source rows fit the band, each row quantized once */
                int lo, hi, l2, h2;
                m1 = m0 + Q8_MR < m_hi ? m0 + Q8_MR : m_hi;
                q8_span(j, m0, m1, &lo, &hi);
                SD_ASSERT(hi - lo <= cap);   /* gemm_q8_applies saw to it */
                while (m1 < m_hi) {
                    int m2 = m1 + Q8_MR < m_hi ? m1 + Q8_MR : m_hi;
                    q8_span(j, m0, m2, &l2, &h2);
                    if (h2 - l2 > cap) break;
                    m1 = m2, lo = l2, hi = h2;
                }
                for (int r = lo; r < hi; r++)
                    for (int k = 0; k < nblk; k++) {
                        const float *src = j->x + (size_t)r * stride + c0 + k * Q8_BLOCK;
                        if (r + 2 < hi) {   /* the block two rows on, from memory (a matmul's rows are far apart:
                                               M=8192 N=320 K=1280 ran 3-4% faster) */
                            prefetch_l2(src + 2 * stride);
                            prefetch_l2(src + 2 * stride + Q8_BLOCK - 1);
                        }
                        bd[(size_t)(r - lo) * nblk + k] = q8_quantize(src, bq + (size_t)(r - lo) * len + k * Q8_BLOCK, Q8_OFFSET);
                    }
                for (int m = m0; m < m1; m += Q8_MR) {
                    int mr = m1 - m < Q8_MR ? m1 - m : Q8_MR;
                    for (int i = 0; i < Q8_MR; i++) {   /* rows past mr repeat row m */
                        gemm_sources(j, m + (i < mr ? i : 0), s.src);
                        for (int t = 0; t < j->taps; t++) {
                            int r = s.src[t];
                            s.a[t * Q8_MR + i] = r < 0 ? s.zero : bq + (size_t)(r - lo) * len;
                            s.as[t * Q8_MR + i] = r < 0 ? (const float *)(const void *)(s.zero + Q8_KC_MAX) : bd + (size_t)(r - lo) * nblk;
                        }
                    }
                    for (int pn = 0; pn * GEMM_NR < nc; pn++) {
                        int nr = nc - pn * GEMM_NR < GEMM_NR ? nc - pn * GEMM_NR : GEMM_NR;
                        q8_tile(s.a, s.as, j->taps, nblk, s.bp + (size_t)pn * nblk * j->taps * Q8_PANEL_BLOCK,
                                j->y + (size_t)m * j->ldy + jc + pn * GEMM_NR, j->ldy, mr, nr, load, bb ? bb + pn * GEMM_NR : NULL);
                    }
                    for (int i = 0; i < mr && p == j->nblocks - 1 && j->relu; i++)   /* y = max(y, 0) once complete (TAESD) */
                        for (float *v = j->y + (size_t)(m + i) * j->ldy + jc, *e = v + nc; v < e; v++) *v = *v < 0.0f ? 0.0f : *v;
                }
            }
        }
    }
}

#define Q8_MIN_M 8   /* fewer rows take the exact dot products (time embeddings) */

/* Whether the input rows one tile of a convolution reads fit the band, quantized in K chunks of
   len channels. */
static int q8_band_fits(const gemm_job *j, int len)
{
    if (!j->conv) return 1;
    int rows = (Q8_MR / j->Wo + 2) * j->s + j->k;
    return (double)rows * j->W * (double)q8_row_bytes(len < j->depth ? len : j->depth) <= Q8_BAND_BYTES;
}

/* Whether a job runs in the fast mode (see above). */
static int gemm_q8_applies(const gemm_job *j)
{
    if (j->pool->quant != SD_QUANT_FAST || j->M <= Q8_MIN_M || j->depth % Q8_BLOCK || j->taps * Q8_BLOCK > GEMM_PIECE) return 0;
    /* very wide images (over ~3500 pixels, the VAE's last levels) run exact */
    return q8_band_fits(j, GEMM_PIECE / j->taps / Q8_BLOCK * Q8_BLOCK);
}

/* K in chunks of whole blocks (at most Q8_KC_MAX values: 128 channels of 9 taps, fewer where a
   tile's input rows would not fit the band), as even as whole blocks allow; the task grid as
   the exact mode's. */
static void gemm_q8_run(gemm_job *j)
{
    int units = j->depth / Q8_BLOCK, per = Q8_KC_MAX / j->taps / Q8_BLOCK, chunks;
    while (per > GEMM_PIECE / j->taps / Q8_BLOCK && !q8_band_fits(j, per * Q8_BLOCK)) per--;
    chunks = (units + per - 1) / per;
    j->blen = (units + chunks - 1) / chunks * Q8_BLOCK;
    j->nblocks = (j->depth + j->blen - 1) / j->blen;
    j->q8_nc = Q8_PACK_VALUES / (j->blen * j->taps) / GEMM_NR * GEMM_NR;
    j->q8_nc = j->q8_nc < Q8_NC ? j->q8_nc : Q8_NC;
    q8_scratch s;
    SD_ASSERT(q8_scratch_carve(&s, j->pool->scratch[0]) <= j->pool->scratch_floats * sizeof(float));
    /* int8 products are ~3x cheaper than float ones, packing a weight value (and quantizing an
       activation) costs more: in units of int8 multiply-adds, ~150 per packed value, ~50 per
       activation quantized again by another task */
    gemm_plan_costs(j, j->pool->threads, Q8_MR, 150.0, 50.0);
    pool_run(j->pool, gemm_q8_task, j, j->gm * j->gn);
}

/* The packed kernel (gemm_task), whatever the number of rows. */
static void gemm_packed_go(gemm_job *j)
{
    int maxlen = GEMM_KC / j->taps;   /* the same blocks for every N: column slabs (gemm_staged) sum as the whole */
    SD_ASSERT(maxlen >= 1);
    j->nblocks = (j->depth + maxlen - 1) / maxlen;
    j->blen = (j->depth + j->nblocks - 1) / j->nblocks;
    SD_ASSERT(GEMM_SCRATCH_FLOATS(j->taps) <= j->pool->scratch_floats);
    gemm_plan(j, j->pool->threads);
    pool_run(j->pool, gemm_task, j, j->gm * j->gn);
}

static void gemm_go(gemm_job *j)
{
    if (gemm_q8_applies(j)) { gemm_q8_run(j); return; }
    if (j->M <= DOT_MAX_M) {
        int threads = j->pool->threads, panels = (j->N + 3) / 4, gn = threads < panels ? threads : panels;
        j->gn = gn;
        j->nb = (panels + gn - 1) / gn * 4;
        SD_ASSERT((size_t)(j->M + 4) * DOT_KC <= j->pool->scratch_floats);
        pool_run(j->pool, gemm_dot_task, j, gn);
        return;
    }
    gemm_packed_go(j);
}

/* A GEMM whose weight is not in memory (sd_source.read): slabs of its output columns, each read
   once into the pool's stage (the bias's part after it) and multiplied with all of x by `go`
   (gemm_go, or a caller's fixed plan), so every weight byte is read once per call. A slab's
   rows are row_len apart; of the last, only what the GEMM reads (a view may start inside a row). */
static void gemm_staged(gemm_job *j, void (*go)(gemm_job *))
{
    if (!j->w->reader || j->pool->measure) { go(j); return; }
    const sd_tensor *w = j->w, *b = j->b;
    size_t row = dtype_bytes(w->dtype, (uint64_t)j->row_len), used = dtype_bytes(w->dtype, (uint64_t)j->depth * j->taps);
    size_t tail = b && b->reader ? dtype_bytes(b->dtype, (uint64_t)j->N) : 0;
    SD_ASSERT(j->pool->stage && j->pool->stage_bytes >= row + tail);   /* sd_pool_stage_bytes: the longest row */
    int per = (int)((j->pool->stage_bytes - tail) / row);
    if (per >= 64) per -= per % 32;   /* whole panels of the kernels */
    for (int n0 = 0; n0 < j->N; n0 += per) {
        int nn = j->N - n0 < per ? j->N - n0 : per;
        sd_tensor ws = tensor_from(w, (uint64_t)n0 * (uint64_t)j->row_len), bs;
        gemm_job slab = *j;
        tensor_read(&ws, 0, (size_t)(nn - 1) * row + used, j->pool->stage);
        ws.data = j->pool->stage, ws.reader = NULL;
        slab.w = &ws, slab.N = nn, slab.y = j->y + n0;
        if (b) {
            bs = tensor_from(b, (uint64_t)n0);
            if (tail) {
                tensor_read(&bs, 0, dtype_bytes(b->dtype, (uint64_t)nn), j->pool->stage + j->pool->stage_bytes - tail);
                bs.data = j->pool->stage + j->pool->stage_bytes - tail, bs.reader = NULL;
            }
            slab.b = &bs;
        }
        go(&slab);
    }
}

static void gemm_run(gemm_job *j) { gemm_staged(j, gemm_go); }

/* Row i of weight matrix w ([N, K], any float dtype) as float32 into out[0..K). */
static void weight_row(const sd_tensor *w, int64_t i, int64_t K, float *out)
{
    tensor_floats(out, w, (size_t)(i * K), (int)K);
}

/* Adds the LoRA updates of weight w that the pool's set holds, after the base GEMM (below). */
typedef struct conv_geometry { int H, W, Cin, k, s, pad, Ho, Wo; } conv_geometry;
static void lora_update(sd_pool *pool, float *y, int ldy, const float *x, int ldx, int M, int N, int K, const sd_tensor *w,
                        const conv_geometry *conv);

/* y[m, n] (+)= sum_k x[m, k] · w[n, k] + b[n], the GEMM itself. x has row stride ldx, y row
   stride ldy; b may be NULL. */
static void gemm_matmul(sd_pool *pool, float *y, int ldy, const float *x, int ldx, int M, int N, int K,
                        const sd_tensor *w, const sd_tensor *b, int accumulate)
{
    if (M <= 0 || N <= 0 || pool->measure) return;
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.pool = pool; j.y = y; j.ldy = ldy; j.x = x; j.ldx = ldx; j.M = M; j.N = N;
    j.w = w; j.b = b; j.accumulate = accumulate;
    j.row_len = K; j.depth = K; j.taps = 1;
    if (K <= 0) {   /* an empty sum: y = (y) + b */
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++)
                y[(size_t)m * ldy + n] = (accumulate ? y[(size_t)m * ldy + n] : 0.0f) + (b ? tensor_get(b, (size_t)n) : 0.0f);
        return;
    }
    gemm_run(&j);
}

/* A linear layer, and every convolution's core: gemm_matmul, plus the low-rank updates of w
   when LoRAs are on the pool. */
static void matmul(sd_pool *pool, float *y, int ldy, const float *x, int ldx, int M, int N, int K,
                   const sd_tensor *w, const sd_tensor *b, int accumulate)
{
    gemm_matmul(pool, y, ldy, x, ldx, M, N, K, w, b, accumulate);
    if (pool->lora && !pool->measure) lora_update(pool, y, ldy, x, ldx, M, N, K, w, NULL);
}

/* y[M, N] = x[M, K] · wᵀ + b for a linear layer with weight [N, K] (or a [N, K, 1, 1] conv). */
static void linear(sd_pool *pool, float *y, const float *x, int M, int N, int K,
                   const sd_tensor *w, const sd_tensor *b)
{
    matmul(pool, y, N, x, K, M, N, K, w, b, 0);
}

/* Output pixels row0 .. row0 + rows - 1 (of B·Ho·Wo, in order) of a k x k convolution of x
   [B, H, W, Cin] with w [Cout, Cin, k, k] into y [rows, Cout]: the implicit GEMM of conv2d. */
static void conv_gemm(sd_pool *pool, float *y, const float *x, int H, int W, int Cin, const sd_tensor *w, const sd_tensor *b,
                      int Cout, int k, int s, int pad, int Ho, int Wo, int row0, int rows)
{
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.pool = pool; j.y = y; j.ldy = Cout; j.x = x; j.M = rows; j.N = Cout;
    j.w = w; j.b = b;
    j.conv = 1; j.H = H; j.W = W; j.Cin = Cin; j.Ho = Ho; j.Wo = Wo; j.k = k; j.s = s; j.pad = pad; j.row0 = row0;
    j.row_len = (int64_t)Cin * k * k; j.depth = Cin; j.taps = k * k;
    gemm_run(&j);
}

/* 2-D convolution, NHWC: x [B, H, W, Cin] → y [B, Ho, Wo, Cout] with w [Cout, Cin, k, k],
   stride s, zero padding `pad` before and `pad_end` after each spatial axis (the VAE encoder's
   downsampler pads (0, 1)). Ho = (H + pad + pad_end - k) / s + 1. An implicit GEMM: output
   pixels are rows, K runs over the k·k taps and Cin channels, and the kernel reads each tap's
   input pixel in place (bounded scratch: one packed weight block per thread). */
static void conv2d(sd_pool *pool, float *y, const float *x, int B, int H, int W, int Cin,
                   const sd_tensor *w, const sd_tensor *b, int Cout, int k, int s, int pad, int pad_end)
{
    int Ho = (H + pad + pad_end - k) / s + 1, Wo = (W + pad + pad_end - k) / s + 1;
    if (B <= 0 || Ho <= 0 || Wo <= 0 || Cout <= 0 || H + pad + pad_end < k) return;
    if (k == 1 && s == 1 && pad == 0 && pad_end == 0) {
        matmul(pool, y, Cout, x, Cin, B * H * W, Cout, Cin, w, b, 0);
        return;
    }
    SD_ASSERT(k * k <= GEMM_KC);
    conv_gemm(pool, y, x, H, W, Cin, w, b, Cout, k, s, pad, Ho, Wo, 0, B * Ho * Wo);
    if (pool->lora && !pool->measure) {
        conv_geometry g = {H, W, Cin, k, s, pad, Ho, Wo};
        lora_update(pool, y, Cout, x, 0, B * Ho * Wo, Cout, Cin * k * k, w, &g);
    }
}

/* ---- LoRA: low-rank updates after the base GEMM ---- */
/* A LoRA (Hu et al. 2021, eq. 3) changes a layer's weight W [N, K] into W + s·up·down, with
   down [r, K] and up [N, r] of a small rank r. That sum is never formed here: W stays as it is
   (read-only, shared by threads and generations) and the product is added to the layer's
   output, y += up·(s·(down·x)): two small GEMMs on the same kernels, with r values per row in
   between. A convolution's down is a k x k convolution with the layer's own stride and padding,
   its up a 1x1 one (LoCon). The adapters of a generation are a table keyed by the address of
   the model's weight, which the pool points to, so model code calls matmul and conv2d as always;
   without a table the base path is untouched. The [rows, r] products go through a fixed scratch
   of the pool, a chunk of rows at a time. */

#define LORA_SCRATCH_FLOATS (SD_LORA_SCRATCH_BYTES / sizeof(float))
#define LORA_MAX_RANK 4096   /* so that a chunk has at least 64 rows */

typedef struct lora_adapter {
    const sd_tensor *base;             /* the model's weight it updates: the key */
    const sd_tensor *down, *up;        /* the LoRA file's tensors, used in place */
    int rank;
    float scale;                       /* strength · alpha / rank */
    struct lora_adapter *next;         /* the next adapter of the same weight (another LoRA), or NULL */
} lora_adapter;

struct sd_lora_set {
    lora_adapter *adapters;    /* [count], in the order files and modules were matched */
    int count;
    int32_t *slot;             /* open addressing over base weights: index of its first adapter, -1 empty */
    uint32_t mask;
    char warnings[1024];       /* what was skipped and why (sd_lora_warnings) */
};

static uint32_t lora_hash(const sd_tensor *w) { return (uint32_t)((uintptr_t)w >> 4) * 2654435761u; }

static const lora_adapter *lora_find(const sd_lora_set *set, const sd_tensor *w)
{
    for (uint32_t h = lora_hash(w) & set->mask; set->slot[h] >= 0; h = (h + 1) & set->mask)
        if (set->adapters[set->slot[h]].base == w) return &set->adapters[set->slot[h]];
    return NULL;
}

/* y [M, N] (row stride ldy) += up·(scale·(down·x)) for every adapter of w: x [M, K] (row
   stride ldx) for a linear layer, or the NHWC input of convolution `conv` whose M output pixels
   y holds. */
static void lora_update(sd_pool *pool, float *y, int ldy, const float *x, int ldx, int M, int N, int K, const sd_tensor *w,
                        const conv_geometry *conv)
{
    float *t = pool->lora_scratch;
    for (const lora_adapter *ad = lora_find(pool->lora, w); ad; ad = ad->next) {
        int r = ad->rank, rows = (int)(LORA_SCRATCH_FLOATS / (size_t)r);
        for (int m0 = 0; m0 < M; m0 += rows) {
            int mc = M - m0 < rows ? M - m0 : rows;
            if (conv) conv_gemm(pool, t, x, conv->H, conv->W, conv->Cin, ad->down, NULL, r, conv->k, conv->s, conv->pad, conv->Ho, conv->Wo, m0, mc);
            else gemm_matmul(pool, t, r, x + (size_t)m0 * ldx, ldx, mc, r, K, ad->down, NULL, 0);
            for (size_t i = 0; i < (size_t)mc * r; i++) t[i] *= ad->scale;
            gemm_matmul(pool, y + (size_t)m0 * ldy, ldy, t, r, mc, N, r, ad->up, NULL, 1);
        }
    }
}

/* Output rows y0 .. y0 + rows - 1 (Wo wide, row i of y at y + i·Wo·ldy) of a k x k convolution of
   one NHWC image of H x W x Cin that is not all in memory: x holds its rows from x_y0 on (those
   the taps read must be there), rows and columns outside the image are zero padding. The taps
   of output pixel (oy, ox) start at row oy·s − pad, column ox·s − pad. How an image too large
   to hold is convolved a band of rows at a time, each band read where it lies. mode: CONV_ADD
   adds the result to what y holds (a residual, in place), CONV_RELU applies ReLU last. */
enum { CONV_ADD = 1, CONV_RELU = 2 };
static void conv2d_rows(sd_pool *pool, float *y, int ldy, const float *x, int x_y0, int H, int W, int Cin,
                        const sd_tensor *w, const sd_tensor *b, int Cout, int k, int s, int pad, int y0, int rows, int Wo, int mode)
{
    gemm_job j;
    if (rows <= 0 || Wo <= 0 || Cout <= 0) return;
    SD_ASSERT(k * k <= GEMM_KC);
    memset(&j, 0, sizeof j);
    j.pool = pool; j.y = y; j.ldy = ldy; j.x = x; j.M = rows * Wo; j.N = Cout;
    j.w = w; j.b = b;
    j.conv = 1; j.H = H; j.W = W; j.Cin = Cin; j.Ho = rows; j.Wo = Wo; j.k = k; j.s = s; j.pad = pad;
    j.y0 = y0; j.x_y0 = x_y0;
    j.accumulate = (mode & CONV_ADD) != 0;
    j.relu = (mode & CONV_RELU) != 0;
    j.row_len = (int64_t)Cin * k * k; j.depth = Cin; j.taps = k * k;
    gemm_run(&j);
}

/* ---- activations ---- */

#define ELEMENTWISE(name, expr)                                                        \
    static void name(float *x, size_t n)                                                \
    {                                                                                   \
        size_t i = 0;                                                                   \
        for (; i + VF_WIDTH <= n; i += VF_WIDTH) { vfloat v = vf_load(x + i); vf_store(x + i, expr); } \
        if (i < n) { vfloat v = vf_load_n(x + i, (int)(n - i)); vf_store_n(x + i, expr, (int)(n - i)); } \
    }
ELEMENTWISE(silu_span, vf_silu(v))
ELEMENTWISE(gelu_span, vf_gelu(v))
ELEMENTWISE(relu_span, vf_max(v, vf_zero()))   /* (TAESD's convs apply theirs as they store) */
/* CLIP's activation: x · sigmoid(1.702 x). */
ELEMENTWISE(quick_gelu_span, vf_div(v, vf_add(vf_set1(1.0f), vf_exp(vf_mul(vf_set1(-1.702f), v)))))
#undef ELEMENTWISE

static void add_span(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + VF_WIDTH <= n; i += VF_WIDTH) vf_store(y + i, vf_add(vf_load(y + i), vf_load(x + i)));
    if (i < n) vf_store_n(y + i, vf_add(vf_load_n(y + i, (int)(n - i)), vf_load_n(x + i, (int)(n - i))), (int)(n - i));
}


/* ---- norms ---- */

/* GroupNorm over NHWC: for each batch item, channels split into `groups` contiguous groups,
   each normalised over (H·W, C/groups) with biased variance; then per-channel affine and
   optionally SiLU (the UNet and VAE always follow GroupNorm with SiLU except before attention).
   y may equal x. Three steps, all reading whole pixel rows: tasks over fixed chunks of pixels
   sum each channel (shifted by its group's first value, for a stable one-pass variance) into
   per-chunk partials; the caller adds the partials up per group in double, in chunk order; tasks
   over the same chunks then normalise. The chunking depends only on the shape, so the result
   does not depend on the thread count. The partials live in thread 0's scratch. */
typedef struct groupnorm_job {
    float *y;
    const float *x;
    int HW, C, chunk, nchunks, with_silu;
    float *shift, *part, *scale, *offset;   /* [B][C] (shifts, then means), [B][nchunks][2][C], [B][C], [B][C] */
} groupnorm_job;

static void groupnorm_sums(void *arg, int task, int thread)
{
    const groupnorm_job *j = (const groupnorm_job *)arg;
    int b = task / j->nchunks, p0 = (task % j->nchunks) * j->chunk, p1 = p0 + j->chunk < j->HW ? p0 + j->chunk : j->HW, C = j->C;
    float *s = j->part + (size_t)task * 2 * C, *q = s + C;
    const float *shift = j->shift + (size_t)b * C;
    (void)thread;
    memset(s, 0, 2 * (size_t)C * sizeof(float));
    for (int p = p0; p < p1; p++) {
        const float *row = j->x + ((size_t)b * j->HW + p) * C;
        int c = 0;
        for (; c + VF_WIDTH <= C; c += VF_WIDTH) {
            vfloat d = vf_sub(vf_load(row + c), vf_load(shift + c));
            vf_store(s + c, vf_add(vf_load(s + c), d));
            vf_store(q + c, vf_fma(d, d, vf_load(q + c)));
        }
        for (; c < C; c++) { float d = row[c] - shift[c]; s[c] += d; q[c] += d * d; }
    }
}

static void groupnorm_apply(void *arg, int task, int thread)
{
    const groupnorm_job *j = (const groupnorm_job *)arg;
    int b = task / j->nchunks, p0 = (task % j->nchunks) * j->chunk, p1 = p0 + j->chunk < j->HW ? p0 + j->chunk : j->HW, C = j->C;
    const float *mean = j->shift + (size_t)b * C, *scale = j->scale + (size_t)b * C, *offset = j->offset + (size_t)b * C;
    (void)thread;
    for (int p = p0; p < p1; p++) {
        const float *row = j->x + ((size_t)b * j->HW + p) * C;
        float *out = j->y + ((size_t)b * j->HW + p) * C;
        int c = 0;
        for (; c + VF_WIDTH <= C; c += VF_WIDTH) {
            vfloat v = vf_fma(vf_sub(vf_load(row + c), vf_load(mean + c)), vf_load(scale + c), vf_load(offset + c));
            vf_store(out + c, j->with_silu ? vf_silu(v) : v);
        }
        if (c < C) {
            vfloat v = vf_fma(vf_sub(vf_load_n(row + c, C - c), vf_load_n(mean + c, C - c)), vf_load_n(scale + c, C - c),
                              vf_load_n(offset + c, C - c));
            vf_store_n(out + c, j->with_silu ? vf_silu(v) : v, C - c);
        }
    }
}

static void groupnorm_items(sd_pool *pool, float *y, const float *x, int B, int HW, int C, int groups,
                            const sd_tensor *gamma, const sd_tensor *beta, float eps, int with_silu)
{
    groupnorm_job j;
    size_t bc = (size_t)B * C, room;
    if (B <= 0 || HW <= 0 || C <= 0 || pool->measure) return;
    SD_ASSERT(groups > 0 && C % groups == 0);
    SD_ASSERT(5 * bc <= pool->scratch_floats);
    room = (pool->scratch_floats - 3 * bc) / (2 * bc);   /* chunks of partials that fit */
    j.nchunks = (HW + 63) / 64 < (int)room ? (HW + 63) / 64 : (int)room;
    j.chunk = (HW + j.nchunks - 1) / j.nchunks;
    j.nchunks = (HW + j.chunk - 1) / j.chunk;
    j.y = y; j.x = x; j.HW = HW; j.C = C; j.with_silu = with_silu;
    j.shift = pool->scratch[0];
    j.scale = j.shift + bc;
    j.offset = j.scale + bc;
    j.part = j.offset + bc;
    int cg = C / groups;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) j.shift[(size_t)b * C + c] = x[(size_t)b * HW * C + (size_t)(c / cg) * cg];
    pool_run(pool, groupnorm_sums, &j, B * j.nchunks);
    for (int b = 0; b < B; b++) {
        tensor_floats(j.scale + (size_t)b * C, gamma, 0, C);
        tensor_floats(j.offset + (size_t)b * C, beta, 0, C);
        for (int g = 0; g < groups; g++) {
            double s = 0, q = 0, n = (double)HW * cg;
            for (int ch = 0; ch < j.nchunks; ch++) {
                const float *ps = j.part + ((size_t)b * j.nchunks + ch) * 2 * C;
                for (int c = g * cg; c < (g + 1) * cg; c++) { s += ps[c]; q += ps[C + c]; }
            }
            double mean = s / n, var = q / n - mean * mean;
            float rstd = (float)(1.0 / sqrt((var > 0 ? var : 0) + eps));
            float m = (float)(mean + j.shift[(size_t)b * C + (size_t)g * cg]);
            for (int c = g * cg; c < (g + 1) * cg; c++) {   /* the shifts are spent: keep the means there */
                j.scale[(size_t)b * C + c] *= rstd;
                j.shift[(size_t)b * C + c] = m;
            }
        }
    }
    pool_run(pool, groupnorm_apply, &j, B * j.nchunks);
}

/* One batch item at a time, so that the partials fit in the scratch whatever the batch. */
static void groupnorm(sd_pool *pool, float *y, const float *x, int B, int HW, int C, int groups,
                      const sd_tensor *gamma, const sd_tensor *beta, float eps, int with_silu)
{
    for (int b = 0; b < B; b++)
        groupnorm_items(pool, y + (size_t)b * HW * C, x + (size_t)b * HW * C, 1, HW, C, groups, gamma, beta, eps, with_silu);
}

/* LayerNorm over the last axis of x [M, C] (CLIP and the UNet's transformer blocks). y may equal x.
   Two passes over each row (mean, then squared deviations) keep the variance exact enough. */
static void layernorm_span(float *y, const float *x, int M, int C, const sd_tensor *gamma,
                      const sd_tensor *beta, float eps)
{
    float g[256], bt[256];
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        vfloat s = vf_zero(), q = vf_zero();
        int c = 0;
        for (; c + VF_WIDTH <= C; c += VF_WIDTH) s = vf_add(s, vf_load(xr + c));
        if (c < C) s = vf_add(s, vf_load_n(xr + c, C - c));
        float meanf = vf_sum(s) / (float)C, qs;
        vfloat mean = vf_set1(meanf);
        for (c = 0; c + VF_WIDTH <= C; c += VF_WIDTH) { vfloat d = vf_sub(vf_load(xr + c), mean); q = vf_fma(d, d, q); }
        qs = vf_sum(q);
        for (; c < C; c++) qs += (xr[c] - meanf) * (xr[c] - meanf);
        vfloat rstd = vf_set1(1.0f / sqrtf(qs / (float)C + eps));
        for (int c0 = 0; c0 < C; c0 += 256) {
            int n = C - c0 < 256 ? C - c0 : 256, k = 0;
            tensor_floats(g, gamma, (size_t)c0, n);
            tensor_floats(bt, beta, (size_t)c0, n);
            for (; k + VF_WIDTH <= n; k += VF_WIDTH)
                vf_store(yr + c0 + k, vf_fma(vf_mul(vf_sub(vf_load(xr + c0 + k), mean), rstd), vf_load(g + k), vf_load(bt + k)));
            if (k < n)
                vf_store_n(yr + c0 + k, vf_fma(vf_mul(vf_sub(vf_load_n(xr + c0 + k, n - k), mean), rstd),
                                               vf_load_n(g + k, n - k), vf_load_n(bt + k, n - k)), n - k);
        }
    }
}

/* GEGLU (the UNet's feed-forward): x [M, 2C] holds the value half then the gate half of the
   projection; y [M, C] = value · gelu(gate). y may equal x (rows are read before written). */
static void geglu_span(float *y, const float *x, int M, int C)
{
    for (int m = 0; m < M; m++) {
        const float *xv = x + (size_t)m * 2 * C, *xg = xv + C;
        float *yr = y + (size_t)m * C;
        int c = 0;
        for (; c + VF_WIDTH <= C; c += VF_WIDTH) vf_store(yr + c, vf_mul(vf_load(xv + c), vf_gelu(vf_load(xg + c))));
        if (c < C) vf_store_n(yr + c, vf_mul(vf_load_n(xv + c, C - c), vf_gelu(vf_load_n(xg + c, C - c))), C - c);
    }
}

/* Nearest-neighbour 2x upsampling, NHWC: x [B, H, W, C] → y [B, 2H, 2W, C]. */
static void upsample2x_span(float *y, const float *x, int B, int H, int W, int C)
{
    size_t row = (size_t)2 * W * C;
    for (int b = 0; b < B; b++)
        for (int iy = 0; iy < H; iy++) {
            float *o = y + ((size_t)b * 2 * H + 2 * iy) * row;
            const float *in = x + ((size_t)b * H + iy) * W * C;
            for (int ix = 0; ix < W; ix++) {
                memcpy(o + (size_t)2 * ix * C, in + (size_t)ix * C, (size_t)C * sizeof(float));
                memcpy(o + (size_t)(2 * ix + 1) * C, in + (size_t)ix * C, (size_t)C * sizeof(float));
            }
            memcpy(o + row, o, row * sizeof(float));
        }
}

/* The row-wise and elementwise kernels as the model code calls them: the *_span bodies above on
   fixed chunks spread over the pool, so the results do not depend on the thread count. geglu
   needs y != x to split (in place, a chunk's output would overwrite rows another chunk still has
   to read); given y == x it runs on one thread. */
enum { ROWS_SILU, ROWS_GELU, ROWS_QUICK_GELU, ROWS_ADD, ROWS_RELU, ROWS_LAYERNORM, ROWS_GEGLU, ROWS_UPSAMPLE };
typedef struct rows_job {
    int op;
    float *y;
    const float *x;
    size_t n, chunk;          /* elements, or rows (layernorm, geglu) or input rows (upsample) */
    int C, W;
    const sd_tensor *gamma, *beta;
    float eps;
} rows_job;

static void rows_task(void *arg, int task, int thread)
{
    const rows_job *j = (const rows_job *)arg;
    size_t lo = (size_t)task * j->chunk, hi = lo + j->chunk < j->n ? lo + j->chunk : j->n, C = (size_t)j->C;
    (void)thread;
    switch (j->op) {
    case ROWS_SILU: silu_span(j->y + lo, hi - lo); break;
    case ROWS_GELU: gelu_span(j->y + lo, hi - lo); break;
    case ROWS_QUICK_GELU: quick_gelu_span(j->y + lo, hi - lo); break;
    case ROWS_ADD: add_span(j->y + lo, j->x + lo, hi - lo); break;
    case ROWS_RELU: relu_span(j->y + lo, hi - lo); break;
    case ROWS_LAYERNORM: layernorm_span(j->y + lo * C, j->x + lo * C, (int)(hi - lo), j->C, j->gamma, j->beta, j->eps); break;
    case ROWS_GEGLU: geglu_span(j->y + lo * C, j->x + lo * 2 * C, (int)(hi - lo), j->C); break;
    default:   /* upsample: input rows (b, iy) are independent */
        for (size_t r = lo; r < hi; r++) upsample2x_span(j->y + r * 4 * j->W * C, j->x + r * j->W * C, 1, 1, j->W, j->C);
        break;
    }
}

static void rows_run(sd_pool *pool, rows_job *j, size_t work_per_item)
{
    size_t items = j->n, per = (size_t)1 << 16;    /* ~64K floats of work per task */
    j->chunk = work_per_item >= per ? 1 : per / work_per_item;
    if (items == 0) return;
    pool_run(pool, rows_task, j, (int)((items + j->chunk - 1) / j->chunk));
}

static void silu(sd_pool *pool, float *x, size_t n) { rows_job j = {ROWS_SILU, x, NULL, n, 0, 0, 0, NULL, NULL, 0}; rows_run(pool, &j, 1); }
static void gelu(sd_pool *pool, float *x, size_t n) { rows_job j = {ROWS_GELU, x, NULL, n, 0, 0, 0, NULL, NULL, 0}; rows_run(pool, &j, 1); }
static void quick_gelu(sd_pool *pool, float *x, size_t n) { rows_job j = {ROWS_QUICK_GELU, x, NULL, n, 0, 0, 0, NULL, NULL, 0}; rows_run(pool, &j, 1); }
static void add(sd_pool *pool, float *y, const float *x, size_t n) { rows_job j = {ROWS_ADD, y, x, n, 0, 0, 0, NULL, NULL, 0}; rows_run(pool, &j, 1); }
static void relu(sd_pool *pool, float *x, size_t n) { rows_job j = {ROWS_RELU, x, NULL, n, 0, 0, 0, NULL, NULL, 0}; rows_run(pool, &j, 1); }
static void layernorm(sd_pool *pool, float *y, const float *x, int M, int C, const sd_tensor *gamma,
                         const sd_tensor *beta, float eps)
{
    rows_job j = {ROWS_LAYERNORM, y, x, (size_t)(M > 0 ? M : 0), 0, C, 0, gamma, beta, eps};
    rows_run(pool, &j, (size_t)C);
}
static void geglu(sd_pool *pool, float *y, const float *x, int M, int C)
{
    rows_job j = {ROWS_GEGLU, y, x, (size_t)(M > 0 ? M : 0), 0, C, 0, NULL, NULL, 0};
    if (y == x) { if (!pool->measure) geglu_span(y, x, M, C); return; }
    rows_run(pool, &j, 2 * (size_t)C);
}
static void upsample2x(sd_pool *pool, float *y, const float *x, int B, int H, int W, int C)
{
    rows_job j = {ROWS_UPSAMPLE, y, x, (size_t)(B > 0 && H > 0 ? B * H : 0), 0, C, W, NULL, NULL, 0};
    rows_run(pool, &j, 4 * (size_t)W * C);
}

/* y[b, i, :] += e[b, :] for every position i of y [B, HW, C]: a per-item vector (the UNet's
   time embedding) added to every pixel. */
static void add_rows(sd_pool *pool, float *y, const float *e, int B, int HW, int C)
{
    if (pool->measure) return;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < HW; i++) add_span(y + ((size_t)b * HW + i) * C, e + (size_t)b * C, (size_t)C);
}

/* y [M, Ca + Cb] = each row of a [M, Ca] followed by the same row of b [M, Cb]: torch.cat on
   the channel axis, in NHWC. */
static void concat_channels(sd_pool *pool, float *y, const float *a, int Ca, const float *b, int Cb, size_t M)
{
    if (pool->measure) return;
    for (size_t i = 0; i < M; i++) {
        memcpy(y + i * (Ca + Cb), a + i * Ca, (size_t)Ca * sizeof(float));
        memcpy(y + i * (Ca + Cb) + Ca, b + i * Cb, (size_t)Cb * sizeof(float));
    }
}

/* Nearest-neighbour resize, NHWC, picking source pixels as PyTorch's interpolate(size=...) does
   (source = floor(dst · in/out) in float32). The up path needs it when a size was odd on the way
   down: 5 rows were halved to 3, and 3 must come back to 5, not 6. */
static int nearest_source(int o, int in, int out)
{
    int i = (int)floorf((float)o * ((float)in / (float)out));
    return i < in - 1 ? i : in - 1;
}

static void resize_nearest(sd_pool *pool, float *y, const float *x, int B, int H, int W, int C, int Ho, int Wo)
{
    if (pool->measure) return;
    for (int b = 0; b < B; b++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++)
                memcpy(y + (((size_t)b * Ho + oy) * Wo + ox) * C,
                       x + (((size_t)b * H + nearest_source(oy, H, Ho)) * W + nearest_source(ox, W, Wo)) * C,
                       (size_t)C * sizeof(float));
}

/* Layout changes at the API boundary: stage functions speak PyTorch's NCHW, the kernels NHWC. */
static void nchw_to_nhwc(sd_pool *pool, float *y, const float *x, int B, int C, int HW)
{
    if (pool->measure) return;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) y[((size_t)b * HW + i) * C + c] = x[((size_t)b * C + c) * HW + i];
}

static void nhwc_to_nchw(sd_pool *pool, float *y, const float *x, int B, int C, int HW)
{
    if (pool->measure) return;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) y[((size_t)b * C + c) * HW + i] = x[((size_t)b * HW + i) * C + c];
}

/* ---- attention ---- */

/* Multi-head scaled dot-product attention. For batch item b, head h and query i:
   out[b, i, h·d : h·d+d] = Σ_j softmax_j(q_i · k_j / √d) v_j over keys j < Nk (j ≤ i when causal).
   q, k, v, out are row-major with row strides ldq, ldk, ldv, ldo (so fused q/k/v projections
   can be read in place); rows of batch item b start at b·Nq (queries) and b·Nk (keys/values).

   Flash-style: one task per (b, h, block of ATT_QB queries). The block's queries are packed
   transposed (d x QB), so scores for GEMM_MR keys at a time come from the GEMM micro-kernel
   with queries along the vector lanes; keys go by in blocks of ATT_BK with a running max and
   sum per query (softmax in base 2, the 1/√d·log2(e) folded into the packed queries), and
   the output is accumulated transposed (d x QB). The Nq x Nk score matrix never exists. */
#define ATT_QB GEMM_NR
#define ATT_BK 128

/* The fast mode's scratch (attq_plan, below). */
typedef struct attq_layout { size_t qt, qp, li, ot, st, pp, row, kq, ks, vq, vs, bytes; int dp, dv, nk4, nkb; } attq_layout;

typedef struct attention_job {
    sd_pool *pool;
    float *out;
    const float *q, *k, *v;
    int ldo, ldq, ldk, ldv, Nq, Nk, heads, d, causal, qblocks;
    int qrun;        /* fast mode: query blocks per task */
    attq_layout L;
} attention_job;

/* ot[c][i] = ot[c][i]·alpha_i + Σ_j v[j][c] · p[j][i] for c < d, j < bk. */
static void attention_pv(float *ot, int d, const float *v, int ldv, const float *p, int bk, vfloat al0, vfloat al1)
{
    int c0 = 0;
#define PV_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define PV_DECL(r) vfloat o##r##0 = vf_mul(vf_load(o + r * ATT_QB), al0), o##r##1 = vf_mul(vf_load(o + r * ATT_QB + VF_WIDTH), al1);
#define PV_FMA(r) t = vf_set1(vr[r]); o##r##0 = vf_fma(t, p0, o##r##0); o##r##1 = vf_fma(t, p1, o##r##1);
#define PV_STORE(r) vf_store(o + r * ATT_QB, o##r##0); vf_store(o + r * ATT_QB + VF_WIDTH, o##r##1);
    for (; c0 + 8 <= d; c0 += 8) {
        float *o = ot + (size_t)c0 * ATT_QB;
        PV_ROWS(PV_DECL)
        for (int j = 0; j < bk; j++) {
            const float *vr = v + (size_t)j * ldv + c0;
            vfloat p0 = vf_load(p + (size_t)j * ATT_QB), p1 = vf_load(p + (size_t)j * ATT_QB + VF_WIDTH), t;
            PV_ROWS(PV_FMA)
        }
        PV_ROWS(PV_STORE)
    }
#undef PV_ROWS
#undef PV_DECL
#undef PV_FMA
#undef PV_STORE
    for (; c0 < d; c0++) {
        float *o = ot + (size_t)c0 * ATT_QB;
        vfloat o0 = vf_mul(vf_load(o), al0), o1 = vf_mul(vf_load(o + VF_WIDTH), al1);
        for (int j = 0; j < bk; j++) {
            vfloat t = vf_set1(v[(size_t)j * ldv + c0]);
            o0 = vf_fma(t, vf_load(p + (size_t)j * ATT_QB), o0);
            o1 = vf_fma(t, vf_load(p + (size_t)j * ATT_QB + VF_WIDTH), o1);
        }
        vf_store(o, o0);
        vf_store(o + VF_WIDTH, o1);
    }
}

/* Causal attention: the scores st of a block of bk keys from kb0 (ATT_QB queries from q0 along
   the lanes) of keys after their query set to -inf. */
static void attention_mask(const attention_job *j, float *st, int kb0, int bk, int q0)
{
    if (j->causal && kb0 + bk - 1 > q0)
        for (int jj = 0; jj < bk; jj++)
            for (int i = 0; i < ATT_QB; i++)
                if (kb0 + jj > q0 + i) st[(size_t)jj * ATT_QB + i] = -INFINITY;
}

/* Output rows q0..q0+nq-1 of batch item b, head h: the transposed sums ot over the softmax
   denominators l0, l1 (through li, ATT_QB floats); zeros where the queries saw no key. */
static void attention_store(const attention_job *j, int b, int h, int q0, int nq, int nk, const float *ot, vfloat l0, vfloat l1, float *li)
{
    vf_store(li, vf_div(vf_set1(1.0f), l0));
    vf_store(li + VF_WIDTH, vf_div(vf_set1(1.0f), l1));
    for (int i = 0; i < nq; i++) {
        float *o = j->out + ((size_t)b * j->Nq + q0 + i) * j->ldo + (size_t)h * j->d;
        for (int c = 0; c < j->d; c++) o[c] = nk > 0 ? ot[(size_t)c * ATT_QB + i] * li[i] : 0.0f;
    }
}

static void attention_task(void *arg, int task, int thread)
{
    const attention_job *j = (const attention_job *)arg;
    int qb = task % j->qblocks, h = (task / j->qblocks) % j->heads, b = task / j->qblocks / j->heads, d = j->d;
    int q0 = qb * ATT_QB, nq = j->Nq - q0 < ATT_QB ? j->Nq - q0 : ATT_QB;
    int nk = j->causal && q0 + nq < j->Nk ? q0 + nq : j->Nk;   /* keys any query of the block sees */
    float *qt = j->pool->scratch[thread], *ot = qt + (size_t)d * ATT_QB, *st = ot + (size_t)d * ATT_QB;
    float *mrow = st + (size_t)(ATT_BK + GEMM_MR) * ATT_QB, *lrow = mrow + ATT_QB;
    const float *rows[GEMM_MR];
    const float *kbase = j->k + (size_t)b * j->Nk * j->ldk + (size_t)h * d;
    const float *vbase = j->v + (size_t)b * j->Nk * j->ldv + (size_t)h * d;
    float sc = 1.4426950408889634f / sqrtf((float)d);
    for (int c = 0; c < d; c++)
        for (int i = 0; i < ATT_QB; i++)
            qt[(size_t)c * ATT_QB + i] = i < nq ? j->q[((size_t)b * j->Nq + q0 + i) * j->ldq + (size_t)h * d + c] * sc : 0.0f;
    memset(ot, 0, (size_t)d * ATT_QB * sizeof(float));
    vfloat m0 = vf_set1(-INFINITY), m1 = m0, l0 = vf_zero(), l1 = vf_zero();
    for (int kb0 = 0; kb0 < nk; kb0 += ATT_BK) {
        int bk = nk - kb0 < ATT_BK ? nk - kb0 : ATT_BK;
        for (int jt = 0; jt < bk; jt += GEMM_MR) {
            for (int r = 0; r < GEMM_MR; r++) rows[r] = kbase + (size_t)(kb0 + jt + (jt + r < bk ? r : 0)) * j->ldk;
            gemm_tile(rows, 1, d, qt, st + (size_t)jt * ATT_QB, ATT_QB, GEMM_MR, ATT_QB, 0, NULL);
        }
        attention_mask(j, st, kb0, bk, q0);
        vfloat n0 = m0, n1 = m1, s0 = vf_zero(), s1 = vf_zero();
        for (int jj = 0; jj < bk; jj++) {
            n0 = vf_max(n0, vf_load(st + (size_t)jj * ATT_QB));
            n1 = vf_max(n1, vf_load(st + (size_t)jj * ATT_QB + VF_WIDTH));
        }
        for (int jj = 0; jj < bk; jj++) {
            float *sr = st + (size_t)jj * ATT_QB;
            vfloat e0 = vf_exp2(vf_sub(vf_load(sr), n0)), e1 = vf_exp2(vf_sub(vf_load(sr + VF_WIDTH), n1));
            vf_store(sr, e0);
            vf_store(sr + VF_WIDTH, e1);
            s0 = vf_add(s0, e0);
            s1 = vf_add(s1, e1);
        }
        vfloat a0 = vf_exp2(vf_sub(m0, n0)), a1 = vf_exp2(vf_sub(m1, n1));
        l0 = vf_fma(l0, a0, s0);
        l1 = vf_fma(l1, a1, s1);
        m0 = n0;
        m1 = n1;
        attention_pv(ot, d, vbase + (size_t)kb0 * j->ldv, j->ldv, st, bk, a0, a1);
    }
    attention_store(j, b, h, q0, nq, nk, ot, l0, l1, lrow);
}

/* Fast-mode attention (a pool set to SD_QUANT_FAST): the same flash-style loop with both of
   its products in int8 and int32 sums (vi_dot4), as the fast GEMM does them. Each query and
   each key gets one scale over the head's d values, each value channel one over every block
   of ATT_BK keys (max|x|/127, as q8_0); the softmax weights e = 2^(s - running max), within
   (0, 1], become round(127·e), and their integer sum is the softmax's denominator, so an
   output stays a weighted mean of dequantized values. A task is one batch item, head and run
   of query blocks: it first quantizes its head's keys (a row of dp bytes each, d rounded up to
   4) and values (groups of 4 keys: the 4 bytes of channel c of keys 4g..4g+3 together, as
   vi_dot4 reads them) into its scratch. A head whose keys and values do not fit there, or
   wider than ATTQ_MAX_D (whose int32 sums might not convert to float exactly), takes the
   float32 path. */
#define ATTQ_MAX_D 256

/* Where each part of a task's scratch starts (bytes, 64-aligned) and the bytes in all. */
static attq_layout attq_plan(int d, int Nk)
{
    attq_layout L;
    size_t o = 0;
    L.dp = (d + 3) & ~3;
    L.dv = (d + VF_WIDTH - 1) / VF_WIDTH * VF_WIDTH;
    L.nk4 = (Nk + 3) & ~3;
    L.nkb = (Nk + ATT_BK - 1) / ATT_BK;
#define ATTQ_PART(f, n) L.f = o; o += ((size_t)(n) + 63) & ~(size_t)63;
    ATTQ_PART(qt, (size_t)L.dp * ATT_QB * sizeof(float))  /* the block's queries, transposed */
    ATTQ_PART(qp, (size_t)L.dp * ATT_QB)                  /* and packed for vi_dot4 */
    ATTQ_PART(li, ATT_QB * sizeof(float))                 /* 1 / their softmax denominators */
    ATTQ_PART(ot, (size_t)d * ATT_QB * sizeof(float))     /* the output, transposed */
    ATTQ_PART(st, (size_t)ATT_BK * ATT_QB * sizeof(float))   /* scores of a block of keys */
    ATTQ_PART(pp, (size_t)ATT_BK * ATT_QB)                /* their softmax weights, packed */
    ATTQ_PART(row, (size_t)4 * L.dv * sizeof(float))      /* 4 key or value rows, zero-padded */
    ATTQ_PART(kq, (size_t)Nk * L.dp)                      /* the head's keys */
    ATTQ_PART(ks, (size_t)Nk * sizeof(float))
    ATTQ_PART(vq, (size_t)L.nk4 * L.dv)                   /* its values */
    ATTQ_PART(vs, (size_t)L.nkb * L.dv * sizeof(float))
#undef ATTQ_PART
    L.bytes = o;
    return L;
}

static void attention_q8_task(void *arg, int task, int thread)
{
    const attention_job *j = (const attention_job *)arg;
    const attq_layout *L = &j->L;
    int runs = (j->qblocks + j->qrun - 1) / j->qrun, run = task % runs, h = task / runs % j->heads, b = task / runs / j->heads;
    int d = j->d, dp = L->dp, dv = L->dv, qb1 = (run + 1) * j->qrun < j->qblocks ? (run + 1) * j->qrun : j->qblocks;
    /* the keys the run's queries see (whole blocks of them: a value scale must not depend on the run) */
    int last = (qb1 * ATT_QB + ATT_BK - 1) / ATT_BK * ATT_BK, nkeys = j->causal && last < j->Nk ? last : j->Nk;
    unsigned char *base = (unsigned char *)j->pool->scratch[thread];
    unsigned char *qp = base + L->qp, *pp = base + L->pp, *kq = base + L->kq, *vq = base + L->vq;
    float *qt = (float *)(void *)(base + L->qt), *li = (float *)(void *)(base + L->li), *ot = (float *)(void *)(base + L->ot);
    float *st = (float *)(void *)(base + L->st), *ks = (float *)(void *)(base + L->ks), *vs = (float *)(void *)(base + L->vs);
    float *row = (float *)(void *)(base + L->row);
    const float *kbase = j->k + (size_t)b * j->Nk * j->ldk + (size_t)h * d;
    const float *vbase = j->v + (size_t)b * j->Nk * j->ldv + (size_t)h * d;
    float sc = 1.4426950408889634f / sqrtf((float)d);
    vint sum = vi_zero();   /* vq_pack4's sums of the values' bytes, not needed */
    memset(row, 0, (size_t)4 * dv * sizeof(float));
    /* those keys, a scale each */
    for (int t = 0; t < nkeys; t++) {
        unsigned char bytes[ATTQ_MAX_D];
        vfloat m = vf_set1(Q8_TINY);
        memcpy(row, kbase + (size_t)t * j->ldk, (size_t)d * sizeof(float));
        for (int c = 0; c < dv; c += VF_WIDTH) m = vf_max(m, vf_abs(vf_load(row + c)));
        float amax = vf_hmax(m);
        for (int c = 0; c < dv; c += VF_WIDTH) vq_store(bytes + c, vf_mul(vf_load(row + c), vf_set1(127.0f / amax)), Q8_OFFSET);
        memcpy(kq + (size_t)t * dp, bytes, (size_t)dp);
        ks[t] = amax / 127.0f;
    }
    /* and their values, a scale per channel and block of keys, stored plus Q8_OFFSET */
    for (int k0 = 0; k0 < nkeys; k0 += ATT_BK) {
        int bk = nkeys - k0 < ATT_BK ? nkeys - k0 : ATT_BK;
        float *scale = vs + (size_t)(k0 / ATT_BK) * dv;
        for (int c = 0; c < dv; c += VF_WIDTH) {
            vfloat m = vf_set1(Q8_TINY);
            for (int t = 0; t < bk && c < d; t++) {
                const float *v = vbase + (size_t)(k0 + t) * j->ldv + c;
                if (c + VF_WIDTH <= d) m = vf_max(m, vf_abs(vf_load(v)));
                else { memcpy(row + c, v, (size_t)(d - c) * sizeof(float)); m = vf_max(m, vf_abs(vf_load(row + c))); }   /* zeros past d */
            }
            vf_store(scale + c, m);
        }
        for (int t = 0; t < bk; t += 4) {
            for (int r = 0; r < 4; r++) {
                if (t + r < bk) memcpy(row + (size_t)r * dv, vbase + (size_t)(k0 + t + r) * j->ldv, (size_t)d * sizeof(float));
                else memset(row + (size_t)r * dv, 0, (size_t)d * sizeof(float));
            }
            for (int c = 0; c < dv; c += VF_WIDTH) {
                vfloat id = vf_div(vf_set1(127.0f), vf_load(scale + c)), off = vf_set1((float)Q8_OFFSET);
                vi_store(vq + (size_t)(k0 + t) * dv + (size_t)c * 4,
                         vq_pack4(vf_fma(vf_load(row + c), id, off), vf_fma(vf_load(row + dv + c), id, off),
                                  vf_fma(vf_load(row + 2 * dv + c), id, off), vf_fma(vf_load(row + 3 * dv + c), id, off), &sum));
            }
        }
        for (int c = 0; c < dv; c += VF_WIDTH) vf_store(scale + c, vf_mul(vf_load(scale + c), vf_set1(1.0f / 127.0f)));
    }
#define ATTQ_DECL(r) const unsigned char *a##r; vint s##r##0 = vi_zero(), s##r##1 = vi_zero();
#define ATTQ_SCORE(r)                                                                                     \
    if (jt + r < bk) {                                                                                    \
        vfloat x = vf_set1(ks[kb0 + jt + r]);                                                             \
        vf_store(st + (size_t)(jt + r) * ATT_QB, vf_mul(vf_mul(vf_add(vi_to_vf(s##r##0), qc0), qs0), x));  \
        vf_store(st + (size_t)(jt + r) * ATT_QB + VF_WIDTH, vf_mul(vf_mul(vf_add(vi_to_vf(s##r##1), qc1), qs1), x)); \
    }
#define ATTQ_OUT(r)                                                                                       \
    if (c0 + r < d) {                                                                                     \
        float *o_ = ot + (size_t)(c0 + r) * ATT_QB;                                                      \
        vfloat x = vf_set1(vs[(size_t)(kb0 / ATT_BK) * dv + c0 + r]);                                     \
        vf_store(o_, vf_fma(vf_add(vi_to_vf(s##r##0), pc0), x, vf_mul(vf_load(o_), al0)));                \
        vf_store(o_ + VF_WIDTH, vf_fma(vf_add(vi_to_vf(s##r##1), pc1), x, vf_mul(vf_load(o_ + VF_WIDTH), al1))); \
    }
    for (int qb = run * j->qrun; qb < qb1; qb++) {
        int q0 = qb * ATT_QB, nq = j->Nq - q0 < ATT_QB ? j->Nq - q0 : ATT_QB;
        int nk = j->causal && q0 + nq < j->Nk ? q0 + nq : j->Nk;   /* keys any query of the block sees */
        /* the block's queries, transposed, then quantized with a scale per query (a lane) and
           packed: byte c of query i at (c/4)·4·ATT_QB + 4i + c%4, as vi_dot4 reads them */
        for (int c = 0; c < dp; c++)
            for (int i = 0; i < ATT_QB; i++)
                qt[(size_t)c * ATT_QB + i] = i < nq && c < d ? j->q[((size_t)b * j->Nq + q0 + i) * j->ldq + (size_t)h * d + c] : 0.0f;
        vfloat qs0 = vf_set1(Q8_TINY), qs1 = qs0, qc0, qc1;
        for (int c = 0; c < dp; c++) {
            qs0 = vf_max(qs0, vf_abs(vf_load(qt + (size_t)c * ATT_QB)));
            qs1 = vf_max(qs1, vf_abs(vf_load(qt + (size_t)c * ATT_QB + VF_WIDTH)));
        }
        {
            vfloat id0 = vf_div(vf_set1(127.0f), qs0), id1 = vf_div(vf_set1(127.0f), qs1);
            vint n0 = vi_zero(), n1 = vi_zero();
            for (int c = 0; c < dp; c += 4) {
                const float *x = qt + (size_t)c * ATT_QB;
                vi_store(qp + (size_t)c * ATT_QB, vq_pack4(vf_mul(vf_load(x), id0), vf_mul(vf_load(x + ATT_QB), id0),
                                                            vf_mul(vf_load(x + 2 * ATT_QB), id0), vf_mul(vf_load(x + 3 * ATT_QB), id0), &n0));
                vi_store(qp + (size_t)c * ATT_QB + 4 * VF_WIDTH,
                         vq_pack4(vf_mul(vf_load(x + VF_WIDTH), id1), vf_mul(vf_load(x + ATT_QB + VF_WIDTH), id1),
                                  vf_mul(vf_load(x + 2 * ATT_QB + VF_WIDTH), id1), vf_mul(vf_load(x + 3 * ATT_QB + VF_WIDTH), id1), &n1));
            }
            qs0 = vf_mul(qs0, vf_set1(sc / 127.0f));
            qs1 = vf_mul(qs1, vf_set1(sc / 127.0f));
            qc0 = vf_mul(vi_to_vf(n0), vf_set1(-(float)Q8_OFFSET));
            qc1 = vf_mul(vi_to_vf(n1), vf_set1(-(float)Q8_OFFSET));
        }
        memset(ot, 0, (size_t)d * ATT_QB * sizeof(float));
        vfloat m0 = vf_set1(-INFINITY), m1 = m0, l0 = vf_zero(), l1 = vf_zero();
        for (int kb0 = 0; kb0 < nk; kb0 += ATT_BK) {
            int bk = nk - kb0 < ATT_BK ? nk - kb0 : ATT_BK, bk4 = (bk + 3) & ~3;
            /* scores of Q8_MR keys x ATT_QB queries at a time (keys past bk repeat key jt) */
            for (int jt = 0; jt < bk; jt += Q8_MR) {
                Q8_ROWS(ATTQ_DECL)
#define ATTQ_KEY(r) a##r = kq + (size_t)(kb0 + jt + (jt + r < bk ? r : 0)) * dp;
                Q8_ROWS(ATTQ_KEY)
#undef ATTQ_KEY
                for (int o = 0; o < dp; o += 4) {
                    vbytes b0 = vb_load(qp + (size_t)o * ATT_QB), b1 = vb_load(qp + (size_t)o * ATT_QB + 4 * VF_WIDTH), t;
                    Q8_ROWS(Q8_DOT)
                }
                Q8_ROWS(ATTQ_SCORE)
            }
            attention_mask(j, st, kb0, bk, q0);
            vfloat n0 = m0, n1 = m1, e[8];
            for (int jj = 0; jj < bk; jj++) {
                n0 = vf_max(n0, vf_load(st + (size_t)jj * ATT_QB));
                n1 = vf_max(n1, vf_load(st + (size_t)jj * ATT_QB + VF_WIDTH));
            }
            /* the weights 127·2^(s - max), four keys to a packed group, and their sums */
            vint p0 = vi_zero(), p1 = vi_zero();
            for (int jj = 0; jj < bk4; jj += 4) {
                for (int t = 0; t < 4; t++) {
                    const float *sr = st + (size_t)(jj + t) * ATT_QB;
                    e[2 * t] = jj + t < bk ? vf_mul(vf_exp2(vf_sub(vf_load(sr), n0)), vf_set1(127.0f)) : vf_zero();
                    e[2 * t + 1] = jj + t < bk ? vf_mul(vf_exp2(vf_sub(vf_load(sr + VF_WIDTH), n1)), vf_set1(127.0f)) : vf_zero();
                }
                vi_store(pp + (size_t)jj * ATT_QB, vq_pack4(e[0], e[2], e[4], e[6], &p0));
                vi_store(pp + (size_t)jj * ATT_QB + 4 * VF_WIDTH, vq_pack4(e[1], e[3], e[5], e[7], &p1));
            }
            vfloat al0 = vf_exp2(vf_sub(m0, n0)), al1 = vf_exp2(vf_sub(m1, n1)), w0 = vi_to_vf(p0), w1 = vi_to_vf(p1);
            vfloat pc0 = vf_mul(w0, vf_set1(-(float)Q8_OFFSET)), pc1 = vf_mul(w1, vf_set1(-(float)Q8_OFFSET));
            l0 = vf_fma(l0, al0, w0);
            l1 = vf_fma(l1, al1, w1);
            m0 = n0;
            m1 = n1;
            /* ot = ot·alpha + (channel scale)·Σ_j v[j][c]·p[j][i], Q8_MR channels at a time */
            for (int c0 = 0; c0 < d; c0 += Q8_MR) {
                Q8_ROWS(ATTQ_DECL)
#define ATTQ_CHANNEL(r) a##r = vq + (size_t)kb0 * dv + (size_t)(c0 + r < d ? c0 + r : c0) * 4;
                Q8_ROWS(ATTQ_CHANNEL)
#undef ATTQ_CHANNEL
                for (int g = 0, o = 0; g < bk4; g += 4, o += 4 * dv) {
                    vbytes b0 = vb_load(pp + (size_t)g * ATT_QB), b1 = vb_load(pp + (size_t)g * ATT_QB + 4 * VF_WIDTH), t;
                    Q8_ROWS(Q8_DOT)
                }
                Q8_ROWS(ATTQ_OUT)
            }
        }
        attention_store(j, b, h, q0, nq, nk, ot, l0, l1, li);
    }
#undef ATTQ_DECL
#undef ATTQ_SCORE
#undef ATTQ_OUT
}

static void attention(sd_pool *pool, float *out, int ldo, const float *q, int ldq, const float *k,
                      int ldk, const float *v, int ldv, int B, int Nq, int Nk, int heads, int d,
                      int causal)
{
    attention_job j;
    if (B <= 0 || Nq <= 0 || heads <= 0 || d <= 0) return;
    SD_ASSERT((size_t)(2 * d + ATT_BK + GEMM_MR + 2) * ATT_QB <= pool->scratch_floats);
    j.pool = pool; j.out = out; j.q = q; j.k = k; j.v = v;
    j.ldo = ldo; j.ldq = ldq; j.ldk = ldk; j.ldv = ldv; j.Nq = Nq; j.Nk = Nk; j.heads = heads; j.d = d;
    j.causal = causal; j.qblocks = (Nq + ATT_QB - 1) / ATT_QB;
    if (pool->quant == SD_QUANT_FAST && d <= ATTQ_MAX_D) {
        j.L = attq_plan(d, Nk);
        if (j.L.bytes <= pool->scratch_floats * sizeof(float)) {
            /* one task per head, or runs of query blocks where heads are fewer than 2 per thread */
            int heads_all = B * heads, runs = (2 * pool->threads + heads_all - 1) / heads_all;
            if (runs > j.qblocks) runs = j.qblocks;
            j.qrun = (j.qblocks + runs - 1) / runs;
            pool_run(pool, attention_q8_task, &j, heads_all * ((j.qblocks + j.qrun - 1) / j.qrun));
            return;
        }
    }
    pool_run(pool, attention_task, &j, B * heads * j.qblocks);
}

/* Sinusoidal embedding of a timestep (UNet time embedding, SDXL size conditioning):
   freq_i = exp(-ln(10000)·i/(dim/2)), out = [cos(t·freq), sin(t·freq)] (flip_sin_to_cos, shift 0),
   computed in float32 as diffusers does. */
static void timestep_embedding(float *out, float t, int dim)
{
    int half = dim / 2;
    for (int i = 0; i < half; i++) {
        float freq = expf(-9.210340371976184f * (float)i / (float)half);
        float arg = t * freq;
        out[i] = cosf(arg);
        out[half + i] = sinf(arg);
    }
}

#if defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/* ---- 5. Tokenizer (CLIP BPE) --------------------------------------------------------------- */
/* Prompt text -> token ids, exactly as the pipelines do it with transformers' (slow) CLIPTokenizer,
   ftfy 6.3.1 and the `regex` module (Radford et al. 2021 use the byte-level BPE of GPT-2, which
   follows Sennrich et al. 2016):
   1. literal special tokens (<|startoftext|>, <|endoftext|>, and "!" when it is the pad token)
      are split out of the text first;
   2. every other piece goes through ftfy.fix_text (HTML entities, mojibake, curly quotes, fullwidth
      forms, ligatures, control characters, line breaks, NFC), whitespace runs become one space,
      the ends are stripped and the text is lower-cased as Python's str.lower() does;
   3. CLIP's regex cuts it into words: the special tokens, 's 't 're 've 'm 'll 'd, runs of
      letters, single digits, runs of other non-space characters;
   4. each word's UTF-8 bytes become byte symbols, the last one marked with </w>, and adjacent
      symbols are merged in the order of merges.txt until no merge applies;
   5. [BOS] + the first 75 ids + [EOS], padded to 77.
   Every rule below names the upstream function it copies, so a reader can check it line by line.
   Text is handled as arrays of code points (uint32_t) in the scratch arena. Character data follows
   what the reference ran on: Python 3.11's unicodedata (Unicode 14.0) for lower-casing, NFC and
   ftfy's regexes, and regex 2022.10.31 (Unicode 15.0) for the pre-tokenizer's letters and numbers. */

enum { CLIP_MERGES = 49152 - 256 - 2, CLIP_FIRST_MERGE = 512 };

/* Per-code-point properties, packed as the table generator packs them. */
enum {
    PROP_CLASS = 7,                        /* pre-tokenizer class: */
    CLASS_OTHER = 0, CLASS_LETTER = 1, CLASS_NUMBER = 2, CLASS_SPACE = 3, CLASS_NONE = 4,
    PROP_WORD = 8,                         /* Python re's \w (letters and numbers) */
    PROP_DIGIT = 16,                       /* Python re's \d (Nd) */
    PROP_CASED = 32, PROP_CASE_IGNORABLE = 64,   /* for the final-sigma rule of str.lower() */
    PROP_CCC_SHIFT = 7                     /* canonical combining class in bits 7..14 */
};

/* ftfy's single-byte encodings, in the order it tries them; the first seven are also the ones
   whose bytes 0x80..0xFF make up its "UTF-8 clues" (chardata.UTF8_CLUES). */
enum { ENC_LATIN1, ENC_CP1252, ENC_CP1251, ENC_CP1250, ENC_CP1253, ENC_CP1254, ENC_CP1257,
       ENC_ISO8859_2, ENC_MACROMAN, ENC_CP437, ENC_COUNT };

struct sd_clip_vocab {
    /* byte-pair encoding */
    int32_t byte_id[256];        /* id of each byte's symbol; + 256 for the symbol with </w> */
    char *pool;                  /* token strings back to back */
    uint32_t *tok_off;           /* token i is pool[tok_off[i] .. tok_off[i + 1]) */
    int32_t *tok_hash;           /* string -> id, open addressing, -1 = empty */
    uint32_t tok_mask;
    uint32_t *pair_key;          /* left << 16 | right -> merge rank, open addressing */
    int32_t *pair_rank;
    uint32_t pair_mask;
    /* text clean-up tables, decoded from the generated streams at load time */
    uint32_t *prop_start;        /* ranges of code points with equal properties */
    uint16_t *prop;
    uint16_t prop_latin1[256];
    uint32_t *low_start, *low_count, *low_step;   /* runs of str.lower() mappings */
    int32_t *low_delta;
    uint32_t *dec_cp, *dec_first, *dec_second;    /* canonical decompositions (second 0: singleton) */
    uint16_t *comp;              /* indices of the decompositions NFC recomposes, by (first, second) */
    uint32_t width[0xEF];        /* NFKC of U+FF01..U+FFEF, 0 = unchanged */
    uint32_t charmap[ENC_COUNT][129];      /* characters of bytes 0x80..0xFF, then of byte 0x1A */
    uint32_t charmap_inv[ENC_COUNT][129];  /* character << 8 | byte, sorted */
    char *ent_pool;              /* HTML entity names (without '&', with ';') back to back */
    uint32_t *ent_off;           /* entity i is ent_pool[ent_off[i] .. ent_off[i + 1]) */
    uint32_t *ent_val;           /* up to 3 code points per entity, unused ones 0 */
    uint16_t *upper_of;          /* upper-case spellings: index of the entity they spell */
    uint32_t *upper_val;
    int n_prop, n_lower, n_dec, n_comp, n_ent, n_upper;   /* table sizes */
};

/* ---- code points ---- */

/* A text as code points, in the arena. */
typedef struct cps { uint32_t *c; size_t n, cap; } cps;

static int cps_init(cps *t, size_t cap, sd_arena *a, sd_error *err)
{
    t->n = 0;
    t->cap = cap;
    t->c = (uint32_t *)arena_array(a, cap + 1, sizeof(uint32_t), err);
    return t->c ? SD_OK : SD_ERR_MEMORY;
}

/* Makes room for `need` code points, moving the text to a bigger block if it must. */
static int cps_reserve(cps *t, size_t need, sd_arena *a, sd_error *err)
{
    cps bigger;
    if (need <= t->cap) return SD_OK;
    if (cps_init(&bigger, need, a, err)) return SD_ERR_MEMORY;
    memcpy(bigger.c, t->c, t->n * sizeof(uint32_t));
    bigger.n = t->n;
    *t = bigger;
    return SD_OK;
}

static int cps_equal(const uint32_t *x, size_t nx, const uint32_t *y, size_t ny)
{
    return nx == ny && (nx == 0 || !memcmp(x, y, nx * sizeof(uint32_t)));
}

/* UTF-8 -> code points as Python's bytes.decode("utf-8", errors): strict (returns -1 at the first
   error) or, with `replace`, each maximal invalid subsequence becomes U+FFFD. */
static int utf8_decode(const unsigned char *b, size_t len, int replace, uint32_t *out, size_t *n)
{
    size_t i = 0, w = 0;
    while (i < len) {
        unsigned c = b[i], need, k;
        uint32_t cp;
        unsigned char lo = 0x80, hi = 0xBF;     /* allowed range of the first continuation byte */
        if (c < 0x80) { out[w++] = c; i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2; cp = c & 0x0F;
            if (c == 0xE0) lo = 0xA0;          /* no overlong forms */
            if (c == 0xED) hi = 0x9F;          /* no surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3; cp = c & 0x07;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;          /* nothing above U+10FFFF */
        } else {
            if (!replace) return -1;
            out[w++] = 0xFFFD; i++; continue;
        }
        for (k = 0; k < need; k++) {
            unsigned char d = i + 1 + k < len ? b[i + 1 + k] : 0;
            if (i + 1 + k >= len || d < (k ? 0x80 : lo) || d > (k ? 0xBF : hi)) break;
            cp = cp << 6 | (d & 0x3F);
        }
        if (k < need) {
            if (!replace) return -1;
            out[w++] = 0xFFFD;                 /* the lead byte and the valid continuations */
            i += 1 + k;
            continue;
        }
        out[w++] = cp;
        i += 1 + need;
    }
    *n = w;
    return 0;
}

static size_t utf8_put(uint32_t cp, unsigned char *out)
{
    if (cp < 0x80) { out[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { out[0] = (unsigned char)(0xC0 | cp >> 6); out[1] = (unsigned char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | cp >> 12); out[1] = (unsigned char)(0x80 | (cp >> 6 & 63));
        out[2] = (unsigned char)(0x80 | (cp & 63));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | cp >> 18); out[1] = (unsigned char)(0x80 | (cp >> 12 & 63));
    out[2] = (unsigned char)(0x80 | (cp >> 6 & 63)); out[3] = (unsigned char)(0x80 | (cp & 63));
    return 4;
}

/* ---- Unicode properties (tables generated from Python's unicodedata and the regex module) ---- */

static unsigned uprop(const sd_clip_vocab *v, uint32_t c)
{
    int lo = 0, hi = v->n_prop - 1;
    if (c < 256) return v->prop_latin1[c];
    while (lo < hi) {                        /* last range starting at or before c */
        int mid = (lo + hi + 1) / 2;
        if (v->prop_start[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return v->prop[lo];
}

static unsigned ccc(const sd_clip_vocab *v, uint32_t c) { return c < 0x300 ? 0 : uprop(v, c) >> PROP_CCC_SHIFT; }

/* Python's str.isspace(), which `re`'s \s and str.strip() use. */
static int is_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Simple lower-case mapping (str.lower() without its two special cases, which lower_text handles). */
static uint32_t lower_char(const sd_clip_vocab *v, uint32_t c)
{
    int lo = 0, hi = v->n_lower - 1;
    if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
    if (c < v->low_start[0]) return c;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (v->low_start[mid] <= c) lo = mid; else hi = mid - 1;
    }
    {
        uint32_t d = c - v->low_start[lo];
        if (d % v->low_step[lo] == 0 && d / v->low_step[lo] < v->low_count[lo]) return (uint32_t)((int32_t)c + v->low_delta[lo]);
    }
    return c;
}

/* Canonical decomposition of one code point, one level deep: index or -1. */
static int decomposition(const sd_clip_vocab *v, uint32_t c)
{
    int lo = 0, hi = v->n_dec - 1;
    if (c < 0xC0) return -1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (v->dec_cp[mid] == c) return mid;
        if (v->dec_cp[mid] < c) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}

/* Hangul syllables are composed from jamo by arithmetic (Unicode 3.12). */
enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
       HANGUL_LN = 19, HANGUL_VN = 21, HANGUL_TN = 28, HANGUL_N = 11172 };

/* Full canonical decomposition of c appended to out; returns the new length. */
static size_t decompose(const sd_clip_vocab *v, uint32_t c, uint32_t *out, size_t n)
{
    int d;
    if (c >= HANGUL_S && c < HANGUL_S + HANGUL_N) {
        uint32_t s = c - HANGUL_S;
        out[n++] = HANGUL_L + s / (HANGUL_VN * HANGUL_TN);
        out[n++] = HANGUL_V + s % (HANGUL_VN * HANGUL_TN) / HANGUL_TN;
        if (s % HANGUL_TN) out[n++] = HANGUL_T + s % HANGUL_TN;
        return n;
    }
    d = decomposition(v, c);
    if (d < 0) { out[n++] = c; return n; }
    n = decompose(v, v->dec_first[d], out, n);
    return v->dec_second[d] ? decompose(v, v->dec_second[d], out, n) : n;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(const sd_clip_vocab *v, uint32_t a, uint32_t b)
{
    int lo = 0, hi = v->n_comp - 1;
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LN && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_N && (a - HANGUL_S) % HANGUL_TN == 0 && b > HANGUL_T && b < HANGUL_T + HANGUL_TN)
        return a + (b - HANGUL_T);
    while (lo <= hi) {
        int mid = (lo + hi) / 2, k = v->comp[mid];
        uint32_t f = v->dec_first[k], s = v->dec_second[k];
        if (f == a && s == b) return v->dec_cp[k];
        if (f < a || (f == a && s < b)) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}

/* unicodedata.normalize("NFC"): full canonical decomposition, canonical ordering of combining
   marks, then canonical composition (UAX #15). */
static int nfc(const sd_clip_vocab *v, cps *t, sd_arena *a, sd_error *err)
{
    size_t i, n = 0, mark = sd_arena_mark(a), starter = 0, w;
    uint32_t *d;
    unsigned last;
    for (i = 0; i < t->n && t->c[i] < 0x300; i++) {}
    if (i == t->n) return SD_OK;             /* nothing below U+0300 composes or reorders */
    if (!(d = (uint32_t *)arena_array(a, 4 * t->n + 1, sizeof(uint32_t), err))) return SD_ERR_MEMORY;
    for (i = 0; i < t->n; i++) n = decompose(v, t->c[i], d, n);
    for (i = 1; i < n; i++) {                /* stable insertion sort of each run of marks */
        uint32_t c = d[i];
        unsigned cc = ccc(v, c);
        size_t j = i;
        if (!cc) continue;
        while (j > 0 && ccc(v, d[j - 1]) > cc) { d[j] = d[j - 1]; j--; }
        d[j] = c;
    }
    last = ccc(v, d[0]) ? 256 : 0;           /* a leading mark has no starter to join */
    for (i = 1, w = 1; i < n; i++) {         /* composed in place: w <= i */
        uint32_t c = d[i], p;
        unsigned cc = ccc(v, c);
        if ((last < cc || last == 0) && (p = compose(v, d[starter], c)) != 0) {
            d[starter] = p;
            continue;
        }
        if (!cc) starter = w;
        last = cc;
        d[w++] = c;
    }
    if (w > t->cap) {                        /* (a longer NFC: keep the new block, leave d behind) */
        t->n = 0;
        if (cps_reserve(t, w, a, err)) return SD_ERR_MEMORY;
        memcpy(t->c, d, w * sizeof(uint32_t));
        t->n = w;
        return SD_OK;
    }
    memcpy(t->c, d, w * sizeof(uint32_t));
    t->n = w;
    sd_arena_reset(a, mark);
    return SD_OK;
}

/* ---- ftfy 6.3.1: the single-byte encodings behind mojibake ---- */

/* The byte that character c has in encoding e, or -1 (c's "sloppy" charmap encoding). */
static int charmap_byte(const sd_clip_vocab *v, int e, uint32_t c)
{
    const uint32_t *t = v->charmap_inv[e];
    int lo = 0, hi = 128;
    if (c < 0x80 && c != 0x1A) return (int)c;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t k = t[mid] >> 8;
        if (k == c) return (int)(t[mid] & 0xFF);
        if (k < c) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}

static int is_sloppy(int e) { return e >= ENC_CP1252 && e <= ENC_CP1257; }

/* chardata.UTF8_CLUES: how UTF-8 lead and continuation bytes look when decoded with one of the
   first seven encodings. ftfy lists these characters by hand; they are exactly this set. */
enum { CLUE_LEAD2 = 1, CLUE_LEAD3 = 2, CLUE_LEAD4 = 4, CLUE_CONT = 8, CLUE_CONT_STRICT = 16 };

static unsigned utf8_clue(const sd_clip_vocab *v, uint32_t c)
{
    unsigned m = 0;
    int e;
    if (c < 0x80) return c == ' ' ? CLUE_CONT : 0;     /* a space may stand for byte 0xA0 */
    for (e = ENC_LATIN1; e <= ENC_CP1257; e++) {
        int b = charmap_byte(v, e, c);
        if (b >= 0xC2 && b <= 0xDF) m |= CLUE_LEAD2;
        if (b >= 0xE0 && b <= 0xEF) m |= CLUE_LEAD3;
        if (b == 0xF0 || b == 0xF3) m |= CLUE_LEAD4;
        if (b >= 0x80 && b <= 0xBF) m |= CLUE_CONT;
    }
    /* the strict set leaves out what often stands for itself next to mojibake: dashes, quotes,
       bullet, ellipsis */
    if ((m & CLUE_CONT) && !(c >= 0x2013 && c <= 0x2015) && !(c >= 0x2018 && c <= 0x201E && c != 0x201B) &&
        c != 0x2022 && c != 0x2026)
        m |= CLUE_CONT_STRICT;
    return m;
}

/* ---- ftfy 6.3.1: the mojibake heuristic (badness.py) ---- */

/* badness.MOJIBAKE_CATEGORIES: the ~450 characters that occur in UTF-8 mojibake, by role. */
enum { B_C1 = 1, B_BAD = 2, B_COMMON = 4, B_LAW = 8, B_CUR = 16, B_SP = 32, B_EP = 64, B_NUM = 128,
       B_KAO = 256, B_UA = 512, B_LA = 1024, B_UC = 2048, B_LC = 4096, B_BOX = 8192 };
/* C1 controls; "bad" (nearly only in mojibake); "common" (many contexts); legal signs; currency;
   start and end punctuation; numeric signs; letters of kaomoji faces; upper- and lower-case
   accented Latin; upper- and lower-case Greek and Cyrillic; box drawing. */
static const struct { uint16_t lo, hi, mask; } mojibake_chars[] = {
    {0x0080, 0x009F, B_C1}, {0x00A0, 0x00A0, B_COMMON}, {0x00A1, 0x00A1, B_SP}, {0x00A2, 0x00A3, B_CUR},
    {0x00A4, 0x00A4, B_BAD}, {0x00A5, 0x00A5, B_CUR}, {0x00A6, 0x00A6, B_BAD}, {0x00A7, 0x00A7, B_LAW},
    {0x00A8, 0x00A8, B_BAD}, {0x00A9, 0x00A9, B_SP}, {0x00AA, 0x00AA, B_BAD}, {0x00AB, 0x00AB, B_SP},
    {0x00AC, 0x00AC, B_BAD}, {0x00AD, 0x00AD, B_COMMON}, {0x00AE, 0x00AE, B_EP}, {0x00AF, 0x00AF, B_BAD},
    {0x00B0, 0x00B0, B_KAO}, {0x00B1, 0x00B3, B_NUM}, {0x00B4, 0x00B4, B_COMMON}, {0x00B5, 0x00B5, B_NUM},
    {0x00B6, 0x00B6, B_LAW}, {0x00B7, 0x00B7, B_COMMON}, {0x00B8, 0x00B8, B_BAD}, {0x00B9, 0x00B9, B_NUM},
    {0x00BA, 0x00BA, B_BAD}, {0x00BB, 0x00BB, B_EP}, {0x00BC, 0x00BE, B_NUM}, {0x00BF, 0x00BF, B_SP},
    {0x00C0, 0x00D1, B_UA}, {0x00D2, 0x00D6, B_KAO}, {0x00D7, 0x00D7, B_NUM}, {0x00D8, 0x00D8, B_UA},
    {0x00D9, 0x00DB, B_KAO}, {0x00DC, 0x00DC, B_KAO|B_UA}, {0x00DD, 0x00DD, B_UA}, {0x00DE, 0x00DE, B_UC},
    {0x00DF, 0x00F1, B_LA}, {0x00F2, 0x00F6, B_KAO}, {0x00F7, 0x00F7, B_NUM}, {0x00F8, 0x00FB, B_KAO},
    {0x00FC, 0x00FC, B_KAO|B_LA}, {0x0100, 0x0100, B_UA}, {0x0101, 0x0101, B_LA}, {0x0102, 0x0102, B_UA},
    {0x0103, 0x0103, B_LA}, {0x0104, 0x0104, B_UA}, {0x0105, 0x0105, B_LA}, {0x0106, 0x0106, B_UA},
    {0x0107, 0x0107, B_LA}, {0x010C, 0x010C, B_UA}, {0x010D, 0x010D, B_LA}, {0x010E, 0x010E, B_UA},
    {0x010F, 0x010F, B_LA}, {0x0110, 0x0110, B_UA}, {0x0111, 0x0111, B_LA}, {0x0112, 0x0112, B_UA},
    {0x0113, 0x0113, B_LA}, {0x0116, 0x0116, B_UA}, {0x0117, 0x0117, B_LA}, {0x0118, 0x0118, B_UA},
    {0x0119, 0x0119, B_LA}, {0x011A, 0x011A, B_UA}, {0x011B, 0x011B, B_LA}, {0x011E, 0x011E, B_UA},
    {0x011F, 0x011F, B_LA}, {0x0122, 0x0122, B_UA}, {0x0123, 0x0123, B_LA}, {0x012A, 0x012A, B_UA},
    {0x012B, 0x012B, B_LA}, {0x012F, 0x012F, B_LA}, {0x0130, 0x0130, B_UA}, {0x0136, 0x0136, B_UA},
    {0x0137, 0x0137, B_LA}, {0x0139, 0x0139, B_UA}, {0x013A, 0x013A, B_LA}, {0x013B, 0x013B, B_UA},
    {0x013C, 0x013C, B_LA}, {0x013D, 0x013D, B_UA}, {0x013E, 0x013E, B_LA}, {0x0141, 0x0141, B_UA},
    {0x0142, 0x0142, B_LA}, {0x0143, 0x0143, B_UA}, {0x0145, 0x0145, B_UA}, {0x0147, 0x0147, B_UA},
    {0x014C, 0x014C, B_KAO}, {0x0150, 0x0150, B_KAO}, {0x0152, 0x0152, B_UA}, {0x0153, 0x0153, B_LA},
    {0x0155, 0x0155, B_LA}, {0x0158, 0x0158, B_UA}, {0x015A, 0x015A, B_UA}, {0x015B, 0x015B, B_LA},
    {0x015E, 0x015E, B_UA}, {0x015F, 0x015F, B_LA}, {0x0160, 0x0160, B_UA}, {0x0161, 0x0161, B_LA},
    {0x0162, 0x0162, B_UA}, {0x0164, 0x0164, B_UA}, {0x0165, 0x0165, B_LA}, {0x016A, 0x016A, B_KAO},
    {0x016E, 0x016E, B_UA}, {0x0170, 0x0170, B_UA}, {0x0172, 0x0172, B_KAO}, {0x0178, 0x0179, B_UA},
    {0x017A, 0x017A, B_LA}, {0x017B, 0x017B, B_UA}, {0x017C, 0x017C, B_LA}, {0x017D, 0x017D, B_UA},
    {0x017E, 0x017E, B_LA}, {0x0192, 0x0192, B_BAD}, {0x02C6, 0x02C7, B_BAD}, {0x02D8, 0x02D8, B_BAD},
    {0x02DB, 0x02DC, B_BAD}, {0x02DD, 0x02DD, B_EP}, {0x0384, 0x0385, B_SP}, {0x0386, 0x0386, B_UC},
    {0x0388, 0x038A, B_UC}, {0x038C, 0x038C, B_UC}, {0x038E, 0x038F, B_UC}, {0x0391, 0x03AB, B_UC},
    {0x03AC, 0x03C9, B_LC}, {0x0401, 0x042F, B_UC}, {0x0430, 0x045F, B_LC}, {0x0490, 0x0490, B_UA},
    {0x0491, 0x0491, B_LA}, {0x2013, 0x2015, B_COMMON}, {0x2018, 0x2018, B_SP}, {0x2019, 0x2019, B_COMMON},
    {0x201A, 0x201A, B_SP}, {0x201C, 0x201C, B_SP}, {0x201D, 0x201D, B_EP}, {0x201E, 0x201E, B_SP},
    {0x2020, 0x2021, B_BAD}, {0x2022, 0x2022, B_SP}, {0x2026, 0x2026, B_COMMON}, {0x2030, 0x2030, B_BAD},
    {0x2039, 0x2039, B_SP}, {0x203A, 0x203A, B_EP}, {0x2044, 0x2044, B_NUM}, {0x20A7, 0x20A7, B_CUR},
    {0x20AC, 0x20AC, B_CUR}, {0x2116, 0x2116, B_NUM}, {0x2122, 0x2122, B_EP}, {0x2202, 0x2202, B_NUM},
    {0x2206, 0x2206, B_NUM}, {0x220F, 0x220F, B_NUM}, {0x2211, 0x2211, B_NUM}, {0x221A, 0x221A, B_NUM},
    {0x221E, 0x221E, B_NUM}, {0x2229, 0x2229, B_NUM}, {0x222B, 0x222B, B_NUM}, {0x2248, 0x2248, B_NUM},
    {0x2260, 0x2261, B_NUM}, {0x2264, 0x2265, B_NUM}, {0x2310, 0x2310, B_BAD}, {0x2502, 0x2502, B_BOX},
    {0x250C, 0x250C, B_BOX}, {0x2510, 0x2510, B_BOX}, {0x2518, 0x2518, B_BOX}, {0x251C, 0x251C, B_BOX},
    {0x2524, 0x2524, B_BOX}, {0x252C, 0x252C, B_BOX}, {0x253C, 0x253C, B_BOX}, {0x2550, 0x256C, B_BOX},
    {0x2580, 0x2580, B_BOX}, {0x2584, 0x2584, B_BOX}, {0x2588, 0x2588, B_BOX}, {0x258C, 0x258C, B_BOX},
    {0x2590, 0x2593, B_BOX}, {0x25CA, 0x25CA, B_BAD}, {0xF8FF, 0xF8FF, B_SP}, {0xFB01, 0xFB02, B_LA},
    {0xFFFD, 0xFFFD, B_BAD}
};

static unsigned mojibake_class(uint32_t c)
{
    int lo = 0, hi = (int)(sizeof mojibake_chars / sizeof mojibake_chars[0]) - 1;
    if (c < 0x80 || c > 0xFFFD) return 0;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < mojibake_chars[mid].lo) hi = mid - 1;
        else if (c > mojibake_chars[mid].hi) lo = mid + 1;
        else return mojibake_chars[mid].mask;
    }
    return 0;
}

static int in_list(uint32_t c, const uint16_t *list, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) if (list[i] == c) return 1;
    return 0;
}
#define IN_SET(c, list) in_list((c), (list), sizeof(list) / sizeof((list)[0]))

/* The literal character sets of BADNESS_RE. */
static const uint16_t bad_hat[] = {0xC2, 0xC3, 0xCE, 0xD0};                             /* ÂÃÎÐ */
static const uint16_t bad_after_hat[] = {0x20AC, 0x153, 0x160, 0x161, 0xA2, 0xA3, 0x178, 0x17E, 0xA0, 0xAD,
                                         0xAE, 0xA9, 0xB0, 0xB7, 0xBB, 0x2013, 0x2014, 0xB4};  /* €œŠš¢£Ÿž...–—´ */
static const uint16_t bad_arabic[] = {0x178, 0x160, 0xAE, 0xB0, 0xB5, 0xBB};            /* ŸŠ®°µ» */
static const uint16_t bad_after_agrave[] = {0xB2, 0xB5, 0xB9, 0xBC, 0xBD, 0xBE};         /* ²µ¹¼½¾ */
static const uint16_t bad_after_root[] = {0xB1, 0x2202, 0x2020, 0x2260, 0xAE, 0x2122, 0xB4, 0x2264, 0x2265,
                                          0xA5, 0xB5, 0xF8};                           /* ±∂†≠®™´≤≥¥µø */
static const uint16_t bad_after_quote_a[] = {0xEC, 0xEE, 0xEF, 0xF2, 0xF4, 0xFA, 0xF9, 0xFB, 0x2020, 0xB0,
                                             0xA2, 0x3C0};                             /* ìîïòôúùû†°¢π */
static const uint16_t bad_after_quote_x[] = {0xE0, 0xE4, 0xB0, 0xEA};                   /* àä°ê */
static const uint16_t bad_cyrillic[] = {0x412, 0x413, 0x420, 0x421};                   /* ВГРС */
static const uint16_t bad_greek[] = {0x392, 0x393, 0x39E, 0x39F};                      /* ΒΓΞΟ */
static const uint16_t bad_after_beta_euro[] = {0x2122, 0xA0, 0x386, 0xAD, 0xAE, 0xB0};  /* ™\xa0Ά\xad®° */
static const uint16_t ascii_punct[] = {'.', ',', '?', '!'};

static int ascii_lower(uint32_t c) { return c >= 'a' && c <= 'z'; }
static int ascii_letter(uint32_t c) { return ascii_lower(c) || (c >= 'A' && c <= 'Z'); }

/* badness.is_bad(): does any of BADNESS_RE's alternatives match somewhere? Each `if` is one
   alternative of that regex, in its order. NONE stands for "past the end". */
static int is_bad(const sd_clip_vocab *v, const uint32_t *t, size_t n)
{
    const uint32_t NONE = 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t a = t[i], b = i + 1 < n ? t[i + 1] : NONE, c = i + 2 < n ? t[i + 2] : NONE, d = i + 3 < n ? t[i + 3] : NONE;
        unsigned ma = mojibake_class(a), mb = b != NONE ? mojibake_class(b) : 0, mc = c != NONE ? mojibake_class(c) : 0;
        unsigned md = d != NONE ? mojibake_class(d) : 0;
        if (ma & B_C1) return 1;
        if ((ma & (B_BAD | B_LA | B_UA | B_BOX | B_SP | B_EP | B_CUR | B_NUM | B_LAW)) && (mb & B_BAD)) return 1;
        if (ascii_letter(a) && (mb & (B_LC | B_UC)) && (mc & B_BAD)) return 1;
        if ((ma & B_BAD) && (mb & (B_LA | B_UA | B_BOX | B_SP | B_EP | B_CUR | B_NUM | B_LAW))) return 1;
        if ((ma & (B_LA | B_LC | B_BOX | B_EP | B_CUR | B_NUM)) && (mb & B_UA)) return 1;
        if ((ma & (B_BOX | B_EP | B_CUR | B_NUM)) && (mb & B_LA)) return 1;
        if ((ma & (B_LA | B_BOX | B_EP)) && (mb & B_CUR)) return 1;
        if (is_space(a) && (mb & B_UA) && (mc & B_CUR)) return 1;
        if ((ma & (B_UA | B_BOX)) && (mb & (B_NUM | B_LAW))) return 1;
        if ((ma & (B_LA | B_UA | B_BOX | B_CUR | B_EP)) && (mb & B_SP) && (mc & B_NUM)) return 1;
        if ((ma & (B_LA | B_UA | B_CUR | B_NUM | B_BOX | B_LAW)) && (mb & B_EP) && (mc & B_SP)) return 1;
        if ((ma & (B_CUR | B_NUM | B_BOX)) && (mb & B_SP)) return 1;
        if (ascii_lower(a) && (mb & B_UA) && (mc & (B_SP | B_CUR))) return 1;
        if ((ma & B_BOX) && (mb & B_KAO)) return 1;
        if ((ma & (B_LA | B_UA | B_CUR | B_NUM | B_SP | B_EP | B_LAW)) && (mb & B_BOX)) return 1;
        if ((ma & B_BOX) && (mb & B_EP)) return 1;
        if ((ma & (B_LA | B_UA)) && (mb & (B_SP | B_EP)) && c != NONE && (c == '_' || (uprop(v, c) & PROP_WORD))) return 1;
        if ((a == 0x152 || a == 0x153) && b != NONE && !ascii_letter(b)) return 1;           /* [Œœ][^A-Za-z] */
        if ((ma & B_UA) && b == 0xB0) return 1;                                                /* capital + ° */
        if (IN_SET(a, bad_hat) && ((mb & (B_SP | B_EP)) ||                         /* [ÂÃÎÐ][€œŠš¢£Ÿž...] */
            IN_SET(b, bad_after_hat)))
            return 1;
        if (a == 0xD7 && (b == 0xB2 || b == 0xB3)) return 1;                                   /* × [²³] */
        if ((a == 0xD8 || a == 0xD9) && (c == 0xD8 || c == 0xD9) &&                            /* Arabic in Windows-1252 */
            ((mb & (B_COMMON | B_CUR | B_BAD | B_NUM | B_SP)) || IN_SET(b, bad_arabic)) &&
            ((md & (B_COMMON | B_CUR | B_BAD | B_NUM | B_SP)) || IN_SET(d, bad_arabic)))
            return 1;
        if (a == 0xE0 && IN_SET(b, bad_after_agrave)) return 1;                 /* à[²µ¹¼½¾] */
        if (a == 0x221A && IN_SET(b, bad_after_root))
            return 1;                                                                          /* MacRoman √... */
        if (a == 0x2248 && (b == 0xB0 || b == 0xA2)) return 1;                                 /* ≈[°¢] */
        if (a == 0x201A && b == 0xC4 && IN_SET(c, bad_after_quote_a))
            return 1;                                                                          /* ‚Ä[ìîïòôúùû†°¢π] */
        if (a == 0x201A && (b == 0xE2 || b == 0xF3) && IN_SET(c, bad_after_quote_x)) return 1; /* ‚[âó][àä°ê] */
        if (a == 0x432 && b == 0x402) return 1;                                                /* вЂ */
        if (IN_SET(a, bad_cyrillic) && IN_SET(c, bad_cyrillic) &&          /* [ВГРС]x[ВГРС] */
            ((mb & (B_C1 | B_BAD | B_SP | B_EP | B_CUR)) || b == 0xB0 || b == 0xB5))
            return 1;
        if (a == 0x413 && b == 0x45E && c == 0x412 && d == 0x402 && i + 6 < n && t[i + 4] == 0x412 &&
            t[i + 5] != '\n' && (ascii_letter(t[i + 6]) || t[i + 6] == ' '))
            return 1;                                                                          /* ГўВЂВ.[A-Za-z ] */
        if (a == 0xC3 && (b == 0xA0 || b == 0xA1)) return 1;                                   /* Ã[\xa0¡] */
        if (ascii_lower(a) && (b == 0xC3 || b == 0xC2) && c == ' ') return 1;                  /* [a-z]\s?[ÃÂ][ ] */
        if (ascii_lower(a) && b != NONE && is_space(b) && (c == 0xC3 || c == 0xC2) && d == ' ') return 1;
        if (i == 0 && (a == 0xC3 || a == 0xC2) && b == ' ') return 1;                         /* ^[ÃÂ][ ] */
        if ((ascii_lower(a) || IN_SET(a, ascii_punct) || (ma & B_EP)) && b == 0xC2 &&       /* Â standing for itself */
            (c == ' ' || (mc & (B_SP | B_EP))))
            return 1;
        if (a == 0x3B2 && b == 0x20AC && IN_SET(c, bad_after_beta_euro)) return 1; /* β€[™\xa0Ά\xad®°] */
        if (IN_SET(a, bad_greek) && IN_SET(c, bad_greek) &&          /* [ΒΓΞΟ]x[ΒΓΞΟ] */
            ((mb & (B_C1 | B_BAD | B_SP | B_EP | B_CUR)) || b == 0xB0))
            return 1;
        if (a == 0x101 && b == 0x20AC) return 1;                                               /* ā€ */
    }
    return 0;
}
#undef IN_SET

/* ---- ftfy 6.3.1: fix_encoding (undo UTF-8 that was decoded as a single-byte encoding) ---- */

/* chardata.ALTERED_UTF8_RE: UTF-8 sequences whose byte A0 became a space. `at` is a position in
   the encoded bytes; returns the length of the match there or 0. Alternatives in regex order. */
static int altered_utf8_at(const unsigned char *b, size_t len, size_t at)
{
    size_t r = len - at;
    unsigned c = b[at], x1 = r > 1 ? b[at + 1] : 0, x2 = r > 2 ? b[at + 2] : 0, x3 = r > 3 ? b[at + 3] : 0;
#define CONT_NOT_85_A0(x) ((x) >= 0x80 && (x) <= 0xBF && (x) != 0x85 && (x) != 0xA0)
#define CONT(x) ((x) >= 0x80 && (x) <= 0xBF)
    if (r >= 2 && (c == 0xC2 || c == 0xC3 || c == 0xC5 || c == 0xCE || c == 0xD0 || c == 0xD9) && x1 == ' ') return 2;
    if (r >= 3 && (c == 0xE2 || c == 0xE3) && x1 == ' ' && CONT_NOT_85_A0(x2)) return 3;
    if (r >= 3 && c >= 0xE0 && c <= 0xE3 && CONT_NOT_85_A0(x1) && x2 == ' ') return 3;
    if (r >= 4 && c == 0xF0 && x1 == ' ' && CONT(x2) && CONT(x3)) return 4;
    if (r >= 4 && c == 0xF0 && CONT(x1) && x2 == ' ' && CONT(x3)) return 4;
    if (r >= 4 && c == 0xF0 && CONT(x1) && CONT(x2) && x3 == ' ') return 4;
    return 0;
}

/* fixes.restore_byte_a0: put back the A0 bytes. First "Ã " as a word of its own keeps its space
   (A_GRAVE_WORD_RE: "à la"), then every ALTERED_UTF8_RE match gets its spaces turned into A0. */
static size_t restore_byte_a0(const unsigned char *in, size_t len, unsigned char *tmp, unsigned char *out)
{
    size_t i = 0, n = 0, m = 0;
    while (i < len) {
        if (in[i] == 0xC3 && i + 1 < len && in[i + 1] == ' ') {
            const unsigned char *s = in + i + 2;
            size_t r = len - i - 2;
            int keep = (r >= 1 && s[0] == ' ') || (r >= 2 && s[0] == 's' && s[1] == ' ') ||
                       (r >= 5 && (!memcmp(s, "quele", 5) || !memcmp(s, "quela", 5) || !memcmp(s, "quilo", 5)));
            if (!keep) { tmp[n++] = 0xC3; tmp[n++] = 0xA0; tmp[n++] = ' '; i += 2; continue; }
        }
        tmp[n++] = in[i++];
    }
    for (i = 0; i < n; ) {
        size_t k = (size_t)altered_utf8_at(tmp, n, i), j;
        if (!k) { out[m++] = tmp[i++]; continue; }
        for (j = 0; j < k; j++) out[m++] = tmp[i + j] == ' ' ? 0xA0 : tmp[i + j];
        i += k;
    }
    return m;
}

/* fixes.replace_lossy_sequences (chardata.LOSSY_UTF8_RE): UTF-8 sequences in which some bytes were
   lost (byte 1A stands for a U+FFFD of a sloppy codec, '?' sometimes too) become the bytes of U+FFFD. */
static int lossy_at(const unsigned char *b, size_t len, size_t at)
{
    size_t r = len - at;
    unsigned c = b[at], x1 = r > 1 ? b[at + 1] : 0, x2 = r > 2 ? b[at + 2] : 0, x3 = r > 3 ? b[at + 3] : 0;
    unsigned x4 = r > 4 ? b[at + 4] : 0, x5 = r > 5 ? b[at + 5] : 0;
#define SUB(x) ((x) == 0x1A)
#define SUBQ(x) ((x) == 0x1A || (x) == '?')
#define SUBC(x) ((x) == 0x1A || CONT(x))
#define SUBQC(x) ((x) == 0x1A || (x) == '?' || CONT(x))
    if (r >= 2 && c >= 0xC2 && c <= 0xDF && SUB(x1)) return 2;
    if (r >= 2 && (c == 0xC2 || c == 0xC3) && x1 == '?') return 2;
    if (r >= 6 && c == 0xED && x1 >= 0xA0 && x1 <= 0xAF && SUBQ(x2) && x3 == 0xED && x4 >= 0xB0 && x4 <= 0xBF && SUBQC(x5)) return 6;
    if (r >= 6 && c == 0xED && x1 >= 0xA0 && x1 <= 0xAF && SUBQC(x2) && x3 == 0xED && x4 >= 0xB0 && x4 <= 0xBF && SUBQ(x5)) return 6;
    if (r >= 3 && c >= 0xE0 && c <= 0xEF && SUBQ(x1) && SUBC(x2)) return 3;
    if (r >= 3 && c >= 0xE0 && c <= 0xEF && SUBC(x1) && SUBQ(x2)) return 3;
    if (r >= 4 && c >= 0xF0 && c <= 0xF4 && SUBQ(x1) && SUBC(x2) && SUBC(x3)) return 4;
    if (r >= 4 && c >= 0xF0 && c <= 0xF4 && SUBC(x1) && SUBQ(x2) && SUBC(x3)) return 4;
    if (r >= 4 && c >= 0xF0 && c <= 0xF4 && SUBC(x1) && SUBC(x2) && SUBQ(x3)) return 4;
    return SUB(c) ? 1 : 0;
#undef SUB
#undef SUBQ
#undef SUBC
#undef SUBQC
}

static size_t replace_lossy_sequences(const unsigned char *in, size_t len, unsigned char *out)
{
    size_t i = 0, m = 0;
    while (i < len) {
        size_t k = (size_t)lossy_at(in, len, i);
        if (!k) { out[m++] = in[i++]; continue; }
        out[m++] = 0xEF; out[m++] = 0xBF; out[m++] = 0xBD;
        i += k;
    }
    return m;
}
#undef CONT
#undef CONT_NOT_85_A0

/* bytes.decode("utf-8-variants") of ftfy's bad_codecs: strict UTF-8, except that C0 80 is U+0000
   (Java) and a CESU-8 surrogate pair ED A0-AF xx ED B0-BF xx is one code point. Two quirks of its
   regexes are kept: "$" also matches before a final "\n", so a C0 followed by the final "\n"
   decodes (with the "\n") to U+0000, and a "\n" may stand for the last byte of a final pair. */
static int decode_utf8_variants(const unsigned char *b, size_t len, uint32_t *out, size_t *n)
{
    size_t i = 0, w = 0, start = 0, k;
    for (;;) {
        while (i < len && b[i] != 0xC0 && !(b[i] == 0xED && (i + 1 == len || b[i + 1] >= 0xA0))) i++;
        if (utf8_decode(b + start, i - start, 0, out + w, &k)) return -1;   /* plain UTF-8 before it */
        w += k;
        if (i == len) break;
        if (b[i] == 0xC0) {
            if (i + 1 < len && (b[i + 1] == 0x80 || (b[i + 1] == '\n' && i + 2 == len))) out[w++] = 0;
            else return -1;
            i += 2;
        } else {
            const unsigned char *s = b + i;
            if (len - i < 6 || s[1] > 0xAF || (s[2] & 0xC0) != 0x80 || s[3] != 0xED || s[4] < 0xB0 || s[4] > 0xBF ||
                !((s[5] & 0xC0) == 0x80 || (s[5] == '\n' && len - i == 6)))
                return -1;                   /* a lone surrogate: an error, as in Python */
            out[w++] = 0x10000 + ((uint32_t)(s[1] & 0x0F) << 16) + ((uint32_t)(s[2] & 0x3F) << 10) +
                       ((uint32_t)(s[4] & 0x0F) << 6) + (s[5] & 0x3F);
            i += 6;
        }
        start = i;
    }
    *n = w;
    return 0;
}

typedef struct fixer { const sd_clip_vocab *v; sd_arena *a; sd_error *err; int depth; } fixer;

static int fix_encoding(fixer *f, cps *t);

/* fixes.decode_inconsistent_utf8: where UTF8_DETECTOR_RE finds stretches that look like UTF-8
   mojibake (runs of lead + continuation "bytes" not preceded by a strict continuation), fix each
   stretch on its own if it is shorter than the text and looks bad. */
static int decode_inconsistent_utf8(fixer *f, cps *t, int *changed)
{
    const sd_clip_vocab *v = f->v;
    size_t n = t->n, pos = 0, p, w = 0, i, mark = sd_arena_mark(f->a);
    uint8_t *clue;
    uint32_t *out;
    *changed = 0;
    clue = (uint8_t *)arena_array(f->a, n + 1, 1, f->err);
    out = (uint32_t *)arena_array(f->a, n + 1, sizeof(uint32_t), f->err);
    if (!clue || !out) return SD_ERR_MEMORY;
    for (i = 0; i < n; i++) clue[i] = (uint8_t)utf8_clue(v, t->c[i]);
    clue[n] = 0;
    for (p = 0; p < n; p++) {
        size_t e = p;
        if (p > 0 && (clue[p - 1] & CLUE_CONT_STRICT)) continue;   /* the (?<! ...) look-behind */
        for (;;) {                           /* ( lead2 cont | lead3 cont{2} | lead4 cont{3} )+ */
            size_t k;
            for (k = 1; k <= 3; k++) {       /* the alternatives in order; the first that fits wins */
                size_t j;
                if (!(clue[e] & (k == 1 ? CLUE_LEAD2 : k == 2 ? CLUE_LEAD3 : CLUE_LEAD4)) || e + k >= n) continue;
                for (j = 1; j <= k && (clue[e + j] & CLUE_CONT); j++) {}
                if (j > k) break;
            }
            if (k > 3) break;
            e += k + 1;
        }
        if (e == p) continue;
        memcpy(out + w, t->c + pos, (p - pos) * sizeof(uint32_t));
        w += p - pos;
        if (e - p < n && is_bad(v, t->c + p, e - p) && f->depth < 64) {   /* (depth is O(log n); 64 is a guard) */
            size_t inner = sd_arena_mark(f->a);
            cps s;
            int rc;
            if (cps_init(&s, e - p, f->a, f->err)) return SD_ERR_MEMORY;
            memcpy(s.c, t->c + p, (e - p) * sizeof(uint32_t));
            s.n = e - p;
            f->depth++;
            rc = fix_encoding(f, &s);
            f->depth--;
            if (rc) return rc;
            if (s.n > e - p) return fail(f->err, SD_ERR_UNSUPPORTED, "tokenizer: internal error (mojibake fix grew)");
            memcpy(out + w, s.c, s.n * sizeof(uint32_t));
            w += s.n;
            sd_arena_reset(f->a, inner);
        } else {
            memcpy(out + w, t->c + p, (e - p) * sizeof(uint32_t));
            w += e - p;
        }
        pos = e;
        p = e - 1;
    }
    memcpy(out + w, t->c + pos, (n - pos) * sizeof(uint32_t));
    w += n - pos;
    if (!cps_equal(out, w, t->c, n)) {
        memcpy(t->c, out, w * sizeof(uint32_t));
        t->n = w;
        *changed = 1;
    }
    sd_arena_reset(f->a, mark);
    return SD_OK;
}

/* fixes.fix_c1_controls: C1 controls U+0080..U+009F become what Windows-1252 has at those bytes. */
static void fix_c1_controls(const sd_clip_vocab *v, cps *t)
{
    size_t i;
    for (i = 0; i < t->n; i++)
        if (t->c[i] >= 0x80 && t->c[i] <= 0x9F) t->c[i] = v->charmap[ENC_CP1252][t->c[i] - 0x80];
}

/* ftfy's _fix_encoding_one_step_and_explain. */
static int fix_encoding_step(fixer *f, cps *t, int *changed)
{
    const sd_clip_vocab *v = f->v;
    size_t n = t->n, i, mark = sd_arena_mark(f->a);
    unsigned possible = (1u << ENC_COUNT) - 1;
    int e, rc, has_c1 = 0;
    *changed = 0;
    for (i = 0; i < n && t->c[i] < 0x80; i++) {}
    if (i == n || !is_bad(v, t->c, n)) return SD_OK;     /* ASCII, or nothing looks like mojibake */
    for (i = 0; i < n; i++) {                /* which encodings can encode the whole text? */
        for (e = 0; e < ENC_COUNT; e++)
            if ((possible >> e & 1) && charmap_byte(v, e, t->c[i]) < 0) possible &= ~(1u << e);
        has_c1 |= t->c[i] >= 0x80 && t->c[i] <= 0x9F;
    }
    for (e = 0; e < ENC_COUNT; e++) {        /* UTF-8 read as encoding e? encode, fix up, decode */
        unsigned char *bytes, *tmp, *fixed;
        uint32_t *decoded;
        size_t len = n, k;
        if (!(possible >> e & 1)) continue;
        bytes = (unsigned char *)arena_array(f->a, 4 * n + 8, 1, f->err);
        tmp = (unsigned char *)arena_array(f->a, 4 * n + 8, 1, f->err);
        fixed = (unsigned char *)arena_array(f->a, 4 * n + 8, 1, f->err);
        if (!bytes || !tmp || !fixed) return SD_ERR_MEMORY;
        for (i = 0; i < n; i++) bytes[i] = (unsigned char)charmap_byte(v, e, t->c[i]);
        if (e != ENC_MACROMAN) {             /* (where it would take an en dash + space for UTF-8) */
            for (i = 0; i < len && !altered_utf8_at(bytes, len, i); i++) {}
            if (i < len) {
                len = restore_byte_a0(bytes, len, tmp, fixed);
                memcpy(bytes, fixed, len);
            }
        }
        if (is_sloppy(e)) {
            len = replace_lossy_sequences(bytes, len, fixed);
            memcpy(bytes, fixed, len);
        }
        decoded = (uint32_t *)arena_array(f->a, len + 1, sizeof(uint32_t), f->err);
        if (!decoded) return SD_ERR_MEMORY;
        if (decode_utf8_variants(bytes, len, decoded, &k) == 0) {
            *changed = !cps_equal(decoded, k, t->c, n);
            if (k > t->cap) return fail(f->err, SD_ERR_UNSUPPORTED, "tokenizer: internal error (mojibake fix grew)");
            memcpy(t->c, decoded, k * sizeof(uint32_t));
            t->n = k;
            sd_arena_reset(f->a, mark);
            return SD_OK;
        }
        sd_arena_reset(f->a, mark);
    }
    rc = decode_inconsistent_utf8(f, t, changed);
    if (rc || *changed) return rc;
    if (has_c1) {                            /* Latin-1 meant as Windows-1252, or stray C1 controls */
        size_t before = 0;
        for (i = 0; i < n; i++) before += t->c[i] >= 0x80 && t->c[i] <= 0x9F && t->c[i] != 0x81 && t->c[i] != 0x8D &&
                                           t->c[i] != 0x8F && t->c[i] != 0x90 && t->c[i] != 0x9D;
        fix_c1_controls(v, t);
        *changed = before > 0;
    }
    return SD_OK;
}

/* ftfy.fix_encoding: one step at a time until nothing changes. */
static int fix_encoding(fixer *f, cps *t)
{
    size_t guard, steps = 4 * t->n + 16;     /* every step shrinks or settles the text */
    for (guard = 0; guard < steps; guard++) {
        int changed, rc = fix_encoding_step(f, t, &changed);
        if (rc || !changed) return rc;
    }
    return SD_OK;
}

/* ---- ftfy 6.3.1: the other fixes of fix_text ---- */

/* The value of the HTML entity s[0 .. len) (the text after '&', through ';'), as
   fixes._unescape_fixup decodes it: a name from chardata.v->n_ent (html5 names ending in ';',
   and all-caps spellings of all-lowercase names, meaning char.upper()), or "#123;" / "#x7B;" as
   html.unescape reads it. Returns the number of code points written to val (0..3), -1 to keep it. */
static int entity_value(const sd_clip_vocab *v, const uint32_t *s, size_t len, uint32_t *val)
{
    char name[32];
    size_t i;
    int lo, hi, k;
    if (s[0] == '#') {
        int hex = s[1] == 'x' || s[1] == 'X';
        uint32_t num = 0;
        size_t from = hex ? 2 : 1;
        if (from + 1 >= len) return -1;
        for (i = from; i + 1 < len; i++) {
            uint32_t c = s[i], dgt = c >= '0' && c <= '9' ? c - '0' : !hex ? 99 : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
                                      c >= 'A' && c <= 'F' ? c - 'A' + 10 : 99;
            if (dgt == 99) return -1;        /* html.unescape would stop early: ftfy keeps the text */
            num = num > 0x10FFFF ? num : num * (hex ? 16 : 10) + dgt;
        }
        if (num == 0) val[0] = 0xFFFD;       /* html._invalid_charrefs */
        else if (num == 0x0D) val[0] = '\r';
        else if (num >= 0x80 && num <= 0x9F) val[0] = v->charmap[ENC_CP1252][num - 0x80];
        else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) val[0] = 0xFFFD;
        else if ((num >= 1 && num <= 8) || num == 0x0B || (num >= 0x0E && num <= 0x1F) || (num >= 0x7F && num <= 0x9F) ||
                 (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
            return 0;                        /* html._invalid_codepoints: dropped */
        else val[0] = num;
        return val[0] == ';' ? -1 : 1;       /* a ';' in the result means "not fully decoded" */
    }
    for (i = 0; i < len; i++) name[i] = (char)s[i];
    for (lo = 0, hi = v->n_ent - 1; lo <= hi; ) {     /* html5 names, sorted */
        int mid = (lo + hi) / 2;
        size_t ml = v->ent_off[mid + 1] - v->ent_off[mid];
        int cmp = memcmp(name, v->ent_pool + v->ent_off[mid], len < ml ? len : ml);
        if (!cmp) cmp = len < ml ? -1 : len > ml;
        if (!cmp) {
            for (k = 0; k < 3 && v->ent_val[3 * mid + k]; k++) val[k] = v->ent_val[3 * mid + k];
            return k;
        }
        if (cmp < 0) hi = mid - 1; else lo = mid + 1;
    }
    for (lo = 0, hi = v->n_upper - 1; lo <= hi; ) { /* their upper-case spellings, same order */
        int mid = (lo + hi) / 2, e = v->upper_of[mid], cmp = 0;
        size_t ml = v->ent_off[e + 1] - v->ent_off[e], j;
        for (j = 0; j < len && j < ml && !cmp; j++) {
            char u = v->ent_pool[v->ent_off[e] + j];
            u = (char)(u >= 'a' && u <= 'z' ? u - 32 : u);
            cmp = (unsigned char)name[j] - (unsigned char)u;
        }
        if (!cmp) cmp = len < ml ? -1 : len > ml;
        if (!cmp) {
            for (k = 0; k < 3 && v->upper_val[3 * mid + k]; k++) val[k] = v->upper_val[3 * mid + k];
            return k;
        }
        if (cmp < 0) hi = mid - 1; else lo = mid + 1;
    }
    return -1;
}

static int ascii_alnum(uint32_t c) { return ascii_letter(c) || (c >= '0' && c <= '9'); }

/* fixes.unescape_html: every match of &#?[0-9A-Za-z]{1,24}; that means something is replaced.
   Values are never longer than their entities, so this works in place. */
static void unescape_html(const sd_clip_vocab *v, cps *t)
{
    size_t i = 0, w = 0, n = t->n;
    while (i < n) {
        size_t j = i + 1, k;
        uint32_t val[3];
        int m;
        if (t->c[i] != '&') { t->c[w++] = t->c[i++]; continue; }
        if (j < n && t->c[j] == '#') j++;
        for (k = j; k < n && k - j < 25 && ascii_alnum(t->c[k]); k++) {}
        if (k == j || k - j > 24 || k >= n || t->c[k] != ';' || (m = entity_value(v, t->c + i + 1, k - i, val)) < 0) {
            t->c[w++] = t->c[i++];
            continue;
        }
        memcpy(t->c + w, val, (size_t)m * sizeof(uint32_t));
        w += (size_t)m;
        i = k + 1;
    }
    t->n = w;
}

/* chardata.LIGATURES: Latin ligatures and digraphs, split into their letters. */
static const struct { uint16_t from, to[3]; } latin_ligatures[] = {
    {0x132, {'I', 'J'}}, {0x133, {'i', 'j'}}, {0x149, {0x2BC, 'n'}}, {0x1C4, {'D', 0x17D}}, {0x1C5, {'D', 0x17E}},
    {0x1C6, {'d', 0x17E}}, {0x1C7, {'L', 'J'}}, {0x1C8, {'L', 'j'}}, {0x1C9, {'l', 'j'}}, {0x1CA, {'N', 'J'}},
    {0x1CB, {'N', 'j'}}, {0x1CC, {'n', 'j'}}, {0x1F1, {'D', 'Z'}}, {0x1F2, {'D', 'z'}}, {0x1F3, {'d', 'z'}},
    {0xFB00, {'f', 'f'}}, {0xFB01, {'f', 'i'}}, {0xFB02, {'f', 'l'}}, {0xFB03, {'f', 'f', 'i'}},
    {0xFB04, {'f', 'f', 'l'}}, {0xFB05, {0x17F, 't'}}, {0xFB06, {'s', 't'}},
};

/* What fixes.fix_latin_ligatures and fix_character_width (chardata.WIDTH_MAP: U+3000 and the
   NFKC of U+FF01..U+FFEF) make of c; returns the number of code points (1..3). */
static int expand_char(const sd_clip_vocab *v, uint32_t c, uint32_t *out, int ligatures)
{
    size_t i;
    out[0] = c;
    if (ligatures) {
        if (c < 0x132 || (c > 0x1F3 && c < 0xFB00) || c > 0xFB06) return 1;
        for (i = 0; i < sizeof latin_ligatures / sizeof latin_ligatures[0]; i++)
            if (latin_ligatures[i].from == c) {
                int k;
                for (k = 0; k < 3 && latin_ligatures[i].to[k]; k++) out[k] = latin_ligatures[i].to[k];
                return k;
            }
        return 1;
    }
    if (c == 0x3000) out[0] = ' ';
    if (c < 0xFF01 || c > 0xFFEF || !v->width[c - 0xFF01]) return 1;
    out[0] = v->width[c - 0xFF01];
    if (c == 0xFFE3) { out[1] = 0x304; return 2; }   /* FULLWIDTH MACRON: space + combining macron */
    return 1;
}

static int expand_text(const sd_clip_vocab *v, cps *t, int ligatures, sd_arena *a, sd_error *err)
{
    size_t i, need = 0, w;
    uint32_t tmp[3];
    for (i = 0; i < t->n; i++) need += (size_t)expand_char(v, t->c[i], tmp, ligatures);
    if (cps_reserve(t, need, a, err)) return SD_ERR_MEMORY;
    for (i = t->n, w = need; i-- > 0; ) {   /* back to front, in place */
        int k = expand_char(v, t->c[i], tmp, ligatures);
        while (k-- > 0) t->c[--w] = tmp[k];
    }
    t->n = need;
    return SD_OK;
}

/* fixes.uncurl_quotes, fix_line_breaks, remove_terminal_escapes and remove_control_chars,
   in that order; each only shrinks the text. */
static void simple_fixes(const sd_clip_vocab *v, cps *t)
{
    size_t i, w;
    for (i = 0; i < t->n; i++) {             /* curly quotes (and U+02BC) to straight ones */
        uint32_t c = t->c[i];
        if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) t->c[i] = '\'';
        else if (c >= 0x201C && c <= 0x201F) t->c[i] = '"';
    }
    for (i = w = 0; i < t->n; i++) {         /* CRLF, CR, LINE/PARAGRAPH SEPARATOR, NEL -> LF */
        uint32_t c = t->c[i];
        if (c == '\r' && i + 1 < t->n && t->c[i + 1] == '\n') continue;
        t->c[w++] = c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85 ? '\n' : c;
    }
    t->n = w;
    for (i = w = 0; i < t->n; i++) {         /* ANSI escapes: ESC [ (\d|;)* [A-Za-z] */
        size_t j = i + 2;
        if (t->c[i] == 0x1B && i + 1 < t->n && t->c[i + 1] == '[') {
            while (j < t->n && (t->c[j] == ';' || (uprop(v, t->c[j]) & PROP_DIGIT))) j++;
            if (j < t->n && ascii_letter(t->c[j])) { i = j; continue; }
        }
        t->c[w++] = t->c[i];
    }
    t->n = w;
    for (i = w = 0; i < t->n; i++) {         /* chardata.CONTROL_CHARS */
        uint32_t c = t->c[i];
        if (c <= 8 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
            c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC))
            continue;
        t->c[w++] = c;
    }
    t->n = w;
}

/* ftfy.fix_and_explain of one segment: all fixes, over and over until the text stops changing. */
static int fix_segment(fixer *f, cps *t, int unescape)
{
    const sd_clip_vocab *v = f->v;
    size_t guard, steps = 4 * t->n + 16;
    cps orig;
    if (cps_init(&orig, t->cap, f->a, f->err)) return SD_ERR_MEMORY;
    for (guard = 0; guard < steps; guard++) {
        int rc;
        if (cps_reserve(&orig, t->n, f->a, f->err)) return SD_ERR_MEMORY;
        memcpy(orig.c, t->c, t->n * sizeof(uint32_t));
        orig.n = t->n;
        if (unescape) unescape_html(v, t);
        if ((rc = fix_encoding(f, t))) return rc;
        fix_c1_controls(v, t);
        if ((rc = expand_text(v, t, 1, f->a, f->err)) || (rc = expand_text(v, t, 0, f->a, f->err))) return rc;
        simple_fixes(v, t);                  /* (fix_surrogates has nothing to do: no surrogates here) */
        if ((rc = nfc(v, t, f->a, f->err))) return rc;
        if (cps_equal(orig.c, orig.n, t->c, t->n)) break;
    }
    return SD_OK;
}

/* ftfy.fix_text with its default configuration: the text is fixed line by line (segments end
   after '\n', at most a million code points), and HTML entities are left alone from the first
   line that contains '<' on. */
static int fix_text(const sd_clip_vocab *v, const uint32_t *in, size_t n, cps *out, sd_arena *a, sd_error *err)
{
    size_t pos = 0;
    int unescape = 1;
    fixer f;
    f.v = v; f.a = a; f.err = err; f.depth = 0;
    out->n = 0;
    while (pos < n) {
        size_t end = pos, i, mark;
        cps seg;
        int rc;
        while (end < n && in[end] != '\n') end++;
        end = end < n ? end + 1 : n;
        if (end - pos > 1000000) end = pos + 1000000;
        for (i = pos; i < end && unescape; i++) if (in[i] == '<') unescape = 0;
        if (cps_reserve(out, out->n + 4 * (end - pos) + 16, a, err)) return SD_ERR_MEMORY;
        mark = sd_arena_mark(a);
        if (cps_init(&seg, 4 * (end - pos) + 16, a, err)) return SD_ERR_MEMORY;
        memcpy(seg.c, in + pos, (end - pos) * sizeof(uint32_t));
        seg.n = end - pos;
        if ((rc = fix_segment(&f, &seg, unescape))) return rc;
        if (seg.n > out->cap - out->n) return fail(err, SD_ERR_UNSUPPORTED, "tokenizer: internal error (text grew)");
        memcpy(out->c + out->n, seg.c, seg.n * sizeof(uint32_t));
        out->n += seg.n;
        sd_arena_reset(a, mark);
        pos = end;
    }
    return SD_OK;
}

/* ---- CLIPTokenizer._tokenize: whitespace_clean, lower(), the pre-tokenizer regex, BPE ---- */

/* whitespace_clean (regex's \s+ -> " ", then str.strip()) followed by str.lower(), whose one
   context-dependent rule is the final sigma: Σ becomes ς after a cased letter (skipping
   case-ignorable characters) when no cased letter follows. out needs room for 2 * n. */
static size_t clean_and_lower(const sd_clip_vocab *v, const uint32_t *in, size_t n, uint32_t *tmp, uint32_t *out)
{
    size_t i, m = 0, s = 0, e, w = 0;
    for (i = 0; i < n; i++) {
        if ((uprop(v, in[i]) & PROP_CLASS) == CLASS_SPACE) {
            if (i == 0 || (uprop(v, in[i - 1]) & PROP_CLASS) != CLASS_SPACE) tmp[m++] = ' ';
            continue;
        }
        tmp[m++] = in[i];
    }
    for (e = m; e > 0 && is_space(tmp[e - 1]); e--) {}
    for (s = 0; s < e && is_space(tmp[s]); s++) {}
    for (i = s; i < e; i++) {
        uint32_t c = tmp[i];
        if (c == 0x130) { out[w++] = 'i'; out[w++] = 0x307; continue; }   /* İ -> i + combining dot */
        if (c == 0x3A3) {
            size_t j = i;
            unsigned p = 0;
            int final = 0;
            while (j > s && ((p = uprop(v, tmp[j - 1])) & PROP_CASE_IGNORABLE)) j--;
            if (j > s && (p & PROP_CASED)) {
                for (j = i + 1; j < e && ((p = uprop(v, tmp[j])) & PROP_CASE_IGNORABLE); j++) {}
                final = j == e || !(p & PROP_CASED);
            }
            out[w++] = final ? 0x3C2 : 0x3C3;
            continue;
        }
        out[w++] = lower_char(v, c);
    }
    return w;
}

static int starts_with(const uint32_t *t, size_t n, const char *lit)
{
    size_t i;
    for (i = 0; lit[i]; i++) if (i >= n || t[i] != (unsigned char)lit[i]) return 0;
    return 1;
}

/* Does t[0..n) start with `lit`, compared as the IGNORECASE regex does (s also matches ſ)? */
static int starts_with_ci(const uint32_t *t, size_t n, const char *lit)
{
    size_t i;
    for (i = 0; lit[i]; i++) {
        uint32_t c = i < n ? t[i] : 0, l = (unsigned char)lit[i];
        if (!(c == l || (ascii_lower(l) && c == l - 32) || (l == 's' && c == 0x17F))) return 0;
    }
    return 1;
}

typedef struct sink { int32_t *ids; size_t cap, n; } sink;

static void sink_push(sink *s, int32_t id)
{
    if (s->n < s->cap) s->ids[s->n] = id;
    s->n++;
}

static uint32_t pair_slot(uint32_t key, uint32_t mask) { return (key * 2654435761u) >> 15 & mask; }

static int32_t merge_rank(const sd_clip_vocab *v, int32_t left, int32_t right)
{
    uint32_t key = (uint32_t)left << 16 | (uint32_t)right, h = pair_slot(key, v->pair_mask);
    for (; v->pair_key[h] != 0xFFFFFFFFu; h = (h + 1) & v->pair_mask)
        if (v->pair_key[h] == key) return v->pair_rank[h];
    return -1;
}

/* A candidate merge: rank, position of the left symbol, and both symbols as they were. */
typedef struct bpe_merge { int32_t rank, pos, left, right; } bpe_merge;

static int merge_before(const bpe_merge *x, const bpe_merge *y) { return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos); }

static void heap_push(bpe_merge *h, size_t *n, bpe_merge m)
{
    size_t i = (*n)++;
    while (i > 0 && merge_before(&m, &h[(i - 1) / 2])) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = m;
}

static bpe_merge heap_pop(bpe_merge *h, size_t *n)
{
    bpe_merge top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && merge_before(&h[c + 1], &h[c])) c++;
        if (!merge_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* CLIPTokenizer.bpe on one pre-tokenized word: its UTF-8 bytes become byte symbols (the last one
   with </w>), then the adjacent pair with the lowest merge rank is merged, all its occurrences
   left to right, until no pair has a rank. A heap ordered by (rank, position) and a linked list
   of symbols give that same order of merges in O(n log n). */
static int bpe_word(const sd_clip_vocab *v, const uint32_t *w, size_t len, sink *out, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a), n = 0, nh = 0, i;
    unsigned char *bytes = (unsigned char *)arena_array(a, 4 * len + 1, 1, err);
    int32_t *id, *next, *prev;
    bpe_merge *heap;
    if (!bytes) return SD_ERR_MEMORY;
    for (i = 0; i < len; i++) n += utf8_put(w[i], bytes + n);
    if (n == 15 && !memcmp(bytes, "<|startoftext|>", 15)) { sink_push(out, SD_CLIP_BOS); goto done; }
    if (n == 13 && !memcmp(bytes, "<|endoftext|>", 13)) { sink_push(out, SD_CLIP_EOS); goto done; }
    id = (int32_t *)arena_array(a, 3 * n, sizeof(int32_t), err);
    heap = (bpe_merge *)arena_array(a, 3 * n, sizeof(bpe_merge), err);
    if (!id || !heap) return SD_ERR_MEMORY;
    next = id + n;
    prev = id + 2 * n;
    for (i = 0; i < n; i++) {
        id[i] = v->byte_id[bytes[i]] + (i == n - 1 ? 256 : 0);
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (i = 0; i + 1 < n; i++) {
        bpe_merge m;
        m.rank = merge_rank(v, id[i], id[i + 1]);
        m.pos = (int32_t)i; m.left = id[i]; m.right = id[i + 1];
        if (m.rank >= 0) heap_push(heap, &nh, m);
    }
    while (nh > 0) {
        bpe_merge m = heap_pop(heap, &nh), q;
        int32_t p = m.pos, r = next[p];
        if (id[p] != m.left || r < 0 || id[r] != m.right) continue;   /* stale: a symbol changed */
        id[p] = CLIP_FIRST_MERGE + m.rank;
        next[p] = next[r];
        if (next[r] >= 0) prev[next[r]] = p;
        id[r] = -1;
        if (prev[p] >= 0 && (q.rank = merge_rank(v, id[prev[p]], id[p])) >= 0) {
            q.pos = prev[p]; q.left = id[prev[p]]; q.right = id[p];
            heap_push(heap, &nh, q);
        }
        if (next[p] >= 0 && (q.rank = merge_rank(v, id[p], id[next[p]])) >= 0) {
            q.pos = p; q.left = id[p]; q.right = id[next[p]];
            heap_push(heap, &nh, q);
        }
    }
    for (i = 0; i < n; i = next[i] < 0 ? n : (size_t)next[i]) sink_push(out, id[i]);
done:
    sd_arena_reset(a, mark);
    return SD_OK;
}

/* CLIP's pre-tokenizer regex (IGNORECASE), applied with findall:
   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
   Characters no branch matches (spaces, and U+0345, which IGNORECASE makes neither a letter nor
   a non-letter) are skipped. */
static int split_words(const sd_clip_vocab *v, const uint32_t *t, size_t n, sink *out, sd_arena *a, sd_error *err)
{
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    size_t i = 0;
    while (i < n) {
        unsigned cls = uprop(v, t[i]) & PROP_CLASS;
        size_t e = i + 1, k;
        int rc;
        if (starts_with_ci(t + i, n - i, "<|startoftext|>")) e = i + 15;
        else if (starts_with_ci(t + i, n - i, "<|endoftext|>")) e = i + 13;
        else {
            for (k = 0; k < 7 && !starts_with_ci(t + i, n - i, contractions[k]); k++) {}
            if (k < 7) e = i + strlen(contractions[k]);
            else if (cls == CLASS_LETTER || cls == CLASS_OTHER)
                while (e < n && (uprop(v, t[e]) & PROP_CLASS) == cls) e++;
            else if (cls != CLASS_NUMBER) { i++; continue; }
        }
        if ((rc = bpe_word(v, t + i, e - i, out, a, err))) return rc;
        i = e;
    }
    return SD_OK;
}

/* One piece of text between special tokens: CLIPTokenizer._tokenize. */
static int tokenize_piece(const sd_clip_vocab *v, const uint32_t *in, size_t n, sink *out, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a), m;
    cps fixed;
    uint32_t *tmp, *low;
    int rc;
    if (cps_init(&fixed, 4 * n + 16, a, err)) return SD_ERR_MEMORY;
    if ((rc = fix_text(v, in, n, &fixed, a, err))) return rc;
    tmp = (uint32_t *)arena_array(a, fixed.n + 1, sizeof(uint32_t), err);
    low = (uint32_t *)arena_array(a, 2 * fixed.n + 1, sizeof(uint32_t), err);
    if (!tmp || !low) return SD_ERR_MEMORY;
    m = clean_and_lower(v, fixed.c, fixed.n, tmp, low);
    if ((rc = split_words(v, low, m, out, a, err))) return rc;
    sd_arena_reset(a, mark);
    return SD_OK;
}

SD_API size_t sd_clip_scratch_bytes(size_t text_size)
{
    return 64 * 1024 + 320 * text_size;
}

SD_API int sd_clip_token_ids(const sd_clip_vocab *v, const char *text, size_t text_size, sd_clip_pad pad,
                             int32_t *ids, size_t cap, size_t *count, sd_arena *scratch, sd_error *err)
{
    size_t mark, n = 0, i, start = 0;
    uint32_t *t;
    sink out;
    int rc = SD_OK;
    if (count) *count = 0;
    if (!v || (!text && text_size) || (!ids && cap) || !count || !scratch)
        return fail(err, SD_ERR_ARG, "sd_clip_token_ids: NULL argument");
    if (text_size > ((size_t)-1 - 64 * 1024) / 320)
        return fail(err, SD_ERR_ARG, "sd_clip_token_ids: text of %zu bytes is too long", text_size);
    out.ids = ids; out.cap = cap; out.n = 0;
    mark = sd_arena_mark(scratch);
    if (!(t = (uint32_t *)arena_array(scratch, text_size + 1, sizeof(uint32_t), err))) return SD_ERR_MEMORY;
    utf8_decode((const unsigned char *)text, text_size, 1, t, &n);
    /* PreTrainedTokenizer.tokenize: special tokens are cut out (case-sensitively) before anything else */
    for (i = 0; i < n && !rc; ) {
        int32_t special = -1;
        size_t len = 0;
        if (t[i] == '<' && starts_with(t + i, n - i, "<|startoftext|>")) special = SD_CLIP_BOS, len = 15;
        else if (t[i] == '<' && starts_with(t + i, n - i, "<|endoftext|>")) special = SD_CLIP_EOS, len = 13;
        else if (t[i] == '!' && pad == SD_CLIP_PAD_EXCLAMATION) special = 0, len = 1;
        if (special < 0) { i++; continue; }
        if (i > start) rc = tokenize_piece(v, t + start, i - start, &out, scratch, err);
        sink_push(&out, special);
        i += len;
        start = i;
    }
    if (!rc && n > start) rc = tokenize_piece(v, t + start, n - start, &out, scratch, err);
    sd_arena_reset(scratch, mark);
    *count = rc ? 0 : out.n;
    return rc;
}

SD_API int sd_clip_tokenize(const sd_clip_vocab *v, const char *text, size_t text_size, sd_clip_pad pad,
                            int32_t ids[SD_CLIP_CONTEXT], size_t *length, sd_arena *scratch, sd_error *err)
{
    size_t count = 0, i;
    int rc;
    if (length) *length = 0;
    if (!ids) return fail(err, SD_ERR_ARG, "sd_clip_tokenize: NULL ids");
    rc = sd_clip_token_ids(v, text, text_size, pad, ids + 1, SD_CLIP_CONTEXT - 2, &count, scratch, err);
    if (rc) return rc;
    ids[0] = SD_CLIP_BOS;
    i = 1 + (count < SD_CLIP_CONTEXT - 2 ? count : SD_CLIP_CONTEXT - 2);
    ids[i++] = SD_CLIP_EOS;
    for (; i < SD_CLIP_CONTEXT; i++) ids[i] = pad == SD_CLIP_PAD_EXCLAMATION ? 0 : SD_CLIP_EOS;
    if (length) *length = count + 2;
    return SD_OK;
}

SD_API const char *sd_clip_token_text(const sd_clip_vocab *v, int32_t id, size_t *size)
{
    if (!v || id < 0 || id >= SD_CLIP_VOCAB_SIZE) return NULL;
    if (size) *size = v->tok_off[id + 1] - v->tok_off[id];
    return v->pool + v->tok_off[id];
}

/* ---- tokenizer tables: generated by tools/gen_unicode.py (Python 3.11.2, unicodedata 14.0.0, regex 2.5.123); do not edit.
   To regenerate: apt-get install python3-regex; /usr/bin/python3 tools/gen_unicode.py > tables.inc,
   then replace everything from this comment to "end of generated tables" with tables.inc. ---- */
enum { UNI_PROPS_RANGES = 2458, UNI_LOWER_RUNS = 181, UNI_DECOMPS = 2061, UNI_COMPOSITIONS = 941, HTML_ENTITIES = 2125, HTML_UPPER_ENTITIES = 1376,
       HTML_ENTITY_CHARS = 16129 };
/* (range start delta, value) per range of code points with equal properties */
static const char *const uni_props_data[] = {
    "009350I3106c0106c0101QAc0106b9Q03c0101c01b9Q0A310Q3107c0101b9102c0101c0102A2c01b9101c02A1b9101A3"
    "01b9N01b9V01b9g391b9494b9gG91b9Rc9Ic04c9Cc0Ec95c07c91c01c91c0H*+0L/c01-s04/c01-c01-s05zk02-s04zk"
    "02-s0Bg05-s04*+08<c41*+01-s03*+03-s02c01*+03-s04*+01/c01-s02*+01/g01/k02/g01/k02/g01*+0Db94c91c0"
    "1b9202c91b9301b9104c02b91c01b9301b9101b9K01b9cJ01b9eB01*+05c02b9f601b9b602c9105c01b9b908-s01*+04"
    "-s01*+03-+01-s01*+06-s06*+02-s01*+02-+01*s01*+01bk01bo01bs01bw01b+01b<01cc01cg01ck01co02cs01cw01"
    "c+0101c<0101dc01dg0101*+01-s0101ck01089R049401c010Bc060A*+08d+01d<01ec0101c01039b0c919Ado01ds01d"
    "w01d+01d<01ec01eg01ek01*+02-s02*+05-s01*+02-s01QA0492eo019d30191*+07c0101*+04-s01*+01c92*+0201-s"
    "01*+02-s0192QA9302910Fc0191es019U*+01-s01*+02-s01*+02-s03*+01-s02*+01-s01*+03-s01*+01-s01*+01-s0"
    "1*+01-s01*+02029cPc0B910EQA9b1*+07-s01*+01c9204c9102-s01029M*+04c91*+09c91*+03c91*+050I9P-s03049"
    "B059Oc019601c0206*+01-s03*+049b9c91*+05-s05*+0Ec01-s01*+02-s01*+02-s01*+03-s03do01ds01dw01*+03-s"
    "01*+02-s02*+05c03019bMc0101<019103c0804bg010291*+01-s01*+02c039Ac0202QA01c919Fc0103980292029M019"
    "70191039402<019103c0408bg01910D920193c0202QA9202A6029101*+0102c0202960492029M019701920192019202<"
    "0104c0204c0202c02bg0103c010794019107QAc0293c010Bc0202990193019M01970192019502<019103c0501c0204bg"
    "0102910F92c0202QA0991c0601c0103980292029M01970192019502<019101c0101c0408bg0107c0205920193c0202QA"
    "0191A60Ac019101960393019403920191019203920393039C06c010Cbg0102910LQAA30Dc0103c01980193019N019G02"
    "<0191c0305c0301c03bg0107ks01lo01019302910292c0202QA08A70191c0103980193019N019A019502<019101c0106"
    "c0105c01bg010F920192c0202QA01920Dc0202990193019b9bg029103c0408bg0191059301A793c0202QAA9019601c01"
    "039I039O01990191029703bg0107c0301c010FQA0H9bGc0192c04m<02bg010596c91c01no04c0301QA0b792019101950"
    "19O0191019Ac0192c04o+02bg01c0291029501c9101pk04c0202QA02940b0910N-s0206QAAA01-s0101-s0101-c01069"
    "8019b404qg01qk01c01qs01c05qk04c0101qk01c01*+02bg0101*+0295c0B01c0b409-s010bP9bB02c0401c05<0101bg"
    "0202c0291QA069602c0294c039103920793c049Dc0102c0206-s019101QA03c0102b9b601b9105b9102b9bB01c91b939"
    "k90194029701910194029b90194029b10194029701910194029F019bP0194029c302*+0309AK039G0Gb9cM02b96039tC"
    "029H319Q059cB03A398079Ic02bg01be01099Jc02be010B9Ic020C9D019301c020C9bKc0201c0708c0102c09bg01c010"
    "3c910491*+0102QA06AA0Hc05QA069b3c919bL0795c029b2*s0191059c60A9V01c0304c0209c0106-+01*+01-s010AQA"
    "9U02950B9bC049Q06QAA10b59N*+01-s0102c01049bL01c0101c0701bg0101c0102c0806c02*+0802-s01QA06QA0Dc91"
    "08*+05-s06*+02-s01c01-s02*+02-s02*+05-s01*+040bHc04019bF<0101c0501c0105c0101be019803QA0H*+01-s01"
    "*+070Cc02019U01c0402c02be01bg01c0292QA9bC<0101c0203c0101c03be020C9b408c0802c01<0108QA0393QA9Uc96"
    "02b9907b9bB02b930G*+0301g01-s05*+02-s04*+0101g0794-s0196*+019201*+029105b9bCc9bVb9Dc91b9b2c9b5*+"
    "02-s01*+07-s01*+02/k01++01-s01zk01*+0b5/c01*s02-s01-k01*+01/g01-s01*+01-s01b9iM02b9602b9b602b960"
    "2b9801b9101b9101b9101b9V02b9bL01b97c01b91c03b9301b97c03b9402b9601c03b9Dc0302b9301b97c02013Bc0508"
    "c020Ac0102c0132c05310bF31c0501c0AA1c9102A605c91AA06c9D0bJ*+02g02*+04g03*+02c04*+01c03g02*+01-s01"
    "*+01g02-s04*+010Hb9104b9102b9A01b9103b9506b9101b9101b9101b9401b9694b9102b9405b9504b9101AGbAb0A3b"
    "92A50wMAbS0Qb0bKAM0tMAU0bdCb9dSc92b9d706b94*+03b9209A102b9b601b9105b91029bO07c910Fbg019N09970197"
    "01970197019701970197019701*+0b00bFc910oG3104c9191A10PA9-k01*s01/c01-+01*a0201c9502A3c9191049cM02"
    "bc02c02c9291019cQ01c9391059bB019cU03A40A9b00bG9G0b0AA0UA801AF0b0AA0b7AF0k09go00c09uqLc919bdN0c39"
    "b8c96029iCc91039GQA920Kb9bE91*+01c0301*+0A01c91b9Sc92*+029c6AA*+020Ec0Nc99c02b9cEc91b9Nc91c02b94"
    "91b9bR05b9201b9101b950Oc93b9291c92b9197c0193bg0194c019N02c0205bg0103A60A9bK0E9bI0Gbg01c010AQA06*"
    "+0I9603910192c01QA9Sc05-s03029Nc0B01be010C9T03c03019bF<0102c0402c0202be010Ec91QA0695c01c9199QA95"
    "019b9c0602c0202c020993c0198c0103QA069Gc9196039101c01019bI*+0191*+02-s0192*+0295*+0291*+01910O92c"
    "91029B01c020491c9201bg010A96029602960997019701b9bBc01c94b99c91c0204b9cG9b302c0102c0104bg0102QA06"
    "9k/40C9N049bH0ii49lE029dA0b6b970Cb950591dk019A019D0195019101",
    "920192019dCc0H0G9lB0I9c0029bM0b89C04c0G03c010C*+07-s07*+020b2c0102c010Q95019e702c0107c0106c0101Q"
    "Ac0106b9Q03c0101c01b9Q0B9Ac919bDc929V039602960296029306c010Lc03049C019Q019J0192019F029E0b29dR0CA"
    "bD0CAbP0HA20dH-s010e29T039bH0F-s01AR049b0A4099KA198A1059b6*+05059U029b4049801A50bAb9cG9cE02QA06b"
    "9b404b9b4049b8089bK0Cb9B01b9F01b9701b9201b9B01b9F01b9701b920c39jN099M0A980Oc9601c9bA01c990c59602"
    "91019bC01920391029N02A89N02A79V08A90bG9J019205A59MA6049Q0c69bO04A292AG02AbE91c0301c0205c01-s01c0"
    "1*+01940193019T02*+01g01-s0104bg01A90N9TA2019TA30b098019S*+01-s0104A50G9bM0A9M02A89J05A89I0NA70c"
    "G9c90bNb9bJ0Db9bJ07A69b4*+0408QA0j6AV019bA01*+0203920cE9TAA91089M-s02*+03-s01*+01-s04A40R9I*+01-"
    "s01*+01-s010bA9LA70K9N0Ac01019bLc0Ebg010BAKQAbg0192c029109bg01c02019bD03c0402bg01<0102c0104c010A"
    "c01029P07QA06*+039b4c0501c06bg0201QA04910291089b3<01029109c02019bG03c0901be019404c01<01c0202c01Q"
    "A91019104AK0B9I019P03c0302c01be01<01c0106c01120bV9701910194019F019A079bFc0103c06<01bg0105QA06c02"
    "03980292029M01970192019501<029102c010Cbe0102910C9504*+0703*+050eB9bL03c0802bg01c0201<019405QA04*"
    "+01930U9bG03c0601c0104c0201bg01<0192019108QA0f69bF03c0406c0201bg01<010N94c020b29bG03c0802c0101bg"
    "01c0103910BQA0b69bBc0101c0102c06be01<019107QA0bM9R02c0302c0401c04bg0104QAA204970fP9bC03c0901bg01"
    "<010d5b9c0QAA90C98029102980192019O0Bc02be01bg0191019101<010CQA0c698029b703c0402c0204bg019101910S"
    "91c0A9b8c01bg01c040191c0408bg010891c0602c039bEc0D01c01bg0103910I9c90i799019b501c0701c0601bg01910"
    "FQAAJ059U02c0M02c0701c0201c020c9970192019b6c0603c0101c0201c03<01c01bg0291c0108QA06960192019b006c"
    "0203c0101bg019107QA0jM9Jc020D11011D011b20S2A0cM910FAL0bB9*Q0d6AdF0H9g40csC9d10F9bbF11c0908160d/P"
    "9s70inP9rP079V01QA069cF01QA069U02g050B9bG*+0709c940CQA01A7019L059J0vGb9c0AN0d99cB04c01910bUc04c9"
    "D0c0c9201c91c010By020E9f>O089bgM0bA990ix7c9401c9701c92019j30F110T9302110E94089mC0ci49dB059D03990"
    "79A03c01g0101c040esSc0bE02c0N0qU-a02g0303*i01-a05c08-s0802*+05-s020U*+040eK*+030dR2K0CAK0dCAP0e7"
    "b9cL01b9c701b9202b9102b9202b9401b9C01b9101b9701b9c101b9402b9801b9701b9S01b9401b9501b9103b9701b9k"
    "K02b9P01b9P01b9V01b9P01b9V01b9P01b9V01b9P01b9V01b9P01b9802QbI0q0c0bN04c0bI08c010Ec010Mc0501c0F0b"
    "cGb9A91b9K06160gL*+0701*+0H02*+0701*+0201*+05051bU0eI9bD03*+07c9702QA04910k19U*+010H9bC*+04QA0oM"
    "1S042A0x69701940192019F019g502A9-s070b9b9c4*+06<01c9104QA0yNAbR01A301A40cCAbD01AF0g294019R019201"
    "910291019A01940191019106910491019101910193019201910291019101910191019101920191029401970194019401"
    "91019A019H05930195019H0s4AD0b3b0Q06b0Q06b0Q0tHc050b>GQA0ba69bjx00b09ebP11069gU029fu20E9hjH0daV9q"
    "U0bp29e+B051ed00vxcHc010Uc0d00e0c0hG0",
    0
};
/* (start delta, count, step, zigzag delta) per run of str.lower() mappings */
static const char *const uni_lower_data[] = {
    "c1Q1c0d6N1c0271c0b2O22432238223N22211hH1322411n41222211mS1112221mQ1112311eU111mK111mM1112211mQ11"
    "1mU211n6111n21112411n6111nA211nC1322211nK1112211nK3112211nK1112221nI1222211nM1112411281141112211"
    "4111221141922392231141222211g1111dF1K22211i32922811vcM1112211k5111vcG3112211m5111eA111eE1522j222"
    "24112911h8711cC231cA211e0221dU2H1c0291c0b411G9C22611dN3112211D1112331i31G1f01b01c0bHH22AR22211U1"
    "7223bG223b61d0c+Ab61og0211og0611og0wJcG1cl/0161GceRbB1f-V331f-Vk1cB22A11o-T2bG22A81F961FB81F981F"
    "961FC42F981FP81F981F981F921F121eJ111HC41fB111HC21F121g7D21F121gV111DC21hV121hR111HjA11ovP411qlT1"
    "11qeB711bObEG1b0K112zJQ1bKbzHbG1d0bH112211u>D111hoB111u<D3322211vbN111u>P111vbT111vbR21123112921"
    "vdT1bI2292225112<kEN22KE22e87224V22B222211cfa715225112211cssF32224A22211csu7111csuT111csuL111csu"
    "1111csu7211csr3111cssJ111csr9111b+01822211cV111csu5111cfdF122271126222T112vzCQ1c0bg6b81cGe9b41cG"
    "eTB1cE2F1cE271cE221cEbxBbJ1e0c>Eb01c0vm1b01c0<v1b21c4",
    0
};
/* (code point delta, zigzag first delta, second * 2 + composes) per decomposition */
static const char *const uni_decomp_data[] = {
    "g0e2bq110bq310bq510bq710bqH10bqL24bsF14bq110bq310bq510bqH18bq110bq310bq510bqH2Abq712bq110bq310bq"
    "510bq710bqH3Cbq110bq310bq510bqH18bq33Gbq110bq310bq510bq710bqH10bqL24bsF14bq110bq310bq510bqH18bq1"
    "10bq310bq510bqH2Abq712bq110bq310bq510bq710bqH3Cbq110bq310bq510bqH18bq320bqH1dFbq91c0bq91bVbqD1c0"
    "bqD1bVbsH1c0bsH1bRbq31c0bq31bVbq51c0bq51bVbqF1c0bqF1bVbqP1c0bqP1bTbqP1c0bqP3bTbq91c0bq91bVbqD1c0"
    "bqD1bVbqF1c0bqF1bVbsH1c0bsH1bVbqP1c0bqP1bRbq51c0bq51bVbqD1c0bqD1bVbqF1c0bqF1bVbsF1c0bsF1bTbq51c0"
    "bq53bTbq71c0bq71bVbq91c0bq91bVbqD1c0bqD1bVbsH1c0bsH1bVbqF42bq51c0bq51bTbsF1c0bsF2bTbq31c0bq31bVb"
    "sF1c0bsF1bVbqP1c0bqP5bRbq31c0bq31bVbsF1c0bsF1bVbqP1c0bqP4bTbq91c0bq91bVbqD1c0bqD1bVbqN1c0bqN3bPb"
    "q31c0bq31bVbsF1c0bsF1bVbqP1c0bqP1bTbq31c0bq31bVbq51c0bq51bVbsF1c0bsF1bVbqP1c0bqP1bTbsF1c0bsF1bVb"
    "qP1c0bqP3bTbq71c0bq71bVbq91c0bq91bVbqD1c0bqD1bVbqL1c0bqL1bVbqN1c0bqN1bVbsH1c0bsH1bRbq51c0bq51bRb"
    "q51c0bq51bVbqH12bq31c0bq31bVbqF1c0bqF1bVbqP1c0bqPb2cLbrN1c0brNEbJbrN1c0brNTd7bqP1c0bqP1bFbqP1c0b"
    "qP1bJbqP1c0bqP1bJbqP1c0bqP1gEbq91c0bq91bVbq31c0bq31bVbqP1c0bqP1bVbq11c0bq12dFbq91c0bq91u4bq912bq"
    "91w1bq91c0bq93jTbqP1c0bqP1bNbqP1c0bqP1bNbsH1c0bsH1xMbq912bq91d7bqP1nMbqP1bcFbqP4c5bq31c0bq33bHbq"
    "11c0bq11fEbq31c0bq31bTbq31c0bq31Rbq31c0bq31lDbqV1c0bqV1bVbr31c0br31bNbqV1c0bqV1bVbr31c0br31bNbqV"
    "1c0bqV1bVbr31c0br31bJbqV1c0bqV1bVbr31c0br31bPbqV1c0bqV1bVbr31c0br31bPbqV1c0bqV1bVbr31c0br31c3bsD"
    "1c0bsD1bTbsD1c0bsD3cNbqP1c0bqP7cDbqF1c0bqF1bNbsF1c0bsF1h2bq91c0bq91c1bq91c0bq91kBbqF1c0bqF1-Ubq9"
    "12bq91/Bbq91c0bq9iDbiE01202b401Lbq2bGeT0AbhR07gQbq31boIbq31bnJ01bnSbq314bq314bq32Cbq32Cbq318bq31"
    "c2bq3Qd1bqH1ObqH1Obq318bq314bq314bq31b4bq3Qb3bqH1ObqH1Bbq31Cbq318bq35Ibq310bqHbCe6bq110bqH23bq34"
    "PbqH5b8bq313bq11MbqDBLbqDb0c0bqDN5bq110bqH23bq34c6bqH5bNbq313bq11MbqDOd2bqV12bqVcAfTbqD1c0bqDEcB"
    "bqD1c0bqD1bVbqH1c0bqH3bLbqD1c0bqD3k6bqH12bqH1m5bqH1c0bqH1bTbqH1c0bqH3bTbq91c0bq91bVbqH1c0bqH1bJb"
    "qH1c0bqH3kKbqH12bqH1lNbqH1c0bqH1cJbq91c0bq91bVbqH1c0bqH1bVbqN1c0bqN1bNbqH1c0bqH3bNbqH1c0bqHj9/Od"
    "f710df91c2df91c1dfB1c6df9eQiMdf92b7df9Hb2df9sMbfCetP8GetP36etPb4bRetO12etO12etO1AetO1AetO12etO1I"
    "etO18etOdCjGe-T10e/FGcBe-O12e-O2Qe-OcKi6fdO3CfdOb3c3fdO12fdO1AfdO3UfdOhArOfvD30ftT10fvFGcBftO12f"
    "tObNh0f/FbMd8f-T12f-T11f/FdSi0gfDdOhIgnB7EgnB10gnD20gm518gnBdVhOgtT12gtT11gvFeEj6g*L20g*V16g*L15"
    "g/Vl5wIh-EAKh-E5Ah-E5Ah-E5Ah-EDbLh-AAd2hx420hx81e2hy022hy09e3hy0Ic2h-EAKh-E5Ah-E5Ah-E5Ah-EDbLh-A"
    "dDjAicTcx0fo0ntB24ntB24ntB24ntB24ntB48ntBb9cIntB24ntB34ntB12ntB26ntBvTnq1bsB1c0bsB1bTbqF1c0bqF1b"
    "Vbs71c0bs71bVbt31c0bt31gAbq31c0bq31k5bqF1c0bqF1bVbs71c0bs71bVbt31c0bt31bVbsF1c0bsF1bVbsR1c0bsR1k"
    "Sbq112bq111bq312bq31mRbsR1c0bsR1bVbt11c0bt11*6bqD12bqD1<5bqF1c0bqF1bTbq91c0bq91bTbqF1c0bqF1bVbs7"
    "1c0bs71bVbqH1c0bqH1bVbsF1c0bsF1bVbsT1c0bsT1bTbt11c0bt11gCbq31c0bq31k7bq31c0bq31bVbs71c0bs71bVbt3"
    "1c0bt31bTbs71c0bs71o*Kbq912bq91o<Lbt31c0bt31bVbsR1c0bsR1bTbq31c0bq31bVbqF1c0bqF1bVbs71c0bs71bTbq"
    "F1c0bqF1bVbs71c0bs71bVbt31c0bt31bVbsR1c0bsR1gEbq31c0bq31bVbqH1c0bqH1fEbq112bq111bq312bq31pPbq31c"
    "0bq31bVbqF1c0bqF1bRbqF1c0bqF1bVbs71c0bs71o<Gbq912bq91paHbt31c0bt31bTbqF1c0bqF1bVbs71c0bs71oEbqF1"
    "2bqF1AbqF12bqF1oq2bqF12bqF1paTbqF1c0bqF1bVbs71c0bs71bVbt31c0bt31bVbsR1c0bsR1bTbs91c0bs91bVbt11c0"
    "bt11bVbsR1c0bsR1p6bq312bq312bqH12bqH1r9bq71c0bq71bVbs71c0bs71bTbq11c0bq11bVbq31c0bq31bVbqH1c0bqH"
    "1bVbqF1c0bqF1bVbs71c0bs71bTbqF1c0bqF1bVbqH1c0bqH1bTbqF1c0bqF1bTbq51c0bq51bVbs71c0bs71bVbt31c0bt3"
    "1b3bt31ObqH16bqL14bqL2qCbqF5tRbs71c0bs71bVbqJ1c0bqJ1g2bq31c0bq31bVbq11c0bq11bVbqJ1c0bqJ1bVbq71c0"
    "bq71o-Sbq512bq51ozTbq312bq311bq112bq111bqJ12bqJ11bq712bq71ozQbqD12bqD1pfNbs71c0bs71bVbqJ1c0bqJ1b"
    "Vbq71c0bq71gAbq31c0bq31bVbq11c0bq11bVbqJ1c0bqJ1bVbq71c0bq71o*Sbq512bq51pgVbqJ1c0bqJ1bVbs71c0bs71"
    "bJbs71c0bs71bVbqJ1c0bqJ1gAbq31c0bq31bVbq11c0bq11bVbqJ1c0bqJ1bVbq71c0bq71o/Gbq512bq51osPbq312bq31"
    "1bq112bq111bqJ12bqJ11bq712bq711bs712bs71uNbs71c0bs71bVbqJ1c0bqJ1tKbq312bq311bq112bq111bqJ12bqJ11"
    "bq712bq711bs712bs71vDbq11c0bq11bVbs71c0bs71bVbqJ1c0bqJ1bVbq71c0bq77btGbr710br91nuUbq112bq111bq31"
    "2bq311bu512bu51nwVbr710br91nxEbq112bq111bq312bq311bu512bu51n",
    "v7br710br91nvMbq112bq111bq312bq33nxNbr710br91ny6bq112bq111bq312bq33nw3br710br91nwIbq112bq111bq31"
    "2bq311bu512bu51nyJbr710br91nz2bq112bq111bq312bq311bu512bu51nwVbr710br91nxEbq112bq111bq312bq311bu"
    "512bu51nzFbr710br91nzUbq112bq111bq312bq311bu512bu51nxJbr710br91ny2bq112bq111bq312bq33n+3br710br9"
    "1n+Ibq112bq111bq312bq33ny7br710br91nyMbq112bq111bq312bq311bu512bu52n+Nbr92n-8bq120bq320bu51nyVbr"
    "710br91nzEbq112bq111bq312bq311bu512bu51n-Fbr710br91n-Ubq112bq111bq312bq311bu512bu51n-Fbq11901Ibq"
    "11F01Kbq11H01Mbq11J01b0bq11Q01Dbq11G017bq11A03nt4buB12buB12buB12buB12buB12buB12buB12buB12buB12bu"
    "B12buB12buB12buB12buB12buB12buB1b2buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12bu"
    "B12buB12buB12buB1d2buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12buB12bu"
    "B1n-RbqD10bq91n-UbuB1n-TbuB19buB2Abu51oaAbuB1oc9bqD10bq910bq11L01MbuB2cG03br1bu51pmObuB1n-PbuB1H"
    "buB2Ibu51oaUbuB1od1bq11P01Ubq11R01SbuB1ocGbq110bq310bu51oaBbqD10bq91b2bq11dJ03cIbu51b2bu51d1bqD1"
    "0bq910bq11T02oh8bq110bq310bu51odHbqD10bq91Cbq11bL01b2br710br918bu51Cbu51cBbqD10bq910bq11bD01b6br"
    "91bpHbq11bnQ01bs903prObuB1n-5buB1AbuB29bu51ocQbuB1ofDbq11b501bQbq11bJ01bKbuB1bp903puS0120j5ofJ04"
    "bvR01hK0dFqmMbtH14btHJ4btHVdObtH18btH13btHbLd2btH5AbtH36btHObGbtH24btHRbEbtH3EbtH34btH26btHNraLb"
    "tH2rc8btHBb7btH1rb1btH14btH1rcCbtH12btH3QbtH12btH36btH12btH76btH12btH3EbtH12btH36btH12btHb3bMbtH"
    "1CbtH12btH14btHbHcTbtH12btH1b8btH12btH7c0btH12btH12btH12btHbSgv60120b/IcsNbtGblGcwSyjJ24yjJ24yjJ"
    "24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ36yjJ24yjJ24yjJ7EyjJ10yjL26yjJ10yjL26yjJ10yjL26yjJ1"
    "0yjL26yjJ10yjLNd9yjJAfEyjJESyjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ24yjJ36yjJ24yjJ"
    "24yjJ7EyjJ10yjL26yjJ10yjL26yjJ10yjL26yjJ10yjL26yjJ10yjLNd9yjJ3eIyjJ12yjJ12yjJ12yjJ4MyjJbsa2bnuM0"
    "1sv701t/C01ba301o>D01qjT01c-601bf-E01001bdeL01*i001<eJ01b*201ekS01kh601erO01dlK01xM01tS01dzE01ti"
    "P01brI01b-S01bqA01ifU01gsQ01eiE01bfwT01cp601lyU01drE01kb401l>201bamR01jjM01k<401bzE01tjL01pqU01d"
    "eE01uv901eeQ01df601cz401o/401bauF01bd201sE01i<C01daU01dtQ01cnE01erK01daA01fC01dz601eu601cdQ01biM"
    "01swR01p601cc201dcI01htM01fxM01j+H01y>D01dcA01ovO01cbS01hbN01dgG01j>G01fdA01>bT01byK01g-201b*E01"
    "tA01hc001qG01mb801bbxH01w-I01xkT01V01uf001b+401dd601ji801fp901ul101dt601qpO01<m901g+S01ccM01jxA0"
    "1<I01rfH01s<801utN01h<K01izN01plU01dv701l+K01uvT01cjM01pk601guG01dg201poV01r>C01rsF01eyJ01p<E01p"
    "u901i*A01tlD01blM01g001llG01kgC01cyG01eg601dpQ01>nJ01uQ01ct201cxI01dnI01fdI01esO01oi601clQ01ccQ0"
    "1dE01bgd501kcM01cl201r<M01yoR01brO01h001bjK01fiI01bcC01bu001cu201ccK01bhM01hlE01fdF01ftA01bsE01b"
    "at501iO01bbK01oaM01l>K01<G01v<101sO01byC01ed601ij001emH01sj101ebA01coS01/601bg401jzC01lE01ft201k"
    "O01i<S01cm401f401n001beiP01vc601maC01cq801+/D01jfL01bf801fr801f201evK01cgI01d*O01ch801hlK01fy001"
    "hr201*q901x+C01bb+901kp401hG01cuS01vM01cwQ01v001br401ckA01nuS01bdp101im201+eK01bdeP01goS01in201q"
    "u001xzT01-I01dn601fx001rpU01bcfP01<C01efC01e+S01tM01vK01cdQ01ds201/O01ezE01evC01b401eoM01crC01bb"
    "+501nxM01njP01o-601bmG01iw401ikI01c-801beG01-qF01dd801kbQ01drP01fA01x401e/301bcD01nlU01<jF01+hC0"
    "1ypN01d501gjU01ccQ01na601qv101izI01dgJ01uiE01doT01ha201gm301vlF01gz501ci003bjK02hbK03kjB01quO01b"
    "+001bh401c401E01cK01o*E01njF01bpU02dfA02coC03cu001mA04d>401Q01cO01ciO01gnB01c/I01bdqH01tI01gC01x"
    "O01bM01gQ01beO01gI01g401/G01gG01b-O01K01ccC01n801cC01g801bvQ01j601kU01>801cp401k601qG01beO01lQ01"
    ">E01cgU01kQ01M01101G01C01E01d001201l401e201tU01bd801bA01dG01t201j601<G01iO01001/S01clI01iC01wM01"
    "dG01zK01dA01bkS01i401dkM01rO01dO01-*B01hrhI01hanB03z>301byU01eP01<F01*A01dM01uE01d601bk601eF01e8"
    "01eI01bhG01fI01j201b001qS01mC01b+K01E01j001e801sM01hC01eB01iC01cR01j401e401z001fG01dC01q801rS01k"
    "601801dM01cc601e201yE01zK01V01fE01pO01v001ddI01cx301hK01hM01uE01jA01dA01o401401kM01b201bI01fC01J"
    "01yO01<A01qU01lM01o001jI01uK01mE01buQ01jQ01byK01*G01eA01b001sI01dI01cP01dC01501b101eO01f201xS01b"
    "d001tK01sE01nQ01caC01gE01h601iA01c801O01d001bnE01ciK01gekS01B01fz201h*dF01chM01c201ijb001fiE01ra"
    "601hpyV01eM0c4cm-9c-82bIc-EBHc*210c*41d+w0c*210c*41d+xHc-E10",
    "c-G10c-O12c-O12c-O12c-O12c-O12c-O12c-O24c-O12c-O12c-O12c-O12c-O24c-O24c-O12c-O24c-O12c-O24c-O12c"
    "-O12c-O12c-O12c-O1b9c-I17c-U1Kc-U1Ic-UfkCeflAeilL24eilLFKeilLe3iOeisF12eisFqSbbAejtT10ejvFlFx4ek"
    "lL10ekl120eklRhSpUek+V12ek+V-TbxOemt1bob6c*c4hiwA12hiwA1EhiwS10hiwU10hix010hix210hix4cNfKhiwA12h"
    "iwA12hiwS12hiwS11hiwU12hiwUcjs0gbxT01901I01gzo201gy*301eS01Q01eE01hG01bU01eS01bF01od101hizO01g+o"
    "P01E01b001b601gz+A01hig501okS01cC01gz-S01gz-701Q01bnF01bo001I01jacK01i><J01S01os701ovO01M01cO01A"
    "01ow301o-401401bM01bC01M01201b201d401G01I01bI01K01401001001g-kQ01gm-N01okB01bA01g-y801g-xF01C01b"
    "A01jG01gB01b001c001dK01f801bK01e601b001c201001bA01b401G01U01v801qV01r201mB01c601cgP01doE01rV01cC"
    "01bI01i301kE01101hM01g<dG01g/>301A01U01b801G01e001g<uC01e401g<pR01cU01O01eT01iS01rxF01S01saO01dC"
    "01001g>iK01g>a901bA01U01O01g>sA01g>rH01E01buQ01bt101sk101snU01S01f401d501havE01hak101hak601hahF0"
    "1501b201gA01201s-501s*S01cM01bA01cO01taD01hus201huqD01td801601601b801jcmG01jcj701hcd601001gqsV01"
    "rnT01001tfL01h*>201xs401ibhF01I01tiF01tlE01d601K01c401iG01tuD01bR01txG01hde001hdaP01i20180140130"
    "1cS01b801c801R01M01cU01b801801bK01M01e401f801c601hO01hd-O01hd*T01e101gO01bM01g201heaQ01hd*T01fP0"
    "1bN01uxL01vdM01bA01bU01cB01vaL01vo601bQ01hfjS01hfcD01rA01kT01vsV01vxG01vyH01c701lkS01601kwM01g70"
    "1nb201<n701rtS01801C01dQ01L01hgh001h*hJ01wl201h901mQ01d601hf<G01hf/T01gT01pA01wxD01w+A01g201eE01"
    "lS01hf>M01hf*F01xm501xqI01hgyC01hgv501xqB01xs801cQ01bM01201hhn401oy301o<U01hhkN01higS01hh>P01S01"
    "gB01kU01cG01dI01dB01cG01U01Q01hhzI01hh<J01pM01dU01ytL01yzG01701hiaK01hinF01xA01hh>001d001hh*F01h"
    "601bL01501zi901zl801d601B01dC01gkhG01gj/V01hirS01himD01hjaU01hiy501Q01bM01hj-G01hjyF01bA01hkk001"
    "nU01hkjJ01b201+nT01+pI01+oP01001+yU01bA01bA01b801eA01++T01-aI01hlr401hlpF01hlv801hls301gwcU01gvy"
    "T01hmz201bE01iO01iieF01O01-oO01hm>U01101cE01bK01hnb901201001cM01-r101-v401-u901f001ijyE01hn*T01d"
    "S01e001-<H01iku601homV01hou801cM01hotB01fO01*lN01*r201K01A01hpsQ01sM01001hp-H01*oN01im+I01hp<901"
    "601*+301infI01hp+R01/d301/eG01901bQ01hriC01hrc501/g301/mC01dM01e601/r101ipp801bU01ipoR01ipy001hr"
    "vT01hr*801hr+H01gA01M01hsnA01eI01hsm501hsuG01hstF01gzoU01hxyJ01<nQ01f201<pF01<t601tiH01igp401S01"
    "+c301I01gyzL01601gzK01bft501>cC01B01b401x<J01x>S01401K01cI01hufC01hufD01dG01eC01eK01iJ01jK01cK01"
    "h001q701hE01401b001hufK01tA01jB01it+J01>*C01401c601hxl801hxgB01hu*G01iu*T01801ivf001s201ivwD01ba"
    "oA01O01M01401e001c101iC01cN01jE01f101e601bM01ba+T01bbaK01c001bbaF01bbgE01601hxa801hwyV01E01bbkH0"
    "1bbmA01bkdT01jb>601lG01izkF01I01bb/I01eQ01jQ01mM01hyf601hx>P01bC01fK01fO01hy-G01b-sL01f/dH01T01d"
    "801f/oS01f/aJ01g801h-jK01bM01h+vH01fQ01c001h-bQ01h-b501rQ01jU01201fN01xQ01bO01h-<A01h-gT01bf>B01"
    "bgc401h-*001jbz101bgnQ01*r101*x201h/c401nA01jd+N01G01bgwK01h<cK01jevF01je<801h<iL01001bS01h<yQ01"
    "h<n701bg+T01bg>C01hS01bM01dO01bhcV01jhw401iabR01sS01lQ01bicT01bU01bihK01ibwE01jj/B01jkaQ01qI01i6"
    "01ib/B01biw901bi+601A01E01K01E01cA01idmA0",
    0
};
/* zigzag deltas of NFKC(U+FF01..U+FFEF), 0 = unchanged, 0x20 for U+FFE3 */
static const char *const uni_width_data[] = {
    "c2222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222u"
    "qE2dhOK2NpKHf14444dK44c7dIfJ44442444444444446444222226666622224442222248fJ2ptJfV2kIkFkK2kJ22kM22"
    "222jLb722bIbF222222222ir300iw222222iwB0iwE22222iwN0iwQ22222ix30ix622ix900k42IiNiC1qa8qkHsq4bx322"
    "2caQcMs*L",
    0
};
/* zigzag deltas: bytes 0x80..0xFF and 0x1A of each of ftfy's 10 encodings */
static const char *const charmap_data[] = {
    "i02222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222"
    "222222222222222222222222222222222o9qj4qcLpzIpiFpiOGB2ovLowKpmVpnIpoDm9p0oR2pyG262AT2otFpeCp*1pnI"
    "poDlBo2BnF22222222222222222222222222222222222222222222222222222222222222222222222222222222222222"
    "222222222d>pSd/>L2obEn*Dn*MGB2iMhNocDod0ocT418e6n*C262AT2pxNqiKomHn<2n/V418b-TbwSf0fBbw7b<Ob<J2b"
    "vKbvFbvMbvH222bvIbvD2bvAf0dMb/N22bzKomAom3bzHbzQf5f04eD22222222222222222222222222222222222222222"
    "2222222222222222222222d/+Sdpv1qcLpzIpzDpzMGB2pzHp+GpmVpnIpnTKbI7oHpyG262AT2pxNqiKp*1pnIpnTKbI7nJ"
    "bcEb2zDjPg0fR222lAl5222mQmL2bcKzHiR2222eQfKk7i4+0zTdScFj52e0dRhAd5dTeAe5eUePeUeP2e04d68h72hOhJ2i"
    "2bCj7jCj72iAi5hCh72c2bTfCd5bVcCc7d0cRd0cR2c24d68f92fQfL2g4bCh9hEh92gCxCd<s8dpv1qcLpzIpiFpiOGB2pz"
    "Hp+Gp+Bp+Up+P2222pyG262AT2pxNqiKqiFp+0pzR2222boA2bo522222222222pwEpw9222bn2bmT22bn222bmTbn2bmTbn"
    "22222222222222222222bmTbn22222222222222222222222222222222222222222222bmTd>pSdpv1qcLpzIpiFpiOGB2o"
    "vLowKpmVpnIpoDm9222pyG262AT2otFpeCp*1pnIpoDlB2nKnF2222222222222222222222222222222222222222222222"
    "2eUeP22222222222f8cShT2222222222222222d0cR22222222222dAcSfVd>pSdpv1qcLpzIpzDpzMGB2pzHp+Gp+Bp+Up+"
    "PbObbUbaTcFpyG262AT2pxNqiKqiFp+0pzRb6bcObdN22222222d2cTkQkL222bGbB2222222e2dTjSjN222cGbScKcRCe32"
    "f6BBe5l0g5Ob8Nb2cAbP4h3hIhD22jMd1bIb0iRjU4jRcCcKcRCc52d8BBc7j2g5Ob8Nb2cAbP4f5fKfF22hOd1bIb0gTi04"
    "vMd<s8d>xP22222222222222222222222222222222g8/8zDjPjIbQl52lG3CbAmNn03mLfA/CzHiRiKbQwObaTkI3CbAw6v"
    "T3cFj52e0dRhAd5dTeAe5eUePeUeP2e04d68h72hOhJ2i2bCj7jCj72iAi5hCh72c2bTfCd5bVcCc7d0cRd0cR2c24d68f92"
    "fQfL2g4bCh9hEh92gCxCblTkK244GACA14414441424142441441A142ps8pwVR28pxMpwNcId19qhIqgRNq-GqzJb4quCqw"
    "Pq-62q-Vb0quQU3peTpgMqy1b0boUbm5b4dHbRMqwSqiFqlCe3qvLb0pwMpyBc06b4hQ2pm02G292ps3sn6smLhIpmOgGh52"
    "dnmE2dno1pwJpw68b4pwRGHK5A225E2d*cMd*cPG23fGzAbCbcPbcI22bc3bcA3b7bkPkQdAb5D47A4625E13cF28bQbVcS4"
    "7I3CcHCdJ24qa4pr9l1OCEHbVcDb0Arf2rg7b21bLKb0snC22j1c4dQ2N1Sb3CC11eL8c0FVbNdOc429BbA5BVbO9272N1B2"
    "bG1f3NhO7G8Vq*Tbn3bl8cQbPc0bqRbqUbRRb2MpgKpfFb1ph8dGq+Vq-81lO2rcJqv2qzFqwIqw3qw6zLp*PsoSspViB",
    0
};
/* front-coded HTML entity names and values */
static const char *const html_entity_data[] = {
    "0AElig;1g64MP;1b64acute;1g14breve;1i24circ;1g28y;1baG4fr;1dvi44grave;1g04lpha;1*H4macr;1i04nd;1k"
    "sJ4ogon;1i48pf;1dvjO4pplyFunction;1id14ring;1g54scr;1dveS8sign;1isK4tilde;1g34uml;1g40Backslash;"
    "1iqM8rv;1kx7Cwed;1iy64cy;1baH4ecause;1irL8rnoullis;1ijC8ta;1*I4fr;1dvi54opf;1dvjP4reve;1wO4scr;1"
    "ijC4umpeq;1isE0CHcy;1bb74OPY;1f94acute;1i68p;1iwICitalDifferentialD;1ik58yleys;1ijD4caron;1iC8ed"
    "il;1g78irc;1i88onint;1irG4dot;1iA4edilla;1fO8nterDot;1fN4fr;1ijD4hi;1/74ircleDot;1iuPOMinus;1iuM"
    "OPlus;1iuLOTimes;1iuN4lockwiseContourIntegral;1irICseCurlyDoubleQuote;1iaTb8Quote;1iaP4olon;1irN"
    "Ke;1ktK8ngruent;1it1Cint;1irFCtourIntegral;1irE8pf;1ii2Croduct;1iqG8unterClockwiseContourIntegra"
    "l;1irJ4ross;1krF4scr;1dveU4up;1iwJCCap;1isD0DD;1ik58otrahd;1kiH4Jcy;1ba24Scy;1ba54Zcy;1baF4agger"
    ";1ib18rr;1in18shv;1kx44caron;1iE8y;1baK4el;1iq7Cta;1*K4fr;1dvi74iacriticalAcute;1fKbCDot;1wPbKub"
    "leAcute;1wTbCGrave;1d0bCTilde;1wSCmond;1iw48fferentialD;1ik64opf;1dvjR8t;1f8CDot;1igSCEqual;1isG"
    "8ubleContourIntegral;1irFODot;1f8b0wnArrow;1ioJOLeftArrow;1ioGb8RightArrow;1ioKb8Tee;1kx4SongLef"
    "tArrow;1j>ObORightArrow;1j>Qb8RightArrow;1j>PORightArrow;1ioIbCTee;1iv8OUpArrow;1ioHb0DownArrow;"
    "1ioLOVerticalBar;1ir58wnArrow;1imJb4Bar;1kiJb4UpArrow;1ipLGBreve;1yHGLeftRightVector;1kkGb0TeeVe"
    "ctor;1kkUb0Vector;1inTbOBar;1kkMGRightTeeVector;1kkVb4Vector;1io1bSBar;1kkNGTee;1iv4SArrow;1in7G"
    "arrow;1ioJ4scr;1dveV8trok;1iG0ENG;1kA4TH;1gG4acute;1g94caron;1iQ8irc;1gA8y;1bbD4dot;1iM4fr;1dvi8"
    "4grave;1g84lement;1iq84macr;1iI8ptySmallSquare;1jpRKVerySmallSquare;1jnB4ogon;1iO8pf;1dvjS4psilo"
    "n;1*L4qual;1ktLKTilde;1is2Cilibrium;1ioC4scr;1ijG8im;1ktJ4ta;1*N4uml;1gB4xists;1iq38ponentialE;1"
    "ik70Fcy;1bb44fr;1dvi94illedSmallSquare;1jpSOVerySmallSquare;1jnA4opf;1dvjT8rAll;1iq08uriertrf;1i"
    "jH4scr;1ijH0GJcy;1ba34T;1bU4amma;1*JKd;1<S4breve;1iU4cedil;1j28irc;1iS8y;1baJ4dot;1j04fr;1dviA4g"
    ";1iwP4opf;1dvjU4reaterEqual;1it5bGLess;1iwRSFullEqual;1it7SGreater;1kv2SLess;1itNSSlantEqual;1kt"
    "USTilde;1itJ4scr;1dvf24t;1itB0HARDcy;1bbA4acek;1w78t;1cU4circ;1j44fr;1iiC4ilbertSpace;1iiB4opf;1"
    "iiD8rizontalLine;1ji04scr;1iiB8trok;1j64umpDownHump;1isEGEqual;1isF0IEcy;1baL4Jlig;1jI4Ocy;1ba14"
    "acute;1gD4circ;1gE8y;1baO4dot;1jG4fr;1iiH4grave;1gC4m;1iiH8acr;1jACginaryI;1ik88plies;1ioI4nt;1i"
    "rCCegral;1irBGrsection;1iw28visibleComma;1id3b4Times;1id24ogon;1jE8pf;1dvk08ta;1*P4scr;1iiG4tild"
    "e;1j84ukcy;1ba68ml;1gF0Jcirc;1jK8y;1baP4fr;1dviD4opf;1dvk14scr;1dvf58ercy;1ba84ukcy;1ba40KHcy;1b"
    "b54Jcy;1baC4appa;1*Q4cedil;1jM8y;1baQ4fr;1dviE4opf;1dvk24scr;1dvf60LJcy;1ba94T;1bS4acute;1jP8mbd"
    "a;1*R8ng;1j>A8placetrf;1iiI8rr;1imU4caron;1jT8edil;1jR8y;1baR4eftAngleBracket;1j>8Krrow;1imGb4Ba"
    "r;1ip4b4RightArrow;1io6GCeiling;1iy8GDoubleBracket;1j>6OwnTeeVector;1kl1b0Vector;1io3bOBar;1kkPG"
    "Floor;1iyAGRightArrow;1imKb4Vector;1kkEGTee;1iv3SArrow;1in4SVector;1kkQKriangle;1ivIbGBar;1koFbG"
    "Equal;1ivKGUpDownVector;1kkHOTeeVector;1kl0OVector;1inVbGBar;1kkOGVector;1inSb8Bar;1kkIGarrow;1i"
    "oGGrightarrow;1ioK8ssEqualGreater;1iwQGFullEqual;1it6GGreater;1itMGLess;1kv1GSlantEqual;1ktTGTil"
    "de;1itI4fr;1dviF4l;1iwO8eftarrow;1ioQ4midot;1jV4ongLeftArrow;1j>Lb0RightArrow;1j>NGRightArrow;1j"
    ">MGleftarrow;1j>Ob0rightarrow;1j>QGrightarrow;1j>P8pf;1dvk38werLeftArrow;1imPKRightArrow;1imO4sc"
    "r;1iiI8h;1inG8trok;1k14t;1itA0Map;1ki54cy;1baS4ediumSpace;1icV8llintrf;1ijJ4fr;1dviG4inusPlus;1i"
    "qJ4opf;1dvk44scr;1ijJ4u;1*S0NJcy;1baA4acute;1k34caron;1k78edil;1k58y;1baT4egativeMediumSpace;1ia"
    "Bb0ThickSpace;1iaBbCnSpace;1iaBb0VeryThinSpace;1iaB8stedGreaterGreater;1itBOLessLess;1itA8wLine;"
    "1A4fr;1dviH4oBreak;1id08nBreakingSpace;1f08pf;1iiL8t;1kxCCCongruent;1it2GupCap;1itDCDoubleVertic"
    "alBar;1ir6CElement;1iq9Gqual;1it0b0Tilde;2is2zOGxists;1iq4CGreater;1itFb8Equal;1itHb8FullEqual;2"
    "it7zOb8Greater;2itBzOb8Less;1itPb8SlantEqual;2ktUzOb8Tilde;1itLCHumpDownHump;2isEzOSEqual;2isFzO"
    "CLeftTriangle;1ixAbSBar;2koFzObSEqual;1ixCKss;1itESEqual;1itGSGreater;1itOSLess;2itAzOSSlantEqua"
    "l;2ktTzOSTilde;1itKCNestedGreaterGreater;2kv2zOb4LessLess;2k",
    "v1zOCPrecedes;1iu0bCEqual;2kvFzObCSlantEqual;1ix0CReverseElement;1iqCGightTriangle;1ixBc0Bar;2ko"
    "GzOc0Equal;1ixDCSquareSubset;2iuFzObSEqual;1ix2bCperset;2iuGzOc4Equal;1ix3Gubset;2iu2igIb4Equal;"
    "1iu8Kcceeds;1iu1bCEqual;2kvGzObCSlantEqual;1ix1bCTilde;2itVzOKperset;2iu3igIbCEqual;1iu9CTilde;1"
    "is1b0Equal;1is4b0FullEqual;1is7b0Tilde;1is9CVerticalBar;1ir44scr;1dvf94tilde;1gH4u;1*T0OElig;1kI"
    "4acute;1gJ4circ;1gK8y;1baU4dblac;1kG4fr;1dviI4grave;1gI4macr;1kC8ega;1/98icron;1*V4opf;1dvk64pen"
    "CurlyDoubleQuote;1iaSb4Quote;1iaO4r;1ksK4scr;1dvfA8lash;1gO4tilde;1gLCmes;1krN4uml;1gM4verBar;1i"
    "bUKrace;1i<Ub0ket;1i/KGParenthesis;1i<S0PartialD;1iq24cy;1baV4fr;1dviJ4hi;1/64i;1/04lusMinus;1fH"
    "4oincareplane;1iiC8pf;1iiP4r;1kvR8ecedes;1itQb0Equal;1kvFb0SlantEqual;1itSb0Tilde;1itU8ime;1ibJ8"
    "oduct;1iqFCportion;1irNb8al;1iqT4scr;1dvfB8i;1/80QUOT;1b24fr;1dviK4opf;1iiQ4scr;1dvfC0RBarr;1kiG"
    "4EG;1fE4acute;1kK8ng;1j>B8rr;1in0Gtl;1kiM4caron;1kO8edil;1kM8y;1bb04e;1iiS8verseElement;1iqBb0qu"
    "ilibrium;1ioBSUpEquilibrium;1klF4fr;1iiS4ho;1/14ightAngleBracket;1j>9Orrow;1imIb8Bar;1ip5b8LeftA"
    "rrow;1io4KCeiling;1iy9KDoubleBracket;1j>7SwnTeeVector;1kkTb4Vector;1io2bSBar;1kkLKFloor;1iyBKTee"
    ";1iv2b0Arrow;1in6b0Vector;1kkROriangle;1ivJbKBar;1koGbKEqual;1ivLKUpDownVector;1kkFSTeeVector;1k"
    "kSSVector;1inUbKBar;1kkKKVector;1io0bCBar;1kkJKarrow;1ioI4opf;1iiT8undImplies;1klG4rightarrow;1i"
    "oR4scr;1iiR8h;1inH4uleDelayed;1kpK0SHCHcy;1bb98cy;1bb84OFTcy;1bbC4acute;1kQ4c;1kvS8aron;1l08edil"
    ";1kU8irc;1kS8y;1bb14fr;1dviM4hortDownArrow;1imJKLeftArrow;1imGKRightArrow;1imIKUpArrow;1imH4igma"
    ";1/34mallCircle;1iqO4opf;1dvkA4qrt;1iqQ8uare;1jn1OIntersection;1iuJOSubset;1iuFbGEqual;1iuHb0per"
    "set;1iuGbOEqual;1iuIOUnion;1iuK4scr;1dvfE4tar;1iw64ub;1iwGCset;1iwGOEqual;1iu68cceeds;1itRb0Equa"
    "l;1kvGb0SlantEqual;1itTb0Tilde;1itVChThat;1iqB8m;1iqH8p;1iwHCerset;1iu3b0Equal;1iu7Cset;1iwH0THO"
    "RN;1gU4RADE;1ij24SHcy;1baB8cy;1bb64ab;198u;1/44caron;1l48edil;1l28y;1bb24fr;1dviN4herefore;1irKC"
    "ta;1*O8ickSpace;2icViaACnSpace;1ia94ilde;1irSKEqual;1is3KFullEqual;1is5KTilde;1is84opf;1dvkB4rip"
    "leDot;1igR4scr;1dvfF8trok;1l60Uacute;1gQ8rr;1imVGocir;1kk94brcy;1baECeve;1lC4circ;1gR8y;1bb34dbl"
    "ac;1lG4fr;1dviO4grave;1gP4macr;1lA4nderBar;1cVOrace;1i<Vb4ket;1i/LKParenthesis;1i<T8ion;1iw3KPlu"
    "s;1iuE4ogon;1lI8pf;1dvkC4pArrow;1imHSBar;1kiISDownArrow;1io58DownArrow;1imL8Equilibrium;1klE8Tee"
    ";1iv5KArrow;1in58arrow;1ioH8downarrow;1ioL8perLeftArrow;1imMKRightArrow;1imN8si;1<IGlon;1/54ring"
    ";1lE4scr;1dvfG4tilde;1l84uml;1gS0VDash;1ivB4bar;1kxB4cy;1baI4dash;1iv9Kl;1kx64ee;1iw18rbar;1iaMC"
    "t;1iaMGicalBar;1ir3b0Line;1dSb0Separator;1j+Ob0Tilde;1is0CyThinSpace;1iaA4fr;1dviP4opf;1dvkD4scr"
    ";1dvfH4vdash;1ivA0Wcirc;1lK4edge;1iw04fr;1dviQ4opf;1dvkE4scr;1dvfI0Xfr;1dviR4i;1*U4opf;1dvkF4scr"
    ";1dvfJ0YAcy;1bbF4Icy;1ba74Ucy;1bbE4acute;1gT4circ;1lM8y;1bbB4fr;1dviS4opf;1dvkG4scr;1dvfK4uml;1l"
    "O0ZHcy;1baM4acute;1lP4caron;1lT8y;1baN4dot;1lR4eroWidthSpace;1iaB8ta;1*M4fr;1ij84opf;1ij44scr;1d"
    "vfL2aacute;1h11g16breve;1i31i25c;1irU8E;2irUzJ9d;1irVAirc;1h21g29ute;1fKAy;1bbG1baG6elig;1h61g65"
    "f;1id19r;1dviU6grave;1h01g05lefsym;1ijLDph;1ijLApha;1/H1*H6macr;1i11i0Dlg;1krV8p;1b65nd;1ir7Dand"
    ";1ksLDd;1ksSDslope;1ksODv;1ksQ9g;1ir0De;1kn4Dle;1ir0Dmsd;1ir1Paa;1kn8Tb;1kn9Tc;1knATd;1knBTe;1kn"
    "CTf;1knDTg;1knETh;1knFDrt;1iqVLvb;1ivUTd;1kmTDsph;1ir2Ht;1g5Dzarr;1i-S6ogon;1i51i49pf;1dvkI5p;1i"
    "s88E;1ktG9acir;1ktF9e;1isA9id;1isB9os;1b79prox;1is8Peq;1isA6ring;1h51g55scr;1dvfM9t;1bA9ymp;1is8"
    "Leq;1isD6tilde;1h31g36uml;1h41g45wconint;1irJ9int;1kqH0bNot;1kxD5ackcong;1isCHepsilon;1>MHprime;"
    "1ibLHsim;1irTTeq;1iwD9rvee;1ivTDwed;1iy5Pge;1iy55brk;1i/LHtbrk;1i/M5cong;1isCAy;1bbH1baH5dquo;1i"
    "aU5ecaus;1irLPe;1irL9mptyv;1knG9psi;1>M9rnou;1ijCAta;1/I1*IDh;1ijMDween;1itC5fr;1dviV5igcap;1iw2"
    "Hirc;1jpFHup;1iw3Dodot;1kq0Hplus;1kq1Htimes;1kq2Dsqcup;1kq6Htar;1jq5Dtriangledown;1jnTbDup;1jnJD"
    "uplus;1kq4Dvee;1iw1Dwedge;1iw05karow;1kiD5lacklozenge;1kpBLsquare;1jnALtriangle;1jnKbLdown;1jnUb"
    "Lleft;1jo2bLright;1jnODnk;1jb39k12;1jmIH4;1jmHD34;1jmJ9ock;1",
    "jm85ne;2bTih5Dquiv;2it1ih59ot;1iyG5opf;1dvkJ9t;1iv5Dtom;1iv59wtie;1iw88xDL;1jkNGR;1jkKGl;1jkMGr;"
    "1jkJCH;1jkGGD;1jl6GU;1jl9Gd;1jl4Gu;1jl7CUL;1jkTGR;1jkQGl;1jkSGr;1jkPCV;1jkHGH;1jlCGL;1jl3GR;1jl0"
    "Gh;1jlBGl;1jl2Gr;1jkVDbox;1ko9CdL;1jkLGR;1jkIHl;1jiGHr;1jiCDh;1ji0GD;1jl5GU;1jl8Hd;1jjCHu;1jjKDm"
    "inus;1iuVDplus;1iuUDtimes;1iv0CuL;1jkRGR;1jkOHl;1jiOHr;1jiKDv;1ji2GH;1jlAGL;1jl1GR;1jkUHh;1jjSHl"
    ";1jj4Hr;1jiS5prime;1ibL5reve;1wO9vbar;1f65scr;1dvfN9emi;1icF9im;1irTHe;1iwD9ol;1cSHb;1ko5Hhsub;1"
    "j<85ull;1ib2Het;1ib29mp;1isEGE;1kvEHe;1isFLq;1isF2cacute;1i71i69p;1ir9Dand;1ks4Dbrcup;1ks9Dcap;1"
    "ksBHup;1ks7Ddot;1ks0Ds;2ir9b>q09ret;1ic1Don;1w75caps;1ksDEron;1iD1iCAedil;1h71g7Airc;1i91i89ups;"
    "1ksCLsm;1ksG6dot;1iB1iA5edil;1fO9mptyv;1knI9nt;1f2Herdot;1fN5fr;1dvj06hcy;1bc71bb79eck;1jyJLmark"
    ";1jyJAi;1<71/75ir;1joBCE;1ko3Dc;1w6Heq;1isNHlearrowleft;1inQbDright;1inROdR;1fESS;1jg8Tast;1iuRT"
    "circ;1iuQTdash;1iuTDe;1isNDfnint;1kqGDmid;1kxFDscir;1ko25lubs;1jt3Luit;1jt35olon;1bQLe;1isKPq;1i"
    "sK9mma;1bCLt;1c0Dp;1iq1Hfn;1iqOHlement;1iq1Pxes;1ii29ng;1is5Hdot;1ktDDint;1irE9pf;1dvkKDrod;1iqG"
    "Cy;1f9Gsr;1iiN5rarr;1inL9oss;1jyN5scr;1dvfO9ub;1kwFHe;1kwHDp;1kwGHe;1kwI5tdot;1ixF5udarrl;1kjOPr"
    ";1kjL9epr;1iwUDsc;1iwV9larr;1inMPp;1kjT9p;1irADbrcap;1ks8Dcap;1ks6Hup;1ksADdot;1iuDDor;1ks5Ds;2i"
    "rAb>q09rarr;1inNPm;1kjSDlyeqprec;1iwUTsucc;1iwVLvee;1iwELwedge;1iwFDren;1f4Dvearrowleft;1inMb9ri"
    "ght;1inN9vee;1iwE9wed;1iwF5wconint;1irI9int;1irH5ylcty;1izD0dArr;1ioJ4Har;1kl55agger;1ib09leth;1"
    "ijO9rr;1imJ9sh;1iaGHv;1iv35bkarow;1kiF9lac;1wT6caron;1iF1iEAy;1bbK1baK4d;1ik69agger;1ib1Drr;1ioA"
    "9otseq;1ktN5eg;1fGAlta;1/K1*K9mptyv;1knH5fisht;1klV9r;1dvj15harl;1io3Hr;1io25iam;1iw4Hond;1iw4Ts"
    "uit;1jt6Hs;1jt69e;1f8Agamma;1<T1<S9sin;1ixI9v;1hNDide;1hNPontimes;1iw7Donx;1iw76jcy;1bcI1ba25lco"
    "rn;1iyUDrop;1iyD5ollar;1b49pf;1dvkL9t;1wPDeq;1isGLdot;1isHDminus;1irODplus;1iqKDsquare;1iv19uble"
    "barwedge;1iy69wnarrow;1imJHdownarrows;1ioAHharpoonleft;1io3bDright;1io25rbkarow;1kiG9corn;1iyVDr"
    "op;1iyC5scr;1dvfPEy;1bcL1ba59ol;1kpMAtrok;1iH1iG5tdot;1ixH9ri;1jnVHf;1jnU5uarr;1ipL9har;1klF5wan"
    "gle;1kn66zcy;1bcV1baF9igrarr;1j>V0eDDot;1ktN8ot;1isH6acute;1h91g99ster;1ktE6caron;1iR1iQ9ir;1isM"
    "Ic;1hA1gA9olon;1isLAy;1bcD1bbD6dot;1iN1iM5e;1ik74fDot;1isI9r;1dvj25g;1kuQArave;1h81g89s;1kuMDdot"
    ";1kuO5l;1kuP9inters;1i>79l;1iiJ9s;1kuLDdot;1kuN6macr;1iJ1iI9pty;1iq5Lset;1iq5Lv;1iq59sp13;1ia4L4"
    ";1ia5H;1ia34ng;1kB9sp;1ia26ogon;1iP1iO9pf;1dvkM5par;1iwLHsl;1kp39lus;1ktHAsi;1/L1*LIlon;1/L1*LIv"
    ";1>L1*L5qcirc;1isMDolon;1isL9sim;1is2Dlantgtr;1kuMTless;1kuL9uals;1bTDest;1isVDiv;1it1KDD;1ktO9v"
    "parsl;1kp54rDot;1isJ9arr;1klH5scr;1ijF9dot;1isG9im;1is26ta;1/N1*N8h;1hG6uml;1hB1gB9ro;1ifC5xcl;1"
    "b19ist;1iq39pectation;1ijGDonentiale;1ik71fallingdotseq;1isI6cy;1bc41bb45emale;1js06filig;1b<y33"
    "c6c6c9Alig;1b<y02c6c6Elig;1b<y43c6c6cC9r;1dvj36ilig;1b<y12c6c96jlig;2d6dA2c6cA5lat;1jtDAlig;1b<y"
    "22c6cC9tns;1jnH6nof;1mI1mH5opf;1dvkN9rall;1iq0Dk;1iwKHv;1kwP5partint;1kqD5rac12;1fTL3;1ikJL4;1fS"
    "L5;1ikLL6;1ikPL8;1ikRH23;1ikKL5;1ikMH34;1fUL5;1ikNL8;1ikSH45;1ikOH56;1ikQL8;1ikTH78;1ikUDsl;1ic4"
    "9own;1iz25scr;1dvfR0gE;1it78l;1kuC6acute;1pL1pKAmma;1/J1*JMd;1<T1<S9p;1ku66breve;1iV1iU6circ;1iT"
    "1iSAy;1bbJ1baJ6dot;1j11j05e;1it59l;1iwR9q;1it5Dq;1it7Dslant;1ktU9s;1ktUDcc;1kv9Ddot;1ku0Po;1ku2T"
    "l;1ku4Dl;2iwRb>q0Hes;1kuK5fr;1dvj45g;1itB9g;1iwP5imel;1ijN6jcy;1bcJ1ba35l;1itN8E;1kuI9a;1kv59j;1"
    "kv44nE;1it99ap;1kuAHprox;1kuA9e;1ku8Dq;1ku8Hq;1it99sim;1ix75opf;1dvkO5rave;1d05scr;1iiA9im;1itJH"
    "e;1kuEHl;1kuG4t;1bU8cc;1kv7Cir;1ktQ8dot;1iwN8lPar;1kmL8quest;1ktS8rapprox;1ku6Grr;1klOCdot;1iwNC"
    "eqless;1iwRKqless;1kuCCless;1itNCsim;1itJ5vertneqq;2it9b>q08nE;2it9b>q00hArr;1ioK5airsp;1iaA9lf;"
    "1fT9milt;1iiBArdcy;1bcA1bbADr;1imKHcir;1kk8Hw;1inD5bar;1iiF6circ;1j51j45earts;1jt5Puit;1jt59llip"
    ";1ib69rcon;1ivP5fr;1dvj55ksearow;1kj5Dwarow;1kj65oarr;1ipV9mtht;1irR9okleftarrow;1in9Hrightarrow"
    ";1inA9pf;1dvkP9rbar;1iaL5scr;1dvfT9lash;1iiFAtrok;1j71j65ybull;1ic39phen;1iaG2iacute;1hD1gD5c;1i"
    "d3Airc;1hE1gEAy;1bbO1baO6ecy;1bbL1baL9xcl;1f15ff;1ioK9r;1dvj",
    "66grave;1hC1gC5i;1ik89iint;1kqCDnt;1irD9nfin;1koS9ota;1ij96jlig;1jJ1jI6macr;1jB1jADge;1iiHHline;"
    "1iiGHpart;1iiHEth;1jH1c99of;1ivN9ped;1nL5n;1iq89care;1ii59fin;1iqULtie;1koTAodot;1jH1c99t;1irBDc"
    "al;1ivQDegers;1ij4Hrcal;1ivQDlarhk;1kqNDprod;1krS6ocy;1bcH1ba1Agon;1jF1jE9pf;1dvkQAta;1/P1*P5pro"
    "d;1krS5quest;1fV5scr;1dvfU9in;1iq8GE;1ixPHdot;1ixLHs;1ixKLv;1ixJHv;1iq85t;1id2Ailde;1j91j86ukcy;"
    "1bcM1ba6Aml;1hF1gF2jcirc;1jL1jKAy;1bbP1baP5fr;1dvj75math;1rN5opf;1dvkR5scr;1dvfVAercy;1bcO1ba86u"
    "kcy;1bcK1ba42kappa;1/Q1*QMv;1>G1*Q6cedil;1jN1jMAy;1bbQ1baQ5fr;1dvj85green;1jO6hcy;1bc51bb56jcy;1"
    "bcS1baC5opf;1dvkS5scr;1dvg00lAarr;1ioQ8rr;1ioG8tail;1kiR4Barr;1kiE4E;1it68g;1kuB4Har;1kl26acute;"
    "1jQ1jP9emptyv;1knK9gran;1iiIAmbda;1/R1*R9ng;1j>8Hd;1kmHHle;1j>89p;1ku59quo;1fB9rr;1imGHb;1ip4Lfs"
    ";1kiVHfs;1kiTHhk;1in9Hlp;1inBHpl;1kjPHsim;1klJHtl;1in29t;1kvBDail;1kiPDe;1kvDHs;2kvDb>q05barr;1k"
    "iC9brk;1j-I9race;1dRLk;1cRDke;1kmBHsld;1kmFPu;1kmD6caron;1jU1jTAedil;1jS1jRDil;1iy89ub;1dRAy;1bb"
    "R1baR5dca;1kjM9quo;1iaSLr;1iaU9rdhar;1kl7Dushar;1kkB9sh;1inI5e;1it49ftarrow;1imGb5tail;1in2Hharp"
    "oondown;1inTbDup;1inSHleftarrows;1io7Hrightarrow;1imKbPs;1io6b5harpoons;1ioBb5squigarrow;1inDHth"
    "reetimes;1iwB9g;1iwQ9q;1it4Dq;1it6Dslant;1ktT9s;1ktTDcc;1kv8Ddot;1ktVPo;1ku1Tr;1ku3Dg;2iwQb>q0He"
    "s;1kuJDsapprox;1ku5Hdot;1iwMHeqgtr;1iwQPqgtr;1kuBHgtr;1itMHsim;1itI5fisht;1klS9loor;1iyA9r;1dvj9"
    "5g;1itM8E;1kuH5hard;1inTHu;1inSLl;1klA9blk;1jm46jcy;1bcP1ba95l;1itA9arr;1io79corner;1iyU9hard;1k"
    "lB9tri;1jpQ6midot;1k01jV9oust;1i/GPache;1i/G4nE;1it89ap;1ku9Hprox;1ku99e;1ku7Dq;1ku7Hq;1it89sim;"
    "1ix65oang;1j>CDrr;1ipT9brk;1j>69ngleftarrow;1j>Lb1rightarrow;1j>NHmapsto;1j>SHrightarrow;1j>M9op"
    "arrowleft;1inBb5right;1inC9par;1km5Df;1dvkTDlus;1krD9times;1krK9wast;1iqNDbar;1cV9z;1joADenge;1j"
    "oADf;1kpB5par;1b8Hlt;1kmJ5rarr;1io69corner;1iyV9har;1ioBLd;1klD9m;1iaE9tri;1ivV5saquo;1ibP9cr;1d"
    "vg19h;1inG9im;1itIHe;1kuDHg;1kuF9qb;1cRDuo;1iaOLr;1iaQAtrok;1k21k14t;1bS8cc;1kv6Cir;1ktP8dot;1iw"
    "M8hree;1iwB8imes;1iw98larr;1klM8quest;1ktR8rPar;1kmMCi;1jo3Ge;1ivKGf;1jo25urdshar;1kkADuhar;1kl6"
    "5vertneqq;2it8b>q08nE;2it8b>q00mDDot;1irQ5acr;1fF9le;1js2Dt;1jz0Hese;1jz09p;1in6Dsto;1in6Pdown;1"
    "in7Pleft;1in4Pup;1in59rker;1jnE5comma;1kr9Ay;1bbS1baS5dash;1iaK5easuredangle;1ir15fr;1dvjA5ho;1i"
    "j76icro;1fL1*S9d;1ir3Dast;1bADcir;1kxGDdot;1fN9nus;1iqILb;1iuVLd;1irOPu;1krA5lcp;1kwR9dr;1ib65np"
    "lus;1iqJ5odels;1iv79pf;1dvkU5p;1iqJ5scr;1dvg29tpos;1irU6u;1/S1*S9ltimap;1ivO9map;1ivO0nGg;2iwPzO"
    "8t;2itBigICv;2itBzO4Leftarrow;1ioDKrightarrow;1ioE8l;2iwOzO8t;2itAigICv;2itAzO4Rightarrow;1ioF4V"
    "Dash;1ivF8dash;1ivE5abla;1iq7Acute;1k41k39ng;2ir0igI9p;1is9CE;2ktGzODid;2isBzOEos;1k92vScEDprox;"
    "1is99tur;1jtELal;1jtETs;1iiL5bsp;1f09ump;2isEzOLe;2isFzO5cap;1ks3Eron;1k81k7Aedil;1k61k59ong;1is"
    "7Ldot;2ktDzO9up;1ks2Ay;1bbT1baT5dash;1iaJ5e;1it08Arr;1ioN9arhk;1kj4Hr;1imNLow;1imN9dot;2isGzO9qu"
    "iv;1it29sear;1kj8Dim;2is2zO9xist;1iq4Ps;1iq45fr;1dvjB4gE;2it7zO9e;1itHDq;1itHHq;2it7zOHslant;2kt"
    "UzODs;2ktUzO9sim;1itL9t;1itFDr;1itF4hArr;1ioE9arr;1inE9par;1kxI5i;1iqB9s;1ixSDd;1ixQ9v;1iqB6jcy;"
    "1bcQ1baA4lArr;1ioD8E;2it6zO9arr;1imQ9dr;1ib59e;1itGDftarrow;1imQLrightarrow;1inEDq;1itGHq;2it6zO"
    "Hslant;2ktTzODs;2ktTzOHs;1itE9sim;1itK9t;1itEDri;1ixALe;1ixC5mid;1ir45opf;1dvkV9t;1fCDin;1iq9KE;"
    "2ixPzOLdot;2ixLzOLva;1iq9Pb;1ixNPc;1ixMDni;1iqCLva;1iqCPb;1ixUPc;1ixT5par;1ir6Hallel;1ir6Hsl;2kx"
    "Tih5Ht;2iq2zO9olint;1kqK9r;1iu0Dcue;1ix0De;2kvFzOHc;1iu0Leq;2kvFzO4rArr;1ioF9arr;1imRLc;2kjJzOLw"
    ";2imTzO9ightarrow;1imR9tri;1ixBLe;1ixD5sc;1iu1Dcue;1ix1De;2kvGzODr;1dvg39hortmid;1ir4Pparallel;1"
    "ir69im;1is1He;1is4Lq;1is49mid;1ir49par;1ir69qsube;1ix2Lpe;1ix39ub;1iu4GE;2kw5zOHe;1iu8Hset;2iu2i"
    "gITeq;1iu8b5q;2kw5zODcc;1iu1Leq;2kvGzODp;1iu5GE;2kw6zOHe;1iu9Hset;2iu3igITeq;1iu9b5q;2kw6zO5tgl;"
    "1itPAilde;1hH1gH9lg;1itO9riangleleft;1ixAbLeq;1ixCb5right;1ixBbPeq;1ixD6u;1/T1*T9m;1b3Dero;1iiMD"
    "sp;1ia74vDash;1ivD8Harr;1ki49ap;2isDigI9dash;1ivC9ge;2it5igIDt;2bUigI9infin;1koU8lArr;1ki2De;2it"
    "4igIDt;2bSigIHrie;2ivKigI8rArr;1ki3Dtrie;2ivLigI9sim;2irSigI",
    "4wArr;1ioM9arhk;1kj3Hr;1imMLow;1imM9near;1kj70oS;1jg86acute;1hJ1gJ9st;1iuR5cir;1iuQIc;1hK1gKAy;1"
    "bbU1baU5dash;1iuTAblac;1kH1kG9iv;1krO9ot;1iuP9sold;1knS6elig;1kJ1kI5fcir;1knV9r;1dvjC5gon;1wRAra"
    "ve;1hI1gI9t;1ko15hbar;1knL9m;1/95int;1irE5larr;1inQ9cir;1knUDross;1knR9ine;1ibU9t;1ko06macr;1kD1"
    "kCAega;1<91/9Aicron;1/V1*VDd;1knMDnus;1iuM5opf;1dvl05par;1knN9erp;1knP9lus;1iuL5r;1ir89arr;1inR9"
    "d;1ksTDer;1ijKLof;1ijKDf;1fADm;1fQ9igof;1ivM9or;1ksM9slope;1ksN9v;1ksR5scr;1ijKAlash;1hO1gO9ol;1"
    "iuO6tilde;1hL1gLDmes;1iuNPas;1krM6uml;1hM1gM5vbar;1izT1par;1ir5Da;1fMHllel;1ir5Dsim;1kxJHl;1kxTD"
    "t;1iq26cy;1bbV1baV5ercnt;1b5Diod;1bEDmil;1ibGDp;1iv5Dtenk;1ibH5fr;1dvjD6hi;1<61/6Ev;1<L1/69mmat;"
    "1ijJ9one;1jqE6i;1<01/09tchfork;1iwKAv;1<M1/05lanck;1iiFPh;1iiEHkv;1iiF9us;1bBHacir;1kr3Hb;1iuUHc"
    "ir;1kr2Hdo;1iqKLu;1kr5He;1ktIHmn;1fHHsim;1kr6Htwo;1kr75m;1fH5ointint;1kqL9pf;1dvl19und;1f35r;1it"
    "Q8E;1kvJ9ap;1kvN9cue;1itS9e;1kvFDc;1itQHapprox;1kvNHcurlyeq;1itSHeq;1kvFHnapprox;1kvPLeqq;1kvLLs"
    "im;1ix8Hsim;1itU9ime;1ibILs;1iiP8nE;1kvLDap;1kvPDsim;1ix89od;1iqFDfalar;1izEHline;1iyIHsurf;1iyJ"
    "Dp;1iqTHto;1iqT9sim;1itU9urel;1ivG5scr;1dvg5Ai;1<81/85uncsp;1ia81qfr;1dvjE5int;1kqC5opf;1dvl25pr"
    "ime;1icN5scr;1dvg65uaternions;1iiDHint;1kqM9est;1bVLeq;1isV8ot;1b20rAarr;1ioR8rr;1ioI8tail;1kiS4"
    "Barr;1kiF4Har;1kl45ace;2irTzHEute;1kL1kK9dic;1iqQ9emptyv;1knJ9ng;1j>9Hd;1kmIHe;1kn5Hle;1j>99quo;"
    "1fR9rr;1imIHap;1klLHb;1ip5Lfs;1kj0Hc;1kjJHfs;1kiUHhk;1inAHlp;1inCHpl;1kk5Hsim;1klKHtl;1in3Hw;1im"
    "T9tail;1kiQDio;1irMLnals;1iiQ5barr;1kiD9brk;1j-J9race;1dTLk;1cTDke;1kmCHsld;1kmEPu;1kmG6caron;1k"
    "P1kOAedil;1kN1kMDil;1iy99ub;1dTAy;1bc01bb05dca;1kjN9ldhar;1kl99quo;1iaTLr;1iaT9sh;1inJ5eal;1iiSH"
    "ine;1iiRHpart;1iiSHs;1iiT9ct;1jnD8g;1fE5fisht;1klT9loor;1iyB9r;1dvjF5hard;1io1Hu;1io0Ll;1klCAo;1"
    "<11/1Ev;1>H1/15ightarrow;1imIb9tail;1in3Lharpoondown;1io1bHup;1io0Lleftarrows;1io4b5harpoons;1io"
    "CLrightarrows;1io9Lsquigarrow;1imTLthreetimes;1iwC9ng;1wQ9singdotseq;1isJ5larr;1io49har;1ioC9m;1"
    "iaF5moust;1i/HPache;1i/H5nmid;1kxE5oang;1j>DDrr;1ipU9brk;1j>79par;1km6Df;1dvl3Dlus;1krE9times;1k"
    "rL5par;1b9Hgt;1kmK9polint;1kqI5rarr;1io95saquo;1ibQ9cr;1dvg79h;1inH9qb;1cTDuo;1iaPLr;1iaP5three;"
    "1iwC9imes;1iwA9ri;1jnPHe;1ivLHf;1jnOHltri;1koE5uluhar;1kl85x;1iiU2sacute;1kR1kQ5bquo;1iaQ5c;1itR"
    "8E;1kvK9ap;1kvOEron;1l11l09cue;1itT9e;1kvGEdil;1kV1kUAirc;1kT1kS8nE;1kvMDap;1kvQDsim;1ix99polint"
    ";1kqJ9sim;1itVAy;1bc11bb15dot;1iw5Hb;1iv1He;1kt64eArr;1ioO9arhk;1kj5Hr;1imOLow;1imO9ct;1f79mi;1b"
    "R9swar;1kj99tminus;1iqMHn;1iqM9xt;1jzM5fr;1dvjGDown;1iz25harp;1jtFAchcy;1bc91bb9Ey;1bc81bb89ortm"
    "id;1ir3Lparallel;1ir59y;1fD6igma;1<31/3Mf;1<21/3Mv;1<21/39m;1irSDdot;1ktADe;1is3Hq;1is3Dg;1kuUGE"
    ";1kv0Dl;1kuTGE;1kuVDne;1is6Dplus;1kr4Drarr;1klI5larr;1imG5mallsetminus;1iqMDshp;1krJ9eparsl;1kp4"
    "9id;1ir3Dle;1iz39t;1kvADe;1kvCHs;2kvCb>q06oftcy;1bcC1bbC9l;1bFDb;1ko4Har;1izV9pf;1dvl45pades;1jt"
    "0Puit;1jt0Dr;1ir55qcap;1iuJLs;2iuJb>q0Dup;1iuKLs;2iuKb>q09sub;1iuFLe;1iuHLset;1iuFb1eq;1iuHHp;1i"
    "uGLe;1iuILset;1iuGb1eq;1iuI9u;1jn1Dare;1jn1Lf;1jnADf;1jnA5rarr;1imI5scr;1dvg89etmn;1iqM9mile;1iz"
    "39tarf;1iw65tar;1jq6Hf;1jq5Araightepsilon;1>L1*Lb2phi;1<L1/6Dns;1fF5ub;1iu2CE;1kw5Ddot;1kvTDe;1i"
    "u6Hdot;1kw3Dmult;1kw1CnE;1kwBHe;1iuADplus;1kvVDrarr;1klPDset;1iu2Peq;1iu6b1q;1kw5Pneq;1iuAb5q;1k"
    "wBHim;1kw7Hub;1kwLLp;1kwJ9cc;1itRHapprox;1kvOHcurlyeq;1itTHeq;1kvGHnapprox;1kvQLeqq;1kvMLsim;1ix"
    "9Hsim;1itV9m;1iqH9ng;1jtA9p1;1fPD2;1fID3;1fJD;1iu3CE;1kw6Ddot;1kvUHsub;1kwODe;1iu7Hdot;1kw4Dhsol"
    ";1j<9Lub;1kwNDlarr;1klRDmult;1kw2CnE;1kwCHe;1iuBDplus;1kw0Dset;1iu3Peq;1iu7b1q;1kw6Pneq;1iuBb5q;"
    "1kwCHim;1kw8Hub;1kwKLp;1kwM4wArr;1ioP9arhk;1kj6Hr;1imPLow;1imP9nwar;1kjA6zlig;1gV2cJcJ1target;1i"
    "yMAu;1<41/45brk;1i/K6caron;1l51l4Aedil;1l31l2Ay;1bc21bb25dot;1igR5elrec;1iyL5fr;1dvjH5here4;1irK"
    "Lfore;1irKEta;1/O1*OMsym;1<H1*OMv;1<H1*O9ickapprox;1is8Lsim;1irSDnsp;1ia99kap;1is8Dsim;1irS8orn;"
    "1hU5ilde;1wS9mes;1gNLb;1iv0Par;1krHLd;1krG9nt;1irD5oea;1kj89p;1iv4Dbot;1izMDcir;1kxHDf;1dvl5Hork"
    ";1kwQ9sa;1kj95prime;1ibK4rade;1ij29iangle;1jnLb1down;1jnVb1l",
    "eft;1jo3bHeq;1ivKb1q;1isSb1right;1jnPbLeq;1ivLDdot;1jpCDe;1isSDminus;1krQDplus;1krPDsb;1koDDtime"
    ";1krR9pezium;1i>25scr;1dvg9Ey;1bc61bb6Ahcy;1bcR1baBAtrok;1l71l65wixt;1itC9oheadleftarrow;1imUTri"
    "ghtarrow;1in00uArr;1ioH4Har;1kl36acute;1hQ1gQ9rr;1imH6brcy;1bcU1baEEeve;1lD1lC6circ;1hR1gRAy;1bc"
    "31bb35darr;1io5Ablac;1lH1lG9har;1klE5fisht;1klU9r;1dvjI6grave;1hP1gP5harl;1inVHr;1inU9blk;1jm05l"
    "corn;1iySPer;1iySDrop;1iyF9tri;1jpO6macr;1lB1lA9l;1f86ogon;1lJ1lI9pf;1dvl65parrow;1imH9downarrow"
    ";1imL9harpoonleft;1inVb5right;1inU9lus;1iuEAsi;1<51/5Hh;1<IIlon;1<51/59uparrows;1io85rcorn;1iyTP"
    "er;1iyTDrop;1iyEAing;1lF1lE9tri;1jpP5scr;1dvgA5tdot;1ixGAilde;1l91l89ri;1jnLHf;1jnK5uarr;1io8Aml"
    ";1hS1gS5wangle;1kn70vArr;1ioL4Bar;1kx8Gv;1kx94Dash;1iv85angrt;1kmSArepsilon;1>L1*LEkappa;1>G1*QD"
    "nothing;1iq5Ephi;1<L1/6Ii;1<M1/0Hropto;1iqTDr;1imLIho;1>H1/1Esigma;1<21/3Hubsetneq;2iuAb>q0bHq;2"
    "kwBb>q0Lpsetneq;2iuBb>q0bHq;2kwCb>q0Etheta;1<H1*OHriangleleft;1ivIbDright;1ivJ6cy;1bbI1baI5dash;"
    "1iv25ee;1ir8Dbar;1ivRDeq;1isQ9llip;1ixE9rbar;1dSDt;1dS5fr;1dvjJ5ltri;1ivI5nsub;2iu2igIHp;2iu3igI"
    "5opf;1dvl75prop;1iqT5rtri;1ivJ5scr;1dvgB8ubnE;2kwBb>q0Le;2iuAb>q0CpnE;2kwCb>q0Le;2iuBb>q05zigzag"
    ";1kmQ2wcirc;1lL1lK5edbar;1ksVDge;1ir7Lq;1isP9ierp;1iiO5fr;1dvjK5opf;1dvl85p;1iiO5r;1is09eath;1is"
    "05scr;1dvgC1xcap;1iw29irc;1jpF9up;1iw35dtri;1jnT5fr;1dvjL4hArr;1j>Q9arr;1j>N6i;1/U1*U4lArr;1j>O9"
    "arr;1j>L5map;1j>S5nis;1ixR5odot;1kq09pf;1dvl9Dlus;1kq19time;1kq24rArr;1j>P9arr;1j>M5scr;1dvgD9qc"
    "up;1kq65uplus;1kq49tri;1jnJ5vee;1iw15wedge;1iw02yacute;1hT1gTEy;1bcF1bbF6circ;1lN1lMAy;1bcB1bbB5"
    "en;1f55fr;1dvjM6icy;1bcN1ba75opf;1dvlA5scr;1dvgE6ucy;1bcE1bbEAml;1hV1lO2zacute;1lQ1lP6caron;1lU1"
    "lTAy;1bbN1baN6dot;1lS1lR5eetrf;1ij8Ata;1/M1*M5fr;1dvjN6hcy;1bbM1baM5igrarr;1ioT5opf;1dvlB5scr;1d"
    "vgF5wj;1iaD9nj;1iaC",
    0
};
/* ---- end of generated tables ---- */

/* ---- loading: the generated tables, merges.txt, vocab.json ---- */

/* Reads the integer streams of the generated tables (see tools/gen_unicode.py for the format). */
typedef struct table_reader { const char *const *chunk; const char *p; int bad; } table_reader;

static void table_open(table_reader *r, const char *const *chunks) { r->chunk = chunks; r->p = chunks[0]; r->bad = 0; }

static int table_char(table_reader *r)
{
    while (!r->bad && !*r->p) {
        if (!*++r->chunk) r->bad = 1;
        else r->p = *r->chunk;
    }
    return r->bad ? 0 : (unsigned char)*r->p++;
}

static uint32_t table_uint(table_reader *r)
{
    static const char final_digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUV", more_digits[] = "abcdefghijklmnopqrstuvwxyz+-*/<>";
    uint32_t v = 0;
    for (;;) {
        int ch = table_char(r);
        const char *d = ch ? strchr(final_digits, ch) : NULL;
        if (d) return v << 5 | (uint32_t)(d - final_digits);
        if (!ch || !(d = strchr(more_digits, ch)) || v >> 26) { r->bad = 1; return 0; }
        v = v << 5 | (uint32_t)(d - more_digits);
    }
}

static int32_t table_int(table_reader *r)
{
    uint32_t z = table_uint(r);
    return z & 1 ? -(int32_t)(z >> 1) - 1 : (int32_t)(z >> 1);
}

static int table_end(table_reader *r) { return !r->bad && !table_char(r) && r->bad; }

/* Insertion sort of a few hundred keys (tables at load time). */
static void sort_u32(uint32_t *x, size_t n)
{
    size_t i, j;
    for (i = 1; i < n; i++) {
        uint32_t k = x[i];
        for (j = i; j > 0 && x[j - 1] > k; j--) x[j] = x[j - 1];
        x[j] = k;
    }
}

static int load_unicode_tables(sd_clip_vocab *v, sd_arena *a, sd_error *err)
{
    table_reader r;
    uint32_t at = 0, first = 0, prev = 0;
    size_t i, k, pos = 0, nup = 0;
    int e, ok = 1;
    v->prop_start = (uint32_t *)arena_array(a, UNI_PROPS_RANGES, sizeof(uint32_t), err);
    v->prop = (uint16_t *)arena_array(a, UNI_PROPS_RANGES, sizeof(uint16_t), err);
    v->low_start = (uint32_t *)arena_array(a, 3 * UNI_LOWER_RUNS, sizeof(uint32_t), err);
    v->low_delta = (int32_t *)arena_array(a, UNI_LOWER_RUNS, sizeof(int32_t), err);
    v->dec_cp = (uint32_t *)arena_array(a, 3 * UNI_DECOMPS, sizeof(uint32_t), err);
    v->comp = (uint16_t *)arena_array(a, UNI_COMPOSITIONS, sizeof(uint16_t), err);
    v->ent_pool = (char *)arena_array(a, HTML_ENTITY_CHARS, 1, err);
    v->ent_off = (uint32_t *)arena_array(a, HTML_ENTITIES + 1, sizeof(uint32_t), err);
    v->ent_val = (uint32_t *)arena_array(a, 3 * HTML_ENTITIES, sizeof(uint32_t), err);
    v->upper_of = (uint16_t *)arena_array(a, HTML_UPPER_ENTITIES, sizeof(uint16_t), err);
    v->upper_val = (uint32_t *)arena_array(a, 3 * HTML_UPPER_ENTITIES, sizeof(uint32_t), err);
    if (!v->prop_start || !v->prop || !v->low_start || !v->low_delta || !v->dec_cp || !v->comp || !v->ent_pool ||
        !v->ent_off || !v->ent_val || !v->upper_of || !v->upper_val)
        return SD_ERR_MEMORY;
    v->n_prop = UNI_PROPS_RANGES; v->n_lower = UNI_LOWER_RUNS; v->n_dec = UNI_DECOMPS; v->n_comp = UNI_COMPOSITIONS;
    v->n_ent = HTML_ENTITIES; v->n_upper = HTML_UPPER_ENTITIES;
    v->low_count = v->low_start + UNI_LOWER_RUNS;
    v->low_step = v->low_start + 2 * UNI_LOWER_RUNS;
    v->dec_first = v->dec_cp + UNI_DECOMPS;
    v->dec_second = v->dec_cp + 2 * UNI_DECOMPS;

    table_open(&r, uni_props_data);
    for (i = 0; i < UNI_PROPS_RANGES; i++) {
        at += table_uint(&r);
        v->prop_start[i] = at;
        v->prop[i] = (uint16_t)table_uint(&r);
    }
    ok &= table_end(&r) && v->prop_start[0] == 0;
    for (i = 0, k = 0; i < 256; i++) {
        while (k + 1 < UNI_PROPS_RANGES && v->prop_start[k + 1] <= i) k++;
        v->prop_latin1[i] = v->prop[k];
    }

    table_open(&r, uni_lower_data);
    for (i = 0, at = 0; i < UNI_LOWER_RUNS; i++) {
        v->low_start[i] = at += table_uint(&r);
        v->low_count[i] = table_uint(&r);
        v->low_step[i] = table_uint(&r);
        v->low_delta[i] = table_int(&r);
        ok &= v->low_count[i] > 0 && v->low_step[i] > 0;
        at += (v->low_count[i] - 1) * v->low_step[i];
    }
    ok &= table_end(&r);

    table_open(&r, uni_decomp_data);
    for (i = 0, at = 0, k = 0; i < UNI_DECOMPS; i++) {
        uint32_t x;
        v->dec_cp[i] = at += table_uint(&r);
        v->dec_first[i] = first = (uint32_t)((int32_t)first + table_int(&r));
        x = table_uint(&r);
        v->dec_second[i] = x >> 1;
        if ((x & 1) && k < UNI_COMPOSITIONS) v->comp[k++] = (uint16_t)i;
    }
    ok &= table_end(&r) && k == UNI_COMPOSITIONS;
    for (i = 1; i < UNI_COMPOSITIONS; i++) {  /* compositions by (first, second), for compose() */
        uint16_t x = v->comp[i];
        for (k = i; k > 0 && (v->dec_first[v->comp[k - 1]] > v->dec_first[x] ||
                              (v->dec_first[v->comp[k - 1]] == v->dec_first[x] && v->dec_second[v->comp[k - 1]] > v->dec_second[x])); k--)
            v->comp[k] = v->comp[k - 1];
        v->comp[k] = x;
    }

    table_open(&r, uni_width_data);
    for (i = 0, prev = 0; i < 0xEF; i++) v->width[i] = prev = (uint32_t)((int32_t)prev + table_int(&r));
    ok &= table_end(&r);

    table_open(&r, charmap_data);
    for (e = 0, prev = 0; e < ENC_COUNT; e++) {
        for (i = 0; i < 129; i++) {
            v->charmap[e][i] = prev = (uint32_t)((int32_t)prev + table_int(&r));
            v->charmap_inv[e][i] = prev << 8 | (uint32_t)(i < 128 ? 0x80 + i : 0x1A);
        }
        sort_u32(v->charmap_inv[e], 129);
    }
    ok &= table_end(&r);

    table_open(&r, html_entity_data);
    memset(v->ent_val, 0, 3 * HTML_ENTITIES * sizeof(uint32_t));
    memset(v->upper_val, 0, 3 * HTML_UPPER_ENTITIES * sizeof(uint32_t));
    for (i = 0; i < HTML_ENTITIES && ok; i++) {
        uint32_t h = table_uint(&r), shared = h >> 2, kind = h & 3, n;
        int ch;
        v->ent_off[i] = (uint32_t)pos;
        if ((i == 0 && shared) || (i > 0 && shared > v->ent_off[i] - v->ent_off[i - 1]) || pos + shared > HTML_ENTITY_CHARS) {
            ok = 0;
            break;
        }
        for (k = 0; k < shared; k++) v->ent_pool[pos + k] = v->ent_pool[v->ent_off[i - 1] + k];
        pos += shared;
        do {
            ch = table_char(&r);
            if (!ch || pos >= HTML_ENTITY_CHARS) { ok = 0; break; }
            v->ent_pool[pos++] = (char)ch;
        } while (ch != ';');
        n = table_uint(&r);
        ok &= n >= 1 && n <= 3;
        for (k = 0; k < n && k < 3; k++) v->ent_val[3 * i + k] = table_uint(&r);
        if (kind && nup < HTML_UPPER_ENTITIES) {
            v->upper_of[nup] = (uint16_t)i;
            if (kind == 1) memcpy(v->upper_val + 3 * nup, v->ent_val + 3 * i, 3 * sizeof(uint32_t));
            else {
                n = table_uint(&r);
                ok &= n >= 1 && n <= 3;
                for (k = 0; k < n && k < 3; k++) v->upper_val[3 * nup + k] = table_uint(&r);
            }
            nup++;
        }
    }
    v->ent_off[HTML_ENTITIES] = (uint32_t)pos;
    ok &= table_end(&r) && pos == HTML_ENTITY_CHARS && nup == HTML_UPPER_ENTITIES;
    if (!ok) return fail(err, SD_ERR_UNSUPPORTED, "tokenizer: the built-in Unicode tables are damaged");
    return SD_OK;
}

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;                /* FNV-1a */
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Id of the token spelled s[0..n), or -1. */
static int32_t find_token(const sd_clip_vocab *v, const char *s, size_t n)
{
    uint32_t h = hash_bytes(s, n) & v->tok_mask;
    for (; v->tok_hash[h] >= 0; h = (h + 1) & v->tok_mask) {
        int32_t id = v->tok_hash[h];
        if (v->tok_off[id + 1] - v->tok_off[id] == n && !memcmp(v->pool + v->tok_off[id], s, n)) return id;
    }
    return -1;
}

/* Appends token `id`, spelled by the last `n` bytes of the pool; 0 if that spelling exists already. */
static int add_token(sd_clip_vocab *v, int32_t id, size_t n)
{
    uint32_t h;
    const char *s = v->pool + v->tok_off[id];
    if (find_token(v, s, n) >= 0) return 0;
    v->tok_off[id + 1] = v->tok_off[id] + (uint32_t)n;
    for (h = hash_bytes(s, n) & v->tok_mask; v->tok_hash[h] >= 0; h = (h + 1) & v->tok_mask) {}
    v->tok_hash[h] = id;
    return 1;
}

enum { CLIP_HASH_SLOTS = 1 << 17 };   /* > 2 x 49408 */

/* The vocabulary as openai/CLIP's simple_tokenizer builds it: the 256 byte symbols of GPT-2's
   bytes_to_unicode (printable bytes stand for themselves, the others for U+0100 + k), the same
   with </w>, one token per line of merges.txt (the two symbols joined), then the two specials.
   The merge on line r has rank r: the lower, the earlier it applies. */
static int load_merges(sd_clip_vocab *v, const unsigned char *m, size_t size, sd_arena *a, sd_error *err)
{
    size_t i, pos, line_no = 1, n, pool_cap = size + 2048;
    uint32_t cps_of_byte[256];
    int32_t r = 0, b, k = 0;
    /* bytes_to_unicode(), in its order: '!'..'~', U+00A1..U+00AC, U+00AE..U+00FF, then the rest */
    for (b = 0; b < 256; b++) if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) { cps_of_byte[b] = (uint32_t)b; v->byte_id[b] = k++; }
    for (b = 0; b < 256; b++) if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) { cps_of_byte[b] = 256u + (uint32_t)(k - 188); v->byte_id[b] = k++; }
    v->pool = (char *)arena_array(a, pool_cap, 1, err);
    v->tok_off = (uint32_t *)arena_array(a, SD_CLIP_VOCAB_SIZE + 1, sizeof(uint32_t), err);
    v->tok_hash = (int32_t *)arena_array(a, CLIP_HASH_SLOTS, sizeof(int32_t), err);
    v->pair_key = (uint32_t *)arena_array(a, CLIP_HASH_SLOTS, sizeof(uint32_t), err);
    v->pair_rank = (int32_t *)arena_array(a, CLIP_HASH_SLOTS, sizeof(int32_t), err);
    if (!v->pool || !v->tok_off || !v->tok_hash || !v->pair_key || !v->pair_rank) return SD_ERR_MEMORY;
    v->tok_mask = v->pair_mask = CLIP_HASH_SLOTS - 1;
    memset(v->tok_hash, 0xFF, CLIP_HASH_SLOTS * sizeof(int32_t));
    memset(v->pair_key, 0xFF, CLIP_HASH_SLOTS * sizeof(uint32_t));
    v->tok_off[0] = 0;
    for (i = 0; i < 512; i++) {              /* the byte symbols, then the same with </w> */
        int32_t id = (int32_t)i, byte = 0;
        size_t len;
        while (v->byte_id[byte] != (int32_t)(i & 255)) byte++;
        len = utf8_put(cps_of_byte[byte], (unsigned char *)v->pool + v->tok_off[id]);
        if (i >= 256) { memcpy(v->pool + v->tok_off[id] + len, "</w>", 4); len += 4; }
        add_token(v, id, len);
    }

    for (i = 0; i < size; ) {                /* UTF-8 throughout, or say where it is not */
        size_t len = size - i < 4 ? size - i : 4, used;
        uint32_t c[4];
        if (m[i] < 0x80) { line_no += m[i] == '\n'; i++; continue; }
        for (used = 2; used <= len && utf8_decode(m + i, used, 0, c, &n); used++) {}
        if (used > len || n != 1)
            return fail(err, SD_ERR_FORMAT, "merges.txt: invalid UTF-8 at byte %zu (line %zu)", i, line_no);
        i += used;
    }

    if (size < 8 || memcmp(m, "#version", 8))
        return fail(err, SD_ERR_FORMAT, "merges.txt: does not start with a \"#version\" line");
    for (pos = 0; pos < size && m[pos] != '\n'; pos++) {}
    for (line_no = 2, pos++; pos < size; line_no++) {
        size_t end = pos, sp, len;
        int32_t left, right, id;
        while (end < size && m[end] != '\n') end++;
        len = end - pos - (end > pos && m[end - 1] == '\r');
        if (len == 0 && end >= size - 1) break;      /* the file may end with a line break */
        for (sp = pos; sp < pos + len && m[sp] != ' '; sp++) {}
        if (sp == pos || sp + 1 >= pos + len || memchr(m + sp + 1, ' ', pos + len - sp - 1))
            return fail(err, SD_ERR_FORMAT, "merges.txt line %zu: expected two symbols separated by one space", line_no);
        if (r >= CLIP_MERGES)
            return fail(err, SD_ERR_FORMAT, "merges.txt: more than the %d merges of CLIP's vocabulary", CLIP_MERGES);
        left = find_token(v, (const char *)m + pos, sp - pos);
        right = find_token(v, (const char *)m + sp + 1, pos + len - sp - 1);
        if (left < 0 || right < 0)
            return fail(err, SD_ERR_FORMAT, "merges.txt line %zu: '%.*s' is not a symbol made by the lines before it",
                        line_no, (int)(left < 0 ? (sp - pos > 40 ? 40 : sp - pos) : (pos + len - sp - 1 > 40 ? 40 : pos + len - sp - 1)),
                        (const char *)m + (left < 0 ? pos : sp + 1));
        id = CLIP_FIRST_MERGE + r;
        memcpy(v->pool + v->tok_off[id], m + pos, sp - pos);
        memcpy(v->pool + v->tok_off[id] + sp - pos, m + sp + 1, pos + len - sp - 1);
        if (!add_token(v, id, len - 1))
            return fail(err, SD_ERR_FORMAT, "merges.txt line %zu: merges into a token that an earlier line made", line_no);
        {
            uint32_t key = (uint32_t)left << 16 | (uint32_t)right, h = pair_slot(key, v->pair_mask);
            while (v->pair_key[h] != 0xFFFFFFFFu) h = (h + 1) & v->pair_mask;
            v->pair_key[h] = key;
            v->pair_rank[h] = r;
        }
        r++;
        pos = end + 1;
    }
    if (r != CLIP_MERGES)
        return fail(err, SD_ERR_FORMAT, "merges.txt: %d merges, but CLIP's vocabulary has %d", (int)r, CLIP_MERGES);
    memcpy(v->pool + v->tok_off[SD_CLIP_BOS], "<|startoftext|>", 15);
    add_token(v, SD_CLIP_BOS, 15);
    memcpy(v->pool + v->tok_off[SD_CLIP_EOS], "<|endoftext|>", 13);
    add_token(v, SD_CLIP_EOS, 13);
    return SD_OK;
}

/* vocab.json must give every token the id that merges.txt gives it. */
static int check_vocab_json(const sd_clip_vocab *v, const char *s, size_t size, sd_arena *a, sd_error *err)
{
    json j;
    char key[256];
    size_t len, count = 0;
    uint64_t id;
    unsigned char *seen = (unsigned char *)arena_array(a, SD_CLIP_VOCAB_SIZE, 1, err);
    if (!seen) return SD_ERR_MEMORY;
    memset(seen, 0, SD_CLIP_VOCAB_SIZE);
    j.start = j.p = s; j.end = s + size; j.error = NULL;
    if (!json_eat(&j, '{')) { json_fail(&j, "expected '{'"); goto bad_json; }
    if (!json_eat(&j, '}')) {
        do {
            int32_t ours;
            if (json_string(&j, key, sizeof key, &len)) goto bad_json;
            if (!json_eat(&j, ':')) { json_fail(&j, "expected ':'"); goto bad_json; }
            if (json_uint(&j, &id)) goto bad_json;
            ours = len < sizeof key ? find_token(v, key, len) : -1;
            if (ours < 0)
                return fail(err, SD_ERR_FORMAT, "vocab.json: token \"%.40s\" (id %llu) is not in the vocabulary of merges.txt",
                            key, (unsigned long long)id);
            if ((uint64_t)ours != id)
                return fail(err, SD_ERR_FORMAT, "vocab.json: token \"%.40s\" has id %llu, merges.txt gives it %d",
                            key, (unsigned long long)id, (int)ours);
            if (seen[ours]) return fail(err, SD_ERR_FORMAT, "vocab.json: token \"%.40s\" appears twice", key);
            seen[ours] = 1;
            count++;
        } while (json_eat(&j, ','));
        if (!json_eat(&j, '}')) { json_fail(&j, "expected ',' or '}'"); goto bad_json; }
    }
    json_ws(&j);
    if (j.p != j.end) { json_fail(&j, "trailing bytes after the object"); goto bad_json; }
    if (count != SD_CLIP_VOCAB_SIZE)
        return fail(err, SD_ERR_FORMAT, "vocab.json: %zu tokens, but the vocabulary has %d", count, SD_CLIP_VOCAB_SIZE);
    return SD_OK;
bad_json:
    return fail(err, SD_ERR_FORMAT, "vocab.json: bad JSON at byte %ld: %s", (long)(j.p - j.start), j.error ? j.error : "syntax error");
}

static size_t aligned_bytes(size_t n) { return (n + SD_ALIGN - 1) & ~(size_t)(SD_ALIGN - 1); }

SD_API size_t sd_clip_vocab_arena_bytes(size_t merges_size)
{
    return SD_ALIGN + aligned_bytes(sizeof(sd_clip_vocab)) + aligned_bytes(UNI_PROPS_RANGES * 4) + aligned_bytes(UNI_PROPS_RANGES * 2) +
           aligned_bytes(3 * UNI_LOWER_RUNS * 4) + aligned_bytes(UNI_LOWER_RUNS * 4) + aligned_bytes(3 * UNI_DECOMPS * 4) +
           aligned_bytes(UNI_COMPOSITIONS * 2) + aligned_bytes(HTML_ENTITY_CHARS) + aligned_bytes((HTML_ENTITIES + 1) * 4) +
           aligned_bytes(3 * HTML_ENTITIES * 4) + aligned_bytes(HTML_UPPER_ENTITIES * 2) + aligned_bytes(3 * HTML_UPPER_ENTITIES * 4) +
           aligned_bytes(merges_size + 2048) + aligned_bytes((SD_CLIP_VOCAB_SIZE + 1) * 4) + 3 * aligned_bytes(CLIP_HASH_SLOTS * 4) +
           aligned_bytes(SD_CLIP_VOCAB_SIZE);   /* + the scratch of the vocab.json check */
}

SD_API int sd_clip_vocab_load(sd_clip_vocab **vocab, const void *merges, size_t merges_size,
                              const void *vocab_json, size_t vocab_json_size, sd_arena *a, sd_error *err)
{
    sd_clip_vocab *v;
    size_t mark;
    int rc;
    if (vocab) *vocab = NULL;
    if (!vocab || !merges || !a || (!vocab_json && vocab_json_size))
        return fail(err, SD_ERR_ARG, "sd_clip_vocab_load: NULL argument");
    if (merges_size > 0x7fffffffu) return fail(err, SD_ERR_FORMAT, "merges.txt: %zu bytes is far too large", merges_size);
    mark = sd_arena_mark(a);
    if (!(v = (sd_clip_vocab *)sd_arena_alloc(a, sizeof *v, err))) return SD_ERR_MEMORY;
    memset(v, 0, sizeof *v);
    rc = load_unicode_tables(v, a, err);
    if (!rc) rc = load_merges(v, (const unsigned char *)merges, merges_size, a, err);
    if (!rc && vocab_json) {
        size_t scratch = sd_arena_mark(a);
        rc = check_vocab_json(v, (const char *)vocab_json, vocab_json_size, a, err);
        sd_arena_reset(a, scratch);
    }
    if (rc) { sd_arena_reset(a, mark); return rc; }
    *vocab = v;
    return SD_OK;
}

/* ---- Prompt weighting (A1111 syntax) and long prompts -------------------------------------- */
/* The parser follows parse_prompt_attention: a regex scan where each match is an escape, a bracket,
   a ":number)" weight, or a run of other text (split at BREAK); every text piece gets weight 1.0,
   closing a bracket multiplies the pieces made since it opened, unclosed brackets multiply at the
   end (round ones first, outermost first), and neighbours of equal weight are merged. One change:
   A1111 keeps BREAK in its list as the piece ("BREAK", -1) and recognises it later by that weight,
   so a BREAK inside brackets is turned into the word "break" with weight -1.1; here a BREAK is a
   break wherever it stands, the brackets weighing the text around it. */

/* The code point at s (n bytes left) and its byte length; any byte that does not start a valid
   UTF-8 sequence reads as U+FFFD, which is neither a space, a letter nor a digit. */
static uint32_t prompt_char(const unsigned char *s, size_t n, size_t *len)
{
    uint32_t cp[4];
    size_t k, m;
    if (s[0] < 0x80) { *len = 1; return s[0]; }
    for (k = 2; k <= 4 && k <= n; k++)
        if (utf8_decode(s, k, 0, cp, &m) == 0 && m == 1) { *len = k; return cp[0]; }
    *len = 1;
    return 0xFFFD;
}

/* Python re's \w and \d on str; without a vocabulary, ASCII only. */
static int prompt_word(const sd_clip_vocab *v, uint32_t c)
{
    if (c < 0x80) return c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
    return v && (uprop(v, c) & PROP_WORD);
}

/* The value of a \d character, or -1: Unicode's decimal digits come in runs of ten from zero
   (checked over all of Unicode 14), so the value is the distance from the run's start mod 10. */
static int prompt_digit(const sd_clip_vocab *v, uint32_t c)
{
    uint32_t k = 0;
    if (c < 0x80) return c >= '0' && c <= '9' ? (int)(c - '0') : -1;
    if (!v || !(uprop(v, c) & PROP_DIGIT)) return -1;
    while (k < c && (uprop(v, c - k - 1) & PROP_DIGIT)) k++;
    return (int)(k % 10);
}

/* Python's float() of what the weight regex matched, [+-]?[.\d]+: -1 unless it has at most one
   dot and at least one digit (Python raises ValueError). Correctly rounded (one division or
   multiplication of exact doubles) when the digits form an integer below 2^53 with at most 22
   after the dot, as every weight anyone writes does; longer numbers may be an ulp or so off. */
static int prompt_number(const sd_clip_vocab *v, const unsigned char *s, size_t n, double *out)
{
    static const double tens[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    uint64_t mant = 0;
    long exp10 = 0;
    int negative = 0, dots = 0, digits = 0;
    size_t i = 0, len;
    double x;
    if (i < n && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
    for (; i < n; i += len) {
        int d = prompt_digit(v, prompt_char(s + i, n - i, &len));
        if (s[i] == '.') { dots++; continue; }
        digits++;
        if (mant < 100000000000000000ull) { mant = mant * 10 + (uint64_t)d; exp10 -= dots; }
        else if (!dots) exp10++;
    }
    if (dots > 1 || !digits) return -1;
    if (mant == 0) x = 0;
    else if (mant <= (1ull << 53) && exp10 >= -22 && exp10 <= 22)
        x = exp10 < 0 ? (double)mant / tens[-exp10] : (double)mant * tens[exp10];
    else x = (double)mant * pow(10.0, (double)exp10);
    *out = negative ? -x : x;
    return 0;
}

/* The characters that end a run of plain text. */
static int prompt_syntax(unsigned char c) { return c == '\\' || c == '(' || c == ')' || c == '[' || c == ']' || c == ':'; }

/* The parser's state: runs so far (unmerged), their text in one buffer, the open brackets. */
typedef struct prompt_parser {
    const sd_clip_vocab *v;
    sd_prompt_run *runs;
    int count;
    char *text;          /* the unescaped text of all runs, in order */
    size_t used;
    int round[SD_PROMPT_MAX_NESTING], square[SD_PROMPT_MAX_NESTING], rounds, squares;
} prompt_parser;

static void prompt_add_run(prompt_parser *p, const unsigned char *s, size_t n, int chunk_break)
{
    sd_prompt_run *r = &p->runs[p->count++];
    if (n) memcpy(p->text + p->used, s, n);
    r->text = p->text + p->used;
    r->size = n;
    r->weight = 1.0;
    r->chunk_break = chunk_break;
    p->used += n;
}

/* A piece of plain text: re.split at \s*\bBREAK\b\s*, each part a run, every part after the first
   starting a chunk. re.split sees only the piece, so \b looks no further than its ends (the
   characters around a piece are syntax characters, never \w, so the whole prompt agrees). */
static void prompt_add_text(prompt_parser *p, const unsigned char *s, size_t n)
{
    size_t i = 0, part = 0, len, end;
    size_t spaces = (size_t)-1;          /* start of the run of spaces just before i, if any */
    int after_word = 0, chunk_break = 0;
    while (i < n) {
        if (s[i] == 'B' && !after_word && n - i >= 5 && !memcmp(s + i, "BREAK", 5) &&
            (i + 5 == n || !prompt_word(p->v, prompt_char(s + i + 5, n - i - 5, &len)))) {
            prompt_add_run(p, s + part, (spaces != (size_t)-1 ? spaces : i) - part, chunk_break);
            chunk_break = 1;
            for (end = i + 5, after_word = 1; end < n && is_space(prompt_char(s + end, n - end, &len)); end += len)
                after_word = 0;
            part = i = end;
            spaces = (size_t)-1;
            continue;
        }
        {
            uint32_t c = prompt_char(s + i, n - i, &len);
            if (is_space(c)) { if (spaces == (size_t)-1) spaces = i; }
            else spaces = (size_t)-1;
            after_word = prompt_word(p->v, c);
            i += len;
        }
    }
    prompt_add_run(p, s + part, n - part, chunk_break);
}

static void prompt_multiply(prompt_parser *p, int start, double m)
{
    for (int i = start; i < p->count; i++) p->runs[i].weight *= m;
}

/* The length of the weight match `:\s*([+-]?[.\d]+)\s*\)` at s[0] == ':' (0 if none), and where
   its number is. */
static size_t prompt_weight_match(const sd_clip_vocab *v, const unsigned char *s, size_t n, size_t *num, size_t *num_len)
{
    size_t i = 1, len = 0, start;
    while (i < n && is_space(prompt_char(s + i, n - i, &len))) i += len;
    start = i;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    {
        size_t digits = i;
        while (i < n && (s[i] == '.' || prompt_digit(v, prompt_char(s + i, n - i, &len)) >= 0)) i += s[i] == '.' ? 1 : len;
        if (i == digits) return 0;
    }
    *num = start;
    *num_len = i - start;
    while (i < n && is_space(prompt_char(s + i, n - i, &len))) i += len;
    return i < n && s[i] == ')' ? i + 1 : 0;
}

SD_API int sd_prompt_parse(const sd_clip_vocab *v, const char *text, size_t size, sd_prompt_run **runs,
                           int *count, sd_arena *a, sd_error *err)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t mark, i = 0;
    prompt_parser p;
    int j, w;
    if (runs) *runs = NULL;
    if (count) *count = 0;
    if ((!text && size) || !runs || !count || !a) return fail(err, SD_ERR_ARG, "prompt parse: NULL argument");
    if (size > SD_PROMPT_MAX_BYTES)
        return fail(err, SD_ERR_ARG, "prompt parse: a prompt of %zu bytes is longer than the %d allowed", size, SD_PROMPT_MAX_BYTES);
    mark = sd_arena_mark(a);
    p.v = v;
    p.count = p.rounds = p.squares = 0;
    p.used = 0;
    /* every run takes at least one byte of the prompt, or is the one run of an empty prompt */
    p.text = (char *)arena_array(a, size + 1, 1, err);
    p.runs = (sd_prompt_run *)arena_array(a, size + 1, sizeof(sd_prompt_run), err);
    if (!p.text || !p.runs) { sd_arena_reset(a, mark); return SD_ERR_MEMORY; }
    while (i < size) {
        unsigned char c = s[i];
        size_t end = i + 1, num = 0, num_len = 0;
        if (c == '\\') {              /* \( \) \[ \] \\ are the character; a lone backslash is dropped */
            if (i + 1 < size && prompt_syntax(s[i + 1]) && s[i + 1] != ':') prompt_add_run(&p, s + i + 1, 1, 0), end = i + 2;
            else prompt_add_run(&p, s, 0, 0);
        } else if (c == '(' || c == '[') {
            if (p.rounds + p.squares == SD_PROMPT_MAX_NESTING) {
                sd_arena_reset(a, mark);
                return fail(err, SD_ERR_ARG, "prompt parse: more than %d brackets open at byte %zu", SD_PROMPT_MAX_NESTING, i);
            }
            if (c == '(') p.round[p.rounds++] = p.count;
            else p.square[p.squares++] = p.count;
        } else if (c == ':' && (end = prompt_weight_match(v, s + i, size - i, &num, &num_len)) != 0) {
            double weight;
            end += i;
            if (!p.rounds) prompt_add_text(&p, s + i, end - i);   /* no ( to close: it is text */
            else if (prompt_number(v, s + i + num, num_len, &weight)) {
                sd_arena_reset(a, mark);
                return fail(err, SD_ERR_ARG, "prompt parse: weight \"%.*s\" at byte %zu is not a number",
                            (int)(num_len > 40 ? 40 : num_len), text + i + num, i + num);
            } else prompt_multiply(&p, p.round[--p.rounds], weight);
        } else if (c == ')' && p.rounds) {
            prompt_multiply(&p, p.round[--p.rounds], 1.1);
        } else if (c == ']' && p.squares) {
            prompt_multiply(&p, p.square[--p.squares], 1 / 1.1);
        } else {                      /* text up to the next \ ( ) [ ] :, or one stray ) ] : */
            end = i + 1;
            if (c != ')' && c != ']' && c != ':')
                while (end < size && !prompt_syntax(s[end])) end++;
            prompt_add_text(&p, s + i, end - i);
        }
        i = end;
    }
    for (j = 0; j < p.rounds; j++) prompt_multiply(&p, p.round[j], 1.1);
    for (j = 0; j < p.squares; j++) prompt_multiply(&p, p.square[j], 1 / 1.1);
    if (!p.count) prompt_add_run(&p, s, 0, 0);
    /* merge neighbours of equal weight (their texts are adjacent in the buffer) */
    for (j = 1, w = 0; j < p.count; j++) {
        if (!p.runs[j].chunk_break && p.runs[j].weight == p.runs[w].weight) p.runs[w].size += p.runs[j].size;
        else p.runs[++w] = p.runs[j];
    }
    *runs = p.runs;
    *count = w + 1;
    return SD_OK;
}

/* Textual inversion in the prompt, as AUTOMATIC1111's EmbeddingDatabase finds embeddings: by
   the token ids of their names (tokenized like the prompt, per text encoder, since SDXL's second
   tokenizer reads '!' differently), longest name first, at any token of a run of text. A match
   puts the embedding's vectors, as ids from SD_CLIP_VOCAB_SIZE up, where the name's tokens were.
   The set is loaded in section 10 (it needs the model). */
typedef struct ti_embedding {
    const char *name;
    int vectors;                 /* token positions it takes, 1..75 */
    int32_t first_id;            /* SD_CLIP_VOCAB_SIZE + the index of its first vector in the set */
    const int32_t *name_ids[2];  /* the name's tokens for text encoder 0 and 1 */
    int name_len[2];
} ti_embedding;

struct sd_embeddings {
    const sd_model *model;       /* the model they were checked against */
    ti_embedding *items;         /* in file order */
    int count, total;            /* embeddings, and their vectors together */
    const sd_tensor *vectors[2]; /* per text encoder: [total] views of one vector each */
    int growth, widest;          /* for planning: the most vectors per name token (rounded up), the most of one embedding */
};

/* The embedding whose name's tokens (for encoder e) start at tok[i], the longest such; NULL if none. */
static const ti_embedding *embedding_at(const sd_embeddings *set, int e, const int32_t *tok, size_t n, size_t i)
{
    const ti_embedding *best = NULL;
    for (int j = 0; set && j < set->count; j++) {
        const ti_embedding *x = &set->items[j];
        size_t len = (size_t)x->name_len[e];
        if (len <= n - i && (!best || len > (size_t)best->name_len[e]) && !memcmp(tok + i, x->name_ids[e], len * sizeof(int32_t)))
            best = x;
    }
    return best;
}

/* Chunks of 77 ids as tokenize_line builds them: tokens go into the open chunk, which is closed
   (framed and padded) when a token finds it full, at a BREAK, and at the end if it holds tokens
   or is the only one; an embedding's vectors go in together. `ids` NULL only counts. */
typedef struct prompt_packer {
    int32_t tok[75];
    float weight[75];
    int n, last_comma, chunks, comma_wrap;
    int32_t comma, pad;
    int32_t *ids;
    float *weights;
    const sd_embeddings *set;    /* textual inversion (may be NULL), for text encoder `encoder` */
    int encoder;
} prompt_packer;

static int prompt_close_chunk(prompt_packer *k, sd_error *err)
{
    if (k->chunks == SD_PROMPT_MAX_CHUNKS)
        return fail(err, SD_ERR_ARG, "prompt: more than %d chunks of 75 tokens", SD_PROMPT_MAX_CHUNKS);
    if (k->ids) {
        int32_t *id = k->ids + (size_t)k->chunks * SD_CLIP_CONTEXT;
        id[0] = SD_CLIP_BOS;
        memcpy(id + 1, k->tok, (size_t)k->n * sizeof(int32_t));
        id[1 + k->n] = SD_CLIP_EOS;
        for (int i = 2 + k->n; i < SD_CLIP_CONTEXT; i++) id[i] = k->pad;
        if (k->weights) {
            float *w = k->weights + (size_t)k->chunks * SD_CLIP_CONTEXT;
            for (int i = 0; i < SD_CLIP_CONTEXT; i++) w[i] = 1.0f;
            memcpy(w + 1, k->weight, (size_t)k->n * sizeof(float));
        }
    }
    k->chunks++;
    k->n = 0;
    k->last_comma = -1;
    return SD_OK;
}

/* What tokenize_line does with a token before it goes in: note a comma; when the chunk is full,
   move the words after a recent comma to the next chunk (comma_wrap), or else start the next. */
static int prompt_make_room(prompt_packer *k, int32_t id, sd_error *err)
{
    int rc;
    if (id == k->comma) k->last_comma = k->n;
    else if (k->comma_wrap && k->n == 75 && k->last_comma >= 0 && k->n - k->last_comma <= k->comma_wrap) {
        /* the words after the last comma move to the next chunk together */
        int from = k->last_comma + 1, moved = k->n - from;
        k->n = from;
        if ((rc = prompt_close_chunk(k, err))) return rc;
        memmove(k->tok, k->tok + from, (size_t)moved * sizeof(int32_t));
        memmove(k->weight, k->weight + from, (size_t)moved * sizeof(float));
        k->n = moved;
    }
    if (k->n == 75 && (rc = prompt_close_chunk(k, err))) return rc;
    return SD_OK;
}

static int prompt_add_token(prompt_packer *k, int32_t id, float weight, sd_error *err)
{
    int rc = prompt_make_room(k, id, err);
    if (rc) return rc;
    k->tok[k->n] = id;
    k->weight[k->n++] = weight;
    return SD_OK;
}

/* An embedding at a token whose name starts there: that token is seen as any token is, then the
   vectors go in together, in the next chunk if this one has no room for all of them. */
static int prompt_add_embedding(prompt_packer *k, int32_t first_token, const ti_embedding *x, float weight, sd_error *err)
{
    int rc = prompt_make_room(k, first_token, err);
    if (!rc && k->n + x->vectors > 75) rc = prompt_close_chunk(k, err);
    if (rc) return rc;
    for (int v = 0; v < x->vectors; v++) {
        k->tok[k->n] = x->first_id + v;
        k->weight[k->n++] = weight;
    }
    return SD_OK;
}

/* One pass over the prompt: parse, tokenize each run, pack. Scratch is given back. */
static int prompt_pack(const sd_clip_vocab *v, const char *text, size_t size, sd_clip_pad pad, int weighting,
                       prompt_packer *k, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a), cap = (size_t)SD_PROMPT_MAX_CHUNKS * 75 + 1, n;
    sd_prompt_run *runs, whole;
    int count = 1, rc, r;
    int32_t *tok = (int32_t *)arena_array(a, cap, sizeof(int32_t), err);
    if (!tok) return SD_ERR_MEMORY;
    if ((rc = sd_clip_token_ids(v, ",", 1, pad, tok, 1, &n, a, err))) goto done;
    k->comma = n == 1 ? tok[0] : -1;
    k->pad = pad == SD_CLIP_PAD_EXCLAMATION ? 0 : SD_CLIP_EOS;
    if (weighting) {
        if ((rc = sd_prompt_parse(v, text, size, &runs, &count, a, err))) goto done;
    } else {
        whole.text = text; whole.size = size; whole.weight = 1.0; whole.chunk_break = 0;
        runs = &whole;
    }
    for (r = 0; r < count; r++) {
        if (!(fabs(runs[r].weight) <= 1e30)) {   /* e.g. (((a:1e30):1e30):1e30): no float holds it */
            rc = fail(err, SD_ERR_ARG, "prompt: the weight of \"%.*s\" is %g, beyond any sensible emphasis",
                      (int)(runs[r].size > 40 ? 40 : runs[r].size), runs[r].text, runs[r].weight);
            goto done;
        }
        if (runs[r].chunk_break && (rc = prompt_close_chunk(k, err))) goto done;
        if ((rc = sd_clip_token_ids(v, runs[r].text, runs[r].size, pad, tok, cap, &n, a, err))) goto done;
        if (n >= cap) { rc = fail(err, SD_ERR_ARG, "prompt: more than %d chunks of 75 tokens", SD_PROMPT_MAX_CHUNKS); goto done; }
        for (size_t t = 0; t < n && !rc; ) {
            const ti_embedding *x = embedding_at(k->set, k->encoder, tok, n, t);
            if (x) rc = prompt_add_embedding(k, tok[t], x, (float)runs[r].weight, err), t += (size_t)x->name_len[k->encoder];
            else rc = prompt_add_token(k, tok[t++], (float)runs[r].weight, err);
        }
        if (rc) goto done;
    }
    if (k->n || !k->chunks) rc = prompt_close_chunk(k, err);
done:
    sd_arena_reset(a, mark);
    return rc;
}

SD_API size_t sd_prompt_arena_bytes(size_t text_size)
{
    size_t out = (size_t)SD_PROMPT_MAX_CHUNKS * SD_CLIP_CONTEXT * 4 + SD_ALIGN;
    size_t tok = ((size_t)SD_PROMPT_MAX_CHUNKS * 75 + 1) * 4 + SD_ALIGN;
    size_t parse = text_size + 1 + SD_ALIGN + (text_size + 1) * sizeof(sd_prompt_run) + SD_ALIGN;
    return 2 * out + tok + parse + sd_clip_scratch_bytes(text_size > 1 ? text_size : 1);
}

/* sd_prompt_chunks, reading the names of `set` (may be NULL) as text encoder e's embeddings. */
static int prompt_chunks_with(const sd_clip_vocab *v, const sd_embeddings *set, int e, const char *text, size_t size,
                              sd_clip_pad pad, int weighting, int comma_wrap, int min_chunks, int32_t **ids, float **weights,
                              int *chunks, sd_arena *a, sd_error *err)
{
    prompt_packer k;
    size_t mark;
    int rc, total, c;
    if (ids) *ids = NULL;
    if (weights) *weights = NULL;
    if (chunks) *chunks = 0;
    if (!v || (!text && size) || !ids || !chunks || !a) return fail(err, SD_ERR_ARG, "prompt chunks: NULL argument");
    if (size > SD_PROMPT_MAX_BYTES)
        return fail(err, SD_ERR_ARG, "prompt chunks: a prompt of %zu bytes is longer than the %d allowed", size, SD_PROMPT_MAX_BYTES);
    if (comma_wrap < 0 || comma_wrap > 74) return fail(err, SD_ERR_ARG, "prompt chunks: comma_wrap %d, expected 0..74", comma_wrap);
    if (min_chunks < 0 || min_chunks > SD_PROMPT_MAX_CHUNKS)
        return fail(err, SD_ERR_ARG, "prompt chunks: min_chunks %d, expected 0..%d", min_chunks, SD_PROMPT_MAX_CHUNKS);
    if (pad != SD_CLIP_PAD_EOS && pad != SD_CLIP_PAD_EXCLAMATION) return fail(err, SD_ERR_ARG, "prompt chunks: unknown padding %d", (int)pad);
    /* count the chunks first, so that the results take exactly their room below the scratch */
    memset(&k, 0, sizeof k);
    k.comma_wrap = comma_wrap;
    k.last_comma = -1;
    k.set = set;
    k.encoder = e;
    if ((rc = prompt_pack(v, text, size, pad, weighting, &k, a, err))) return rc;
    total = k.chunks > min_chunks ? k.chunks : min_chunks;
    mark = sd_arena_mark(a);
    *ids = (int32_t *)arena_array(a, (size_t)total * SD_CLIP_CONTEXT, sizeof(int32_t), err);
    if (!*ids || (weights && !(*weights = arena_floats(a, (size_t)total * SD_CLIP_CONTEXT, err)))) {
        *ids = NULL;
        if (weights) *weights = NULL;
        sd_arena_reset(a, mark);
        return SD_ERR_MEMORY;
    }
    memset(&k, 0, sizeof k);
    k.comma_wrap = comma_wrap;
    k.last_comma = -1;
    k.set = set;
    k.encoder = e;
    k.ids = *ids;
    k.weights = weights ? *weights : NULL;
    if ((rc = prompt_pack(v, text, size, pad, weighting, &k, a, err))) {
        *ids = NULL;
        if (weights) *weights = NULL;
        sd_arena_reset(a, mark);
        return rc;
    }
    for (c = k.chunks; c < total; c++) prompt_close_chunk(&k, err);   /* the chunks of "" */
    *chunks = total;
    return SD_OK;
}

SD_API int sd_prompt_chunks(const sd_clip_vocab *v, const char *text, size_t size, sd_clip_pad pad, int weighting,
                            int comma_wrap, int min_chunks, int32_t **ids, float **weights, int *chunks,
                            sd_arena *a, sd_error *err)
{
    return prompt_chunks_with(v, NULL, 0, text, size, pad, weighting, comma_wrap, min_chunks, ids, weights, chunks, a, err);
}

SD_API void sd_prompt_weight(float *context, const float *weights, int tokens, int width)
{
    double before = 0, after = 0, scale;
    size_t n, i;
    int t, c;
    if (!context || !weights || tokens <= 0 || width <= 0) return;
    for (t = 0; t < tokens && weights[t] == 1.0f; t++) {}
    if (t == tokens) return;
    n = (size_t)tokens * (size_t)width;
    for (i = 0; i < n; i++) before += context[i];
    for (t = 0; t < tokens; t++)
        for (c = 0; c < width; c++) {
            float *z = &context[(size_t)t * width + c];
            *z *= weights[t];
            after += *z;
        }
    if (after == 0) return;
    scale = before / after;   /* the ratio of the means: the element counts cancel */
    for (i = 0; i < n; i++) context[i] = (float)(context[i] * scale);
}

/* ---- 6. Text encoder --------------------------------------------------------------------- */
/* CLIP's text transformer (Radford et al. 2021, §2.4: a GPT-2 style pre-LayerNorm transformer)
   turns the 77 token ids of a prompt into 77 vectors that the UNet attends to. SD1 uses OpenAI's
   ViT-L/14 text tower (width 768, 12 layers, 12 heads, quick_gelu) and reads its last layer;
   SD2 uses OpenCLIP's ViT-H/14 tower (width 1024, 24 layers, 16 heads, gelu) and reads the
   penultimate one. Both pass the state they read through the final LayerNorm. SDXL uses both
   ViT-L and OpenCLIP's bigG (1280 wide, 32 layers), reads each one's penultimate layer without
   the LayerNorm, and takes from bigG also the pooled embedding: the final-LayerNorm state of the
   end-of-text token through text_projection. One layer is
       x += out_proj(attention(LN1(x)))     causal: a token sees itself and the tokens before it
       x += fc2(act(fc1(LN2(x))))
   Checkpoints store it under two name maps: HF transformers' (SD1 files, SDXL's first encoder,
   every diffusers folder) and OpenCLIP's (SD2 files, SDXL's second encoder, with q/k/v fused in
   one in_proj matrix). */

typedef struct sd_clip_layer {
    sd_tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, out_w, out_b;
    sd_tensor ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} clip_layer;

/* Where each tensor of layer %d lives under the two name maps, and its shape in terms of the
   width D and the MLP size F (0: a vector). `part` ≥ 0 marks q, k, v: OpenCLIP stores them as
   thirds of in_proj, in that order, which are used in place as row views. */
static const struct clip_tensor_name {
    size_t field;
    char rows, cols;
    int part;
    const char *hf, *openclip;
} clip_layer_names[] = {
    {offsetof(clip_layer, ln1_w), 'D', 0, -1, "encoder.layers.%d.layer_norm1.weight", "transformer.resblocks.%d.ln_1.weight"},
    {offsetof(clip_layer, ln1_b), 'D', 0, -1, "encoder.layers.%d.layer_norm1.bias", "transformer.resblocks.%d.ln_1.bias"},
    {offsetof(clip_layer, q_w), 'D', 'D', 0, "encoder.layers.%d.self_attn.q_proj.weight", "transformer.resblocks.%d.attn.in_proj_weight"},
    {offsetof(clip_layer, q_b), 'D', 0, 0, "encoder.layers.%d.self_attn.q_proj.bias", "transformer.resblocks.%d.attn.in_proj_bias"},
    {offsetof(clip_layer, k_w), 'D', 'D', 1, "encoder.layers.%d.self_attn.k_proj.weight", "transformer.resblocks.%d.attn.in_proj_weight"},
    {offsetof(clip_layer, k_b), 'D', 0, 1, "encoder.layers.%d.self_attn.k_proj.bias", "transformer.resblocks.%d.attn.in_proj_bias"},
    {offsetof(clip_layer, v_w), 'D', 'D', 2, "encoder.layers.%d.self_attn.v_proj.weight", "transformer.resblocks.%d.attn.in_proj_weight"},
    {offsetof(clip_layer, v_b), 'D', 0, 2, "encoder.layers.%d.self_attn.v_proj.bias", "transformer.resblocks.%d.attn.in_proj_bias"},
    {offsetof(clip_layer, out_w), 'D', 'D', -1, "encoder.layers.%d.self_attn.out_proj.weight", "transformer.resblocks.%d.attn.out_proj.weight"},
    {offsetof(clip_layer, out_b), 'D', 0, -1, "encoder.layers.%d.self_attn.out_proj.bias", "transformer.resblocks.%d.attn.out_proj.bias"},
    {offsetof(clip_layer, ln2_w), 'D', 0, -1, "encoder.layers.%d.layer_norm2.weight", "transformer.resblocks.%d.ln_2.weight"},
    {offsetof(clip_layer, ln2_b), 'D', 0, -1, "encoder.layers.%d.layer_norm2.bias", "transformer.resblocks.%d.ln_2.bias"},
    {offsetof(clip_layer, fc1_w), 'F', 'D', -1, "encoder.layers.%d.mlp.fc1.weight", "transformer.resblocks.%d.mlp.c_fc.weight"},
    {offsetof(clip_layer, fc1_b), 'F', 0, -1, "encoder.layers.%d.mlp.fc1.bias", "transformer.resblocks.%d.mlp.c_fc.bias"},
    {offsetof(clip_layer, fc2_w), 'D', 'F', -1, "encoder.layers.%d.mlp.fc2.weight", "transformer.resblocks.%d.mlp.c_proj.weight"},
    {offsetof(clip_layer, fc2_b), 'D', 0, -1, "encoder.layers.%d.mlp.fc2.bias", "transformer.resblocks.%d.mlp.c_proj.bias"},
};

/* The model-level tensors: [0] tokens [vocab, D], [1] positions [positions, D], [2..3] final LN. */
static const char *const clip_top_names[2][4] = {
    {"embeddings.token_embedding.weight", "embeddings.position_embedding.weight", "final_layer_norm.weight", "final_layer_norm.bias"},
    {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"},
};

enum { CLIP_OUT_LAST, CLIP_OUT_PENULTIMATE, CLIP_OUT_PENULTIMATE_NO_LN };

/* Scans the tensor names under w's prefix that start with `stem`: returns how many there are,
   or with count_layers, one more than the highest N of any "<stem>N." (so that a missing tensor
   in the last layer is reported instead of silently dropping the layer). */
static int clip_scan(const weights *w, const char *stem, int count_layers)
{
    char start[256];
    int n = 0;
    snprintf(start, sizeof start, "%s%s", w->prefix ? w->prefix : "", stem);
    size_t len = strlen(start);
    for (int f = 0; f < w->nfiles; f++)
        for (int i = 0; i < w->files[f]->count; i++) {
            const char *s = w->files[f]->tensors[i].name;
            long v = 0;
            if (strncmp(s, start, len)) continue;
            if (!count_layers) { n++; continue; }
            for (s += len; *s >= '0' && *s <= '9' && v < 100000; s++) v = v * 10 + (*s - '0');
            if (*s == '.' && v + 1 > n) n = (int)v + 1;
        }
    return n;
}

/* Metadata value `<ns>.<key>` (ns "sd.clip"; SDXL's second encoder will use "sd.clip2"). */
static const char *clip_meta(const sd_safetensors *meta, const char *ns, const char *key)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", ns, key);
    return meta ? sd_safetensors_meta(meta, full) : NULL;
}

/* A positive integer metadata value into *v (left alone when the key is absent). */
static int clip_meta_int(const sd_safetensors *meta, const char *ns, const char *key, int *v, sd_error *err)
{
    const char *s = clip_meta(meta, ns, key), *p;
    long n = 0;
    if (!s) return SD_OK;
    for (p = s; *p >= '0' && *p <= '9' && n < 1000000; p++) n = n * 10 + (*p - '0');
    if (p == s || *p || n < 1 || n >= 1000000)
        return fail(err, SD_ERR_FORMAT, "metadata %s.%s = '%.40s' is not a positive integer", ns, key, s);
    *v = (int)n;
    return SD_OK;
}

/* A LayerNorm epsilon from metadata ("1e-05"); 0 when it is not a number in (0, 1). */
static float clip_parse_eps(const char *s)
{
    double v;
    return parse_number(s, &v) && v > 0 && v < 1 ? (float)v : 0;
}

/* Describes the text encoder that w (files + prefix) holds; which name map applies is told by the
   names present, since SD1 single files and diffusers folders share HF's. What shapes cannot tell comes from
   `meta` under namespace ns (heads, hidden_act, output, layer_norm_eps), else from the family:
   OpenCLIP towers (SD2's ViT-H; width >= 1024 also when converted to HF names) use gelu, OpenAI's
   ViT-L quick_gelu; both have 64-wide heads. SD2 reads the penultimate layer, except in HF names:
   diffusers' converted SD2 encoder has 23 of the 24 layers, so its last is SD2's penultimate. */
static int text_encoder_init(sd_text_encoder *te, weights *w, const sd_safetensors *meta,
                             const char *ns, sd_arena *a)
{
    sd_error *err = w->err;
    size_t mark = sd_arena_mark(a);
    int rc = SD_OK, oc = clip_scan(w, "transformer.resblocks.", 0) || weights_find(w, clip_top_names[1][0]);   /* OpenCLIP names? */
    const char *const *top = clip_top_names[oc];
    const char *version = meta ? sd_safetensors_meta(meta, "sd.version") : NULL, *s;
    const sd_tensor *t;
    const struct clip_tensor_name *fc1 = &clip_layer_names[12];   /* gives the MLP size */
    int64_t D, F;
    int openclip, output, heads = 0, head_dim = 64, layers;
    char name[256];

    memset(te, 0, sizeof *te);
    if (w->failed) return w->failed;
    /* sizes: vocab and width from the token table, positions, MLP size from layer 0, layer count */
    if (!(t = need(w, -1, -1, 0, 0, "%s", top[0]))) goto missing;
    te->token_embedding = *t;
    D = t->shape[1];
    if (t->shape[0] < 1 || t->shape[0] > (1 << 24) || D < 1 || D > (1 << 16)) {
        rc = fail(err, SD_ERR_UNSUPPORTED, "tensor '%s' has shape [%lld, %lld]: vocabulary or width out of range", t->name, (long long)t->shape[0], (long long)D);
        goto bad;
    }
    te->vocab = (int)t->shape[0];
    te->width = (int)D;
    if (!(t = need(w, -1, D, 0, 0, "%s", top[1]))) goto missing;
    te->position_embedding = *t;
    if (t->shape[0] < SD_TEXT_TOKENS) {
        rc = fail(err, SD_ERR_SHAPE, "tensor '%s' has %lld positions; prompts have %d tokens", t->name, (long long)t->shape[0], SD_TEXT_TOKENS);
        goto bad;
    }
    te->positions = t->shape[0] > (1 << 20) ? 1 << 20 : (int)t->shape[0];
    SD_ASSERT(fc1->field == offsetof(clip_layer, fc1_w));
    snprintf(name, sizeof name, oc ? fc1->openclip : fc1->hf, 0);
    if (!(t = need(w, -1, D, 0, 0, "%s", name))) goto missing;
    F = t->shape[0];
    if (F < 1 || F > (1 << 18)) { rc = fail(err, SD_ERR_UNSUPPORTED, "tensor '%s': MLP size %lld out of range", t->name, (long long)F); goto bad; }
    te->mlp = (int)F;
    te->layers = clip_scan(w, oc ? "transformer.resblocks." : "encoder.layers.", 1);
    if (te->layers > 1000) { rc = fail(err, SD_ERR_UNSUPPORTED, "text encoder with %d layers", te->layers); goto bad; }

    /* every layer through the name map */
    te->layer = (clip_layer *)arena_array(a, (size_t)te->layers, sizeof(clip_layer), err);
    if (!te->layer) { rc = SD_ERR_MEMORY; goto bad; }
    for (int l = 0; l < te->layers && !w->failed; l++)
        for (size_t i = 0; i < sizeof clip_layer_names / sizeof clip_layer_names[0] && !w->failed; i++) {
            const struct clip_tensor_name *m = &clip_layer_names[i];
            int64_t rows = m->rows == 'F' ? F : D, cols = m->cols == 'F' ? F : m->cols ? D : 0;
            int fused = oc && m->part >= 0;
            sd_tensor *dst = (sd_tensor *)((char *)&te->layer[l] + m->field);
            snprintf(name, sizeof name, oc ? m->openclip : m->hf, l);
            t = need(w, fused ? 3 * rows : rows, cols, 0, 0, "%s", name);
            if (t && !w->failed) *dst = fused ? tensor_rows(t, m->part * rows, rows) : *t;
        }
    if (!w->failed && (t = need(w, D, 0, 0, 0, "%s", top[2]))) te->final_ln_w = *t;
    if (!w->failed && (t = need(w, D, 0, 0, 0, "%s", top[3]))) te->final_ln_b = *t;
    if (w->failed) goto missing;
    /* the pooled embedding's projection: OpenCLIP's matrix beside the tower, or the HF
       CLIPTextModelWithProjection's linear layer beside text_model. */
    t = NULL;
    if (oc && weights_find(w, "text_projection")) {
        t = need(w, D, -1, 0, 0, "text_projection");
        te->proj_openclip = 1;
    } else if (!oc && w->prefix && !strcmp(w->prefix, "text_model.")) {
        const char *prefix = w->prefix;
        w->prefix = "";
        if (weights_find(w, "text_projection.weight")) t = need(w, -1, D, 0, 0, "text_projection.weight");
        w->prefix = prefix;
    }
    if (t && !w->failed) {
        te->projection = *t;
        te->proj_dim = (int)t->shape[te->proj_openclip ? 1 : 0];
        if (te->proj_dim < 1 || te->proj_dim > (1 << 16)) { rc = fail(err, SD_ERR_UNSUPPORTED, "tensor '%s': projection width %d out of range", t->name, te->proj_dim); goto bad; }
    }
    if (w->failed) goto missing;

    /* what shapes cannot tell: family defaults, then the metadata */
    openclip = oc || te->width >= 1024;
    layers = te->layers;
    if (version && !strcmp(version, "1")) openclip = 0;
    if (version && !strcmp(version, "2")) openclip = 1;
    te->gelu = openclip;
    output = version && !strcmp(version, "xl") ? CLIP_OUT_PENULTIMATE_NO_LN
           : openclip && oc ? CLIP_OUT_PENULTIMATE : CLIP_OUT_LAST;
    te->eps = 1e-5f;
    if ((rc = clip_meta_int(meta, ns, "heads", &heads, err)) || (rc = clip_meta_int(meta, ns, "head_dim", &head_dim, err)) ||
        (rc = clip_meta_int(meta, ns, "layers", &layers, err))) goto bad;
    if ((s = clip_meta(meta, ns, "hidden_act"))) {
        if (!strcmp(s, "gelu")) te->gelu = 1;
        else if (!strcmp(s, "quick_gelu")) te->gelu = 0;
        else { rc = fail(err, SD_ERR_UNSUPPORTED, "metadata %s.hidden_act = '%.40s': sd.h knows gelu and quick_gelu", ns, s); goto bad; }
    }
    if ((s = clip_meta(meta, ns, "output"))) {
        if (!strcmp(s, "last")) output = CLIP_OUT_LAST;
        else if (!strcmp(s, "penultimate")) output = CLIP_OUT_PENULTIMATE;
        else if (!strcmp(s, "penultimate_no_final_ln")) output = CLIP_OUT_PENULTIMATE_NO_LN;
        else { rc = fail(err, SD_ERR_UNSUPPORTED, "metadata %s.output = '%.40s': sd.h knows last, penultimate, penultimate_no_final_ln", ns, s); goto bad; }
    }
    if ((s = clip_meta(meta, ns, "layer_norm_eps")) && !(te->eps = clip_parse_eps(s))) {
        rc = fail(err, SD_ERR_FORMAT, "metadata %s.layer_norm_eps = '%.40s' is not a small positive number", ns, s);
        goto bad;
    }
    if (layers != te->layers) { rc = fail(err, SD_ERR_SHAPE, "metadata %s.layers = %d but the checkpoint has %d text encoder layers", ns, layers, te->layers); goto bad; }
    if (!heads && te->width % head_dim) {
        rc = fail(err, SD_ERR_SHAPE, "text encoder width %d is not a multiple of the head size %d (metadata %s.heads would say how many heads)", te->width, head_dim, ns);
        goto bad;
    }
    te->heads = heads ? heads : te->width / head_dim;
    if (te->heads < 1 || te->width % te->heads) { rc = fail(err, SD_ERR_SHAPE, "text encoder width %d does not split into %d heads", te->width, te->heads); goto bad; }
    if (te->width / te->heads > 1024) { rc = fail(err, SD_ERR_UNSUPPORTED, "text encoder heads of %d channels: at most 1024 are supported", te->width / te->heads); goto bad; }
    te->output_layer = output == CLIP_OUT_LAST ? te->layers : te->layers - 1;
    te->output_final_ln = output != CLIP_OUT_PENULTIMATE_NO_LN;
    if (te->output_layer < 1) { rc = fail(err, SD_ERR_UNSUPPORTED, "the text encoder's output is its penultimate layer but it has %d layer", te->layers); goto bad; }
    return SD_OK;
missing:
    rc = w->failed;
bad:
    sd_arena_reset(a, mark);
    memset(te, 0, sizeof *te);
    return rc;
}

SD_API int sd_text_encoder_load(sd_text_encoder *te, const sd_safetensors *files, int nfiles,
                                const sd_safetensors *meta, int index, sd_arena *a, sd_error *err)
{
    /* where the text encoder sits: SD1 single file (HF names), SD2 single file (OpenCLIP names),
       SDXL single file (one of each), diffusers text_encoder/ and text_encoder_2/ files (HF
       names; the second has the projection) */
    static const char *const prefixes[2][3] = {
        {"cond_stage_model.transformer.text_model.", "cond_stage_model.model.", "conditioner.embedders.0.transformer.text_model."},
        {"conditioner.embedders.1.model.", "conditioner.embedders.1.transformer.text_model.", NULL}};
    static const char *const ns[2] = {"sd.clip", "sd.clip2"};
    weights w;
    const char *version;
    if (!te || !files || nfiles < 1 || nfiles > 4 || !a || index < 0 || index > 1)
        return fail(err, SD_ERR_ARG, "sd_text_encoder_load: NULL argument, nfiles = %d not in 1..4 or index %d not 0 or 1", nfiles, index);
    memset(te, 0, sizeof *te);
    memset(&w, 0, sizeof w);
    for (int i = 0; i < nfiles; i++) w.files[i] = &files[i];
    w.nfiles = nfiles;
    w.err = err;
    if (!meta) meta = &files[0];
    version = sd_safetensors_meta(meta, "sd.version");
    if (version && strcmp(version, "1") && strcmp(version, "2") && strcmp(version, "xl"))
        return fail(err, SD_ERR_UNSUPPORTED, "text encoder of a model with sd.version = '%.20s': sd.h handles SD1, SD2 and SDXL", version);
    for (int i = 0; i < 3 && prefixes[index][i]; i++) {
        w.prefix = prefixes[index][i];
        if (clip_scan(&w, "", 0)) return text_encoder_init(te, &w, meta, ns[index], a);
    }
    /* a diffusers file: text_model.* in the file without (index 0) or with (1) text_projection */
    for (int i = 0; i < nfiles; i++) {
        w.files[0] = &files[i];
        w.nfiles = 1;
        w.prefix = "text_model.";
        if (clip_scan(&w, "", 0) && !sd_safetensors_find(&files[i], "text_projection.weight") == !index)
            return text_encoder_init(te, &w, meta, ns[index], a);
    }
    return fail(err, SD_ERR_MISSING, "no text encoder %d: no tensor named '%s*', '%s*' or 'text_model.*'%s", index,
                prefixes[index][0], prefixes[index][1], index ? " beside a text_projection.weight" : "");
}

/* One transformer layer on the residual stream x [B·77, D]; h, q, k, v [B·77, D] and
   mlp [B·77, F] are scratch. */
static void clip_layer_forward(const sd_text_encoder *te, const clip_layer *L, float *x, int B,
                               float *h, float *q, float *k, float *v, float *mlp, sd_pool *pool)
{
    int M = B * SD_TEXT_TOKENS, D = te->width, F = te->mlp;
    /* causal self-attention */
    layernorm(pool, h, x, M, D, &L->ln1_w, &L->ln1_b, te->eps);
    linear(pool, q, h, M, D, D, &L->q_w, &L->q_b);
    linear(pool, k, h, M, D, D, &L->k_w, &L->k_b);
    linear(pool, v, h, M, D, D, &L->v_w, &L->v_b);
    attention(pool, h, D, q, D, k, D, v, D, B, SD_TEXT_TOKENS, SD_TEXT_TOKENS, te->heads, D / te->heads, 1);
    linear(pool, q, h, M, D, D, &L->out_w, &L->out_b);
    add(pool, x, q, (size_t)M * D);
    /* MLP */
    layernorm(pool, h, x, M, D, &L->ln2_w, &L->ln2_b, te->eps);
    linear(pool, mlp, h, M, F, D, &L->fc1_w, &L->fc1_b);
    if (te->gelu) gelu(pool, mlp, (size_t)M * F);
    else quick_gelu(pool, mlp, (size_t)M * F);
    linear(pool, h, mlp, M, D, F, &L->fc2_w, &L->fc2_b);
    add(pool, x, h, (size_t)M * D);
}

/* Layers [from, to) on the residual stream x of n prompts, with scratch from the arena. */
static int clip_layers(const sd_text_encoder *te, float *x, int n, int from, int to, sd_pool *pool, sd_arena *a, sd_error *err)
{
    size_t M = (size_t)n * SD_TEXT_TOKENS, D = (size_t)te->width, mark = sd_arena_mark(a);
    float *h = arena_floats(a, M * D, err), *q = h ? arena_floats(a, M * D, err) : NULL;
    float *k = q ? arena_floats(a, M * D, err) : NULL, *v = k ? arena_floats(a, M * D, err) : NULL;
    float *mlp = v ? arena_floats(a, M * te->mlp, err) : NULL;
    if (!mlp) { sd_arena_reset(a, mark); return SD_ERR_MEMORY; }
    for (int l = from; l < to; l++) clip_layer_forward(te, &te->layer[l], x, n, h, q, k, v, mlp, pool);
    sd_arena_reset(a, mark);
    return SD_OK;
}

/* Whether id is a row of the token table, or (textual inversion) one of the extra vectors. */
static int token_known(const sd_text_encoder *te, int32_t id)
{
    return (id >= 0 && id < te->vocab) || (id >= SD_CLIP_VOCAB_SIZE && id - SD_CLIP_VOCAB_SIZE < te->extra_token_count);
}

static int check_ids(const sd_text_encoder *te, const int32_t *ids, int n_prompts, sd_error *err)
{
    for (int i = 0; i < n_prompts * SD_TEXT_TOKENS; i++)
        if (!token_known(te, ids[i]))
            return fail(err, SD_ERR_ARG, "text encoder: token id %ld at prompt %d, position %d is outside the vocabulary (0..%d)%s",
                        (long)ids[i], i / SD_TEXT_TOKENS, i % SD_TEXT_TOKENS, te->vocab - 1,
                        te->extra_token_count ? " and the embeddings' vectors" : "");
    return SD_OK;
}

/* Token embedding (a row of the table, or an embedding file's learned vector) + learned position
   embedding (positions 0..76, whatever position_ids say). */
static void clip_embed(const sd_text_encoder *te, const int32_t *ids, int n_prompts, float *out, sd_pool *pool)
{
    int D = te->width;
    float *pos = pool->scratch[0];   /* one position's row (the workers are idle) */
    if (pool->measure) return;
    SD_ASSERT((size_t)D <= pool->scratch_floats);
    for (int i = 0; i < n_prompts * SD_TEXT_TOKENS; i++) {
        float *x = out + (size_t)i * D;
        if (ids[i] < te->vocab) weight_row(&te->token_embedding, ids[i], D, x);
        else weight_row(&te->extra_tokens[ids[i] - SD_CLIP_VOCAB_SIZE], 0, D, x);
        weight_row(&te->position_embedding, i % SD_TEXT_TOKENS, D, pos);
        add_span(x, pos, (size_t)D);
    }
}

/* SDXL's pooled text embedding: the last layer's final-LayerNorm state at each prompt's
   end-of-text token (the highest id: CLIP's argmax rule, 49407 comes last in the vocabulary;
   embedding vectors, numbered after it, are passed over as AUTOMATIC1111 and SGM, which give
   them ordinary ids, do), projected. last [n_prompts, 77, width] is the last layer's output. */
static void clip_pool(const sd_text_encoder *te, const int32_t *ids, int n_prompts, float *last, float *pooled, sd_pool *pool)
{
    int D = te->width;
    if (pool->measure) return;
    for (int b = 0; b < n_prompts; b++) {
        const int32_t *row = ids + (size_t)b * SD_TEXT_TOKENS;
        int eos = 0;
        for (int i = 1; i < SD_TEXT_TOKENS; i++) if (row[i] > row[eos] && row[i] < te->vocab) eos = i;
        float *x = last + ((size_t)b * SD_TEXT_TOKENS + eos) * D, *y = pooled + (size_t)b * te->proj_dim;
        layernorm(pool, x, x, 1, D, &te->final_ln_w, &te->final_ln_b, te->eps);
        /* y[j] = sum over c of x[c]·P(c, j), in double, c ascending; P read a row piece at a
           time (x·P: 256 outputs' weights per input c; a linear weight: 256 inputs of output j),
           so that quantized blocks are decoded once, not once per value */
        for (int j0 = 0; j0 < te->proj_dim; j0 += 256) {
            int nj = te->proj_dim - j0 < 256 ? te->proj_dim - j0 : 256;
            double acc[256] = {0};
            float w[256];
            for (int c0 = 0; c0 < D; c0 += te->proj_openclip ? 1 : 256) {
                int nc = D - c0 < 256 ? D - c0 : 256;
                if (te->proj_openclip) {
                    tensor_floats(w, &te->projection, (size_t)c0 * te->proj_dim + j0, nj);
                    for (int j = 0; j < nj; j++) acc[j] += (double)x[c0] * w[j];
                } else {
                    for (int j = 0; j < nj; j++) {
                        tensor_floats(w, &te->projection, (size_t)(j0 + j) * D + c0, nc);
                        for (int c = 0; c < nc; c++) acc[j] += (double)x[c0 + c] * w[c];
                    }
                }
            }
            for (int j = 0; j < nj; j++) y[j0 + j] = (float)acc[j];
        }
    }
}

/* The encoder on checked ids: out gets the hidden state after `layer` layers (through the final
   LayerNorm when final_ln is set); pooled (may be NULL) the pooled embedding, for which a copy
   of the stream runs on through the last layer. */
static int text_encoder_run(const sd_text_encoder *te, const int32_t *ids, int n_prompts, int layer, int final_ln,
                            float *out, float *pooled, sd_pool *pool, sd_arena *a, sd_error *err)
{
    size_t M = (size_t)n_prompts * SD_TEXT_TOKENS, D = (size_t)te->width, mark = sd_arena_mark(a);
    float *last = pooled ? arena_floats(a, M * D, err) : NULL;
    int rc;
    if (pooled && !last) return SD_ERR_MEMORY;
    clip_embed(te, ids, n_prompts, out, pool);
    if ((rc = clip_layers(te, out, n_prompts, 0, layer, pool, a, err))) goto done;
    if (pooled && !pool->measure) memcpy(last, out, M * D * sizeof(float));
    if (final_ln) layernorm(pool, out, out, (int)M, (int)D, &te->final_ln_w, &te->final_ln_b, te->eps);
    if (pooled && !(rc = clip_layers(te, last, n_prompts, layer, te->layers, pool, a, err)))
        clip_pool(te, ids, n_prompts, last, pooled, pool);
done:
    sd_arena_reset(a, mark);
    return rc;
}

SD_API size_t sd_text_encoder_arena_bytes(const sd_text_encoder *te, int n_prompts, int pooled)
{
    sd_arena m;
    sd_pool pool;
    if (!te || !te->layer || n_prompts < 1 || n_prompts > (1 << 16)) return (size_t)-1;
    arena_measure(&m);
    pool_measure(&pool);
    if (text_encoder_run(te, NULL, n_prompts, te->layers, 1, dummy_floats(), pooled ? dummy_floats() : NULL, &pool, &m, NULL))
        return (size_t)-1;
    return m.peak;
}

SD_API int sd_text_encoder_hidden(const sd_text_encoder *te, const int32_t *ids, int n_prompts,
                                  int layer, int final_ln, float *out, sd_pool *pool,
                                  sd_arena *a, sd_error *err)
{
    int rc;
    if (!te || !te->layer || !ids || !out || !pool || !a) return fail(err, SD_ERR_ARG, "text encoder: NULL argument (or encoder not loaded)");
    if (n_prompts < 1 || n_prompts > (1 << 16)) return fail(err, SD_ERR_ARG, "text encoder: n_prompts = %d not in 1..65536", n_prompts);
    if (layer < 0 || layer > te->layers) return fail(err, SD_ERR_ARG, "text encoder: layer %d not in 0..%d", layer, te->layers);
    if (!pool->measure && (rc = check_ids(te, ids, n_prompts, err))) return rc;
    weights_use u;
    if ((rc = weights_begin(&u, pool, &te->token_embedding, "text encoder", err))) return rc;
    return weights_end(&u, text_encoder_run(te, ids, n_prompts, layer, final_ln, out, NULL, pool, a, err), err);
}

SD_API int sd_text_encode(const sd_text_encoder *te, const int32_t *ids, int n_prompts, int clip_skip,
                          float *out, float *pooled, sd_pool *pool, sd_arena *a, sd_error *err)
{
    if (!te || !te->layer) return fail(err, SD_ERR_ARG, "sd_text_encode: encoder not loaded");
    int layer = te->output_layer - (clip_skip > 1 ? clip_skip - 1 : 0), rc;
    if (clip_skip < 0 || layer < 1)
        return fail(err, SD_ERR_ARG, "sd_text_encode: clip_skip %d not in 0..%d (the output is layer %d of %d)", clip_skip,
                    te->output_layer, te->output_layer, te->layers);
    if (pooled && !te->proj_dim) return fail(err, SD_ERR_ARG, "sd_text_encode: a pooled output needs a text_projection, which this encoder lacks");
    if (!pooled) return sd_text_encoder_hidden(te, ids, n_prompts, layer, te->output_final_ln, out, pool, a, err);
    if (!ids || !out || !pool || !a || n_prompts < 1 || n_prompts > (1 << 16)) return fail(err, SD_ERR_ARG, "sd_text_encode: NULL argument or n_prompts = %d not in 1..65536", n_prompts);
    if (!pool->measure && (rc = check_ids(te, ids, n_prompts, err))) return rc;
    weights_use u;
    if ((rc = weights_begin(&u, pool, &te->token_embedding, "sd_text_encode", err))) return rc;
    return weights_end(&u, text_encoder_run(te, ids, n_prompts, layer, te->output_final_ln, out, pooled, pool, a, err), err);
}


/* ---- 7. UNet ----------------------------------------------------------------------------- */
/* The denoiser of latent diffusion (Rombach et al. 2022, Fig. 3; Ronneberger et al.'s U-Net
   with Ho et al.'s time embedding): the noisy latent goes down through levels of ResNet blocks
   and spatial transformers that attend to the text, halving the size between levels, through a
   middle block, and back up, each up block also taking the activations that the down path
   saved at its size (the skip connections). Every ResNet block adds a projection of the
   timestep's sinusoidal embedding. SDXL (Podell et al. 2023) is the same description with no
   attention at the first level, deeper transformers (2 and 10 blocks) and a second embedding,
   of the pooled text and the image sizes, added to the time embedding. An LCM-distilled UNet
   (Luo et al. 2023) adds a projection of the guidance scale's embedding to the sinusoidal one.
   Activations are NHWC inside; the API speaks NCHW. */

#define UNET_MAX_LEVELS 6
#define UNET_MAX_RESNETS 4                     /* per up level (one more than per down level) */
#define UNET_MAX_SKIPS (1 + UNET_MAX_LEVELS * UNET_MAX_RESNETS)
#define UNET_GROUPS 32                         /* GroupNorm groups everywhere in the UNet */
#define UNET_MAX_CHANNELS 16384                /* SD's widest: 2560 (concatenated), 10240 (GEGLU) */
#define UNET_MAX_HEAD_DIM 1024                 /* SD's widest: 160 */

/* The projections of a multi-head attention layer: q from the image tokens, k and v from the
   same tokens (self-attention) or from the text context (cross-attention). */
typedef struct unet_attention { const sd_tensor *q, *k, *v, *out_w, *out_b; } unet_attention;

/* diffusers' BasicTransformerBlock: LayerNorm→self-attention, LayerNorm→cross-attention,
   LayerNorm→GEGLU feed-forward, each added to the residual stream. */
typedef struct unet_block {
    const sd_tensor *norm1_w, *norm1_b, *norm2_w, *norm2_b, *norm3_w, *norm3_b;
    unet_attention self, cross;
    const sd_tensor *ff1_w, *ff1_b, *ff2_w, *ff2_b;
    int ff_inner;                              /* GEGLU width: ff.net.0.proj gives twice this */
} unet_block;

/* Transformer2DModel: GroupNorm, proj_in (1x1 conv in SD1, linear in SD2: the same GEMM in
   NHWC), `depth` blocks over the h·w positions as tokens, proj_out, added to the input. */
typedef struct unet_transformer {
    const sd_tensor *norm_w, *norm_b, *proj_in_w, *proj_in_b, *proj_out_w, *proj_out_b;
    unet_block *blocks;                        /* [depth], in the arena */
    int depth;                                 /* 0: no transformer here */
    int channels, inner, heads, head_dim;
} unet_transformer;

/* ResnetBlock2D with time embedding: GroupNorm-SiLU-conv3x3, + linear(SiLU(temb)),
   GroupNorm-SiLU-conv3x3, plus the input (through a 1x1 conv when channels change). */
typedef struct unet_resnet {
    const sd_tensor *norm1_w, *norm1_b, *conv1_w, *conv1_b, *time_w, *time_b;
    const sd_tensor *norm2_w, *norm2_b, *conv2_w, *conv2_b, *skip_w, *skip_b;   /* skip_w NULL: identity */
    int cin, cout;
} unet_resnet;

/* One resolution: its down resnets (+ transformers) and downsampler, and the up path's
   resnets (+ transformers) at the same size and the upsampler that leaves it. */
typedef struct unet_level {
    unet_resnet down[UNET_MAX_RESNETS], up[UNET_MAX_RESNETS];
    unet_transformer down_attn[UNET_MAX_RESNETS], up_attn[UNET_MAX_RESNETS];
    const sd_tensor *downsample_w, *downsample_b;   /* NULL at the lowest level */
    const sd_tensor *upsample_w, *upsample_b;       /* NULL at the top level */
} unet_level;

struct sd_unet_model {
    int in_channels, out_channels, model_channels, time_dim, context_dim;
    int levels, resnets;                        /* resnets per down level; up levels have one more */
    const sd_tensor *time1_w, *time1_b, *time2_w, *time2_b;
    int add_dim;                                /* SDXL: width of y (pooled text + size embeddings); 0 otherwise */
    const sd_tensor *add1_w, *add1_b, *add2_w, *add2_b;
    int guidance_dim;                           /* LCM: width of the guidance embedding; 0 otherwise */
    const sd_tensor *cond_proj_w;               /* LCM: time_embedding.cond_proj [model_channels, guidance_dim] */
    const sd_tensor *conv_in_w, *conv_in_b, *norm_out_w, *norm_out_b, *conv_out_w, *conv_out_b;
    unet_level level[UNET_MAX_LEVELS];
    unet_resnet mid[2];
    unet_transformer mid_attn;
};

/* ---- loading: one description, two name maps ---- */

enum { UNET_DOWN_RES, UNET_DOWN_ATTN, UNET_DOWNSAMPLE, UNET_MID_RES, UNET_MID_ATTN,
       UNET_UP_RES, UNET_UP_ATTN, UNET_UPSAMPLE };

/* The key prefix of one part of the UNet. The original (LDM) layout numbers input_blocks and
   output_blocks consecutively (conv_in is input block 0; each level has `resnets` blocks and then
   the downsampler; up level i = diffusers' up_blocks.i has resnets+1 blocks, the last of which
   also holds the upsampler); diffusers names blocks by level. */
static const char *unet_part(char *buf, size_t n, const weights *w, const sd_unet_model *u,
                             int part, int l, int j)
{
    int nres = u->resnets, up = u->levels - 1 - l;   /* diffusers' up block of level l */
    if (w->diffusers) {
        switch (part) {
        case UNET_DOWN_RES: snprintf(buf, n, "down_blocks.%d.resnets.%d.", l, j); break;
        case UNET_DOWN_ATTN: snprintf(buf, n, "down_blocks.%d.attentions.%d.", l, j); break;
        case UNET_DOWNSAMPLE: snprintf(buf, n, "down_blocks.%d.downsamplers.0.conv.", l); break;
        case UNET_MID_RES: snprintf(buf, n, "mid_block.resnets.%d.", j); break;
        case UNET_MID_ATTN: snprintf(buf, n, "mid_block.attentions.0."); break;
        case UNET_UP_RES: snprintf(buf, n, "up_blocks.%d.resnets.%d.", up, j); break;
        case UNET_UP_ATTN: snprintf(buf, n, "up_blocks.%d.attentions.%d.", up, j); break;
        default: snprintf(buf, n, "up_blocks.%d.upsamplers.0.conv.", up); break;
        }
    } else {
        switch (part) {
        case UNET_DOWN_RES: snprintf(buf, n, "input_blocks.%d.0.", 1 + l * (nres + 1) + j); break;
        case UNET_DOWN_ATTN: snprintf(buf, n, "input_blocks.%d.1.", 1 + l * (nres + 1) + j); break;
        case UNET_DOWNSAMPLE: snprintf(buf, n, "input_blocks.%d.0.op.", (l + 1) * (nres + 1)); break;
        case UNET_MID_RES: snprintf(buf, n, "middle_block.%d.", j == 0 ? 0 : u->mid_attn.depth ? 2 : 1); break;
        case UNET_MID_ATTN: snprintf(buf, n, "middle_block.1."); break;
        case UNET_UP_RES: snprintf(buf, n, "output_blocks.%d.0.", up * (nres + 1) + j); break;
        case UNET_UP_ATTN: snprintf(buf, n, "output_blocks.%d.1.", up * (nres + 1) + j); break;
        default: snprintf(buf, n, "output_blocks.%d.%d.conv.", up * (nres + 1) + nres, u->level[l].up_attn[0].depth ? 2 : 1); break;
        }
    }
    return buf;
}

/* Whether `prefix` + `suffix` names a tensor in the checkpoint. */
static int unet_has(const weights *w, const char *prefix, const char *suffix)
{
    char name[512];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    return weights_find(w, name) != NULL;
}

/* Dimension i of t as a channel count: 0 (and an error) when t is missing or the size absurd. */
static int unet_dim(weights *w, const sd_tensor *t, int i)
{
    if (!t || w->failed) return 0;
    if (t->shape[i] < 1 || t->shape[i] > UNET_MAX_CHANNELS) {
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': size %lld of dimension %d is outside 1..%d",
                         t->name, (long long)t->shape[i], i, UNET_MAX_CHANNELS);
        return 0;
    }
    return (int)t->shape[i];
}

/* A GroupNorm's weight and bias over C channels, which the 32 groups must divide. */
static void unet_groupnorm(weights *w, const sd_tensor **g, const sd_tensor **b, int C, const char *p, const char *name)
{
    *g = need(w, C, 0, 0, 0, "%s%s.weight", p, name);
    *b = need(w, C, 0, 0, 0, "%s%s.bias", p, name);
    if (!w->failed && C % UNET_GROUPS)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': %d channels do not split into %d groups",
                         (*g)->name, C, UNET_GROUPS);
}

/* A resnet's modules under the two name maps ([0] original, [1] diffusers), after its part's prefix. */
enum { RESNET_NORM1, RESNET_CONV1, RESNET_TIME, RESNET_NORM2, RESNET_CONV2, RESNET_SKIP, RESNET_MODULES };
static const char *const unet_resnet_names[2][RESNET_MODULES] = {
    {"in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3", "skip_connection"},
    {"norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut"}};

/* The modules outside the levels (conv_in, the time and SDXL's added-conditioning MLPs, the head). */
enum { UNET_CONV_IN, UNET_TIME1, UNET_TIME2, UNET_ADD1, UNET_ADD2, UNET_NORM_OUT, UNET_CONV_OUT, UNET_STEM_MODULES };
static const char *const unet_stem_names[2][UNET_STEM_MODULES] = {
    {"input_blocks.0.0", "time_embed.0", "time_embed.2", "label_emb.0.0", "label_emb.0.2", "out.0", "out.2"},
    {"conv_in", "time_embedding.linear_1", "time_embedding.linear_2", "add_embedding.linear_1", "add_embedding.linear_2",
     "conv_norm_out", "conv_out"}};

static void load_resnet(weights *w, const sd_unet_model *u, unet_resnet *r, const char *p, int cin)
{
    const char *const *n = unet_resnet_names[w->diffusers ? 1 : 0];
    r->cin = cin;
    if (!w->failed && cin > UNET_MAX_CHANNELS)   /* an up resnet's input: two widths added */
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "UNet block '%s%s': %d input channels, more than %d",
                         w->prefix ? w->prefix : "", p, cin, UNET_MAX_CHANNELS);
    unet_groupnorm(w, &r->norm1_w, &r->norm1_b, cin, p, n[0]);
    r->conv1_w = need(w, -1, cin, 3, 3, "%s%s.weight", p, n[1]);
    r->cout = unet_dim(w, r->conv1_w, 0);
    if (w->failed) return;
    r->conv1_b = need(w, r->cout, 0, 0, 0, "%s%s.bias", p, n[1]);
    r->time_w = need(w, r->cout, u->time_dim, 0, 0, "%s%s.weight", p, n[2]);
    r->time_b = need(w, r->cout, 0, 0, 0, "%s%s.bias", p, n[2]);
    unet_groupnorm(w, &r->norm2_w, &r->norm2_b, r->cout, p, n[3]);
    r->conv2_w = need(w, r->cout, r->cout, 3, 3, "%s%s.weight", p, n[4]);
    r->conv2_b = need(w, r->cout, 0, 0, 0, "%s%s.bias", p, n[4]);
    r->skip_w = r->skip_b = NULL;
    if (cin != r->cout) {
        r->skip_w = need(w, r->cout, cin, 1, 1, "%s%s.weight", p, n[5]);
        r->skip_b = need(w, r->cout, 0, 0, 0, "%s%s.bias", p, n[5]);
    }
}

static void load_attention(weights *w, unet_attention *at, const char *p, int D, int kv_dim)
{
    at->q = need(w, D, D, 0, 0, "%sto_q.weight", p);
    at->k = need(w, D, kv_dim, 0, 0, "%sto_k.weight", p);
    at->v = need(w, D, kv_dim, 0, 0, "%sto_v.weight", p);
    at->out_w = need(w, D, D, 0, 0, "%sto_out.0.weight", p);
    at->out_b = need(w, D, 0, 0, 0, "%sto_out.0.bias", p);
}

static void load_transformer(weights *w, sd_unet_model *u, unet_transformer *t, const char *p, int C, sd_arena *a)
{
    char q[300];
    t->channels = C;
    unet_groupnorm(w, &t->norm_w, &t->norm_b, C, p, "norm");
    t->proj_in_w = need(w, -1, C, 0, 0, "%sproj_in.weight", p);
    t->inner = unet_dim(w, t->proj_in_w, 0);
    if (w->failed) return;
    int D = t->inner;
    t->proj_in_b = need(w, D, 0, 0, 0, "%sproj_in.bias", p);
    t->proj_out_w = need(w, C, D, 0, 0, "%sproj_out.weight", p);
    t->proj_out_b = need(w, C, 0, 0, 0, "%sproj_out.bias", p);
    for (t->depth = 0; t->depth < 64; t->depth++) {
        snprintf(q, sizeof q, "%stransformer_blocks.%d.", p, t->depth);
        if (!unet_has(w, q, "norm1.weight")) break;
    }
    if (t->depth == 0) t->depth = 1;   /* so that need() names the missing block */
    t->blocks = (unet_block *)arena_array(a, (size_t)t->depth, sizeof(unet_block), w->err);
    if (!t->blocks) { w->failed = SD_ERR_MEMORY; return; }
    for (int i = 0; i < t->depth && !w->failed; i++) {
        unet_block *b = &t->blocks[i];
        snprintf(q, sizeof q, "%stransformer_blocks.%d.", p, i);
        b->norm1_w = need(w, D, 0, 0, 0, "%snorm1.weight", q);
        b->norm1_b = need(w, D, 0, 0, 0, "%snorm1.bias", q);
        b->norm2_w = need(w, D, 0, 0, 0, "%snorm2.weight", q);
        b->norm2_b = need(w, D, 0, 0, 0, "%snorm2.bias", q);
        b->norm3_w = need(w, D, 0, 0, 0, "%snorm3.weight", q);
        b->norm3_b = need(w, D, 0, 0, 0, "%snorm3.bias", q);
        if (!u->context_dim)   /* the text width, read off the first cross-attention */
            u->context_dim = unet_dim(w, need(w, D, -1, 0, 0, "%sattn2.to_k.weight", q), 1);
        snprintf(q, sizeof q, "%stransformer_blocks.%d.attn1.", p, i);
        load_attention(w, &b->self, q, D, D);
        snprintf(q, sizeof q, "%stransformer_blocks.%d.attn2.", p, i);
        load_attention(w, &b->cross, q, D, u->context_dim);
        snprintf(q, sizeof q, "%stransformer_blocks.%d.ff.net.", p, i);
        b->ff1_w = need(w, -1, D, 0, 0, "%s0.proj.weight", q);
        int two_f = unet_dim(w, b->ff1_w, 0);
        if (w->failed) return;
        if (two_f % 2) {
            w->failed = fail(w->err, SD_ERR_SHAPE, "tensor '%s' has an odd number of rows; GEGLU needs value and gate halves",
                             b->ff1_w->name);
            return;
        }
        b->ff_inner = two_f / 2;
        b->ff1_b = need(w, two_f, 0, 0, 0, "%s0.proj.bias", q);
        b->ff2_w = need(w, D, b->ff_inner, 0, 0, "%s2.weight", q);
        b->ff2_b = need(w, D, 0, 0, 0, "%s2.bias", q);
    }
}

/* A transformer if the checkpoint has one at prefix p (depth stays 0 otherwise). */
static void maybe_transformer(weights *w, sd_unet_model *u, unet_transformer *t, const char *p, int C, sd_arena *a)
{
    memset(t, 0, sizeof *t);
    if (!w->failed && unet_has(w, p, "proj_in.weight")) load_transformer(w, u, t, p, C, a);
}

/* An integer from the file's metadata, or dflt when absent or not a plain integer. */
static int meta_int(const sd_safetensors *meta, const char *key, int dflt)
{
    const char *s = meta ? sd_safetensors_meta(meta, key) : NULL;
    double v;
    return s && parse_number(s, &v) && v == (int)v && v > -1e8 && v < 1e8 ? (int)v : dflt;
}

/* Element `index` of a metadata list "a,b,c" of integers (a single value serves every index),
   or dflt. */
static int meta_list_int(const sd_safetensors *meta, const char *key, int index, int dflt)
{
    const char *s = meta ? sd_safetensors_meta(meta, key) : NULL;
    char item[32];
    for (int i = 0; s && i <= index; i++) {
        size_t n = strcspn(s, ",");
        double v;
        if (n >= sizeof item) return dflt;
        memcpy(item, s, n);
        item[n] = 0;
        if (i == index || !s[n]) return parse_number(item, &v) && v == (int)v && v > -1e8 && v < 1e8 ? (int)v : dflt;
        s += n + 1;
    }
    return dflt;
}

/* Heads of a transformer at UNet level `level`. The tensors cannot tell: the metadata may fix
   the number of heads (SD1 style; diffusers' config gives SD2 and SDXL a list, one per level)
   or the head size (SDXL style); without it SD2 and SDXL (linear proj_in, or an OpenCLIP
   context of 1024 or more) use head dim 64 and SD1 8 heads. */
static void set_heads(weights *w, const sd_unet_model *u, const sd_safetensors *meta, unet_transformer *t, int level)
{
    int heads = meta_list_int(meta, "sd.unet.num_heads", level, -1), head_dim = meta_int(meta, "sd.unet.num_head_channels", -1);
    if (!t->depth || w->failed) return;
    if (heads <= 0 && head_dim <= 0) {
        /* (a block-typed proj_in is 2-D in GGUF files whatever it was: sd.h's writer keeps SD1's
           [C, C, 1, 1] as [C, C], so only the context tells) */
        if ((t->proj_in_w->ndim == 2 && !dtype_is_block(t->proj_in_w->dtype)) || u->context_dim >= 1024) head_dim = 64;   /* SD2, SDXL */
        else heads = 8;                                                          /* SD1 */
    }
    if (heads > 0) head_dim = t->inner / heads;
    else heads = t->inner / head_dim;
    if (heads < 1 || head_dim < 1 || head_dim > UNET_MAX_HEAD_DIM || heads * head_dim != t->inner)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': %d channels are not %d attention heads of %d (of at most %d)",
                         t->proj_in_w->name, t->inner, heads, head_dim, UNET_MAX_HEAD_DIM);
    t->heads = heads;
    t->head_dim = head_dim;
}

/* Reads the architecture off the checkpoint (which tensors exist, their shapes), checking every
   tensor the forward pass will touch. */
static void describe_unet(weights *w, sd_unet_model *u, const sd_safetensors *meta, sd_arena *a)
{
    char p[128];
    const char *conv1 = w->diffusers ? "conv1.weight" : "in_layers.2.weight";
    int dif = w->diffusers, skip_ch[UNET_MAX_SKIPS], nskip = 0, ch;
    const char *const *stem = unet_stem_names[dif];

    /* stem: conv_in and the time MLP */
    u->conv_in_w = need(w, -1, -1, 3, 3, "%s.weight", stem[UNET_CONV_IN]);
    u->model_channels = unet_dim(w, u->conv_in_w, 0);
    u->in_channels = unet_dim(w, u->conv_in_w, 1);
    u->conv_in_b = need(w, u->model_channels, 0, 0, 0, "%s.bias", stem[UNET_CONV_IN]);
    u->time1_w = need(w, -1, u->model_channels, 0, 0, "%s.weight", stem[UNET_TIME1]);
    u->time_dim = unet_dim(w, u->time1_w, 0);
    if (w->failed) return;
    u->time1_b = need(w, u->time_dim, 0, 0, 0, "%s.bias", stem[UNET_TIME1]);
    u->time2_w = need(w, u->time_dim, u->time_dim, 0, 0, "%s.weight", stem[UNET_TIME2]);
    u->time2_b = need(w, u->time_dim, 0, 0, 0, "%s.bias", stem[UNET_TIME2]);
    if (!w->failed && u->model_channels % 2)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': the sinusoidal time embedding needs an even width, not %d",
                         u->conv_in_w->name, u->model_channels);
    /* SDXL: y (pooled text, embedded sizes) through its own MLP, added to the time embedding */
    snprintf(p, sizeof p, "%s.weight", stem[UNET_ADD1]);
    if (weights_find(w, p)) {
        const char *l1 = stem[UNET_ADD1], *l2 = stem[UNET_ADD2];
        u->add1_w = need(w, u->time_dim, -1, 0, 0, "%s.weight", l1);
        u->add_dim = unet_dim(w, u->add1_w, 1);
        u->add1_b = need(w, u->time_dim, 0, 0, 0, "%s.bias", l1);
        u->add2_w = need(w, u->time_dim, u->time_dim, 0, 0, "%s.weight", l2);
        u->add2_b = need(w, u->time_dim, 0, 0, 0, "%s.bias", l2);
    }
    /* LCM: the guidance embedding's projection onto the sinusoid, no bias. Single files keep
       diffusers' name under the prefix (the conversion script has no rule for it). */
    if (weights_find(w, "time_embedding.cond_proj.weight")) {
        u->cond_proj_w = need(w, u->model_channels, -1, 0, 0, "time_embedding.cond_proj.weight");
        u->guidance_dim = unet_dim(w, u->cond_proj_w, 1);
        if (!w->failed && u->guidance_dim < 4)
            w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': a guidance embedding %d wide, expected at least 4",
                             u->cond_proj_w->name, u->guidance_dim);
    }

    /* resnets per level (counted at level 0), then levels */
    while (u->resnets < UNET_MAX_RESNETS && unet_has(w, unet_part(p, sizeof p, w, u, UNET_DOWN_RES, 0, u->resnets), conv1)) u->resnets++;
    if (u->resnets == UNET_MAX_RESNETS && !w->failed)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "UNet with %d or more resnets per level", UNET_MAX_RESNETS);
    if (u->resnets == 0) u->resnets = 1;   /* so that need() names what is missing */
    while (u->levels < UNET_MAX_LEVELS && unet_has(w, unet_part(p, sizeof p, w, u, UNET_DOWN_RES, u->levels, 0), conv1)) u->levels++;
    if (u->levels == UNET_MAX_LEVELS && unet_has(w, unet_part(p, sizeof p, w, u, UNET_DOWN_RES, UNET_MAX_LEVELS, 0), conv1) && !w->failed)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "UNet with more than %d levels", UNET_MAX_LEVELS);
    if (u->levels == 0) u->levels = 1;

    /* down path; the channels of every skip connection it leaves, for the up path's inputs */
    ch = u->model_channels;
    skip_ch[nskip++] = ch;
    for (int l = 0; l < u->levels && !w->failed; l++) {
        unet_level *lv = &u->level[l];
        for (int j = 0; j < u->resnets && !w->failed; j++) {
            load_resnet(w, u, &lv->down[j], unet_part(p, sizeof p, w, u, UNET_DOWN_RES, l, j), ch);
            ch = lv->down[j].cout;
            maybe_transformer(w, u, &lv->down_attn[j], unet_part(p, sizeof p, w, u, UNET_DOWN_ATTN, l, j), ch, a);
            skip_ch[nskip++] = ch;
        }
        if (l < u->levels - 1) {
            unet_part(p, sizeof p, w, u, UNET_DOWNSAMPLE, l, 0);
            lv->downsample_w = need(w, ch, ch, 3, 3, "%sweight", p);
            lv->downsample_b = need(w, ch, 0, 0, 0, "%sbias", p);
            skip_ch[nskip++] = ch;
        }
    }
    /* middle: resnet, transformer, resnet */
    load_resnet(w, u, &u->mid[0], unet_part(p, sizeof p, w, u, UNET_MID_RES, 0, 0), ch);
    ch = u->mid[0].cout;
    maybe_transformer(w, u, &u->mid_attn, unet_part(p, sizeof p, w, u, UNET_MID_ATTN, 0, 0), ch, a);
    load_resnet(w, u, &u->mid[1], unet_part(p, sizeof p, w, u, UNET_MID_RES, 0, 1), ch);
    ch = u->mid[1].cout;
    /* up path: each resnet takes the running activation concatenated with the latest skip */
    for (int l = u->levels - 1; l >= 0 && !w->failed; l--) {
        unet_level *lv = &u->level[l];
        for (int j = 0; j <= u->resnets && !w->failed; j++) {
            load_resnet(w, u, &lv->up[j], unet_part(p, sizeof p, w, u, UNET_UP_RES, l, j), ch + skip_ch[--nskip]);
            ch = lv->up[j].cout;
            maybe_transformer(w, u, &lv->up_attn[j], unet_part(p, sizeof p, w, u, UNET_UP_ATTN, l, j), ch, a);
        }
        if (l > 0) {
            unet_part(p, sizeof p, w, u, UNET_UPSAMPLE, l, 0);
            lv->upsample_w = need(w, ch, ch, 3, 3, "%sweight", p);
            lv->upsample_b = need(w, ch, 0, 0, 0, "%sbias", p);
        }
    }
    /* head: GroupNorm-SiLU-conv back to latent channels */
    if (w->failed) return;
    unet_groupnorm(w, &u->norm_out_w, &u->norm_out_b, ch, "", stem[UNET_NORM_OUT]);
    u->conv_out_w = need(w, -1, ch, 3, 3, "%s.weight", stem[UNET_CONV_OUT]);
    u->out_channels = unet_dim(w, u->conv_out_w, 0);
    u->conv_out_b = need(w, u->out_channels, 0, 0, 0, "%s.bias", stem[UNET_CONV_OUT]);

    for (int l = 0; l < u->levels; l++)
        for (int j = 0; j <= u->resnets; j++) {
            if (j < u->resnets) set_heads(w, u, meta, &u->level[l].down_attn[j], l);
            set_heads(w, u, meta, &u->level[l].up_attn[j], l);
        }
    set_heads(w, u, meta, &u->mid_attn, u->levels - 1);
}

/* Describes the UNet that w (files + prefix + layout) holds, heads from `meta` (may be NULL). */
static int unet_load(sd_unet_model **out, weights *w, const sd_safetensors *meta, sd_arena *a)
{
    size_t mark = sd_arena_mark(a);
    sd_unet_model *u = (sd_unet_model *)arena_array(a, 1, sizeof *u, w->err);
    if (!u) return SD_ERR_MEMORY;
    memset(u, 0, sizeof *u);
    describe_unet(w, u, meta, a);
    if (w->failed) {
        sd_arena_reset(a, mark);
        return w->failed;
    }
    *out = u;
    return SD_OK;
}

SD_API int sd_unet_load(sd_unet_model **unet, const sd_safetensors *files, int nfiles,
                        const sd_safetensors *meta, sd_arena *a, sd_error *err)
{
    weights w;
    const char *version;
    if (!unet || !files || nfiles < 1 || nfiles > 4 || !a)
        return fail(err, SD_ERR_ARG, "sd_unet_load: NULL argument or nfiles = %d not in 1..4", nfiles);
    memset(&w, 0, sizeof w);
    for (int i = 0; i < nfiles; i++) w.files[i] = &files[i];
    w.nfiles = nfiles;
    w.err = err;
    if (!meta) meta = &files[0];
    version = sd_safetensors_meta(meta, "sd.version");
    if (version && strcmp(version, "1") && strcmp(version, "2") && strcmp(version, "xl"))
        return fail(err, SD_ERR_UNSUPPORTED, "UNet of a model with sd.version = '%.20s': sd.h handles SD1, SD2 and SDXL", version);
    /* a single-file checkpoint keeps the UNet under model.diffusion_model.; diffusers' unet file has no prefix */
    w.prefix = "model.diffusion_model.";
    if (!weights_find(&w, "input_blocks.0.0.weight")) {
        w.prefix = "";
        w.diffusers = 1;
        if (!weights_find(&w, "conv_in.weight"))
            return fail(err, SD_ERR_MISSING, "no UNet: no tensor named '%sinput_blocks.0.0.weight' or 'conv_in.weight'",
                        "model.diffusion_model.");
    }
    return unet_load(unet, &w, meta, a);
}

/* ---- the forward pass ---- */

/* Test hook: sees named intermediate activations (NHWC; [B, C] vectors as H = W = 1). */
typedef void (*unet_probe)(void *user, const char *name, const float *x, int B, int H, int W, int C);

/* A skip connection: a down-path output, kept on the arena's stack until its up resnet. */
typedef struct unet_skip { float *x; int H, W, C; size_t mark; } unet_skip;

/* The state of one forward pass. Arena layout, bottom up: the time embedding, the up path's
   running activation h (sized for its largest use), the stack of skip connections, then
   per-block scratch that each block gives back when it returns. */
typedef struct unet_run {
    const sd_unet_model *u;
    sd_pool *pool;
    sd_arena *a;
    sd_error *err;
    int rc;                     /* first failure; every block returns at once after one */
    int B;
    const float *context;       /* [B, context_len, context_dim] */
    int context_len;
    const float *y;             /* SDXL's added conditioning [B, add_dim], or NULL */
    const float *guidance;      /* LCM's guidance embedding [B, guidance_dim], or NULL */
    float *temb;                /* SiLU(time embedding) [B, time_dim]: what every resnet takes */
    float *h;                   /* the middle and up path's activation [B, H, W, C] */
    int H, W, C;
    unet_skip skip[UNET_MAX_SKIPS];
    int nskip;
    unet_probe probe;
    void *probe_user;
} unet_run;

static float *run_alloc(unet_run *r, size_t n) { return pass_floats(r->a, n, r->err, &r->rc); }

static void run_probe(unet_run *r, const char *name, int index, const float *x, int H, int W, int C)
{
    char s[64];
    if (!r->probe || r->rc || r->pool->measure) return;
    if (index >= 0) snprintf(s, sizeof s, "%s.%d", name, index);
    else snprintf(s, sizeof s, "%s", name);
    r->probe(r->probe_user, s, x, r->B, H, W, C);
}

static float *push_skip(unet_run *r, int H, int W, int C)
{
    unet_skip *s = &r->skip[r->nskip];
    size_t mark = sd_arena_mark(r->a);
    float *x = run_alloc(r, (size_t)r->B * H * W * C);
    if (!x) return NULL;
    s->x = x; s->H = H; s->W = W; s->C = C; s->mark = mark;
    r->nskip++;
    return x;
}

/* ResnetBlock2D: y = conv(SiLU(GN(conv(SiLU(GN(x))) + linear(SiLU(temb))))) + skip(x).
   x [B, H, W, cin] and y [B, H, W, cout] must not overlap. */
static void time_resnet(unet_run *r, const unet_resnet *p, const float *x, float *y, int H, int W)
{
    int B = r->B, HW = H * W, M = B * HW;
    size_t mark = sd_arena_mark(r->a), after_e;
    float *e = run_alloc(r, (size_t)B * p->cout), *t;
    after_e = sd_arena_mark(r->a);
    if (!(t = run_alloc(r, (size_t)M * p->cin))) return;
    groupnorm(r->pool, t, x, B, HW, p->cin, UNET_GROUPS, p->norm1_w, p->norm1_b, 1e-5f, 1);
    conv2d(r->pool, y, t, B, H, W, p->cin, p->conv1_w, p->conv1_b, p->cout, 3, 1, 1, 1);
    /* the timestep, projected to this block's channels, shifts every position */
    linear(r->pool, e, r->temb, B, p->cout, r->u->time_dim, p->time_w, p->time_b);
    add_rows(r->pool, y, e, B, HW, p->cout);
    sd_arena_reset(r->a, after_e);
    if (!(t = run_alloc(r, (size_t)M * p->cout))) return;
    groupnorm(r->pool, t, y, B, HW, p->cout, UNET_GROUPS, p->norm2_w, p->norm2_b, 1e-5f, 1);
    conv2d(r->pool, y, t, B, H, W, p->cout, p->conv2_w, p->conv2_b, p->cout, 3, 1, 1, 1);
    if (p->skip_w) matmul(r->pool, y, p->cout, x, p->cin, M, p->cout, p->cin, p->skip_w, p->skip_b, 1);
    else add(r->pool, y, x, (size_t)M * p->cout);
    sd_arena_reset(r->a, mark);
}

/* BasicTransformerBlock on the token stream hs [B·n, D] (n = H·W tokens per image), in place. */
static void basic_transformer_block(unet_run *r, const unet_transformer *t, const unet_block *blk, float *hs, int n)
{
    int B = r->B, M = B * n, D = t->inner, F = blk->ff_inner, Mc = B * r->context_len, Cc = r->u->context_dim;
    size_t mark = sd_arena_mark(r->a);
    float *x, *q, *k, *v, *g;
    /* self-attention over the image's own positions; the attention output overwrites x, the
       LayerNorm output, which q, k and v no longer need */
    x = run_alloc(r, (size_t)M * D); q = run_alloc(r, (size_t)M * D);
    k = run_alloc(r, (size_t)M * D); v = run_alloc(r, (size_t)M * D);
    if (!v) return;
    layernorm(r->pool, x, hs, M, D, blk->norm1_w, blk->norm1_b, 1e-5f);
    linear(r->pool, q, x, M, D, D, blk->self.q, NULL);
    linear(r->pool, k, x, M, D, D, blk->self.k, NULL);
    linear(r->pool, v, x, M, D, D, blk->self.v, NULL);
    attention(r->pool, x, D, q, D, k, D, v, D, B, n, n, t->heads, t->head_dim, 0);
    matmul(r->pool, hs, D, x, D, M, D, D, blk->self.out_w, blk->self.out_b, 1);
    sd_arena_reset(r->a, mark);
    /* cross-attention: queries from the image, keys and values from the text */
    x = run_alloc(r, (size_t)M * D); q = run_alloc(r, (size_t)M * D);
    k = run_alloc(r, (size_t)Mc * D); v = run_alloc(r, (size_t)Mc * D);
    if (!v) return;
    layernorm(r->pool, x, hs, M, D, blk->norm2_w, blk->norm2_b, 1e-5f);
    linear(r->pool, q, x, M, D, D, blk->cross.q, NULL);
    linear(r->pool, k, r->context, Mc, D, Cc, blk->cross.k, NULL);
    linear(r->pool, v, r->context, Mc, D, Cc, blk->cross.v, NULL);
    attention(r->pool, x, D, q, D, k, D, v, D, B, n, r->context_len, t->heads, t->head_dim, 0);
    matmul(r->pool, hs, D, x, D, M, D, D, blk->cross.out_w, blk->cross.out_b, 1);
    sd_arena_reset(r->a, mark);
    /* feed-forward: GEGLU to 4·D, back to D, a block of rows at a time (the rows are independent)
       so that its 8·D-wide hidden layer takes no more memory than one D-wide activation */
    int rows = M * D / (2 * F) > 64 ? M * D / (2 * F) : 64;
    x = run_alloc(r, (size_t)M * D); g = run_alloc(r, (size_t)(rows < M ? rows : M) * 2 * F);
    if (!g) return;
    layernorm(r->pool, x, hs, M, D, blk->norm3_w, blk->norm3_b, 1e-5f);
    for (int m0 = 0; m0 < M; m0 += rows) {
        int n = M - m0 < rows ? M - m0 : rows;
        linear(r->pool, g, x + (size_t)m0 * D, n, 2 * F, D, blk->ff1_w, blk->ff1_b);
        geglu(r->pool, g, g, n, F);
        matmul(r->pool, hs + (size_t)m0 * D, D, g, F, n, D, F, blk->ff2_w, blk->ff2_b, 1);
    }
    sd_arena_reset(r->a, mark);
}

/* Transformer2DModel on x [B, H, W, C], in place: x += proj_out(blocks(proj_in(GN(x)))). */
static void spatial_transformer(unet_run *r, const unet_transformer *t, float *x, int H, int W)
{
    int B = r->B, n = H * W, M = B * n;
    size_t mark = sd_arena_mark(r->a), after_hs;
    float *hs = run_alloc(r, (size_t)M * t->inner), *xn;
    after_hs = sd_arena_mark(r->a);
    if (!(xn = run_alloc(r, (size_t)M * t->channels))) return;
    groupnorm(r->pool, xn, x, B, n, t->channels, UNET_GROUPS, t->norm_w, t->norm_b, 1e-6f, 0);
    linear(r->pool, hs, xn, M, t->inner, t->channels, t->proj_in_w, t->proj_in_b);
    sd_arena_reset(r->a, after_hs);
    for (int i = 0; i < t->depth; i++) basic_transformer_block(r, t, &t->blocks[i], hs, n);
    if (!r->rc) matmul(r->pool, x, t->channels, hs, t->inner, M, t->channels, t->inner, t->proj_out_w, t->proj_out_b, 1);
    sd_arena_reset(r->a, mark);
}

/* Sinusoidal embedding of each batch item's timestep (LCM: plus the projected guidance
   embedding) → linear–SiLU–linear; SDXL adds its y through a second linear–SiLU–linear. */
static void unet_time_embedding(unet_run *r, const float *timesteps)
{
    const sd_unet_model *u = r->u;
    int B = r->B, C0 = u->model_channels, T = u->time_dim;
    float *temb = run_alloc(r, (size_t)B * T);
    size_t mark = sd_arena_mark(r->a);
    float *f = run_alloc(r, (size_t)B * C0), *hid = run_alloc(r, (size_t)B * T);
    if (!hid) return;
    for (int b = 0; b < B && !r->pool->measure; b++) timestep_embedding(f + (size_t)b * C0, timesteps[b], C0);
    run_probe(r, "time_proj", -1, f, 1, 1, C0);
    if (u->guidance_dim) {
        float *g = run_alloc(r, (size_t)B * C0);
        if (!g) return;
        linear(r->pool, g, r->guidance, B, C0, u->guidance_dim, u->cond_proj_w, NULL);
        run_probe(r, "time_embedding.cond_proj", -1, g, 1, 1, C0);
        add(r->pool, f, g, (size_t)B * C0);
    }
    linear(r->pool, hid, f, B, T, C0, u->time1_w, u->time1_b);
    silu(r->pool, hid, (size_t)B * T);
    linear(r->pool, temb, hid, B, T, T, u->time2_w, u->time2_b);
    run_probe(r, "time_embedding", -1, temb, 1, 1, T);
    if (u->add_dim) {
        float *added = run_alloc(r, (size_t)B * T);
        if (!added) return;
        linear(r->pool, hid, r->y, B, T, u->add_dim, u->add1_w, u->add1_b);
        silu(r->pool, hid, (size_t)B * T);
        linear(r->pool, added, hid, B, T, T, u->add2_w, u->add2_b);
        run_probe(r, "add_embedding", -1, added, 1, 1, T);
        add(r->pool, temb, added, (size_t)B * T);
    }
    silu(r->pool, temb, (size_t)B * T);
    r->temb = temb;
    sd_arena_reset(r->a, mark);
}

/* conv_in on the NCHW input; its output is the first skip connection. */
static void unet_input(unet_run *r, const float *x, int H, int W)
{
    const sd_unet_model *u = r->u;
    float *y = push_skip(r, H, W, u->model_channels);
    size_t mark = sd_arena_mark(r->a);
    float *t = run_alloc(r, (size_t)r->B * H * W * u->in_channels);
    if (!t) return;
    nchw_to_nhwc(r->pool, t, x, r->B, u->in_channels, H * W);
    conv2d(r->pool, y, t, r->B, H, W, u->in_channels, u->conv_in_w, u->conv_in_b, u->model_channels, 3, 1, 1, 1);
    sd_arena_reset(r->a, mark);
    run_probe(r, "conv_in", -1, y, H, W, u->model_channels);
}

/* Down level l: resnets (each followed by a transformer where the level has attention), then a
   stride-2 conv (sizes round up: 5 → 3). Every output is kept as a skip connection. */
static void unet_down_block(unet_run *r, int l)
{
    const unet_level *lv = &r->u->level[l];
    for (int j = 0; j < r->u->resnets && !r->rc; j++) {
        const unet_skip *in = &r->skip[r->nskip - 1];
        float *y = push_skip(r, in->H, in->W, lv->down[j].cout);
        time_resnet(r, &lv->down[j], in->x, y, in->H, in->W);
        if (lv->down_attn[j].depth) spatial_transformer(r, &lv->down_attn[j], y, in->H, in->W);
    }
    if (lv->downsample_w && !r->rc) {
        const unet_skip *in = &r->skip[r->nskip - 1];
        float *y = push_skip(r, (in->H + 1) / 2, (in->W + 1) / 2, in->C);
        if (y) conv2d(r->pool, y, in->x, r->B, in->H, in->W, in->C, lv->downsample_w, lv->downsample_b, in->C, 3, 2, 1, 1);
    }
    if (!r->rc) {
        const unet_skip *out = &r->skip[r->nskip - 1];
        run_probe(r, "down_blocks", l, out->x, out->H, out->W, out->C);
    }
}

/* Resnet, transformer, resnet at the lowest resolution; the result becomes h. */
static void unet_mid_block(unet_run *r)
{
    const sd_unet_model *u = r->u;
    if (r->rc) return;
    const unet_skip *in = &r->skip[r->nskip - 1];
    size_t mark = sd_arena_mark(r->a);
    float *m = run_alloc(r, (size_t)r->B * in->H * in->W * u->mid[0].cout);
    time_resnet(r, &u->mid[0], in->x, m, in->H, in->W);
    if (u->mid_attn.depth) spatial_transformer(r, &u->mid_attn, m, in->H, in->W);
    time_resnet(r, &u->mid[1], m, r->h, in->H, in->W);
    r->H = in->H; r->W = in->W; r->C = u->mid[1].cout;
    sd_arena_reset(r->a, mark);
    run_probe(r, "mid_block", -1, r->h, r->H, r->W, r->C);
}

/* Up level l: each resnet takes h concatenated (channels) with the latest skip, which is then
   dropped; then nearest upsampling to the next skip's size and a conv. */
static void unet_up_block(unet_run *r, int l)
{
    const unet_level *lv = &r->u->level[l];
    int B = r->B;
    for (int j = 0; j <= r->u->resnets && !r->rc; j++) {
        const unet_skip *s = &r->skip[r->nskip - 1];
        size_t M = (size_t)B * r->H * r->W;
        float *cat = run_alloc(r, M * (size_t)(r->C + s->C));
        if (!cat) return;
        concat_channels(r->pool, cat, r->h, r->C, s->x, s->C, M);
        time_resnet(r, &lv->up[j], cat, r->h, r->H, r->W);
        r->C = lv->up[j].cout;
        sd_arena_reset(r->a, s->mark);   /* drops the skip and the concatenation above it */
        r->nskip--;
        if (lv->up_attn[j].depth) spatial_transformer(r, &lv->up_attn[j], r->h, r->H, r->W);
    }
    if (lv->upsample_w && !r->rc) {
        const unet_skip *next = &r->skip[r->nskip - 1];   /* diffusers' upsample_size */
        size_t mark = sd_arena_mark(r->a);
        float *t = run_alloc(r, (size_t)B * next->H * next->W * r->C);
        if (!t) return;
        if (next->H == 2 * r->H && next->W == 2 * r->W) upsample2x(r->pool, t, r->h, B, r->H, r->W, r->C);
        else resize_nearest(r->pool, t, r->h, B, r->H, r->W, r->C, next->H, next->W);
        r->H = next->H; r->W = next->W;
        conv2d(r->pool, r->h, t, B, r->H, r->W, r->C, lv->upsample_w, lv->upsample_b, r->C, 3, 1, 1, 1);
        sd_arena_reset(r->a, mark);
    }
    run_probe(r, "up_blocks", r->u->levels - 1 - l, r->h, r->H, r->W, r->C);
}

/* GroupNorm-SiLU-conv_out to the latent channels, NCHW into out. */
static void unet_output(unet_run *r, float *out)
{
    const sd_unet_model *u = r->u;
    int B = r->B, HW = r->H * r->W;
    size_t mark = sd_arena_mark(r->a);
    if (r->rc) return;
    float *t = run_alloc(r, (size_t)B * HW * r->C);
    if (!t) return;
    groupnorm(r->pool, t, r->h, B, HW, r->C, UNET_GROUPS, u->norm_out_w, u->norm_out_b, 1e-5f, 0);
    run_probe(r, "conv_norm_out", -1, t, r->H, r->W, r->C);
    silu(r->pool, t, (size_t)B * HW * r->C);
    conv2d(r->pool, r->h, t, B, r->H, r->W, r->C, u->conv_out_w, u->conv_out_b, u->out_channels, 3, 1, 1, 1);
    run_probe(r, "conv_out", -1, r->h, r->H, r->W, u->out_channels);
    nhwc_to_nchw(r->pool, out, r->h, B, u->out_channels, HW);
    sd_arena_reset(r->a, mark);
}

/* ---- the sizes of the levels, and of h ---- */

static void unet_sizes(const sd_unet_model *u, int h, int w, int *H, int *W)
{
    H[0] = h; W[0] = w;
    for (int l = 1; l < u->levels; l++) { H[l] = (H[l - 1] + 1) / 2; W[l] = (W[l - 1] + 1) / 2; }
}

/* Floats per batch item of h: the largest of the mid output, the up resnets' and upsamplers'
   outputs and conv_out's. */
static size_t unet_h_floats(const sd_unet_model *u, int h, int w)
{
    int H[UNET_MAX_LEVELS], W[UNET_MAX_LEVELS], last = u->levels - 1;
    size_t most;
    unet_sizes(u, h, w, H, W);
    most = (size_t)H[last] * W[last] * u->mid[1].cout;
    for (int l = 0; l < u->levels; l++) {
        size_t HW = (size_t)H[l] * W[l];
        for (int j = 0; j <= u->resnets; j++) if (HW * u->level[l].up[j].cout > most) most = HW * u->level[l].up[j].cout;
        if (l > 0 && (size_t)H[l - 1] * W[l - 1] * u->level[l].up[u->resnets].cout > most)
            most = (size_t)H[l - 1] * W[l - 1] * u->level[l].up[u->resnets].cout;
    }
    if ((size_t)h * w * u->out_channels > most) most = (size_t)h * w * u->out_channels;
    return most;
}

#define UNET_MAX_POSITIONS (1 << 24)   /* batch · h · w */
#define UNET_MAX_CONTEXT 16384         /* text tokens per item: 212 chunks of 77 */

/* One pass of the denoiser: time embedding, conv_in, down path, middle, up path, conv_out.
   sd_unet checks the arena first; here an allocation that fails ends the pass with
   SD_ERR_MEMORY. probe (may be NULL) sees the diffusers modules' outputs, for tests. */
static int unet_forward(const sd_unet_model *u, const float *x, const float *timesteps, const sd_unet_cond *cond,
                        int batch, int h, int w, float *out, sd_pool *pool, sd_arena *a, sd_error *err,
                        unet_probe probe, void *probe_user)
{
    unet_run r;
    memset(&r, 0, sizeof r);
    r.u = u; r.pool = pool; r.a = a; r.err = err; r.B = batch;
    r.context = cond->context; r.context_len = cond->context_len; r.y = cond->y; r.guidance = cond->guidance;
    r.probe = probe; r.probe_user = probe_user;

    unet_time_embedding(&r, timesteps);
    r.h = run_alloc(&r, (size_t)batch * unet_h_floats(u, h, w));
    unet_input(&r, x, h, w);
    for (int l = 0; l < u->levels; l++) unet_down_block(&r, l);
    unet_mid_block(&r);
    for (int l = u->levels - 1; l >= 0; l--) unet_up_block(&r, l);
    unet_output(&r, out);
    return r.rc;
}

SD_API size_t sd_unet_arena_bytes(const sd_unet_model *unet, int batch, int h, int w, int context_len)
{
    sd_arena m;
    sd_pool pool;
    if (!unet || batch < 1 || h < 1 || w < 1 || (int64_t)batch * h * w > UNET_MAX_POSITIONS ||
        context_len < 1 || context_len > UNET_MAX_CONTEXT) return (size_t)-1;
    sd_unet_cond cond = {dummy_floats(), context_len, unet->add_dim ? dummy_floats() : NULL, unet->guidance_dim ? dummy_floats() : NULL};
    arena_measure(&m);
    pool_measure(&pool);
    if (unet_forward(unet, dummy_floats(), dummy_floats(), &cond, batch, h, w, dummy_floats(), &pool, &m, NULL, NULL, NULL))
        return (size_t)-1;
    return m.peak;
}

SD_API int sd_unet(const sd_unet_model *unet, const float *x, const float *timesteps, const sd_unet_cond *cond,
                   int batch, int h, int w, float *out, sd_pool *pool, sd_arena *a, sd_error *err)
{
    int rc;
    size_t need, left, mark;
    if (!unet || !x || !timesteps || !cond || !cond->context || !out || !pool || !a) return fail(err, SD_ERR_ARG, "sd_unet: NULL argument");
    if (batch < 1 || h < 1 || w < 1 || (int64_t)batch * h * w > UNET_MAX_POSITIONS)
        return fail(err, SD_ERR_ARG, "sd_unet: a batch of %d latents of %dx%d is out of range (at most %d positions in all)",
                    batch, h, w, UNET_MAX_POSITIONS);
    if (cond->context_len < 1 || cond->context_len > UNET_MAX_CONTEXT)
        return fail(err, SD_ERR_ARG, "sd_unet: context of %d tokens, expected 1..%d", cond->context_len, UNET_MAX_CONTEXT);
    if (!unet->add_dim != !cond->y)
        return fail(err, SD_ERR_ARG, unet->add_dim ? "sd_unet: this SDXL UNet needs y, the pooled text and size conditioning"
                                                   : "sd_unet: y given, but this UNet has no added conditioning");
    if (!unet->guidance_dim != !cond->guidance)
        return unet->guidance_dim ? fail(err, SD_ERR_ARG, "sd_unet: this UNet is LCM-distilled (tensor '%s' [%d, %d]): it needs "
                                         "cond->guidance, sd_guidance_embedding(guidance scale - 1) per batch item",
                                         unet->cond_proj_w->name, unet->model_channels, unet->guidance_dim)
                                  : fail(err, SD_ERR_ARG, "sd_unet: a guidance embedding given, but this UNet has no time_embedding.cond_proj");
    need = sd_unet_arena_bytes(unet, batch, h, w, cond->context_len);
    left = a->size - a->used;
    if (need > left)
        return fail(err, SD_ERR_MEMORY, "sd_unet: a batch of %d latents of %dx%d needs %zu arena bytes, %zu are left",
                    batch, h, w, need, left);
    weights_use u;
    if ((rc = weights_begin(&u, pool, unet->conv_in_w, "sd_unet", err))) return rc;
    mark = sd_arena_mark(a);
    rc = unet_forward(unet, x, timesteps, cond, batch, h, w, out, pool, a, err, NULL, NULL);
    sd_arena_reset(a, mark);
    return weights_end(&u, rc, err);
}

SD_API int sd_unet_add_dim(const sd_unet_model *unet) { return unet ? unet->add_dim : 0; }
SD_API int sd_unet_guidance_dim(const sd_unet_model *unet) { return unet ? unet->guidance_dim : 0; }

/* Like timestep_embedding but as LCM's pipeline writes it: sin first, frequencies over
   half - 1, the argument scaled by 1000. */
SD_API void sd_guidance_embedding(float w, int dim, float *out)
{
    if (dim < 4 || !out) return;
    int half = dim / 2;
    float step = logf(10000.0f) / (float)(half - 1), a = w * 1000.0f;
    for (int k = 0; k < half; k++) {
        float arg = a * expf((float)k * -step);
        out[k] = sinf(arg);
        out[half + k] = cosf(arg);
    }
    if (dim % 2) out[dim - 1] = 0;   /* diffusers pads an odd width with a zero */
}

/* The width of each size embedding when y = pooled text + six of them (SDXL: (2816 - 1280) / 6
   = 256); 0 when the widths do not add up that way. */
static int size_embedding_width(int add_dim, int pooled_dim)
{
    int each = pooled_dim > 0 ? (add_dim - pooled_dim) / 6 : 0;
    return each >= 2 && each % 2 == 0 && pooled_dim + 6 * each == add_dim ? each : 0;
}

SD_API int sd_unet_add_vector(const sd_unet_model *unet, const float *pooled, int pooled_dim,
                              const float size_ids[6], float *y, sd_error *err)
{
    if (!unet || !pooled || !size_ids || !y) return fail(err, SD_ERR_ARG, "sd_unet_add_vector: NULL argument");
    int each = size_embedding_width(unet->add_dim, pooled_dim);
    if (!each)
        return fail(err, SD_ERR_SHAPE, "sd_unet_add_vector: the UNet's added conditioning is %d wide, which is not %d pooled "
                    "text features and six even-sized embeddings", unet->add_dim, pooled_dim);
    memcpy(y, pooled, (size_t)pooled_dim * sizeof(float));
    for (int i = 0; i < 6; i++) timestep_embedding(y + pooled_dim + i * each, size_ids[i], each);
    return SD_OK;
}

/* ---- 7b. LoRA: which layer each tensor of a LoRA file updates ------------------------------ */
/* The run-time half is in section 4 (lora_update); this half reads the files. Every Linear and
   Conv2d of the loaded text encoders and UNet is visited with its module path under both name
   maps (for the UNet, unet_part's: the description the loader reads), named as each file format
   names it, and looked up in the file. Whatever no layer took is an error naming it, or a warning
   where AUTOMATIC1111 skips it too. Shapes must fit the layer; nothing is copied. */

enum { LORA_UNET, LORA_TE, LORA_TE1, LORA_TE2, LORA_PARTS };   /* whose layer: kohya's lora_unet_, lora_te_, lora_te1_, lora_te2_ */

/* One Linear or Conv2d of the model: its weight (the key of its adapters), kernel size, and
   module path under the original [0] and the diffusers [1] name maps. */
typedef struct lora_module {
    const sd_tensor *w;
    int k, part;
    char path[2][192];
} lora_module;

typedef void (*lora_visit)(void *user, const lora_module *m);

/* A transformer block's linear layers, the same in both name maps. */
static const struct { size_t field; const char *name; } lora_block_modules[] = {
    {offsetof(unet_block, self.q), "attn1.to_q"}, {offsetof(unet_block, self.k), "attn1.to_k"},
    {offsetof(unet_block, self.v), "attn1.to_v"}, {offsetof(unet_block, self.out_w), "attn1.to_out.0"},
    {offsetof(unet_block, cross.q), "attn2.to_q"}, {offsetof(unet_block, cross.k), "attn2.to_k"},
    {offsetof(unet_block, cross.v), "attn2.to_v"}, {offsetof(unet_block, cross.out_w), "attn2.to_out.0"},
    {offsetof(unet_block, ff1_w), "ff.net.0.proj"}, {offsetof(unet_block, ff2_w), "ff.net.2"},
};

typedef struct lora_walk {
    const sd_unet_model *u;
    weights map[2];   /* unet_part's name maps: [0] original, [1] diffusers */
    lora_visit visit;
    void *user;
} lora_walk;

/* Visits weight w (if there is one) as prefix[i] + name[i]; a sampler's prefix is its module. */
static void lora_emit(lora_walk *k, const sd_tensor *w, int ksize, const char *const prefix[2], const char *const name[2])
{
    lora_module m;
    if (!w) return;
    m.w = w;
    m.k = ksize;
    m.part = LORA_UNET;
    for (int i = 0; i < 2; i++) {
        size_t n = (size_t)snprintf(m.path[i], sizeof m.path[i], "%s%s", prefix[i], name[i]);
        if (n > 0 && n < sizeof m.path[i] && m.path[i][n - 1] == '.') m.path[i][n - 1] = 0;
    }
    k->visit(k->user, &m);
}

/* The layers of one part of the UNet: a resnet's two 3x3 convs, time projection and shortcut,
   a transformer's projections and its blocks' attention and feed-forward layers, a sampler. */
static void lora_unet_part(lora_walk *k, int part, int l, int j)
{
    static const int resnet[4] = {RESNET_CONV1, RESNET_TIME, RESNET_CONV2, RESNET_SKIP};
    const sd_unet_model *u = k->u;
    const unet_level *lv = &u->level[l];
    char p0[128], p1[128], name[96];
    const char *prefix[2] = {unet_part(p0, sizeof p0, &k->map[0], u, part, l, j), unet_part(p1, sizeof p1, &k->map[1], u, part, l, j)};
    const char *names[2] = {name, name};
    const unet_resnet *r = part == UNET_DOWN_RES ? &lv->down[j] : part == UNET_UP_RES ? &lv->up[j] : part == UNET_MID_RES ? &u->mid[j] : NULL;
    const unet_transformer *t = part == UNET_DOWN_ATTN ? &lv->down_attn[j] : part == UNET_UP_ATTN ? &lv->up_attn[j]
                              : part == UNET_MID_ATTN ? &u->mid_attn : NULL;
    if (r) {
        const sd_tensor *w[4] = {r->conv1_w, r->time_w, r->conv2_w, r->skip_w};
        for (int i = 0; i < 4; i++) {
            const char *n[2] = {unet_resnet_names[0][resnet[i]], unet_resnet_names[1][resnet[i]]};
            lora_emit(k, w[i], i == 0 || i == 2 ? 3 : 1, prefix, n);
        }
    } else if (t) {
        if (!t->depth) return;
        snprintf(name, sizeof name, "proj_in");
        lora_emit(k, t->proj_in_w, 1, prefix, names);
        snprintf(name, sizeof name, "proj_out");
        lora_emit(k, t->proj_out_w, 1, prefix, names);
        for (int b = 0; b < t->depth; b++)
            for (size_t i = 0; i < sizeof lora_block_modules / sizeof *lora_block_modules; i++) {
                snprintf(name, sizeof name, "transformer_blocks.%d.%s", b, lora_block_modules[i].name);
                lora_emit(k, *(const sd_tensor *const *)(const void *)((const char *)&t->blocks[b] + lora_block_modules[i].field), 1, prefix, names);
            }
    } else {
        name[0] = 0;
        lora_emit(k, part == UNET_DOWNSAMPLE ? lv->downsample_w : lv->upsample_w, 3, prefix, names);
    }
}

/* Every Linear and Conv2d of the UNet, in the order of the forward pass. */
static void lora_unet_modules(const sd_unet_model *u, lora_visit visit, void *user)
{
    static const char *const none[2] = {"", ""};
    const sd_tensor *stem[UNET_STEM_MODULES] = {u->conv_in_w, u->time1_w, u->time2_w, u->add1_w, u->add2_w, NULL, u->conv_out_w};
    lora_walk k;
    memset(&k, 0, sizeof k);
    k.u = u;
    k.map[1].diffusers = 1;
    k.visit = visit;
    k.user = user;
    for (int i = 0; i < UNET_STEM_MODULES; i++) {
        const char *n[2] = {unet_stem_names[0][i], unet_stem_names[1][i]};
        lora_emit(&k, stem[i], i == UNET_CONV_IN || i == UNET_CONV_OUT ? 3 : 1, none, n);
    }
    for (int l = 0; l < u->levels; l++) {
        for (int j = 0; j < u->resnets; j++) {
            lora_unet_part(&k, UNET_DOWN_RES, l, j);
            lora_unet_part(&k, UNET_DOWN_ATTN, l, j);
        }
        lora_unet_part(&k, UNET_DOWNSAMPLE, l, 0);
    }
    lora_unet_part(&k, UNET_MID_RES, 0, 0);
    lora_unet_part(&k, UNET_MID_ATTN, 0, 0);
    lora_unet_part(&k, UNET_MID_RES, 0, 1);
    for (int l = u->levels - 1; l >= 0; l--) {
        for (int j = 0; j <= u->resnets; j++) {
            lora_unet_part(&k, UNET_UP_RES, l, j);
            lora_unet_part(&k, UNET_UP_ATTN, l, j);
        }
        lora_unet_part(&k, UNET_UPSAMPLE, l, 0);
    }
}

/* Every linear layer of a text encoder, under HF's names (text_model.encoder.layers.N...): the
   names LoRA files use for OpenCLIP towers too, whose q, k and v are row views of in_proj. */
static void lora_text_modules(const sd_text_encoder *te, int part, lora_visit visit, void *user)
{
    lora_module m;
    char name[160];
    m.k = 1;
    m.part = part;
    for (int l = 0; l < te->layers; l++)
        for (size_t i = 0; i < sizeof clip_layer_names / sizeof *clip_layer_names; i++) {
            const struct clip_tensor_name *n = &clip_layer_names[i];
            if (!n->cols) continue;   /* norms and biases */
            snprintf(name, sizeof name, n->hf, l);
            m.w = (const sd_tensor *)(const void *)((const char *)&te->layer[l] + n->field);
            snprintf(m.path[0], sizeof m.path[0], "text_model.%.*s", (int)(strlen(name) - strlen(".weight")), name);
            memcpy(m.path[1], m.path[0], sizeof m.path[0]);
            visit(user, &m);
        }
}

/* How each format names a layer's tensors: a prefix per part, the module path with '.' as '_'
   (kohya) or as it is, and the down and up suffixes; any format may add <stem>.alpha. */
static const struct lora_format {
    const char *prefix[LORA_PARTS], *down, *up;
    int underscores;
} lora_formats[] = {
    {{"lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"}, ".lora_down.weight", ".lora_up.weight", 1},              /* kohya, A1111 */
    {{"unet.", "text_encoder.", "text_encoder.", "text_encoder_2."}, ".lora_A.weight", ".lora_B.weight", 0},       /* diffusers (PEFT) */
    {{"unet.", "text_encoder.", "text_encoder.", "text_encoder_2."}, ".lora.down.weight", ".lora.up.weight", 0},   /* diffusers before PEFT */
};
#define LORA_FORMATS (int)(sizeof lora_formats / sizeof *lora_formats)

/* Matching one file. */
typedef struct lora_matcher {
    const sd_safetensors *st;
    const char *name;             /* the LoRA's name, for messages */
    unsigned char *used;          /* [st->count]: the tensors a layer took */
    float strength[LORA_PARTS];
    lora_adapter *adapters;       /* the set's: count made so far, room for cap */
    int count, cap;
    sd_error *err;
    int rc;                       /* the first failure */
} lora_matcher;

static const sd_tensor *lora_tensor(lora_matcher *mt, const char *stem, const char *suffix)
{
    char name[512];
    snprintf(name, sizeof name, "%s%s", stem, suffix);
    const sd_tensor *t = sd_safetensors_find(mt->st, name);
    if (t) mt->used[t - mt->st->tensors] = 1;
    return t;
}

static int lora_float_dtype(const sd_tensor *t) { return t->dtype == SD_F32 || t->dtype == SD_F16 || t->dtype == SD_BF16; }

/* The adapter of down and up (and alpha, may be NULL) on layer m, if their shapes fit it: down
   [r, in] (or [r, in, 1, 1]; a k x k conv's [r, in, k, k]), up [out, r] (or [out, r, 1, 1]). */
static void lora_adapt(lora_matcher *mt, const lora_module *m, const sd_tensor *down, const sd_tensor *up, const sd_tensor *alpha)
{
    const sd_tensor *w = m->w;
    int64_t N = w->shape[0], K = w->shape[1], r = down->shape[0];
    if (w->ndim == 2 && m->k > 1) K /= (int64_t)m->k * m->k;   /* a quantized conv weight [Cout, Cin·k·k] (GGUF) */
    int down_ok = down->ndim == 2 ? m->k == 1 : down->ndim == 4 && down->shape[2] == m->k && down->shape[3] == m->k;
    int up_ok = up->ndim == 2 || (up->ndim == 4 && up->shape[2] == 1 && up->shape[3] == 1);
    double a = (double)r;
    char got[128], base[128];
    if (!lora_float_dtype(down) || !lora_float_dtype(up)) {
        mt->rc = fail(mt->err, SD_ERR_SHAPE, "LoRA '%s': tensor '%s' is %s; LoRA weights must be F32, F16 or BF16", mt->name,
                      lora_float_dtype(down) ? up->name : down->name, sd_dtype_name(lora_float_dtype(down) ? up->dtype : down->dtype));
        return;
    }
    if (!down_ok || down->shape[1] != K || r < 1 || r > LORA_MAX_RANK) {
        mt->rc = fail(mt->err, SD_ERR_SHAPE, "LoRA '%s': tensor '%s' has shape [%s]; the layer's weight '%s' is [%s], so it must be "
                      "[rank, %lld%s] (rank 1..%d)", mt->name, down->name, shape_text(down, got, sizeof got), w->name,
                      shape_text(w, base, sizeof base), (long long)K, m->k == 3 ? ", 3, 3" : "", LORA_MAX_RANK);
        return;
    }
    if (!up_ok || up->shape[0] != N || up->shape[1] != r) {
        mt->rc = fail(mt->err, SD_ERR_SHAPE, "LoRA '%s': tensor '%s' has shape [%s]; the layer's weight '%s' is [%s] and the rank %lld, "
                      "so it must be [%lld, %lld]", mt->name, up->name, shape_text(up, got, sizeof got), w->name,
                      shape_text(w, base, sizeof base), (long long)r, (long long)N, (long long)r);
        return;
    }
    if (alpha && (lora_float_dtype(alpha) || alpha->dtype == SD_F64) && sd_tensor_numel(alpha) == 1) a = tensor_get(alpha, 0);
    if (alpha) {
        if ((!lora_float_dtype(alpha) && alpha->dtype != SD_F64) || sd_tensor_numel(alpha) != 1 || !(fabs(a) <= 1e30)) {
            mt->rc = fail(mt->err, SD_ERR_SHAPE, "LoRA '%s': tensor '%s' is not one finite number", mt->name, alpha->name);
            return;
        }
    }
    SD_ASSERT(mt->count < mt->cap);
    lora_adapter *ad = &mt->adapters[mt->count++];
    ad->base = w;
    ad->down = down;
    ad->up = up;
    ad->rank = (int)r;
    ad->scale = (float)((double)mt->strength[m->part] * a / (double)r);
    ad->next = NULL;
}

/* The visitor: layer m's tensors under every format and name map. */
static void lora_match(void *user, const lora_module *m)
{
    lora_matcher *mt = (lora_matcher *)user;
    char stem[400];
    for (int f = 0; f < LORA_FORMATS && !mt->rc; f++)
        for (int map = 0; map < 2 && !mt->rc; map++) {
            const struct lora_format *fm = &lora_formats[f];
            if (map == 1 && !strcmp(m->path[0], m->path[1])) continue;
            size_t n = strlen(fm->prefix[m->part]);
            snprintf(stem, sizeof stem, "%s%s", fm->prefix[m->part], m->path[map]);
            for (char *c = stem + n; fm->underscores && *c; c++) if (*c == '.') *c = '_';
            const sd_tensor *down = lora_tensor(mt, stem, fm->down), *up = lora_tensor(mt, stem, fm->up);
            if (!down && !up) continue;
            if (!down || !up) {
                mt->rc = fail(mt->err, SD_ERR_MISSING, "LoRA '%s': tensor '%s' has no '%s%s' beside it", mt->name,
                              (down ? down : up)->name, stem, down ? fm->up : fm->down);
                return;
            }
            lora_adapt(mt, m, down, up, lora_tensor(mt, stem, ".alpha"));
        }
}

/* The text-encoder layer number in a tensor name of encoder part `part`, or -1. */
static long lora_text_layer(const char *name, int part)
{
    for (int f = 0; f < LORA_FORMATS; f++) {
        const char *pre = lora_formats[f].prefix[part], *path = lora_formats[f].underscores ? "text_model_encoder_layers_" : "text_model.encoder.layers.";
        long v = 0;
        if (strncmp(name, pre, strlen(pre)) || strncmp(name + strlen(pre), path, strlen(path))) continue;
        const char *s = name + strlen(pre) + strlen(path);
        if (*s < '0' || *s > '9') continue;
        for (; *s >= '0' && *s <= '9' && v < 100000; s++) v = v * 10 + (*s - '0');
        return v;
    }
    return -1;
}

/* Whose layer a tensor name is for by its prefix alone (any format), or -1. */
static int lora_name_part(const char *name)
{
    for (int f = 0; f < LORA_FORMATS; f++)
        for (int p = LORA_PARTS - 1; p >= 0; p--)
            if (!strncmp(name, lora_formats[f].prefix[p], strlen(lora_formats[f].prefix[p]))) return p;
    return -1;
}

/* Appends a line to a text buffer of cap bytes (cut at the end if it does not fit). */
static void text_append(char *buf, size_t cap, const char *fmt, ...)
{
    size_t n = strlen(buf);
    va_list ap;
    if (n + 1 >= cap) return;
    va_start(ap, fmt);
    vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
}

/* What no layer took. Skipped with a warning where AUTOMATIC1111 skips it as well: embeddings
   bundled in the file (A1111 loads them as textual inversions; not here), text-encoder layers
   this model lacks (diffusers' SD2 encoder has 23 of OpenCLIP's 24: the last is never run), and
   a part the caller did not give. Anything else is an error naming the tensor. */
static int lora_leftovers(lora_matcher *mt, sd_lora_set *set, const sd_unet_model *unet, const sd_text_encoder *te, int n_te)
{
    static const char *const why[3] = {"embeddings bundled in the LoRA (bundle_emb.*), which sd.h does not load",
                                       "text-encoder layers this model does not have", "a part of the model that was not given"};
    static const char *const unsupported[] = {".hada_", ".lokr_", ".lora_mid.", ".dora_scale", ".diff", ".w_norm", ".b_norm", ".oft_"};
    const char *first[3] = {NULL, NULL, NULL}, *bad = NULL;
    int skipped[3] = {0, 0, 0}, unmatched = 0;
    for (int i = 0; i < mt->st->count; i++) {
        const char *name = mt->st->tensors[i].name;
        int part = lora_name_part(name), kind = -1;
        if (mt->used[i]) continue;
        if (!strncmp(name, "bundle_emb.", 11)) kind = 0;
        for (int e = 0; e < n_te && kind < 0; e++) {
            long layer = lora_text_layer(name, n_te == 2 ? LORA_TE1 + e : LORA_TE);
            if (layer >= te[e].layers) kind = 1;
        }
        if (kind < 0 && part >= 0 && (part == LORA_UNET ? !unet : !n_te)) kind = 2;
        if (kind >= 0) {
            if (!skipped[kind]++) first[kind] = name;
            continue;
        }
        for (size_t k = 0; k < sizeof unsupported / sizeof *unsupported; k++)
            if (strstr(name, unsupported[k]))
                return fail(mt->err, SD_ERR_UNSUPPORTED, "LoRA '%s': tensor '%s' belongs to a kind of LyCORIS network (LoHa, LoKr, DoRA, "
                            "...) that sd.h does not apply: it reads LoRA and LoCon (lora_down / lora_up)", mt->name, name);
        if (!unmatched++) bad = name;
    }
    if (unmatched)
        return fail(mt->err, SD_ERR_SHAPE, "LoRA '%s': tensor '%s' matches no layer of this model (%d tensor%s do%s not: a LoRA "
                    "for another model family?)", mt->name, bad, unmatched, unmatched > 1 ? "s" : "", unmatched > 1 ? "" : "es");
    for (int k = 0; k < 3; k++)
        if (skipped[k])
            text_append(set->warnings, sizeof set->warnings, "LoRA '%s': skipped %d tensor%s of %s, as AUTOMATIC1111 does (e.g. '%s')\n",
                        mt->name, skipped[k], skipped[k] > 1 ? "s" : "", why[k], first[k]);
    return SD_OK;
}

/* The set in an arena of its own (the bound sd_lora_arena_bytes gives). */
static int lora_build(sd_lora_set **out, const sd_unet_model *unet, const sd_text_encoder *te, int n_te,
                      const sd_lora *loras, int count, sd_arena *a, sd_error *err)
{
    sd_lora_set *set = (sd_lora_set *)sd_arena_alloc(a, sizeof *set, err);
    sd_safetensors *st = (sd_safetensors *)arena_array(a, (size_t)count + 1, sizeof *st, err);
    char label[64];
    int rc, cap = 1;
    uint32_t slots = 16;
    if (!set || !st) return SD_ERR_MEMORY;
    memset(set, 0, sizeof *set);
    for (int i = 0; i < count; i++) {
        if ((rc = sd_safetensors_open(&st[i], loras[i].data, loras[i].size, a, err))) {
            if (err) {
                char msg[sizeof err->message];
                snprintf(msg, sizeof msg, "%s", err->message);
                snprintf(err->message, sizeof err->message, "LoRA '%.60s': %.180s", loras[i].name ? loras[i].name : "(unnamed)", msg);
            }
            return rc;
        }
        cap += st[i].count / 2;
    }
    if (!(set->adapters = (lora_adapter *)arena_array(a, (size_t)cap, sizeof(lora_adapter), err))) return SD_ERR_MEMORY;
    for (int i = 0; i < count; i++) {
        lora_matcher mt;
        size_t mark = sd_arena_mark(a);
        memset(&mt, 0, sizeof mt);
        snprintf(label, sizeof label, "LoRA %d", i + 1);
        mt.st = &st[i];
        mt.name = loras[i].name ? loras[i].name : label;
        mt.strength[LORA_UNET] = loras[i].unet_scale;
        mt.strength[LORA_TE] = mt.strength[LORA_TE1] = mt.strength[LORA_TE2] = loras[i].text_scale;
        mt.adapters = set->adapters;
        mt.count = set->count;
        mt.cap = cap;
        mt.err = err;
        if (!(mt.used = (unsigned char *)sd_arena_alloc(a, (size_t)st[i].count + 1, err))) return SD_ERR_MEMORY;
        memset(mt.used, 0, (size_t)st[i].count + 1);
        for (int e = 0; e < n_te; e++) lora_text_modules(&te[e], n_te == 2 ? LORA_TE1 + e : LORA_TE, lora_match, &mt);
        if (unet) lora_unet_modules(unet, lora_match, &mt);
        if (mt.rc || (mt.rc = lora_leftovers(&mt, set, unet, te, n_te))) return mt.rc;
        set->count = mt.count;
        sd_arena_reset(a, mark);   /* the marks were scratch */
    }
    /* the table: each weight's first adapter; the others (more LoRAs on it) chained in order */
    while (slots < 2u * (uint32_t)set->count) slots *= 2;
    if (!(set->slot = (int32_t *)arena_array(a, slots, sizeof(int32_t), err))) return SD_ERR_MEMORY;
    memset(set->slot, 0xff, slots * sizeof(int32_t));
    set->mask = slots - 1;
    for (int i = 0; i < set->count; i++) {
        lora_adapter *ad = &set->adapters[i], *last;
        uint32_t h = lora_hash(ad->base) & set->mask;
        while (set->slot[h] >= 0 && set->adapters[set->slot[h]].base != ad->base) h = (h + 1) & set->mask;
        if (set->slot[h] < 0) { set->slot[h] = i; continue; }
        for (last = &set->adapters[set->slot[h]]; last->next; last = last->next) {}
        last->next = ad;
    }
    *out = set;
    return SD_OK;
}

/* The arena bytes of one file's part of a set at most: its safetensors tables, plus its adapters
   (at most one per two tensors, each of at least 100 header bytes), the marks of used tensors and
   the table slots (one more byte per header byte covers them). */
static size_t lora_file_bound(const void *data, size_t size)
{
    return safetensors_arena_bound(data, size) + safetensors_header_bytes(data, size) + 4 * SD_ALIGN;
}

/* sd_lora_load, and its dry run: a block of `bound` bytes is taken either way (so that a plan
   equals the peak), and filled only in a real run. */
static int lora_load(sd_lora_set **set, const sd_unet_model *unet, const sd_text_encoder *te, int n_te,
                     const sd_lora *loras, int count, size_t bound, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a);
    void *block = sd_arena_alloc(a, bound, err);
    sd_arena sub;
    int rc;
    *set = NULL;
    if (!block) return SD_ERR_MEMORY;
    if (arena_measuring(a)) return SD_OK;
    sd_arena_init(&sub, block, bound);
    if ((rc = lora_build(set, unet, te, n_te, loras, count, &sub, err))) {
        *set = NULL;
        sd_arena_reset(a, mark);
    }
    return rc;
}

/* What a set takes besides its files' parts. */
#define LORA_SET_BYTES (sizeof(sd_lora_set) + 8 * SD_ALIGN)

SD_API size_t sd_lora_arena_bytes(const sd_lora *loras, int count)
{
    size_t total = LORA_SET_BYTES + ((size_t)count + 1) * sizeof(sd_safetensors);
    for (int i = 0; loras && i < count; i++) total += lora_file_bound(loras[i].data, loras[i].size);
    return (total + SD_ALIGN - 1) & ~(size_t)(SD_ALIGN - 1);
}

SD_API int sd_lora_load(sd_lora_set **set, const sd_unet_model *unet, const sd_text_encoder *te, int n_te,
                        const sd_lora *loras, int count, sd_arena *a, sd_error *err)
{
    if (set) *set = NULL;
    if (!set || !a || count < 0 || count > 4096 || (count && !loras) || n_te < 0 || n_te > 2 || (n_te && !te))
        return fail(err, SD_ERR_ARG, "sd_lora_load: NULL argument, %d LoRAs or %d text encoders", count, n_te);
    for (int i = 0; i < count; i++)
        if (!loras[i].data && loras[i].size) return fail(err, SD_ERR_ARG, "sd_lora_load: LoRA %d has no bytes", i + 1);
    return lora_load(set, unet, te, n_te, loras, count, sd_lora_arena_bytes(loras, count), a, err);
}

SD_API const char *sd_lora_warnings(const sd_lora_set *set) { return set ? set->warnings : ""; }

/* Puts `set` on the pool, with the scratch of its products taken from `a` the first time (a dry
   run takes it too, with no set). */
static int pool_set_lora(sd_pool *pool, const sd_lora_set *set, sd_arena *a, sd_error *err)
{
    if (!pool->lora_scratch && !(pool->lora_scratch = arena_floats(a, LORA_SCRATCH_FLOATS, err))) return SD_ERR_MEMORY;
    pool->lora = set;
    return SD_OK;
}

SD_API int sd_pool_set_lora(sd_pool *pool, const sd_lora_set *set, sd_arena *a, sd_error *err)
{
    if (!pool || (set && !a && !pool->lora_scratch)) return fail(err, SD_ERR_ARG, "sd_pool_set_lora: NULL pool, or no arena for its scratch");
    if (!set) {
        pool->lora = NULL;
        return SD_OK;
    }
    return pool_set_lora(pool, set, a, err);
}

/* ---- 8. VAE ------------------------------------------------------------------------------ */
/* The variational autoencoder of latent diffusion (Rombach et al. 2022, §3.1; the convolutional
   encoder/decoder of Esser et al.'s VQGAN with a KL-regularised Gaussian latent instead of a
   codebook). The encoder turns an image [3, H, W] into a Gaussian over latents [4, H/8, W/8]; the
   decoder turns a latent back into an image. Both are stacks of ResNet blocks (GroupNorm-SiLU-
   conv3x3 twice, plus the input) at levels of decreasing (encoder) or increasing (decoder) size,
   joined by stride-2 convolutions or nearest-neighbour upsampling followed by a convolution,
   with a middle block at the coarsest level whose single-head self-attention lets every position
   see the whole image. 1x1 convolutions (quant_conv, post_quant_conv) sit between the two halves
   and the latent. The diffusion model works on latents multiplied by scaling_factor (so that
   they have about unit variance); that scaling belongs to the pipeline, not to this section. */

typedef struct vae_conv { const sd_tensor *w, *b; } vae_conv;   /* weight [out, in, k, k] or [out, in], bias [out] */
typedef struct vae_norm { const sd_tensor *w, *b; } vae_norm;   /* GroupNorm scale and shift */

/* ResnetBlock2D without time embedding: GroupNorm-SiLU-conv3x3, GroupNorm-SiLU-conv3x3, plus the
   input, through a 1x1 conv (`shortcut`) when the block changes the channel count. */
typedef struct vae_resnet { int cin, cout; vae_norm norm1, norm2; vae_conv conv1, conv2, shortcut; } vae_resnet;

/* The mid-block AttnBlock: GroupNorm, q/k/v projections, one head over all channels, proj_out,
   added to the input. */
typedef struct vae_attention { int channels; vae_norm norm; vae_conv q, k, v, out; } vae_attention;

/* One resolution level: its ResNets, then (all levels but the last) the resampler: a stride-2
   conv in the encoder, nearest 2x upsampling and a conv in the decoder. */
typedef struct vae_level {
    int channels, resnets, resample;
    vae_resnet res[SD_VAE_MAX_RESNETS];
    vae_conv resample_conv;
} vae_level;

/* Encoder and decoder have the same parts: conv_in, levels (the encoder's fine to coarse, the
   decoder's coarse to fine, each in the order it runs), a mid block (ResNet, attention, ResNet),
   GroupNorm-SiLU, conv_out. The encoder runs its mid block after the levels, the decoder before. */
typedef struct vae_stack {
    vae_conv conv_in;
    vae_level level[SD_VAE_MAX_LEVELS];
    vae_resnet mid1, mid2;
    vae_attention attn;
    vae_norm norm_out;
    vae_conv conv_out;
} vae_stack;

struct sd_vae {
    sd_vae_config config;
    vae_stack encoder, decoder;
    vae_conv quant_conv, post_quant_conv;   /* 1x1: encoder output → moments, latent → decoder input */
};

SD_API void sd_vae_config_default(sd_vae_config *c)
{
    static const int channels[4] = {128, 256, 512, 512};
    memset(c, 0, sizeof *c);
    c->levels = 4;
    memcpy(c->channels, channels, sizeof channels);
    c->num_res_blocks = 2;
    c->z_channels = c->embed_dim = 4;
    c->norm_groups = 32;
    c->norm_eps = 1e-6f;
    c->scaling_factor = 0.18215f;
    c->has_encoder = 1;
}

/* Checks a configuration and lays out the channel counts of every block it implies, without
   weights: what the loader fills in and what the arena-size functions plan with. */
static int vae_describe(sd_vae *v, const sd_vae_config *c, sd_error *err)
{
    const int *ch = c->channels;
    int L = c->levels, R = c->num_res_blocks;
    memset(v, 0, sizeof *v);
    if (L < 1 || L > SD_VAE_MAX_LEVELS) return fail(err, SD_ERR_UNSUPPORTED, "VAE: %d levels (1..%d supported)", L, SD_VAE_MAX_LEVELS);
    if (R < 1 || R + 1 > SD_VAE_MAX_RESNETS) return fail(err, SD_ERR_UNSUPPORTED, "VAE: %d ResNets per level (1..%d supported)", R, SD_VAE_MAX_RESNETS - 1);
    if (c->norm_groups < 1 || !(c->norm_eps > 0.0f) || !(c->scaling_factor > 0.0f))
        return fail(err, SD_ERR_UNSUPPORTED, "VAE: GroupNorm groups %d, eps %g and scaling factor %g must be positive", c->norm_groups, (double)c->norm_eps, (double)c->scaling_factor);
    if (c->z_channels < 1 || c->z_channels > 4096 || c->embed_dim < 1 || c->embed_dim > 4096)
        return fail(err, SD_ERR_UNSUPPORTED, "VAE: z_channels %d / embed_dim %d outside 1..4096", c->z_channels, c->embed_dim);
    /* (real VAEs have at most 512 channels; the single attention head is as wide as the last
       level, and the attention kernel's per-thread scratch bounds the head size) */
    for (int i = 0; i < L; i++)
        if (ch[i] < 1 || ch[i] > 2048 || ch[i] % c->norm_groups)
            return fail(err, SD_ERR_UNSUPPORTED, "VAE: level %d has %d channels; need 1..2048 and a multiple of the %d GroupNorm groups", i, ch[i], c->norm_groups);
    v->config = *c;
    /* encoder: conv_in to ch[0]; level i goes to ch[i] and (but the last) halves the size */
    for (int i = 0, cin = ch[0]; i < L; cin = ch[i], i++) {
        vae_level *l = &v->encoder.level[i];
        l->channels = ch[i];
        l->resnets = R;
        l->resample = i < L - 1;
        for (int j = 0; j < R; j++) { l->res[j].cin = j ? ch[i] : cin; l->res[j].cout = ch[i]; }
    }
    /* decoder: conv_in to ch[L-1]; level i (coarsest first) goes to ch[L-1-i] and (but the last) doubles the size */
    for (int i = 0, cin = ch[L - 1]; i < L; cin = ch[L - 1 - i], i++) {
        vae_level *l = &v->decoder.level[i];
        l->channels = ch[L - 1 - i];
        l->resnets = R + 1;
        l->resample = i < L - 1;
        for (int j = 0; j <= R; j++) { l->res[j].cin = j ? l->channels : cin; l->res[j].cout = l->channels; }
    }
    for (int d = 0; d < 2; d++) {
        vae_stack *s = d ? &v->decoder : &v->encoder;
        s->mid1.cin = s->mid1.cout = s->mid2.cin = s->mid2.cout = s->attn.channels = ch[L - 1];
    }
    return SD_OK;
}

/* ---- loading: one description, two name maps ---- */

/* Key names under "encoder." / "decoder.". The original (LDM) decoder numbers its levels fine to
   coarse, so the first to run is up.{L-1}; diffusers numbers up_blocks in the order they run. */
static const struct vae_names {
    const char *resnet[2], *resample[2];   /* [encoder, decoder]: printf formats of level (, block) */
    const char *mid[3];                    /* ResNet, attention, ResNet */
    const char *norm_out;
    const char *resnet_part[5];            /* norm1, conv1, norm2, conv2, shortcut */
    const char *attn_part[5];              /* norm, q, k, v, out */
} vae_names[2] = {
    {{"down.%d.block.%d", "up.%d.block.%d"}, {"down.%d.downsample.conv", "up.%d.upsample.conv"},
     {"mid.block_1", "mid.attn_1", "mid.block_2"}, "norm_out",
     {"norm1", "conv1", "norm2", "conv2", "nin_shortcut"}, {"norm", "q", "k", "v", "proj_out"}},
    {{"down_blocks.%d.resnets.%d", "up_blocks.%d.resnets.%d"},
     {"down_blocks.%d.downsamplers.0.conv", "up_blocks.%d.upsamplers.0.conv"},
     {"mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"}, "conv_norm_out",
     {"norm1", "conv1", "norm2", "conv2", "conv_shortcut"}, {"group_norm", "to_q", "to_k", "to_v", "to_out.0"}},
};
/* diffusers files saved before the attention refactor (0.14) name the projections differently */
static const char *const vae_old_attn_part[5] = {"group_norm", "query", "key", "value", "proj_attn"};

/* The name of block `block` of level `level` of a stack, as the checkpoint spells it. */
static const char *vae_block_name(char *buf, size_t n, const weights *w, int decoder, int resample, int level, int block)
{
    const struct vae_names *nm = &vae_names[w->diffusers ? 1 : 0];
    int len = snprintf(buf, n, "%s.", decoder ? "decoder" : "encoder");
    snprintf(buf + len, n - (size_t)len, resample ? nm->resample[decoder] : nm->resnet[decoder], level, block);
    return buf;
}

static void vae_load_conv(weights *w, vae_conv *c, int cout, int cin, int k, const char *name)
{
    c->w = need(w, cout, cin, k, k, "%s.weight", name);
    c->b = need(w, cout, 0, 0, 0, "%s.bias", name);
}

static void vae_load_norm(weights *w, vae_norm *n, int C, const char *name, const char *part)
{
    n->w = need(w, C, 0, 0, 0, "%s.%s.weight", name, part);
    n->b = need(w, C, 0, 0, 0, "%s.%s.bias", name, part);
}

static void vae_load_resnet(weights *w, vae_resnet *r, const char *name)
{
    const char *const *part = vae_names[w->diffusers ? 1 : 0].resnet_part;
    char p[320];
    vae_load_norm(w, &r->norm1, r->cin, name, part[0]);
    snprintf(p, sizeof p, "%s.%s", name, part[1]);
    vae_load_conv(w, &r->conv1, r->cout, r->cin, 3, p);
    vae_load_norm(w, &r->norm2, r->cout, name, part[2]);
    snprintf(p, sizeof p, "%s.%s", name, part[3]);
    vae_load_conv(w, &r->conv2, r->cout, r->cout, 3, p);
    if (r->cin != r->cout) {
        snprintf(p, sizeof p, "%s.%s", name, part[4]);
        vae_load_conv(w, &r->shortcut, r->cout, r->cin, 1, p);
    }
}

/* q, k, v and the output projection are 1x1 convs [C, C, 1, 1] in original files and linear
   layers [C, C] in diffusers files: need() takes either, and both are one GEMM in NHWC. */
static void vae_load_attention(weights *w, vae_attention *at, const char *name)
{
    const char *const *part = vae_names[w->diffusers ? 1 : 0].attn_part;
    char p[320];
    snprintf(p, sizeof p, "%s.to_q.weight", name);
    if (w->diffusers && !weights_find(w, p)) {
        snprintf(p, sizeof p, "%s.query.weight", name);
        if (weights_find(w, p)) part = vae_old_attn_part;
    }
    vae_load_norm(w, &at->norm, at->channels, name, part[0]);
    vae_conv *proj[4] = {&at->q, &at->k, &at->v, &at->out};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s.%s", name, part[1 + i]);
        vae_load_conv(w, proj[i], at->channels, at->channels, 1, p);
    }
}

static void vae_load_stack(weights *w, vae_stack *s, int levels, int decoder, int in_channels, int out_channels)
{
    const struct vae_names *nm = &vae_names[w->diffusers ? 1 : 0];
    const char *stack = decoder ? "decoder" : "encoder";
    int L = levels;
    char name[256];
    int first = s->level[0].res[0].cin, last = s->level[L - 1].channels;
    snprintf(name, sizeof name, "%s.conv_in", stack);
    vae_load_conv(w, &s->conv_in, first, in_channels, 3, name);
    for (int i = 0; i < L; i++) {
        vae_level *l = &s->level[i];
        int number = decoder && !w->diffusers ? L - 1 - i : i;
        for (int j = 0; j < l->resnets; j++)
            vae_load_resnet(w, &l->res[j], vae_block_name(name, sizeof name, w, decoder, 0, number, j));
        if (l->resample)
            vae_load_conv(w, &l->resample_conv, l->channels, l->channels, 3, vae_block_name(name, sizeof name, w, decoder, 1, number, 0));
    }
    snprintf(name, sizeof name, "%s.%s", stack, nm->mid[0]);
    vae_load_resnet(w, &s->mid1, name);
    snprintf(name, sizeof name, "%s.%s", stack, nm->mid[1]);
    vae_load_attention(w, &s->attn, name);
    snprintf(name, sizeof name, "%s.%s", stack, nm->mid[2]);
    vae_load_resnet(w, &s->mid2, name);
    snprintf(name, sizeof name, "%s", stack);
    vae_load_norm(w, &s->norm_out, last, name, nm->norm_out);
    snprintf(name, sizeof name, "%s.conv_out", stack);
    vae_load_conv(w, &s->conv_out, out_channels, last, 3, name);
}

/* Dimension i of t as a size: 0 (and an error) when t is missing or the size absurd. */
static int vae_dim(weights *w, const sd_tensor *t, int i)
{
    if (!t || w->failed) return 0;
    if (t->shape[i] < 1 || t->shape[i] > 65536) {
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': size %lld of dimension %d is outside 1..65536",
                         t->name, (long long)t->shape[i], i);
        return 0;
    }
    return (int)t->shape[i];
}

static const char *vae_meta(const weights *w, const char *key)
{
    for (int i = 0; i < w->nfiles; i++) {
        const char *s = sd_safetensors_meta(w->files[i], key);
        if (s) return s;
    }
    return NULL;
}


/* A comma-separated list of integers ("32,32,64,64"): how many, or -1 if malformed or too long. */
static int vae_parse_ints(const char *s, int *out, int max)
{
    int n = 0;
    char num[32];
    double v;
    for (;;) {
        size_t len = strcspn(s, ",");
        while (len && *s == ' ') { s++; len--; }
        while (len && s[len - 1] == ' ') len--;
        if (n == max || len >= sizeof num) return -1;
        memcpy(num, s, len);
        num[len] = 0;
        if (!parse_number(num, &v) || !(v > -1e9 && v < 1e9) || v != (int)v) return -1;
        out[n++] = (int)v;
        s += strcspn(s, ",");
        if (!*s++) return n;
    }
}

/* Reads the configuration from the checkpoint: levels, channels, ResNets per level and latent
   channels from the decoder's tensor shapes (the decoder is required, the encoder optional);
   GroupNorm groups and eps and the scaling factor, which shapes cannot tell, from the sd.vae.*
   metadata when present (defaults: 32, 1e-6, 0.18215). Metadata that contradicts the shapes is
   an error. */
static int vae_read_config(weights *w, sd_vae_config *c)
{
    char name[320], block[300];
    memset(c, 0, sizeof *c);
    c->norm_groups = 32;
    c->norm_eps = 1e-6f;
    c->scaling_factor = 0.18215f;
    c->z_channels = vae_dim(w, need(w, -1, -1, 3, 3, "decoder.conv_in.weight"), 1);
    c->embed_dim = vae_dim(w, need(w, -1, -1, 1, 1, "post_quant_conv.weight"), 1);
    while (c->levels < SD_VAE_MAX_LEVELS && !w->failed &&
           maybe(w, -1, -1, 3, 3, "%s.conv1.weight", vae_block_name(block, sizeof block, w, 1, 0, c->levels, 0)))
        c->levels++;
    if (c->levels == 0)   /* need() names the tensor that is not there */
        need(w, -1, -1, 3, 3, "%s.conv1.weight", vae_block_name(block, sizeof block, w, 1, 0, 0, 0));
    for (int i = 0; i < c->levels && !w->failed; i++) {
        int level = w->diffusers ? c->levels - 1 - i : i;   /* the decoder block that ends at ch[i] */
        vae_block_name(block, sizeof block, w, 1, 0, level, 0);
        c->channels[i] = vae_dim(w, need(w, -1, -1, 3, 3, "%s.conv1.weight", block), 0);
    }
    for (int j = 0; j < SD_VAE_MAX_RESNETS && !w->failed; j++) {
        snprintf(name, sizeof name, "%s.conv1.weight", vae_block_name(block, sizeof block, w, 1, 0, 0, j));
        if (!weights_find(w, name)) break;
        c->num_res_blocks = j;   /* the decoder has one more than the encoder */
    }
    c->has_encoder = weights_find(w, "encoder.conv_in.weight") != NULL;
    if (w->failed) return w->failed;

    /* metadata: these must match the shapes ... */
    static const char *const same[4] = {"sd.vae.block_out_channels", "sd.vae.num_res_blocks", "sd.vae.z_channels", "sd.vae.embed_dim"};
    const int *tensors[4] = {c->channels, &c->num_res_blocks, &c->z_channels, &c->embed_dim};
    for (int k = 0; k < 4; k++) {
        const char *s = vae_meta(w, same[k]);
        int v[SD_VAE_MAX_LEVELS + 1], n = k ? 1 : c->levels;
        if (s && (vae_parse_ints(s, v, SD_VAE_MAX_LEVELS + 1) != n || memcmp(v, tensors[k], (size_t)n * sizeof(int))))
            return w->failed = fail(w->err, SD_ERR_FORMAT, "VAE: metadata %s = '%.60s' does not match the tensors, which give %d%s%s",
                                    same[k], s, tensors[k][0], n > 1 ? ", ..." : "", k ? "" : " (block_out_channels)");
    }
    /* ... and these only metadata can give */
    static const char *const only[3] = {"sd.vae.norm_groups", "sd.vae.norm_eps", "sd.vae.scaling_factor"};
    for (int k = 0; k < 3; k++) {
        const char *s = vae_meta(w, only[k]);
        double v;
        if (!s) continue;
        if (!parse_number(s, &v) || !(v > 0.0 && v < 1e6) || (k == 0 && v != (int)v))
            return w->failed = fail(w->err, SD_ERR_FORMAT, "VAE: metadata %s = '%.60s' is not a usable number", only[k], s);
        if (k == 0) c->norm_groups = (int)v;
        else if (k == 1) c->norm_eps = (float)v;
        else c->scaling_factor = (float)v;
    }
    return SD_OK;
}

/* The VAE of w (prefix and name map already chosen): configuration, then every weight. */
static int vae_load(sd_vae *v, weights *w)
{
    sd_vae_config c;
    int rc = vae_read_config(w, &c);
    if (rc) return rc;
    if ((rc = vae_describe(v, &c, w->err))) return w->failed = rc;
    const sd_vae_config *k = &v->config;
    vae_load_stack(w, &v->decoder, k->levels, 1, k->z_channels, 3);
    vae_load_conv(w, &v->post_quant_conv, k->z_channels, k->embed_dim, 1, "post_quant_conv");
    if (k->has_encoder) {
        vae_load_stack(w, &v->encoder, k->levels, 0, 3, 2 * k->z_channels);
        vae_load_conv(w, &v->quant_conv, 2 * k->embed_dim, 2 * k->z_channels, 1, "quant_conv");
    }
    return w->failed;
}

SD_API int sd_vae_load(sd_vae **out, const sd_safetensors *file, sd_arena *a, sd_error *err)
{
    /* where the VAE is: prefix and name map, told apart by the decoder's first mid-block conv */
    static const struct { const char *prefix; int diffusers; } layouts[4] = {
        {"first_stage_model.", 0}, {"", 0}, {"", 1}, {"first_stage_model.", 1}};
    static const char *const probe[2] = {"decoder.mid.block_1.conv1.weight", "decoder.mid_block.resnets.0.conv1.weight"};
    weights w;
    int k;
    if (!out || !file || !a) return fail(err, SD_ERR_ARG, "sd_vae_load: NULL argument");
    *out = NULL;
    memset(&w, 0, sizeof w);
    w.files[0] = file;
    w.nfiles = 1;
    w.err = err;
    for (k = 0; k < 4; k++) {
        w.prefix = layouts[k].prefix;
        w.diffusers = layouts[k].diffusers;
        if (weights_find(&w, probe[w.diffusers])) break;
    }
    if (k == 4)
        return fail(err, SD_ERR_MISSING, "no VAE in this file: found neither 'first_stage_model.%s' (single-file checkpoint) nor '%s' (diffusers vae/ file)", probe[0], probe[1]);
    size_t mark = sd_arena_mark(a);
    sd_vae *v = (sd_vae *)sd_arena_alloc(a, sizeof *v, err);
    if (!v) return SD_ERR_MEMORY;
    int rc = vae_load(v, &w);
    if (rc) { sd_arena_reset(a, mark); return rc; }
    *out = v;
    return SD_OK;
}

SD_API const sd_vae_config *sd_vae_get_config(const sd_vae *vae) { return vae ? &vae->config : NULL; }

SD_API void sd_vae_set_scaling_factor(sd_vae *vae, float scaling_factor)
{
    if (vae && scaling_factor > 0.0f) vae->config.scaling_factor = scaling_factor;
}

/* ---- forward passes ---- */

/* Per-stage activations for tests and for looking inside: stage is the diffusers module whose
   output x is ("decoder.mid_block", "encoder.down_blocks.1", "quant_conv", ...), NHWC [h, w, c]. */
typedef void (*vae_probe)(void *user, const char *stage, const float *x, int h, int w, int c);

/* One pass of the encoder or the decoder. The activation stream is x, which every block reads
   and overwrites, and the only thing a block hands to the next; s, t and u are scratch, n holds
   GroupNorm statistics. Every block first states how many floats it needs in each: a planning
   pass (planning = 1, no memory) runs the same code only to find the largest sum, so that the
   arena size comes from the code that then uses it, and a real pass takes that one block once
   and cannot run out of memory halfway. Each block lays the block out again, x at its start and
   the others right after x's part, so that the plan is the largest block, not the sum of the
   largest of each part (which occur at different blocks).
   The decoder's finest levels hold the memory: there the convolutions run in bands of rows
   (GroupNorm-SiLU applied as each band's input is gathered, outputs written in place), the
   finest level recomputes each ResNet's first conv instead of storing it, and the upsampling
   into a level whose first ResNet changes the channel count is never held whole (see
   vae_upsample_resnet and vae_finest_upsample_resnet). So a 512x512 decode in SD holds one
   128-channel 512x512 tensor (128 MiB) and bands. */
typedef struct vae_run {
    sd_pool *pool;
    int groups;
    float eps;
    float *base;                  /* the block */
    size_t cap;                   /* its floats: the largest block's need */
    float *x, *s, *t, *u, *n;     /* this block's parts of it, in this order */
    size_t size[5];               /* and their floats */
    int planning;
    vae_probe probe;
    void *user;
} vae_run;

static int vae_needs5(vae_run *r, size_t x, size_t s, size_t t, size_t u, size_t n)
{
    size_t want[5] = {x, s, t, u, n}, at = 0;
    float **part[5] = {&r->x, &r->s, &r->t, &r->u, &r->n};
    for (int i = 0; i < 5; i++) {
        r->size[i] = want[i];
        *part[i] = r->planning ? NULL : r->base + at;
        at += (want[i] + 15) & ~(size_t)15;   /* each part 64-byte aligned, as arena blocks are */
    }
    if (r->planning && at > r->cap) r->cap = at;
    SD_ASSERT(r->planning || at <= r->cap);
    return r->planning;
}

static int vae_needs(vae_run *r, size_t x, size_t s, size_t t, size_t u) { return vae_needs5(r, x, s, t, u, 0); }

static void vae_show(vae_run *r, const char *stage, const float *x, int H, int W, int C)
{
    if (!r->planning && r->probe) r->probe(r->user, stage, x, H, W, C);
}

/* ---- bands: GroupNorm statistics gathered piecewise, inputs gathered a band of rows at a time ---- */

/* GroupNorm statistics of a tensor [pixels, C] that arrives in pieces (bands of rows, always in
   the same order): per-chunk float sums as in groupnorm (each channel shifted by the first value
   of its group, for a stable one-pass variance), added up per group in double in chunk order.
   The pieces depend only on the shape, so the statistics do not depend on the thread count; a
   tensor given whole gets exactly groupnorm's. finish turns them into the per-channel mean,
   scale (gamma · rstd) and offset (beta) that vae_fill applies. */
typedef struct vae_stats {
    int C, cg;
    int64_t pixels;
    float *shift, *mean, *scale, *offset;   /* [C] each */
    double *sum, *sq;                       /* [C / cg] each */
} vae_stats;

#define VAE_STATS_FLOATS(C) (8 * (size_t)(C))

static void vae_stats_init(vae_stats *st, float *mem, int C, int groups)
{
    st->C = C;
    st->cg = C / groups;
    st->pixels = 0;
    st->shift = mem;
    st->mean = mem + C;
    st->scale = mem + 2 * (size_t)C;
    st->offset = mem + 3 * (size_t)C;
    st->sum = (double *)(void *)(mem + 4 * (size_t)C);   /* 16·C bytes in: 8-byte aligned */
    st->sq = st->sum + groups;
    for (int g = 0; g < groups; g++) st->sum[g] = st->sq[g] = 0.0;
}

static void vae_stats_add(vae_run *r, vae_stats *st, const float *x, int pixels)
{
    sd_pool *pool = r->pool;
    int C = st->C, cg = st->cg;
    size_t room = pool->scratch_floats / (2 * (size_t)C);
    groupnorm_job j;
    if (pixels <= 0) return;
    SD_ASSERT(room >= 1);
    if (st->pixels == 0)
        for (int c = 0; c < C; c++) st->shift[c] = x[(c / cg) * cg];
    memset(&j, 0, sizeof j);
    j.nchunks = (pixels + 63) / 64 < (int64_t)room ? (pixels + 63) / 64 : (int)room;
    j.chunk = (pixels + j.nchunks - 1) / j.nchunks;
    j.nchunks = (pixels + j.chunk - 1) / j.chunk;
    j.x = x; j.HW = pixels; j.C = C;
    j.shift = st->shift;
    j.part = pool->scratch[0];
    pool_run(pool, groupnorm_sums, &j, j.nchunks);
    for (int g = 0; g < C / cg; g++) {
        double s = st->sum[g], q = st->sq[g];
        for (int ch = 0; ch < j.nchunks; ch++) {
            const float *ps = j.part + (size_t)ch * 2 * C;
            for (int c = g * cg; c < (g + 1) * cg; c++) { s += ps[c]; q += ps[C + c]; }
        }
        st->sum[g] = s;
        st->sq[g] = q;
    }
    st->pixels += pixels;
}

static void vae_stats_finish(vae_run *r, vae_stats *st, const sd_tensor *gamma, const sd_tensor *beta)
{
    int C = st->C, cg = st->cg;
    tensor_floats(st->scale, gamma, 0, C);
    tensor_floats(st->offset, beta, 0, C);
    for (int g = 0; g < C / cg; g++) {
        double n = (double)st->pixels * cg, mean = st->sum[g] / n, var = st->sq[g] / n - mean * mean;
        float rstd = (float)(1.0 / sqrt((var > 0 ? var : 0) + r->eps));
        float m = (float)(mean + st->shift[(size_t)g * cg]);
        for (int c = g * cg; c < (g + 1) * cg; c++) { st->scale[c] *= rstd; st->mean[c] = m; }
    }
}

/* The statistics of a whole tensor, normalisation parameters ready. */
static void vae_stats_of(vae_run *r, vae_stats *st, float *mem, const float *x, int pixels, int C, const vae_norm *norm)
{
    vae_stats_init(st, mem, C, r->groups);
    vae_stats_add(r, st, x, pixels);
    vae_stats_finish(r, st, norm->w, norm->b);
}

/* A band of a 3x3 convolution's input: `rows` rows of W + 2 pixels (a zero pixel at each end),
   image rows y0 .. y0 + rows - 1, zero rows outside 0 .. H - 1. Row y comes from src, whose
   first row is image row src_y0, through GroupNorm-SiLU when st is given. One task per row. */
typedef struct vae_fill_job {
    float *dst;
    const float *src;
    int src_y0, y0, H, W, C;
    const vae_stats *st;
} vae_fill_job;

static void vae_fill_row(void *arg, int task, int thread)
{
    const vae_fill_job *j = (const vae_fill_job *)arg;
    int y = j->y0 + task, C = j->C, W = j->W;
    size_t row = (size_t)(W + 2) * C;
    float *dst = j->dst + (size_t)task * row;
    (void)thread;
    if (y < 0 || y >= j->H) { memset(dst, 0, row * sizeof(float)); return; }
    memset(dst, 0, (size_t)C * sizeof(float));
    memset(dst + (size_t)(W + 1) * C, 0, (size_t)C * sizeof(float));
    const float *src = j->src + (size_t)(y - j->src_y0) * W * C;
    for (int x = 0; x < W; x++) {
        const float *in = src + (size_t)x * C;
        float *out = dst + (size_t)(x + 1) * C;
        if (!j->st) { memcpy(out, in, (size_t)C * sizeof(float)); continue; }
        const float *mean = j->st->mean, *scale = j->st->scale, *offset = j->st->offset;
        int c = 0;   /* as groupnorm_apply, with SiLU */
        for (; c + VF_WIDTH <= C; c += VF_WIDTH)
            vf_store(out + c, vf_silu(vf_fma(vf_sub(vf_load(in + c), vf_load(mean + c)), vf_load(scale + c), vf_load(offset + c))));
        if (c < C)
            vf_store_n(out + c, vf_silu(vf_fma(vf_sub(vf_load_n(in + c, C - c), vf_load_n(mean + c, C - c)), vf_load_n(scale + c, C - c),
                                               vf_load_n(offset + c, C - c))), C - c);
    }
}

static void vae_fill(vae_run *r, float *dst, const float *src, int src_y0, int y0, int rows, int H, int W, int C,
                     const vae_stats *st)
{
    vae_fill_job j = {dst, src, src_y0, y0, H, W, C, st};
    pool_run(r->pool, vae_fill_row, &j, rows);
}

#define VAE_BAND_ROWS 16   /* output rows per band of a banded convolution */

static int vae_band(int H) { return H < VAE_BAND_ROWS ? H : VAE_BAND_ROWS; }

/* Floats of t that vae_conv_bands takes. */
static size_t vae_bands_floats(int H, int W, int cin, int cout)
{
    size_t R = (size_t)vae_band(H);
    return (R + 2) * (W + 2) * cin + R * W * cout;
}

/* dst [H, W, cout] = conv3x3(silu(gn(src))) (+ res), GroupNorm-SiLU by `in` (none if NULL), a
   band of VAE_BAND_ROWS output rows at a time: the band's input rows and their one-row border
   are gathered (normalised) into t, the conv runs unpadded into the band's output in t, which
   goes to dst, added to res's rows when res is given (res may be dst). out, if given, gathers
   the output's statistics; dst may be NULL when only they are wanted. dst may be src when
   cout <= cin: the input rows a band overwrites were all gathered before (the border row above
   the next band is carried over in t rather than read again). */
static void vae_conv_bands(vae_run *r, float *dst, const float *src, int H, int W, int cin, const vae_stats *in,
                           const vae_conv *conv, int cout, const float *res, vae_stats *out)
{
    int R = vae_band(H);
    size_t row = (size_t)(W + 2) * cin, orow = (size_t)W * cout;
    float *u = r->t, *o = r->t + (size_t)(R + 2) * row;
    SD_ASSERT(r->planning || vae_bands_floats(H, W, cin, cout) <= r->size[2]);   /* the caller's t */
    SD_ASSERT(dst != src || cout <= cin);
    for (int y0 = 0; y0 < H; y0 += R) {
        int rows = H - y0 < R ? H - y0 : R;
        if (y0 == 0) vae_fill(r, u, src, 0, -1, rows + 2, H, W, cin, in);
        else {
            memmove(u, u + (size_t)R * row, 2 * row * sizeof(float));   /* rows y0 - 1 and y0 */
            vae_fill(r, u + 2 * row, src, 0, y0 + 1, rows, H, W, cin, in);
        }
        conv2d(r->pool, o, u, 1, rows + 2, W + 2, cin, conv->w, conv->b, cout, 3, 1, 0, 0);
        if (out) vae_stats_add(r, out, o, rows * W);
        if (!dst) continue;
        float *d = dst + (size_t)y0 * orow;
        if (res && res != dst) memcpy(d, res + (size_t)y0 * orow, (size_t)rows * orow * sizeof(float));
        if (res) add(r->pool, d, o, (size_t)rows * orow);
        else memcpy(d, o, (size_t)rows * orow * sizeof(float));
    }
}

/* y [H, W, N] (+)= the 3x3 conv (stride 1, zero padding 1) of x [H, W, cb] through input
   channels c0 .. c0 + cb - 1 of w [N, cin, 3, 3]; b (the bias, or NULL) added at the end. Slices
   added up in order are conv2d's sum over input channels, rounded after each slice rather than
   each K block of 128 channels. The packed kernel whatever the size. */
static void vae_conv_slice(sd_pool *pool, float *y, const float *x, int H, int W, int cb, const sd_tensor *w, int c0,
                           int cin, const sd_tensor *b, int N, int accumulate)
{
    sd_tensor view = tensor_from(w, (uint64_t)c0 * 9);   /* (a block type: c0 a multiple of 32, so whole blocks) */
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.pool = pool; j.y = y; j.ldy = N; j.x = x; j.M = H * W; j.N = N;
    j.w = &view; j.b = b; j.accumulate = accumulate;
    j.conv = 1; j.H = H; j.W = W; j.Cin = cb; j.Ho = H; j.Wo = W; j.k = 3; j.s = 1; j.pad = 1;
    j.row_len = (int64_t)cin * 9; j.depth = cb; j.taps = 9;
    gemm_staged(&j, gemm_packed_go);
}

/* x ← x + conv2(silu(gn2(conv1(silu(gn1(x)))))), the skip through shortcut when channels change. */
static void vae_resnet_forward(vae_run *r, const vae_resnet *b, int H, int W)
{
    int HW = H * W, cin = b->cin, cout = b->cout;
    size_t P = (size_t)HW;
    if (vae_needs(r, P * (size_t)(cin > cout ? cin : cout), P * cout, P * cout, 0)) return;
    float *h = r->s;   /* where gn1's output goes */
    if (cin != cout) {
        /* the skip is a 1x1 conv of x: take it first, into s, and x is free for gn1 */
        linear(r->pool, r->s, r->x, HW, cout, cin, b->shortcut.w, b->shortcut.b);
        h = r->x;
    }
    groupnorm(r->pool, h, r->x, 1, HW, cin, r->groups, b->norm1.w, b->norm1.b, r->eps, 1);
    conv2d(r->pool, r->t, h, 1, H, W, cin, b->conv1.w, b->conv1.b, cout, 3, 1, 1, 1);
    groupnorm(r->pool, r->t, r->t, 1, HW, cout, r->groups, b->norm2.w, b->norm2.b, r->eps, 1);
    conv2d(r->pool, h, r->t, 1, H, W, cout, b->conv2.w, b->conv2.b, cout, 3, 1, 1, 1);
    add(r->pool, r->x, r->s, P * cout);   /* input + conv2, or conv2 + shortcut */
}

/* x ← x + proj_out(softmax(q kᵀ / √C) v) with q, k, v = 1x1 projections of gn(x): every one of
   the H·W positions attends to all of them, one head as wide as the channels. */
static void vae_attention_forward(vae_run *r, const vae_attention *a, int H, int W)
{
    int HW = H * W, C = a->channels;
    size_t n = (size_t)HW * C;
    if (vae_needs(r, n, n, 3 * n, 0)) return;
    float *q = r->t, *k = r->t + n, *v = r->t + 2 * n;
    groupnorm(r->pool, r->s, r->x, 1, HW, C, r->groups, a->norm.w, a->norm.b, r->eps, 0);
    linear(r->pool, q, r->s, HW, C, C, a->q.w, a->q.b);
    linear(r->pool, k, r->s, HW, C, C, a->k.w, a->k.b);
    linear(r->pool, v, r->s, HW, C, C, a->v.w, a->v.b);
    attention(r->pool, r->s, C, q, C, k, C, v, C, 1, HW, HW, 1, C, 0);
    linear(r->pool, r->t, r->s, HW, C, C, a->out.w, a->out.b);
    add(r->pool, r->x, r->t, n);
}

static void vae_mid_forward(vae_run *r, const vae_stack *s, int H, int W)
{
    vae_resnet_forward(r, &s->mid1, H, W);
    vae_attention_forward(r, &s->attn, H, W);
    vae_resnet_forward(r, &s->mid2, H, W);
}

/* Encoder's Downsample2D: a stride-2 3x3 conv after padding one zero row and column at the end
   only (LDM's asymmetric (0, 1, 0, 1) pad): [H, W] → [H/2, W/2]. */
static void vae_downsample_forward(vae_run *r, const vae_conv *conv, int H, int W, int C)
{
    size_t n = (size_t)(H / 2) * (W / 2) * C;
    if (vae_needs(r, (size_t)H * W * C, n, 0, 0)) return;
    conv2d(r->pool, r->s, r->x, 1, H, W, C, conv->w, conv->b, C, 3, 2, 0, 1);
    memcpy(r->x, r->s, n * sizeof(float));
}

/* The 3x3 conv (zero padding 1) of an image upsampled 2x (nearest) gives its output pixels
   (2i + a, 2j + b) of each phase (a, b) as a 2x2 conv of the low-resolution image: along each
   axis, phase 0 sees kernel tap 0 on low-resolution row i - 1 and taps 1 + 2 on row i, phase 1
   sees taps 0 + 1 on row i and tap 2 on row i + 1. So 16 multiply-adds per output and input
   channel instead of 36: the same sums, rounded in another order. A phase's taps are summed
   in f32 into the arena: wp [n, cin, 2, 2] from weight rows n0 .. n0 + n - 1 of w [*, cin, 3, 3]
   (any float dtype), one task per row (its 9·cin weights in the thread's scratch). */
typedef struct vae_phase_job {
    sd_pool *pool;
    float *wp;
    const sd_tensor *w;
    int n0, cin, a, b;
} vae_phase_job;

static void vae_phase_row(void *arg, int o, int thread)
{
    static const int first[2][2] = {{0, 1}, {0, 2}}, last[2][2] = {{0, 2}, {1, 2}};   /* [phase][tap] */
    const vae_phase_job *j = (const vae_phase_job *)arg;
    int cin = j->cin, a = j->a, b = j->b;
    float *row = j->pool->scratch[thread];
    tensor_floats(row, j->w, (size_t)(j->n0 + o) * cin * 9, cin * 9);
    for (int c = 0; c < cin; c++) {
        const float *k = row + (size_t)c * 9;
        float *d = j->wp + ((size_t)o * cin + c) * 4;
        for (int dy = 0; dy < 2; dy++)
            for (int dx = 0; dx < 2; dx++) {
                float s = 0.0f;
                for (int ky = first[a][dy]; ky <= last[a][dy]; ky++)
                    for (int kx = first[b][dx]; kx <= last[b][dx]; kx++) s += k[ky * 3 + kx];
                d[dy * 2 + dx] = s;
            }
    }
}

static void vae_phase_weights(sd_pool *pool, float *wp, const sd_tensor *w, int n0, int n, int cin, int a, int b)
{
    vae_phase_job j = {pool, wp, w, n0, cin, a, b};
    SD_ASSERT(9 * (size_t)cin <= pool->scratch_floats);
    pool_run(pool, vae_phase_row, &j, n);
}

static sd_tensor vae_f32_tensor(const float *data, int64_t d0, int64_t d1, int k, int ndim)
{
    sd_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "f32 weights";
    t.dtype = SD_F32;
    t.ndim = ndim;
    t.shape[0] = d0;
    if (ndim == 4) { t.shape[1] = d1; t.shape[2] = t.shape[3] = k; }
    t.data = data;
    t.nbytes = (size_t)d0 * (ndim == 4 ? (size_t)d1 * k * k : 1) * sizeof(float);
    return t;
}

/* A 1-D weight or bias of which only elements first .. first + count - 1 are used: a view of
   them, or, for a block type where `first` may fall inside a block, their values as f32 in
   buf (count floats). */
static sd_tensor vae_rows_of(const sd_tensor *t, int64_t first, int64_t count, float *buf)
{
    if (!dtype_is_block(t->dtype)) return tensor_rows(t, first, count);
    tensor_floats(buf, t, (size_t)first, (int)count);
    return vae_f32_tensor(buf, count, 0, 0, 1);
}

/* Phase (a, b) of the upsampled conv for `rows` low-resolution rows: xb is their band as vae_fill
   makes it (rows + 2 rows of W + 2 pixels, C channels, zeros around), wp the phase's taps
   [N, C, 2, 2]; output pixel (i, j) of the phase goes to y + (i·W + j)·ldy. */
static void vae_phase_conv(sd_pool *pool, float *y, int ldy, const float *xb, int rows, int W, int C, int a, int b,
                           const sd_tensor *wp, const sd_tensor *bias, int N)
{
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.pool = pool; j.y = y; j.ldy = ldy; j.x = xb + ((size_t)a * (W + 2) + b) * C; j.M = rows * W; j.N = N;
    j.w = wp; j.b = bias;
    j.conv = 1; j.H = rows + 2; j.W = W + 2; j.Cin = C; j.Ho = rows; j.Wo = W; j.k = 2; j.s = 1; j.pad = 0;
    j.row_len = (int64_t)C * 4; j.depth = C; j.taps = 4;
    gemm_run(&j);
}

/* Decoder's Upsample2D: nearest-neighbour 2x, then a 3x3 conv: [H, W] → [2H, 2W], as the four
   phases' 2x2 convs of the input (vae_phase_weights), which moves to s first since x receives
   the output. One phase at a time (its taps in t), in bands of input rows gathered with their
   border into u; a band's outputs go to t and from there to every other pixel of x. */
static void vae_upsample_forward(vae_run *r, const vae_conv *conv, int H, int W, int C)
{
    int Rl = vae_band(2 * H) / 2;
    size_t n = (size_t)H * W * C, band = (size_t)(Rl + 2) * (W + 2) * C, wn = (size_t)C * C * 4, px = (size_t)C * sizeof(float);
    if (vae_needs(r, 4 * n, n, wn + (size_t)Rl * W * C, band)) return;
    float *wp = r->t, *o = r->t + wn;
    sd_tensor w = vae_f32_tensor(wp, C, C, 2, 4);
    memcpy(r->s, r->x, n * sizeof(float));
    for (int p = 0; p < 4; p++) {
        int a = p >> 1, b = p & 1;
        vae_phase_weights(r->pool, wp, conv->w, 0, C, C, a, b);
        for (int y0 = 0; y0 < H; y0 += Rl) {
            int rows = H - y0 < Rl ? H - y0 : Rl;
            vae_fill(r, r->u, r->s, 0, y0 - 1, rows + 2, H, W, C, NULL);
            vae_phase_conv(r->pool, o, C, r->u, rows, W, C, a, b, &w, conv->b, C);
            for (int i = 0; i < rows; i++) {
                float *d = r->x + ((size_t)(2 * (y0 + i) + a) * 2 * W + b) * C;
                for (int x = 0; x < W; x++) memcpy(d + (size_t)2 * x * C, o + ((size_t)i * W + x) * C, px);
            }
        }
    }
}

/* The decoder's ResNets in bands (vae_conv_bands): GroupNorm-SiLU is applied as each conv's input
   band is gathered, so no normalised copy is ever stored. With the same channels: x, and conv1's
   output in s. When the channels shrink: the shortcut into s, conv1 in place in x (which becomes
   cout wide), conv2 in place plus s. recompute (the finest level, same channels): conv1's output
   is not stored but made twice, band by band, first for its statistics, then as conv2's input
   (vae_stream_resnet); x alone is held, at the price of one more conv per ResNet. */
static void vae_resnet_recompute(vae_run *r, const vae_resnet *b, int H, int W);

static void vae_resnet_bands(vae_run *r, const vae_resnet *b, int H, int W, int recompute)
{
    int cin = b->cin, cout = b->cout, HW = H * W;
    size_t P = (size_t)HW;
    vae_stats g1, g2;
    if (cout > cin) { vae_resnet_forward(r, b, H, W); return; }   /* (not in SD's decoder) */
    if (recompute && cin == cout) { vae_resnet_recompute(r, b, H, W); return; }
    if (vae_needs5(r, P * cin, P * cout, vae_bands_floats(H, W, cin, cout), 0, 2 * VAE_STATS_FLOATS(cin))) return;
    vae_stats_of(r, &g1, r->n, r->x, HW, cin, &b->norm1);
    vae_stats_init(&g2, r->n + VAE_STATS_FLOATS(cin), cout, r->groups);
    if (cin != cout) {
        linear(r->pool, r->s, r->x, HW, cout, cin, b->shortcut.w, b->shortcut.b);
        vae_conv_bands(r, r->x, r->x, H, W, cin, &g1, &b->conv1, cout, NULL, &g2);
        vae_stats_finish(r, &g2, b->norm2.w, b->norm2.b);
        vae_conv_bands(r, r->x, r->x, H, W, cout, &g2, &b->conv2, cout, r->s, NULL);   /* conv2 + shortcut */
    } else {
        vae_conv_bands(r, r->s, r->x, H, W, cin, &g1, &b->conv1, cout, NULL, &g2);
        vae_stats_finish(r, &g2, b->norm2.w, b->norm2.b);
        vae_conv_bands(r, r->x, r->s, H, W, cout, &g2, &b->conv2, cout, r->x, NULL);   /* input + conv2 */
    }
}

/* The shortcut's 1x1 conv folded into the upsampling conv before it: Ws·(Wup ∗ X + bup) + bs =
   (Ws·Wup) ∗ X + (Ws·bup + bs). wf [cout, cin, 3, 3], bf [cout]; ws: cout·cin floats of scratch
   (Ws as f32). The product (SD: 256 x 512 x 4608) goes in tasks of VAE_FOLD_COLS columns of wf,
   each adding up over c in the same order, so that the bits do not depend on the threads. */
#define VAE_FOLD_COLS 256

typedef struct vae_fold_job {
    sd_pool *pool;
    float *wf;
    const float *ws;
    const sd_tensor *wu;
    int cin, cout, K;
} vae_fold_job;

static void vae_fold_cols(void *arg, int task, int thread)
{
    const vae_fold_job *j = (const vae_fold_job *)arg;
    int k0 = task * VAE_FOLD_COLS, n = j->K - k0 < VAE_FOLD_COLS ? j->K - k0 : VAE_FOLD_COLS;
    float *seg = j->pool->scratch[thread];
    for (int o = 0; o < j->cout; o++) memset(j->wf + (size_t)o * j->K + k0, 0, (size_t)n * sizeof(float));
    for (int c = 0; c < j->cin; c++) {
        tensor_floats(seg, j->wu, (size_t)c * j->K + k0, n);
        for (int o = 0; o < j->cout; o++) {
            float *d = j->wf + (size_t)o * j->K + k0;
            vfloat a = vf_set1(j->ws[(size_t)o * j->cin + c]);
            int k = 0;
            for (; k + VF_WIDTH <= n; k += VF_WIDTH) vf_store(d + k, vf_fma(a, vf_load(seg + k), vf_load(d + k)));
            if (k < n) vf_store_n(d + k, vf_fma(a, vf_load_n(seg + k, n - k), vf_load_n(d + k, n - k)), n - k);
        }
    }
}

static void vae_fold_shortcut(sd_pool *pool, float *wf, float *bf, float *ws, const vae_conv *up, const vae_conv *sc, int cin, int cout)
{
    int K = cin * 9;
    vae_fold_job j = {pool, wf, ws, up->w, cin, cout, K};
    tensor_floats(ws, sc->w, 0, cout * cin);
    for (int o = 0; o < cout; o++) bf[o] = tensor_get(sc->b, (size_t)o);
    for (int c = 0; c < cin; c++) {
        float bu = tensor_get(up->b, (size_t)c);
        for (int o = 0; o < cout; o++) bf[o] += ws[(size_t)o * cin + c] * bu;
    }
    pool_run(pool, vae_fold_cols, &j, (K + VAE_FOLD_COLS - 1) / VAE_FOLD_COLS);
}

/* Decoder's Upsample2D and the ResNet after it when that ResNet changes the channel count, at a
   level below the finest (the finest: vae_finest_upsample_resnet): x [H, W, cin] → x [2H, 2W, cout]
   without ever holding the upsampled image U [2H, 2W, cin] (SD's 512x512 image: 512 channels at
   256x256, 128 MiB) nor conv1's input, at the price of the folded shortcut's arithmetic (below),
   about 2% of the decode. x moves to s. U is made
   a slice of whole GroupNorm groups (32 channels) at a time into t, in bands of input rows
   gathered into u, by the four phases' 2x2 convs (vae_phase_weights, the slice's taps in u); the
   slice is normalised with its own groups' statistics and its part of conv1 added into conv1's
   output in x (vae_conv_slice: the sum conv2d would make). The shortcut, a 1x1 conv of U, is
   folded into the upsampling conv (vae_fold_shortcut, then its phases), so the last pass needs
   only s: conv2 in bands, written in place, plus the folded conv's phases. */
static void vae_upsample_resnet(vae_run *r, const vae_conv *upc, const vae_resnet *b, int H, int W)
{
    int cin = b->cin, cout = b->cout, H2 = 2 * H, W2 = 2 * W, R = vae_band(H2), Rl = R / 2, cg = cin / r->groups;
    int cb = cg >= 32 ? cg : 32 / cg * cg, kb = cb < cin ? cb : cin;
    size_t P2 = (size_t)H2 * W2, n = (size_t)H * W * cin, row_out = (size_t)(W2 + 2) * cout, orow = (size_t)W2 * cout;
    size_t cc = (size_t)cout * cin, band = (size_t)(Rl + 2) * (W + 2) * cin;
    size_t slice = P2 * kb, last = (size_t)(R + 2) * row_out + (size_t)R * orow + (size_t)Rl * orow;
    size_t folded = 9 * cc + 16 * cc + (size_t)cout;   /* the folded shortcut's weights, their phases, its bias */
    size_t tb = slice > last + folded ? slice : last + folded;
    size_t ub = band + 9 * (size_t)cin + 16 * (size_t)kb * cin + (size_t)Rl * W2 * kb;
    vae_stats g1, g2;
    if (vae_needs5(r, P2 * cout, n, tb, ub, VAE_STATS_FLOATS(cin) + VAE_STATS_FLOATS(cout))) return;
    float *X = r->s, *Y = r->x, *U = r->t, *xb = r->u, *row = xb + band, *wq = row + 9 * (size_t)cin, *ob = wq + 16 * (size_t)kb * cin;
    sd_tensor pt[4];
    memcpy(X, r->x, n * sizeof(float));
    for (int c0 = 0; c0 < cin; c0 += cb) {
        int k = cin - c0 < cb ? cin - c0 : cb;
        for (int p = 0; p < 4; p++) {
            float *wp = wq + (size_t)p * 4 * k * cin;
            vae_phase_weights(r->pool, wp, upc->w, c0, k, cin, p >> 1, p & 1);
            pt[p] = vae_f32_tensor(wp, k, cin, 2, 4);
        }
        /* row (9·cin floats) holds the slices of block-typed vectors */
        sd_tensor bias = vae_rows_of(upc->b, c0, k, row);
        sd_tensor gw = vae_rows_of(b->norm1.w, c0, k, row + k), gb = vae_rows_of(b->norm1.b, c0, k, row + 2 * k);
        for (int y0 = 0; y0 < H; y0 += Rl) {   /* U's channels c0 .. c0 + k - 1, output rows 2·y0 .. */
            int rows = H - y0 < Rl ? H - y0 : Rl;
            vae_fill(r, xb, X, 0, y0 - 1, rows + 2, H, W, cin, NULL);
            for (int a = 0; a < 2; a++) {   /* phase (a, b) to every other pixel of ob's rows, then to U's rows 2·i + a */
                for (int bb = 0; bb < 2; bb++) vae_phase_conv(r->pool, ob + (size_t)bb * k, 2 * k, xb, rows, W, cin, a, bb, &pt[2 * a + bb], &bias, k);
                for (int i = 0; i < rows; i++)
                    memcpy(U + (size_t)(2 * (y0 + i) + a) * W2 * k, ob + (size_t)i * W2 * k, (size_t)W2 * k * sizeof(float));
            }
        }
        vae_stats_init(&g1, r->n, k, k / cg);
        vae_stats_add(r, &g1, U, (int)P2);
        vae_stats_finish(r, &g1, &gw, &gb);
        groupnorm_job j;   /* silu(gn1) in place, with groupnorm's own apply step */
        memset(&j, 0, sizeof j);
        j.y = U; j.x = U; j.HW = (int)P2; j.C = k; j.with_silu = 1;
        j.chunk = 256;
        j.nchunks = (int)((P2 + 255) / 256);
        j.shift = g1.mean; j.scale = g1.scale; j.offset = g1.offset;
        pool_run(r->pool, groupnorm_apply, &j, j.nchunks);
        vae_conv_slice(r->pool, Y, U, H2, W2, k, b->conv1.w, c0, cin, c0 + k == cin ? b->conv1.b : NULL, cout, c0 > 0);
    }
    vae_stats_of(r, &g2, r->n + VAE_STATS_FLOATS(cin), Y, (int)P2, cout, &b->norm2);
    float *hn = r->t, *o = hn + (size_t)(R + 2) * row_out, *os = o + (size_t)R * orow;
    float *wf = os + (size_t)Rl * orow, *wp = wf + 9 * cc, *bf = wp + 16 * cc;
    vae_fold_shortcut(r->pool, wf, bf, wp, upc, &b->shortcut, cin, cout);   /* (wp: Ws until the phases are made) */
    sd_tensor fw = vae_f32_tensor(wf, cout, cin, 3, 4), fb = vae_f32_tensor(bf, cout, 0, 0, 1);
    for (int p = 0; p < 4; p++) {
        vae_phase_weights(r->pool, wp + (size_t)p * 4 * cc, &fw, 0, cout, cin, p >> 1, p & 1);
        pt[p] = vae_f32_tensor(wp + (size_t)p * 4 * cc, cout, cin, 2, 4);
    }
    for (int y0 = 0; y0 < H2; y0 += R) {
        int rows = H2 - y0 < R ? H2 - y0 : R, yl = y0 / 2, rl = rows / 2;   /* (H2 and R are even) */
        if (y0 == 0) vae_fill(r, hn, Y, 0, -1, rows + 2, H2, W2, cout, &g2);
        else {
            memmove(hn, hn + (size_t)R * row_out, 2 * row_out * sizeof(float));
            vae_fill(r, hn + 2 * row_out, Y, 0, y0 + 1, rows, H2, W2, cout, &g2);
        }
        conv2d(r->pool, o, hn, 1, rows + 2, W2 + 2, cout, b->conv2.w, b->conv2.b, cout, 3, 1, 0, 0);
        vae_fill(r, xb, X, 0, yl - 1, rl + 2, H, W, cin, NULL);
        for (int a = 0; a < 2; a++) {   /* conv2 + shortcut, the shortcut's output rows 2·i + a */
            for (int bb = 0; bb < 2; bb++) vae_phase_conv(r->pool, os + (size_t)bb * cout, 2 * cout, xb, rl, W, cin, a, bb, &pt[2 * a + bb], &fb, cout);
            for (int i = 0; i < rl; i++) add(r->pool, o + (size_t)(2 * i + a) * orow, os + (size_t)i * orow, orow);
        }
        memcpy(Y + (size_t)y0 * orow, o, (size_t)rows * orow * sizeof(float));
    }
}

/* A ResNet at the finest level, x → x + conv2(silu(gn2(conv1(silu(gn1(x)))))), holding x and
   bands only: conv1's output is never stored. Each GroupNorm needs its whole input's statistics
   before any of it can be normalised, so a pipeline over bands of rows runs three times: pass 0
   gathers gn1's statistics, pass 1 makes conv1's output band by band for gn2's, pass 2 makes it
   once more and writes the output. Within a pass every row is made once: the windows of
   normalised input (ua) and of normalised conv1 output (hn) carry their last two rows over to
   the next band. The price is one more conv1 per ResNet.
   The same pipeline runs the upsampling into the finest level fused with that level's first
   ResNet when it changes the channel count (vae_finest_upsample_resnet): there the input rows
   are those of U, the upsampled image after its conv, which is never held whole either (SD: 256
   channels at 512x512, 256 MiB): each pass makes U's rows again from x (the four phases' 2x2
   convs, vae_phase_weights), at the price of two more upsampling convs and one more conv1 (in
   SD about 17% more decode time than holding X and conv1's output whole, 192 MiB), and the
   output is U's 1x1 shortcut, written as soon as a band's U rows exist, plus conv2. That output
   grows into the memory of its input: the input X is moved to the end of the output's block,
   the output is written from the start, and the block is as long as it must be for a written
   row never to be an X row that a later band still reads (vae_stream_xoff). In SD X is half the
   output and fits behind it. */
#define VAE_STREAM_PIXELS 4096   /* output pixels per band: GEMMs of thousands of rows, bands of a few MiB */

/* Rows per band: even (a band's new U rows are then whole X rows), 2 to 16. */
static int vae_stream_rows(int H, int W)
{
    int R = (VAE_STREAM_PIXELS / W) & ~1;
    R = R < 2 ? 2 : R > 16 ? 16 : R;
    return R < H ? R : H;
}

typedef struct vae_stream {
    const vae_conv *upc;          /* the upsampling conv, or NULL: the input is the output's size */
    const vae_resnet *b;
    int H, W, cin, cout, R;       /* the output's size and channels, rows per band */
    float *X, *Y;                 /* the input, the output (the same, or X behind Y) */
    size_t xoff;                  /* where X starts in the output's block */
    float *xb, *ob, *ur;          /* X rows with their border; one phase's U rows; new U rows, raw, then conv1's and conv2's rows */
    float *ua, *hn;               /* the windows: silu(gn1(input)) and silu(gn2(conv1)) rows, padded */
    sd_tensor pt[4];              /* the upsampling conv's phases, [cin, cin, 2, 2] each */
    vae_stats g1, g2;
} vae_stream;

/* The band schedule, the same in every pass and in vae_stream_xoff: the band of output rows
   y0 .. y0 + rows - 1 needs conv1 rows up to *hend - 1 and input rows up to *uend - 1, rows H
   and H + 1 being the zero border. */
static int vae_stream_band(int y0, int R, int H, int *hend, int *uend)
{
    int rows = H - y0 < R ? H - y0 : R;
    *hend = y0 + rows + 1;
    *uend = (*hend < H ? *hend : H) + 1;
    return rows;
}

/* Floats of the output's block before X when the input is upsampled: the output's own, or more
   where a band would otherwise write over X rows still to be read (not in SD). */
static size_t vae_stream_xoff(int H, int W, int cin, int cout, int R)
{
    int hend, uend;
    size_t lrow = (size_t)(W / 2) * cin, orow = (size_t)W * cout, n = (size_t)(H / 2) * lrow, out = (size_t)H * orow;
    size_t xoff = out > n ? out - n : 0;
    for (int y0 = 0; y0 < H; y0 += R) {
        vae_stream_band(y0, R, H, &hend, &uend);
        int u = uend < H ? uend : H;   /* the output rows up to u are written, X is read from row u / 2 - 1 on */
        if (u < H && (size_t)u * orow > (size_t)(u / 2 - 1) * lrow + xoff) xoff = (size_t)u * orow - (size_t)(u / 2 - 1) * lrow;
    }
    return xoff;
}

/* U rows u0 .. u1 - 1 (even bounds: X rows u0 / 2 .. u1 / 2 - 1) into f->ur, raw. */
static void vae_stream_upsample(vae_run *r, vae_stream *f, int u0, int u1)
{
    int l0 = u0 / 2, n = (u1 - u0) / 2, cin = f->cin, Wx = f->W / 2;
    size_t urow = (size_t)f->W * cin;
    vae_fill(r, f->xb, f->X, 0, l0 - 1, n + 2, f->H / 2, Wx, cin, NULL);
    for (int a = 0; a < 2; a++) {   /* phase (a, b) to every other pixel of ob's rows, then to U's rows 2·i + a */
        for (int b = 0; b < 2; b++)
            vae_phase_conv(r->pool, f->ob + (size_t)b * cin, 2 * cin, f->xb, n, Wx, cin, a, b, &f->pt[2 * a + b], f->upc->b, cin);
        for (int i = 0; i < n; i++) memcpy(f->ur + (size_t)(2 * i + a) * urow, f->ob + (size_t)i * urow, urow * sizeof(float));
    }
}

/* One pass of the pipeline: 0 gathers gn1's statistics, 1 gn2's, 2 writes the output. */
static void vae_stream_pass(vae_run *r, vae_stream *f, int pass)
{
    const vae_resnet *b = f->b;
    int H = f->H, W = f->W, cin = f->cin, cout = f->cout;
    size_t irow = (size_t)W * cin, orow = (size_t)W * cout, prow = (size_t)(W + 2) * cin, hrow = (size_t)(W + 2) * cout;
    int made_u = 0, made_h = 0;   /* input and conv1 rows made so far */
    int ua0 = -1, ua1 = 0;        /* ua holds rows ua0 .. ua1 - 1 of silu(gn1(input)), hn rows hn0 .. hn1 - 1 */
    int hn0 = -1, hn1 = 0;
    vae_fill(r, f->ua, NULL, 0, -1, 1, H, W, cin, NULL);   /* the zero rows above */
    vae_fill(r, f->hn, NULL, 0, -1, 1, H, W, cout, NULL);
    for (int y0 = 0; y0 < H; y0 += f->R) {
        int hend, uend, rows = vae_stream_band(y0, f->R, H, &hend, &uend), u1 = uend < H ? uend : H, h1 = hend < H ? hend : H;
        if (pass > 0) {   /* drop the rows conv1 has no more use for */
            memmove(f->ua, f->ua + (size_t)(made_h - 1 - ua0) * prow, (size_t)(ua1 - made_h + 1) * prow * sizeof(float));
            ua0 = made_h - 1;
        }
        const float *in = f->upc ? f->ur : f->X + (size_t)made_u * irow;   /* input rows made_u .. u1 - 1 */
        if (f->upc && u1 > made_u) {
            f->ob = f->ua + (size_t)(ua1 - ua0) * prow;   /* (the window's free rows) */
            vae_stream_upsample(r, f, made_u, u1);
            if (pass == 2) {   /* the shortcut straight into its output rows: no band reads X there any more */
                SD_ASSERT(u1 == H || (size_t)u1 * orow <= f->xoff + (size_t)(u1 / 2 - 1) * (W / 2) * cin);
                linear(r->pool, f->Y + (size_t)made_u * orow, f->ur, (u1 - made_u) * W, cout, cin, b->shortcut.w, b->shortcut.b);
            }
        }
        if (pass == 0) vae_stats_add(r, &f->g1, in, (u1 - made_u) * W);
        if (pass > 0 && uend > ua1) {
            vae_fill(r, f->ua + (size_t)(ua1 - ua0) * prow, in, made_u, ua1, uend - ua1, H, W, cin, &f->g1);
            ua1 = uend;
        }
        made_u = u1;
        if (pass == 0) continue;
        if (h1 > made_h) {   /* conv1 rows made_h .. h1 - 1 from input rows made_h - 1 .. h1, into ur */
            conv2d(r->pool, f->ur, f->ua + (size_t)(made_h - 1 - ua0) * prow, 1, h1 - made_h + 2, W + 2, cin,
                   b->conv1.w, b->conv1.b, cout, 3, 1, 0, 0);
            if (pass == 1) vae_stats_add(r, &f->g2, f->ur, (h1 - made_h) * W);
        }
        if (pass == 2) {   /* conv2 of hn's rows y0 - 1 .. y0 + rows, added to the shortcut or the input */
            memmove(f->hn, f->hn + (size_t)(y0 - 1 - hn0) * hrow, (size_t)(hn1 - y0 + 1) * hrow * sizeof(float));
            hn0 = y0 - 1;
            vae_fill(r, f->hn + (size_t)(hn1 - hn0) * hrow, f->ur, made_h, hn1, hend - hn1, H, W, cout, &f->g2);
            hn1 = hend;
            conv2d(r->pool, f->ur, f->hn, 1, rows + 2, W + 2, cout, b->conv2.w, b->conv2.b, cout, 3, 1, 0, 0);
            add(r->pool, f->Y + (size_t)y0 * orow, f->ur, (size_t)rows * orow);
        }
        made_h = h1;
    }
}

/* The pipeline's buffers, then its three passes: output [H, W, cout] in x from x, which is
   [H / 2, W / 2, cin] when upc is given, else [H, W, cin = cout]. */
static void vae_stream_resnet(vae_run *r, const vae_conv *upc, const vae_resnet *b, int H, int W)
{
    int cin = b->cin, cout = b->cout, R = vae_stream_rows(H, W), up = upc != NULL;
    size_t n = (size_t)(H >> up) * (W >> up) * cin, xoff = up ? vae_stream_xoff(H, W, cin, cout, R) : 0;
    size_t nur = (size_t)(R + 1) * W * cout, nua = (size_t)(R + 3) * (W + 2) * cin, nhn = (size_t)(R + 2) * (W + 2) * cout;
    size_t nxb = up ? (size_t)(R / 2 + 3) * (W / 2 + 2) * cin : 0, npw = up ? 16 * (size_t)cin * cin : 0;
    vae_stream f;
    SD_ASSERT(!up || (H % 2 == 0 && W % 2 == 0 && R % 2 == 0));
    SD_ASSERT(up || cin == cout);
    if (up && nur < (size_t)(R + 2) * W * cin) nur = (size_t)(R + 2) * W * cin;   /* a band's new U rows */
    if (vae_needs5(r, xoff + n, 0, nur + nua + nhn, nxb + npw, VAE_STATS_FLOATS(cin) + VAE_STATS_FLOATS(cout))) return;
    memset(&f, 0, sizeof f);
    f.upc = upc; f.b = b; f.H = H; f.W = W; f.cin = cin; f.cout = cout; f.R = R; f.xoff = xoff;
    f.Y = r->x;
    f.X = r->x + xoff;
    f.ur = r->t; f.ua = f.ur + nur; f.hn = f.ua + nua;
    if (up) {
        float *pw = r->u + nxb;
        f.xb = r->u;
        memmove(f.X, r->x, n * sizeof(float));
        for (int p = 0; p < 4; p++) {
            vae_phase_weights(r->pool, pw + (size_t)p * 4 * cin * cin, upc->w, 0, cin, cin, p >> 1, p & 1);
            f.pt[p] = vae_f32_tensor(pw + (size_t)p * 4 * cin * cin, cin, cin, 2, 4);
        }
    }
    vae_stats_init(&f.g1, r->n, cin, r->groups);
    vae_stats_init(&f.g2, r->n + VAE_STATS_FLOATS(cin), cout, r->groups);
    vae_stream_pass(r, &f, 0);
    vae_stats_finish(r, &f.g1, b->norm1.w, b->norm1.b);
    vae_stream_pass(r, &f, 1);
    vae_stats_finish(r, &f.g2, b->norm2.w, b->norm2.b);
    vae_stream_pass(r, &f, 2);
}

static void vae_resnet_recompute(vae_run *r, const vae_resnet *b, int H, int W) { vae_stream_resnet(r, NULL, b, H, W); }

/* The upsampling x [H, W, cin] → [2H, 2W, cin] into the finest level and its first ResNet,
   which changes the channel count, as one (see vae_stream_resnet). */
static void vae_finest_upsample_resnet(vae_run *r, const vae_conv *upc, const vae_resnet *b, int H, int W)
{
    vae_stream_resnet(r, upc, b, 2 * H, 2 * W);
}

/* conv_in: x [H, W, cin] → x [H, W, cout], the input moved to s first. */
static void vae_conv_in(vae_run *r, const vae_conv *conv, int H, int W, int cin, int cout)
{
    size_t P = (size_t)H * W;
    if (vae_needs(r, P * (cin > cout ? cin : cout), P * cin, 0, 0)) return;
    memcpy(r->s, r->x, P * cin * sizeof(float));
    conv2d(r->pool, r->x, r->s, 1, H, W, cin, conv->w, conv->b, cout, 3, 1, 1, 1);
}

/* GroupNorm-SiLU, conv_out: x [H, W, cin] → x [H, W, cout] (cout <= cin), in bands, in place. */
static void vae_conv_out(vae_run *r, const vae_stack *st, int H, int W, int cin, int cout)
{
    vae_stats g;
    if (vae_needs5(r, (size_t)H * W * cin, 0, vae_bands_floats(H, W, cin, cout), 0, VAE_STATS_FLOATS(cin))) return;
    vae_stats_of(r, &g, r->n, r->x, H * W, cin, &st->norm_out);
    vae_conv_bands(r, r->x, r->x, H, W, cin, &g, &st->conv_out, cout, NULL, NULL);
}

/* Decoder input: latents [e, h, w] (NCHW) → post_quant_conv (1x1) into x. The latents are what
   diffusers' vae.decode receives: the diffusion latents already divided by scaling_factor. */
static void vae_post_quant(vae_run *r, const sd_vae *v, const float *z, int h, int w)
{
    int e = v->config.embed_dim, zc = v->config.z_channels;
    size_t P = (size_t)h * w;
    if (vae_needs(r, P * zc, 0, P * e, 0)) return;
    nchw_to_nhwc(r->pool, r->t, z, 1, e, (int)P);
    linear(r->pool, r->x, r->t, h * w, zc, e, v->post_quant_conv.w, v->post_quant_conv.b);
}

/* Decoder output: x [H, W, 3] → image [3, H, W] (NCHW). */
static void vae_write_image(vae_run *r, float *image, int H, int W)
{
    if (vae_needs(r, (size_t)H * W * 3, 0, 0, 0)) return;
    nhwc_to_nchw(r->pool, image, r->x, 1, 3, H * W);
}

/* Whether the decoder's level i gets its input from vae_upsample_resnet or, the finest,
   vae_finest_upsample_resnet: when its first ResNet changes the channel count. */
static int vae_fused_upsample(const sd_vae *v, int i)
{
    const vae_level *l = &v->decoder.level[i];
    return i > 0 && l->res[0].cin != l->res[0].cout;
}

/* Latent [e, h, w] → image [3, f·h, f·w]. */
static void vae_decoder_forward(vae_run *r, const sd_vae *v, const float *z, int h, int w, float *image)
{
    const vae_stack *d = &v->decoder;
    const sd_vae_config *c = &v->config;
    int L = c->levels, H = h, W = w;
    char stage[48];
    vae_post_quant(r, v, z, h, w);
    vae_show(r, "post_quant_conv", r->x, H, W, c->z_channels);
    vae_conv_in(r, &d->conv_in, H, W, c->z_channels, d->mid1.cin);
    vae_show(r, "decoder.conv_in", r->x, H, W, d->mid1.cin);
    vae_mid_forward(r, d, H, W);
    vae_show(r, "decoder.mid_block", r->x, H, W, d->mid2.cout);
    for (int i = 0; i < L; i++) {
        const vae_level *l = &d->level[i];
        int j = 0, finest = i == L - 1;
        if (vae_fused_upsample(v, i)) {   /* level i - 1's upsampling, with ResNet 0 */
            if (finest) vae_finest_upsample_resnet(r, &d->level[i - 1].resample_conv, &l->res[0], H / 2, W / 2);
            else vae_upsample_resnet(r, &d->level[i - 1].resample_conv, &l->res[0], H / 2, W / 2);
            j = 1;
        }
        for (; j < l->resnets; j++) vae_resnet_bands(r, &l->res[j], H, W, finest);
        if (l->resample) {
            if (!vae_fused_upsample(v, i + 1)) vae_upsample_forward(r, &l->resample_conv, H, W, l->channels);
            H *= 2;
            W *= 2;
        }
        snprintf(stage, sizeof stage, "decoder.up_blocks.%d", i);
        if (!l->resample || !vae_fused_upsample(v, i + 1)) vae_show(r, stage, r->x, H, W, l->channels);   /* (a fused one is never whole) */
    }
    vae_conv_out(r, d, H, W, c->channels[0], 3);
    vae_write_image(r, image, H, W);
}

/* Encoder input: image [3, H, W] (NCHW) → x [H, W, 3]. */
static void vae_read_image(vae_run *r, const float *image, int H, int W)
{
    if (vae_needs(r, (size_t)H * W * 3, 0, 0, 0)) return;
    nchw_to_nhwc(r->pool, r->x, image, 1, 3, H * W);
}

/* quant_conv (1x1): x [h, w, 2z] → t [h, w, 2e], then moments [2e, h, w] (NCHW). */
static void vae_quant(vae_run *r, const sd_vae *v, int h, int w, float *moments)
{
    int e2 = 2 * v->config.embed_dim, z2 = 2 * v->config.z_channels;
    size_t P = (size_t)h * w;
    if (vae_needs(r, P * z2, 0, P * e2, 0)) return;
    linear(r->pool, r->t, r->x, h * w, e2, z2, v->quant_conv.w, v->quant_conv.b);
    vae_show(r, "quant_conv", r->t, h, w, e2);
    nhwc_to_nchw(r->pool, moments, r->t, 1, e2, (int)P);
}

/* Image [3, H, W] → moments [2e, H/f, W/f]. */
static void vae_encoder_forward(vae_run *r, const sd_vae *v, const float *image, int H, int W, float *moments)
{
    const vae_stack *e = &v->encoder;
    const sd_vae_config *c = &v->config;
    int L = c->levels;
    char stage[48];
    vae_read_image(r, image, H, W);
    vae_conv_in(r, &e->conv_in, H, W, 3, c->channels[0]);
    vae_show(r, "encoder.conv_in", r->x, H, W, c->channels[0]);
    for (int i = 0; i < L; i++) {
        const vae_level *l = &e->level[i];
        for (int j = 0; j < l->resnets; j++) vae_resnet_forward(r, &l->res[j], H, W);
        if (l->resample) {
            vae_downsample_forward(r, &l->resample_conv, H, W, l->channels);
            H /= 2;
            W /= 2;
        }
        snprintf(stage, sizeof stage, "encoder.down_blocks.%d", i);
        vae_show(r, stage, r->x, H, W, l->channels);
    }
    vae_mid_forward(r, e, H, W);
    vae_show(r, "encoder.mid_block", r->x, H, W, e->mid2.cout);
    vae_conv_out(r, e, H, W, c->channels[L - 1], 2 * c->z_channels);
    vae_show(r, "encoder.conv_out", r->x, H, W, 2 * c->z_channels);
    vae_quant(r, v, H, W, moments);
}

/* ---- memory: plan, then allocate once ---- */

/* Whether a pass whose finest level is H x W pixels keeps every count inside the kernels' int
   arguments and every buffer inside size_t (each buffer holds at most H·W·max channels floats). */
static int vae_size_ok(const sd_vae_config *c, int64_t H, int64_t W)
{
    int64_t maxc = 3;
    for (int i = 0; i < c->levels; i++) if (c->channels[i] > maxc) maxc = c->channels[i];
    if (2 * c->z_channels > maxc) maxc = 2 * c->z_channels;
    if (H < 1 || W < 1 || H > INT32_MAX || W > INT32_MAX || H * W > INT32_MAX) return 0;
    return (uint64_t)(H * W) * (uint64_t)maxc <= (uint64_t)(SIZE_MAX / (8 * sizeof(float)));
}

static int vae_scale(const sd_vae_config *c) { return 1 << (c->levels - 1); }

static void vae_plan_decoder(vae_run *r, const sd_vae *v, int h, int w)
{
    memset(r, 0, sizeof *r);
    r->planning = 1;
    r->groups = v->config.norm_groups;
    r->eps = v->config.norm_eps;
    vae_decoder_forward(r, v, NULL, h, w, NULL);
}

static void vae_plan_encoder(vae_run *r, const sd_vae *v, int H, int W)
{
    memset(r, 0, sizeof *r);
    r->planning = 1;
    r->groups = v->config.norm_groups;
    r->eps = v->config.norm_eps;
    vae_encoder_forward(r, v, NULL, H, W, NULL);
}

/* Turns a planned run into a real one: its block from the arena. On a measuring pool it stays a
   planning pass, which runs no kernel. */
static int vae_start(vae_run *r, const sd_vae *v, sd_pool *pool, sd_arena *a, sd_error *err)
{
    if (!(r->base = arena_floats(a, r->cap, err))) return SD_ERR_MEMORY;
    r->x = r->base;
    r->planning = pool->measure;
    r->pool = pool;
    r->groups = v->config.norm_groups;
    r->eps = v->config.norm_eps;
    return SD_OK;
}

/* Latent sizes a decode accepts: the image must fit the kernels' int sizes. */
static int vae_decode_args(const sd_vae_config *c, int h, int w, sd_error *err)
{
    int64_t f = vae_scale(c);
    if (!vae_size_ok(c, f * h, f * w))
        return fail(err, SD_ERR_ARG, "VAE decode: latent %d x %d gives an image outside 1 .. 2^31 - 1 pixels", h, w);
    return SD_OK;
}

static int vae_encode_args(const sd_vae_config *c, int H, int W, sd_error *err)
{
    int f = vae_scale(c);
    if (!c->has_encoder) return fail(err, SD_ERR_UNSUPPORTED, "VAE encode: this file has no encoder weights");
    if (H < f || W < f || H % f || W % f || !vae_size_ok(c, H, W))
        return fail(err, SD_ERR_ARG, "VAE encode: image %d x %d: height and width must be positive multiples of %d (and fit in 2^31 - 1 pixels)", H, W, f);
    return SD_OK;
}

/* The decoder run with a probe (NULL for none): the public call and the tests' window into it. */
static int vae_decode_run(const sd_vae *v, const float *z, int h, int w, float *image, sd_pool *pool,
                          vae_probe probe, void *user, sd_arena *a, sd_error *err)
{
    vae_run r;
    int rc;
    if (!v || !z || !image || !pool || !a) return fail(err, SD_ERR_ARG, "sd_vae_decode: NULL argument");
    if ((rc = vae_decode_args(&v->config, h, w, err))) return rc;
    size_t mark = sd_arena_mark(a);
    vae_plan_decoder(&r, v, h, w);
    if ((rc = vae_start(&r, v, pool, a, err))) { sd_arena_reset(a, mark); return rc; }
    r.probe = probe;
    r.user = user;
    vae_decoder_forward(&r, v, z, h, w, image);
    sd_arena_reset(a, mark);
    return SD_OK;
}

static int vae_encode_run(const sd_vae *v, const float *image, int H, int W, float *moments, sd_pool *pool,
                          vae_probe probe, void *user, sd_arena *a, sd_error *err)
{
    vae_run r;
    int rc;
    if (!v || !image || !moments || !pool || !a) return fail(err, SD_ERR_ARG, "sd_vae_encode: NULL argument");
    if ((rc = vae_encode_args(&v->config, H, W, err))) return rc;
    size_t mark = sd_arena_mark(a);
    vae_plan_encoder(&r, v, H, W);
    if ((rc = vae_start(&r, v, pool, a, err))) { sd_arena_reset(a, mark); return rc; }
    r.probe = probe;
    r.user = user;
    vae_encoder_forward(&r, v, image, H, W, moments);
    sd_arena_reset(a, mark);
    return SD_OK;
}

SD_API int sd_vae_decode(const sd_vae *vae, const float *latents, int h, int w, float *image,
                         sd_pool *pool, sd_arena *a, sd_error *err)
{
    weights_use u;
    int rc = weights_begin(&u, pool, vae ? vae->decoder.conv_in.w : NULL, "sd_vae_decode", err);
    return rc ? rc : weights_end(&u, vae_decode_run(vae, latents, h, w, image, pool, NULL, NULL, a, err), err);
}

SD_API int sd_vae_encode(const sd_vae *vae, const float *image, int height, int width,
                         float *moments, sd_pool *pool, sd_arena *a, sd_error *err)
{
    weights_use u;
    int rc = weights_begin(&u, pool, vae ? vae->encoder.conv_in.w : NULL, "sd_vae_encode", err);
    return rc ? rc : weights_end(&u, vae_encode_run(vae, image, height, width, moments, pool, NULL, NULL, a, err), err);
}

SD_API void sd_vae_posterior(const float *moments, int channels, int h, int w,
                             float *mean, float *logvar, float *std)
{
    size_t n = (size_t)channels * (size_t)h * (size_t)w;
    for (size_t i = 0; i < n; i++) {
        float lv = moments[n + i];
        lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
        if (mean) mean[i] = moments[i];
        if (logvar) logvar[i] = lv;
        if (std) std[i] = expf(0.5f * lv);
    }
}

SD_API void sd_vae_sample(const float *mean, const float *std, const float *noise, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) out[i] = mean[i] + std[i] * noise[i];
}

/* ---- tiled decoding ---- */
/* A large latent is decoded in overlapping square tiles, each an ordinary decode. Where tiles
   overlap, their images are mixed with weights that ramp linearly across the shared part and add
   up to one at every pixel, so no edge shows; memory is that of one tile. (Each tile's GroupNorms
   see only the tile, so colours can drift a little between distant tiles.) */

/* Tiles along an axis of n latent pixels, each `tile` long (tile <= n), neighbours overlapping
   by at least `overlap`; the spare room is spread evenly. */
static int vae_tile_count(int n, int tile, int overlap)
{
    return n <= tile ? 1 : (n - overlap + (tile - overlap) - 1) / (tile - overlap);
}

static int vae_tile_start(int i, int count, int n, int tile)
{
    return count == 1 ? 0 : (int)((int64_t)i * (n - tile) / (count - 1));
}

/* The unnormalised weight of tile i (of count, starting at image pixel `start`, len pixels) at
   pixel p: a ramp of `ramp` pixels at each edge that has a neighbour, 1 elsewhere. Never 0. */
static float vae_tile_ramp(int i, int count, int64_t p, int64_t start, int64_t len, int64_t ramp)
{
    float w = 1.0f;
    if (ramp > 0 && i > 0) w = fminf(w, ((float)(p - start) + 0.5f) / (float)ramp);
    if (ramp > 0 && i < count - 1) w = fminf(w, ((float)(start + len - p) - 0.5f) / (float)ramp);
    return w;
}

/* weights[0 .. f·tile) of tile i along one axis: its ramp divided by the sum of the ramps of all
   tiles covering each pixel (its neighbours within reach), so that the tiles add up to one. */
static void vae_tile_weights(float *weights, int i, int count, int n, int tile, int overlap, int f)
{
    int64_t len = (int64_t)f * tile, ramp = (int64_t)f * overlap, start = (int64_t)f * vae_tile_start(i, count, n, tile);
    for (int64_t p = start; p < start + len; p++) {
        float own = vae_tile_ramp(i, count, p, start, len, ramp), sum = own;
        for (int j = i - 1; j >= 0 && (int64_t)f * vae_tile_start(j, count, n, tile) + len > p; j--)
            sum += vae_tile_ramp(j, count, p, (int64_t)f * vae_tile_start(j, count, n, tile), len, ramp);
        for (int j = i + 1; j < count && (int64_t)f * vae_tile_start(j, count, n, tile) <= p; j++)
            sum += vae_tile_ramp(j, count, p, (int64_t)f * vae_tile_start(j, count, n, tile), len, ramp);
        weights[p - start] = own / sum;
    }
}

static int vae_tiled_args(const sd_vae_config *c, int h, int w, int tile, int overlap, sd_error *err)
{
    int64_t f = vae_scale(c);
    if (tile < 1 || overlap < 0 || overlap >= tile)
        return fail(err, SD_ERR_ARG, "VAE tiled decode: tile %d, overlap %d: need tile >= 1 and 0 <= overlap < tile", tile, overlap);
    if (h < 1 || w < 1 || !vae_size_ok(c, f * h, f * w))   /* also bounds the caller's image */
        return fail(err, SD_ERR_ARG, "VAE tiled decode: latent %d x %d gives an image outside 1 .. 2^31 - 1 pixels", h, w);
    return SD_OK;
}

/* Decodes every tile into img and adds it, weighted, into image. */
static void vae_tiles(vae_run *r, const sd_vae *v, const float *z, int h, int w, int th, int tw, int overlap,
                      float *zt, float *img, float *wy, float *wx, float *image)
{
    int e = v->config.embed_dim, f = vae_scale(&v->config);
    int ny = vae_tile_count(h, th, overlap), nx = vae_tile_count(w, tw, overlap);
    size_t H = (size_t)f * h, W = (size_t)f * w, tH = (size_t)f * th, tW = (size_t)f * tw;
    memset(image, 0, 3 * H * W * sizeof(float));
    for (int ty = 0; ty < ny; ty++) {
        int sy = vae_tile_start(ty, ny, h, th);
        vae_tile_weights(wy, ty, ny, h, th, overlap, f);
        for (int tx = 0; tx < nx; tx++) {
            int sx = vae_tile_start(tx, nx, w, tw);
            vae_tile_weights(wx, tx, nx, w, tw, overlap, f);
            for (int c = 0; c < e; c++)
                for (int y = 0; y < th; y++)
                    memcpy(zt + ((size_t)c * th + y) * tw, z + ((size_t)c * h + sy + y) * w + sx, (size_t)tw * sizeof(float));
            vae_decoder_forward(r, v, zt, th, tw, img);
            for (int c = 0; c < 3; c++)
                for (size_t y = 0; y < tH; y++) {
                    float *dst = image + ((size_t)c * H + (size_t)f * sy + y) * W + (size_t)f * sx;
                    const float *src = img + ((size_t)c * tH + y) * tW;
                    for (size_t x = 0; x < tW; x++) dst[x] += wy[y] * wx[x] * src[x];
                }
        }
    }
}

/* The tiles' buffers (latent tile, image tile, row and column weights), then one decode's. */
static int vae_decode_tiled_run(const sd_vae *v, const float *z, int h, int w, int tile, int overlap, float *image,
                                sd_pool *pool, sd_arena *a, sd_error *err)
{
    vae_run r;
    int rc;
    if (!v || !z || !image || !pool || !a) return fail(err, SD_ERR_ARG, "sd_vae_decode_tiled: NULL argument");
    if ((rc = vae_tiled_args(&v->config, h, w, tile, overlap, err))) return rc;
    int e = v->config.embed_dim, f = vae_scale(&v->config);
    int th = h < tile ? h : tile, tw = w < tile ? w : tile;
    size_t tH = (size_t)f * th, tW = (size_t)f * tw, mark = sd_arena_mark(a);
    float *zt = arena_floats(a, (size_t)e * th * tw, err), *img = zt ? arena_floats(a, 3 * tH * tW, err) : NULL;
    float *wy = img ? arena_floats(a, tH, err) : NULL, *wx = wy ? arena_floats(a, tW, err) : NULL;
    vae_plan_decoder(&r, v, th, tw);
    if (!wx || (rc = vae_start(&r, v, pool, a, err))) { sd_arena_reset(a, mark); return SD_ERR_MEMORY; }
    if (!pool->measure) vae_tiles(&r, v, z, h, w, th, tw, overlap, zt, img, wy, wx, image);
    sd_arena_reset(a, mark);
    return SD_OK;
}

/* The arena bytes of the three VAE calls: their dry runs on a weightless description. */
enum { VAE_DECODE, VAE_DECODE_TILED, VAE_ENCODE };
static size_t vae_plan(const sd_vae_config *c, int call, int h, int w, int tile, int overlap)
{
    sd_vae v;
    sd_arena m;
    sd_pool pool;
    float *x = dummy_floats();
    int rc;
    if (!c || vae_describe(&v, c, NULL)) return 0;
    arena_measure(&m);
    pool_measure(&pool);
    rc = call == VAE_DECODE ? vae_decode_run(&v, x, h, w, x, &pool, NULL, NULL, &m, NULL)
       : call == VAE_ENCODE ? vae_encode_run(&v, x, h, w, x, &pool, NULL, NULL, &m, NULL)
                            : vae_decode_tiled_run(&v, x, h, w, tile, overlap, x, &pool, &m, NULL);
    return rc ? 0 : m.peak;
}

SD_API size_t sd_vae_decode_arena_bytes(const sd_vae_config *c, int h, int w) { return vae_plan(c, VAE_DECODE, h, w, 0, 0); }
SD_API size_t sd_vae_encode_arena_bytes(const sd_vae_config *c, int height, int width) { return vae_plan(c, VAE_ENCODE, height, width, 0, 0); }
SD_API size_t sd_vae_decode_tiled_arena_bytes(const sd_vae_config *c, int h, int w, int tile, int overlap)
{
    return vae_plan(c, VAE_DECODE_TILED, h, w, tile, overlap);
}

SD_API int sd_vae_decode_tiled(const sd_vae *vae, const float *latents, int h, int w, int tile,
                               int overlap, float *image, sd_pool *pool, sd_arena *a, sd_error *err)
{
    weights_use u;
    int rc = weights_begin(&u, pool, vae ? vae->decoder.conv_in.w : NULL, "sd_vae_decode_tiled", err);
    return rc ? rc : weights_end(&u, vae_decode_tiled_run(vae, latents, h, w, tile, overlap, image, pool, a, err), err);
}


/* ---- 8b. TAESD (tiny autoencoder) ----------------------------------------------------------- */
/* TAESD (Ollin Boer Bohan, madebyollin/taesd) is an autoencoder distilled to reproduce the SD
   VAE's latent space with a fraction of its work: every layer is a 3x3 convolution of 64
   channels with ReLU, grouped into residual Blocks, relu(conv(relu(conv(relu(conv(x))))) + x);
   no normalisation, no attention. The encoder halves the size three times with stride-2 convs,
   the decoder doubles it three times with nearest-neighbour upsampling followed by a conv. Its
   latents are the pipeline's latents themselves (scaling factor 1): the UNet's output decodes
   as it is. The decoder first squashes its input softly into ±3 (tanh(z/3)·3), since latents
   far outside what TAESD was trained on would otherwise blow up. Both halves work on images in
   [0, 1]; diffusers' AutoencoderTiny wraps them for [-1, 1] ((x + 1)/2 in, 2y − 1 out), and so
   does this section, so that TAESD can stand in for the VAE. */

/* The layers of taesd.py's two nn.Sequential stacks, in order: entry i is the layer whose
   tensors the original files name "i.*", and diffusers "encoder.layers.i.*" / "decoder.layers.
   (i − 1).*" (the decoder's Clamp, entry 0, is a module of the original stack only: diffusers'
   DecoderTiny applies it inline, so its decoder indices are one lower). */
enum { TAESD_CLAMP, TAESD_CONV, TAESD_RELU, TAESD_BLOCK, TAESD_DOWN, TAESD_UP, TAESD_UP_CONV };
#define TAESD_ENCODER_LAYERS 15
#define TAESD_DECODER_LAYERS 20
static const unsigned char taesd_encoder_kinds[TAESD_ENCODER_LAYERS] = {
    TAESD_CONV, TAESD_BLOCK,                                    /* 0-1: RGB → C, at the image size */
    TAESD_DOWN, TAESD_BLOCK, TAESD_BLOCK, TAESD_BLOCK,          /* 2-5: stride-2 conv, 1/2 size */
    TAESD_DOWN, TAESD_BLOCK, TAESD_BLOCK, TAESD_BLOCK,          /* 6-9: 1/4 */
    TAESD_DOWN, TAESD_BLOCK, TAESD_BLOCK, TAESD_BLOCK,          /* 10-13: 1/8 */
    TAESD_CONV};                                                /* 14: C → latent channels */
static const unsigned char taesd_decoder_kinds[TAESD_DECODER_LAYERS] = {
    TAESD_CLAMP, TAESD_CONV, TAESD_RELU,                        /* 0-2: tanh(z/3)·3, latent → C, ReLU */
    TAESD_BLOCK, TAESD_BLOCK, TAESD_BLOCK,                      /* 3-5: at the latent size */
    TAESD_UP, TAESD_UP_CONV, TAESD_BLOCK, TAESD_BLOCK, TAESD_BLOCK,   /* 6-10: nearest 2x, conv (no bias), x2 */
    TAESD_UP, TAESD_UP_CONV, TAESD_BLOCK, TAESD_BLOCK, TAESD_BLOCK,   /* 11-15: x4 */
    TAESD_UP, TAESD_UP_CONV, TAESD_BLOCK,                       /* 16-18: x8 */
    TAESD_CONV};                                                /* 19: C → RGB */

/* A plain conv's weights in conv[0] (the stride-2 and upsampling ones have no bias); a Block's
   three convs (conv.0, conv.2, conv.4 of its nn.Sequential) in conv[0..2]. */
typedef struct taesd_layer { vae_conv conv[3]; } taesd_layer;

struct sd_taesd {
    sd_taesd_info info;
    taesd_layer encoder[TAESD_ENCODER_LAYERS], decoder[TAESD_DECODER_LAYERS];
};

/* ---- loading: which file holds which half, in which layout ---- */

/* The layout of the half (decoder or encoder) that `f` was given for: 1 original, 2 diffusers, or
   minus an SD_ERR_* code with an error that says what the file is instead. */
static int taesd_layout(const sd_safetensors *f, int decoder, sd_error *err)
{
    static const char *const vae_keys[4] = {"decoder.conv_in.weight", "encoder.conv_in.weight",
                                            "first_stage_model.decoder.conv_in.weight", "first_stage_model.encoder.conv_in.weight"};
    const char *half = decoder ? "decoder" : "encoder";
    const sd_tensor *t0 = sd_safetensors_find(f, "0.weight");
    int enc = t0 && t0->ndim == 4 && t0->shape[1] == 3;   /* a conv from RGB: the encoder's first layer */
    int dec = !enc && (t0 || sd_safetensors_find(f, "1.weight"));
    if (sd_safetensors_find(f, decoder ? "decoder.layers.0.weight" : "encoder.layers.0.weight")) return 2;
    if (decoder ? dec : enc) return 1;
    if (decoder ? enc : dec)
        return -fail(err, SD_ERR_ARG, "TAESD: the file given as the %s is a TAESD %s (it has '%s', the %s's first conv)", half,
                    decoder ? "encoder" : "decoder", decoder ? "0.weight" : "1.weight", decoder ? "encoder" : "decoder");
    if (sd_safetensors_find(f, decoder ? "encoder.layers.0.weight" : "decoder.layers.0.weight"))
        return -fail(err, SD_ERR_MISSING, "TAESD: this diffusers AutoencoderTiny file has no %s ('%s.layers.0.weight')", half, half);
    for (int i = 0; i < 4; i++)
        if (sd_safetensors_find(f, vae_keys[i]))
            return -fail(err, SD_ERR_ARG, "TAESD: the file given as the %s is a VAE (AutoencoderKL: '%s'), not TAESD; sd_vae_load reads it",
                        half, vae_keys[i]);
    return -fail(err, SD_ERR_MISSING, "TAESD: no %s in this file: neither '%s' (taesd_%s.safetensors) nor '%s.layers.0.weight' "
                "(diffusers' AutoencoderTiny)", half, decoder ? "1.weight" : "0.weight", half, half);
}

/* Every weight of one stack, by walking its layer list; C is the layers' width, lat the latent
   channels. Names are "i.*" in the original files, "encoder.layers.i.*" / "decoder.layers.(i−1).*"
   in diffusers' (the prefix and index shift are set here). */
static void taesd_load_stack(weights *w, taesd_layer *layer, int decoder, int C, int lat)
{
    const unsigned char *kinds = decoder ? taesd_decoder_kinds : taesd_encoder_kinds;
    int n = decoder ? TAESD_DECODER_LAYERS : TAESD_ENCODER_LAYERS, shift = w->diffusers && decoder;
    for (int i = 0; i < n && !w->failed; i++) {
        int k = i - shift, first = i == (decoder ? 1 : 0), last = i == n - 1;
        int cin = first ? (decoder ? lat : 3) : C, cout = last ? (decoder ? 3 : lat) : C;
        vae_conv *c = layer[i].conv;
        switch (kinds[i]) {
        case TAESD_CONV:
            c->w = need(w, cout, cin, 3, 3, "%d.weight", k);
            c->b = need(w, cout, 0, 0, 0, "%d.bias", k);
            break;
        case TAESD_DOWN: case TAESD_UP_CONV:
            c->w = need(w, C, C, 3, 3, "%d.weight", k);
            break;
        case TAESD_BLOCK:
            for (int j = 0; j < 3; j++) {
                c[j].w = need(w, C, C, 3, 3, "%d.conv.%d.weight", k, 2 * j);
                c[j].b = need(w, C, 0, 0, 0, "%d.conv.%d.bias", k, 2 * j);
            }
            break;
        default: break;   /* Clamp, ReLU, Upsample: no weights */
        }
    }
}

/* One half from file f: its layout, the widths its first (or, for the encoder's latents, last)
   conv says, then every weight. */
static int taesd_load_half(sd_taesd *t, const sd_safetensors *f, int decoder, sd_error *err)
{
    weights w;
    int layout = taesd_layout(f, decoder, err), C, lat;
    if (layout < 0) return -layout;
    memset(&w, 0, sizeof w);
    w.files[0] = f;
    w.nfiles = 1;
    w.diffusers = layout == 2;
    w.prefix = w.diffusers ? (decoder ? "decoder.layers." : "encoder.layers.") : "";
    w.err = err;
    if (decoder) {   /* conv latent → C */
        const sd_tensor *in = need(&w, -1, -1, 3, 3, "%d.weight", w.diffusers ? 0 : 1);
        C = vae_dim(&w, in, 0);
        lat = vae_dim(&w, in, 1);
    } else {         /* conv RGB → C, ..., conv C → latent */
        C = vae_dim(&w, need(&w, -1, 3, 3, 3, "0.weight"), 0);
        lat = vae_dim(&w, need(&w, -1, C, 3, 3, "%d.weight", TAESD_ENCODER_LAYERS - 1), 0);
    }
    if (w.failed) return w.failed;
    if (C > 1024 || lat > 256)
        return fail(err, SD_ERR_UNSUPPORTED, "TAESD: %d channels and %d latent channels; sd.h takes up to 1024 and 256", C, lat);
    if ((t->info.channels && C != t->info.channels) || (t->info.latent_channels && lat != t->info.latent_channels))
        return fail(err, SD_ERR_SHAPE, "TAESD: the encoder has %d channels and %d latent channels, the decoder %d and %d",
                    decoder ? t->info.channels : C, decoder ? t->info.latent_channels : lat, decoder ? C : t->info.channels,
                    decoder ? lat : t->info.latent_channels);
    t->info.channels = C;
    t->info.latent_channels = lat;
    taesd_load_stack(&w, decoder ? t->decoder : t->encoder, decoder, C, lat);
    return w.failed;
}

/* A diffusers config.json: the architecture it describes must be the one loaded (sd.h runs only
   TAESD's own: ReLU, nearest 2x upsampling, blocks 1,3,3,3 / 3,3,3,1, one width throughout), and
   its scaling_factor is the pipeline's. Keys it lacks take diffusers' defaults. */
static int taesd_read_config(sd_taesd *t, const char *text, size_t size, sd_error *err)
{
    char want[4][64], got[128];
    const char *keys[8] = {"act_fn", "upsampling_scaling_factor", "num_encoder_blocks", "num_decoder_blocks",
                           "latent_channels", "encoder_block_out_channels", "decoder_block_out_channels", "_class_name"};
    json j = {text, text, text + size, NULL};
    double v;
    int C = t->info.channels;
    snprintf(want[0], sizeof want[0], "%d", t->info.latent_channels);
    snprintf(want[1], sizeof want[1], "%d,%d,%d,%d", C, C, C, C);
    const char *expect[8] = {"relu", "2", "1,3,3,3", "3,3,3,1", want[0], want[1], want[1], "AutoencoderTiny"};
    json_ws(&j);
    if (j.p == j.end || *j.p != '{' || json_skip(&j, 0))
        return fail(err, SD_ERR_FORMAT, "TAESD config.json: not a JSON object%s%s", j.error ? ": " : "", j.error ? j.error : "");
    for (int k = 0; k < 8; k++) {
        if (!json_find(&j, text, size, keys[k])) continue;
        if (!json_scalar(&j, got, sizeof got)) snprintf(got, sizeof got, "?");
        if (strcmp(got, expect[k]))
            return fail(err, k == 4 ? SD_ERR_SHAPE : SD_ERR_UNSUPPORTED, "TAESD config.json: %s is '%.40s'; %s '%s'", keys[k], got,
                        k >= 4 && k < 7 ? "the tensors give" : "sd.h runs TAESD's", expect[k]);
    }
    if (json_find(&j, text, size, "scaling_factor")) {
        if (!json_scalar(&j, got, sizeof got) || !parse_number(got, &v) || !(v > 0 && v < 1e6))
            return fail(err, SD_ERR_FORMAT, "TAESD config.json: scaling_factor is not a positive number");
        t->info.scaling_factor = (float)v;
    }
    return SD_OK;
}

SD_API int sd_taesd_load(sd_taesd **out, const sd_safetensors *encoder, const sd_safetensors *decoder,
                         const char *config, size_t config_size, int variant, sd_arena *a, sd_error *err)
{
    if (out) *out = NULL;
    if (!out || !a || (!encoder && !decoder)) return fail(err, SD_ERR_ARG, "sd_taesd_load: no file, or a NULL argument");
    if (variant != SD_TAESD_SD && variant != SD_TAESD_XL)
        return fail(err, SD_ERR_ARG, "sd_taesd_load: variant %d is neither SD_TAESD_SD nor SD_TAESD_XL", variant);
    size_t mark = sd_arena_mark(a);
    sd_taesd *t = (sd_taesd *)sd_arena_alloc(a, sizeof *t, err);
    int rc;
    if (!t) return SD_ERR_MEMORY;
    memset(t, 0, sizeof *t);
    t->info.variant = variant;
    t->info.scaling_factor = 1.0f;
    t->info.has_decoder = decoder != NULL;
    t->info.has_encoder = encoder != NULL;
    if ((decoder && (rc = taesd_load_half(t, decoder, 1, err))) || (encoder && (rc = taesd_load_half(t, encoder, 0, err))) ||
        (config && (rc = taesd_read_config(t, config, config_size, err)))) {
        sd_arena_reset(a, mark);
        return rc;
    }
    *out = t;
    return SD_OK;
}

SD_API void sd_taesd_get_info(const sd_taesd *taesd, sd_taesd_info *info)
{
    if (taesd && info) *info = taesd->info;
    else if (info) memset(info, 0, sizeof *info);
}

/* ---- forward passes ---- */

/* Test hook: rows [y0, y0 + rows) of a layer's output (NHWC, H x W x C in all), named as
   diffusers' modules: "layers.N" (N in diffusers' numbering), "clamped", "layers_input". */
typedef void (*taesd_probe)(void *user, const char *layer, const float *x, int y0, int rows, int H, int W, int C);

/* One pass. Activations live in the arena: each layer allocates its output, a level's tensors
   stay until the pass ends (a smaller level's are a third of the next one's), a Block takes two
   scratch tensors and gives them back. The level at the image size would hold three tensors of
   C channels at full size (64 MB each for a 512 x 512 image), so it runs in bands of rows: see
   taesd_decoder_tail and taesd_encoder_head. */
typedef struct taesd_run {
    const sd_taesd *t;
    sd_pool *pool;
    sd_arena *a;
    sd_error *err;
    int rc;         /* first failure; the pass then returns without further work */
    int C;          /* the layers' width */
    int decoder;    /* names for the probe: diffusers' decoder layers are numbered one lower */
    taesd_probe probe;
    void *user;
} taesd_run;

static float *taesd_alloc(taesd_run *r, size_t n) { return pass_floats(r->a, n, r->err, &r->rc); }

static void taesd_show(taesd_run *r, const char *name, int layer, const float *x, int y0, int rows, int H, int W, int C)
{
    char s[32];
    if (!r->probe || r->rc || r->pool->measure) return;
    if (layer >= 0) snprintf(s, sizeof s, "layers.%d", layer - r->decoder);
    r->probe(r->user, layer >= 0 ? s : name, x, y0, rows, H, W, C);
}

/* Output rows each band of the full-size level makes. Each conv in a band needs one more input
   row at each side than it makes, so a band recomputes the 2·4 rows its neighbours also make
   (four chained convs): about 4% more work at that level, for memory that no longer grows with
   the image's height. */
#define TAESD_BAND_ROWS 64

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

/* Output rows [y0, y1) of a 3x3 conv (zero padding 1, stride s) of an H x W x cin image of which
   src holds the rows from src_y0 on (at least s·y0 − 1 .. s·(y1 − 1) + 1 of those in the image),
   into dst [y1 − y0, ceil(W/s), cout]; mode: CONV_RELU, CONV_ADD (dst += the conv). */
static void taesd_conv(taesd_run *r, float *dst, const float *src, int src_y0, int y0, int y1, int H, int W,
                       int cin, int s, const vae_conv *conv, int cout, int mode)
{
    SD_ASSERT(y1 > y0 && (s * y0 - 1 < 0 || s * y0 - 1 >= src_y0));
    conv2d_rows(r->pool, dst, cout, src, src_y0, H, W, cin, conv->w, conv->b, cout, 3, s, 1, y0, y1 - y0, (W - 1) / s + 1, mode);
}

/* Block, x ← relu(conv(relu(conv(relu(conv(x))))) + x), on rows [v0, v1) of an H x W x C image of
   which x holds the rows from x_y0 on (at least v0 − 3 .. v1 + 2): the inner convs make rows
   v0 − 2 .. v1 + 1 into t1 and v0 − 1 .. v1 into t2, the last adds into x in place. A level held
   whole is one band. */
static void taesd_block(taesd_run *r, const taesd_layer *b, float *x, int x_y0, int v0, int v1, int H, int W, float *t1, float *t2)
{
    int C = r->C, ta = imax(0, v0 - 2), tb = imin(H, v1 + 2), ua = imax(0, v0 - 1), ub = imin(H, v1 + 1);
    taesd_conv(r, t1, x, x_y0, ta, tb, H, W, C, 1, &b->conv[0], C, CONV_RELU);
    taesd_conv(r, t2, t1, ta, ua, ub, H, W, C, 1, &b->conv[1], C, CONV_RELU);
    taesd_conv(r, x + (size_t)(v0 - x_y0) * W * C, t2, ua, v0, v1, H, W, C, 1, &b->conv[2], C, CONV_ADD | CONV_RELU);
}

/* Blocks first .. last of a stack at a level held whole (x [H, W, C]), each shown to the probe. */
static void taesd_blocks(taesd_run *r, const taesd_layer *stack, int first, int last, float *x, int H, int W)
{
    size_t n = (size_t)H * W * r->C, mark = sd_arena_mark(r->a);
    float *t1 = taesd_alloc(r, n), *t2 = taesd_alloc(r, n);
    for (int i = first; i <= last && t2; i++) {
        taesd_block(r, &stack[i], x, 0, 0, H, H, W, t1, t2);
        taesd_show(r, NULL, i, x, 0, H, H, W, r->C);
    }
    sd_arena_reset(r->a, mark);
}

/* Stride-2 conv (zero padding 1 all round: H → ceil(H/2)) of a level held whole, into a new one. */
static float *taesd_down(taesd_run *r, const taesd_layer *l, const float *x, int *H, int *W)
{
    int Ho = (*H + 1) / 2, Wo = (*W + 1) / 2;
    float *y = taesd_alloc(r, (size_t)Ho * Wo * r->C);
    if (y) taesd_conv(r, y, x, 0, 0, Ho, *H, *W, r->C, 2, &l->conv[0], r->C, 0);
    *H = Ho;
    *W = Wo;
    return y;
}

/* The taps of conv(upsample2x(·)) as four 2x2 convs of the small image, one per output phase
   (vae_phase_weights): mem holds 16·C·C floats. */
static void taesd_phase_taps(taesd_run *r, const vae_conv *conv, float *mem, sd_tensor pt[4])
{
    int C = r->C;
    for (int p = 0; p < 4; p++) {
        float *wp = mem + (size_t)p * 4 * C * C;
        if (!r->pool->measure) vae_phase_weights(r->pool, wp, conv->w, 0, C, C, p >> 1, p & 1);
        pt[p] = vae_f32_tensor(wp, C, C, 2, 4);
    }
}

/* Upsample (nearest 2x) and the conv after it: rows [2·i0, 2·i1) of conv(upsample2x(A)) into X,
   from rows i0 − 1 .. i1 of A [h, w, C], without making the upsampled image: phase (a, b)'s 2x2
   conv reads A's rows i − 1 + a .. i + a and columns j − 1 + b .. j + b for output pixel
   (2i + a, 2j + b) (padding 1 − b, and its rows shifted by a − b to match), writing every other
   pixel of every other row, by way of ob (i1 − i0 rows of 2w pixels). */
typedef struct taesd_phase_rows { float *X; const float *ob; size_t row; int a; } taesd_phase_rows;

static void taesd_phase_row(void *arg, int task, int thread)   /* row i of ob to row 2i + a of X */
{
    const taesd_phase_rows *j = (const taesd_phase_rows *)arg;
    (void)thread;
    memcpy(j->X + (size_t)(2 * task + j->a) * j->row, j->ob + (size_t)task * j->row, j->row * sizeof(float));
}

static void taesd_upsample_rows(taesd_run *r, float *X, const float *A, int i0, int i1, int h, int w,
                                const sd_tensor pt[4], float *ob)
{
    int C = r->C, n = i1 - i0;
    for (int a = 0; a < 2; a++) {
        taesd_phase_rows j = {X, ob, (size_t)2 * w * C, a};
        for (int b = 0; b < 2; b++)
            conv2d_rows(r->pool, ob + (size_t)b * C, 2 * C, A, 0, h, w, C, &pt[2 * a + b], NULL, C, 2, 1, 1 - b, i0 + a - b, n, w, 0);
        pool_run(r->pool, taesd_phase_row, &j, n);   /* (a copy, but on every thread) */
    }
}

/* Layers i (Upsample) and i + 1 (conv) on a level held whole: A [h, w, C] → a new [2h, 2w, C]. */
static float *taesd_upsample(taesd_run *r, const taesd_layer *stack, int i, const float *A, int h, int w)
{
    int C = r->C;
    float *X = taesd_alloc(r, (size_t)4 * h * w * C);
    size_t mark = sd_arena_mark(r->a);
    float *taps = taesd_alloc(r, (size_t)16 * C * C), *ob = taesd_alloc(r, (size_t)h * 2 * w * C);
    sd_tensor pt[4];
    if (!ob) return NULL;
    taesd_phase_taps(r, &stack[i + 1].conv[0], taps, pt);
    taesd_upsample_rows(r, X, A, 0, h, h, w, pt, ob);
    sd_arena_reset(r->a, mark);
    taesd_show(r, NULL, i + 1, X, 0, 2 * h, 2 * h, 2 * w, C);
    return X;
}

/* Rows of TAESD's RGB output [rows, W, 3] in [0, 1] to the rows of image [3, H, W] that
   diffusers' decode returns: 2y − 1. One task per row. */
typedef struct taesd_rgb_rows { float *image; const float *rgb; size_t plane; int W; } taesd_rgb_rows;

static void taesd_rgb_row(void *arg, int task, int thread)
{
    const taesd_rgb_rows *j = (const taesd_rgb_rows *)arg;
    (void)thread;
    for (int c = 0; c < 3; c++)
        for (size_t x = 0, at = (size_t)task * j->W; x < (size_t)j->W; x++) j->image[c * j->plane + at + x] = j->rgb[3 * (at + x) + c] * 2.0f - 1.0f;
}

/* The decoder's full-size level, layers 16-19: Upsample, conv, Block, conv to RGB, from A
   [h, w, C] to image rows of the [3, 2h, 2w] output (NCHW, as 2y − 1), a band of output rows at
   a time. For output rows [y0, y1) the band makes conv 17's output X on rows y0 − 4 .. y1 + 3
   (what the Block reads for its rows y0 − 1 .. y1, which conv 19 reads), so none of these is
   ever whole. */
static void taesd_decoder_tail(taesd_run *r, const float *A, int h, int w, float *image)
{
    const taesd_layer *d = r->t->decoder;
    int C = r->C, H = 2 * h, W = 2 * w, R = TAESD_BAND_ROWS < H ? TAESD_BAND_ROWS : H;
    size_t row = (size_t)W * C, plane = (size_t)H * W, mark = sd_arena_mark(r->a);
    float *taps = taesd_alloc(r, (size_t)16 * C * C), *X = taesd_alloc(r, (size_t)(R + 8) * row);
    float *t1 = taesd_alloc(r, (size_t)(R + 6) * row), *t2 = taesd_alloc(r, (size_t)(R + 4) * row);
    float *ob = taesd_alloc(r, (size_t)(R + 8) * row), *rgb = taesd_alloc(r, (size_t)R * W * 3);
    sd_tensor pt[4];
    if (!rgb) return;
    taesd_phase_taps(r, &d[17].conv[0], taps, pt);
    for (int y0 = 0; y0 < H; y0 += R) {   /* (H and R are even, so are y0, y1 and X's rows) */
        int y1 = imin(H, y0 + R), xa = imax(0, y0 - 4), xb = imin(H, y1 + 4), va = imax(0, y0 - 1), vb = imin(H, y1 + 1);
        taesd_upsample_rows(r, X, A, xa / 2, xb / 2, h, w, pt, ob);                         /* 16, 17 */
        taesd_show(r, NULL, 17, X, xa, xb - xa, H, W, C);
        taesd_block(r, &d[18], X, xa, va, vb, H, W, t1, t2);                                /* 18 */
        taesd_show(r, NULL, 18, X + (size_t)(va - xa) * row, va, vb - va, H, W, C);
        taesd_conv(r, rgb, X, xa, y0, y1, H, W, C, 1, &d[19].conv[0], 3, 0);                 /* 19: RGB, in [0, 1] */
        taesd_show(r, NULL, 19, rgb, y0, y1 - y0, H, W, 3);
        taesd_rgb_rows out = {image + (size_t)y0 * W, rgb, plane, W};
        pool_run(r->pool, taesd_rgb_row, &out, y1 - y0);
    }
    sd_arena_reset(r->a, mark);
}

/* Latents [lat, h, w] → image [3, 8h, 8w]: the decoder's layers in order. */
static void taesd_decoder_forward(taesd_run *r, const float *latents, int h, int w, float *image)
{
    const taesd_layer *d = r->t->decoder;
    int C = r->C, lat = r->t->info.latent_channels, H = h, W = w;
    size_t P = (size_t)h * w;
    float s = r->t->info.scaling_factor, *z = taesd_alloc(r, P * lat), *x = taesd_alloc(r, P * C);
    if (!x) return;
    for (int c = 0; c < lat && !r->pool->measure; c++)   /* 0: Clamp, tanh(z/3)·3, on z = latents / scaling_factor */
        for (size_t i = 0; i < P; i++) z[i * lat + c] = tanhf(latents[c * P + i] / s / 3.0f) * 3.0f;
    taesd_show(r, "clamped", -1, z, 0, H, H, W, lat);
    taesd_conv(r, x, z, 0, 0, H, H, W, lat, 1, &d[1].conv[0], C, 0);                      /* 1: conv latent → C */
    taesd_show(r, NULL, 1, x, 0, H, H, W, C);
    relu(r->pool, x, P * C);                                                               /* 2: ReLU */
    taesd_show(r, NULL, 2, x, 0, H, H, W, C);
    taesd_blocks(r, d, 3, 5, x, H, W);                                                     /* 3-5 */
    x = taesd_upsample(r, d, 6, x, H, W);                                                  /* 6, 7: to 2h x 2w */
    H *= 2, W *= 2;
    taesd_blocks(r, d, 8, 10, x, H, W);                                                    /* 8-10 */
    x = taesd_upsample(r, d, 11, x, H, W);                                                 /* 11, 12: to 4h x 4w */
    H *= 2, W *= 2;
    taesd_blocks(r, d, 13, 15, x, H, W);                                                   /* 13-15 */
    if (x) taesd_decoder_tail(r, x, H, W, image);                                          /* 16-19: to 8h x 8w, RGB */
}

/* The encoder's full-size level, layers 0-2: conv RGB → C, Block, stride-2 conv, from the image
   [H, W, 3] in [0, 1] to out [ceil(H/2), ceil(W/2), C], a band of output rows at a time (the
   mirror of taesd_decoder_tail). Output rows [o0, o1) read the Block's rows 2·o0 − 1 .. 2·o1 − 1,
   which read conv 0's output X three rows further each way. */
static void taesd_encoder_head(taesd_run *r, const float *img, int H, int W, float *out)
{
    const taesd_layer *e = r->t->encoder;
    int C = r->C, Ho = (H + 1) / 2, Wo = (W + 1) / 2, R = imin(TAESD_BAND_ROWS / 2, Ho);
    size_t row = (size_t)W * C, mark = sd_arena_mark(r->a);
    float *X = taesd_alloc(r, (size_t)(2 * R + 7) * row), *t1 = taesd_alloc(r, (size_t)(2 * R + 5) * row);
    float *t2 = taesd_alloc(r, (size_t)(2 * R + 3) * row);
    if (!t2) return;
    for (int o0 = 0; o0 < Ho; o0 += R) {
        int o1 = imin(Ho, o0 + R), ba = imax(0, 2 * o0 - 1), bb = imin(H, 2 * o1), xa = imax(0, ba - 3), xb = imin(H, bb + 3);
        taesd_conv(r, X, img, 0, xa, xb, H, W, 3, 1, &e[0].conv[0], C, 0);                  /* 0: conv RGB → C */
        taesd_show(r, NULL, 0, X, xa, xb - xa, H, W, C);
        taesd_block(r, &e[1], X, xa, ba, bb, H, W, t1, t2);                                 /* 1 */
        taesd_show(r, NULL, 1, X + (size_t)(ba - xa) * row, ba, bb - ba, H, W, C);
        taesd_conv(r, out + (size_t)o0 * Wo * C, X, xa, o0, o1, H, W, C, 2, &e[2].conv[0], C, 0);   /* 2: stride 2 */
        taesd_show(r, NULL, 2, out + (size_t)o0 * Wo * C, o0, o1 - o0, Ho, Wo, C);
    }
    sd_arena_reset(r->a, mark);
}

/* Image [3, H, W] in [-1, 1] → latents [lat, ceil(H/8), ceil(W/8)]: the encoder's layers in order. */
static void taesd_encoder_forward(taesd_run *r, const float *image, int H, int W, float *latents)
{
    const taesd_layer *e = r->t->encoder;
    int C = r->C, lat = r->t->info.latent_channels;
    size_t P = (size_t)H * W;
    float *img = taesd_alloc(r, 3 * P), *x = taesd_alloc(r, (size_t)((H + 1) / 2) * ((W + 1) / 2) * C), *z;
    if (!x) return;
    for (int c = 0; c < 3 && !r->pool->measure; c++)   /* diffusers' encode: the layers see (x + 1)/2, NHWC */
        for (size_t i = 0; i < P; i++) img[i * 3 + c] = (image[c * P + i] + 1.0f) / 2.0f;
    taesd_show(r, "layers_input", -1, img, 0, H, H, W, 3);
    taesd_encoder_head(r, img, H, W, x);                                                    /* 0-2: to H/2 */
    H = (H + 1) / 2, W = (W + 1) / 2;
    taesd_blocks(r, e, 3, 5, x, H, W);                                                     /* 3-5 */
    x = taesd_down(r, &e[6], x, &H, &W);                                                   /* 6: to H/4 */
    taesd_show(r, NULL, 6, x, 0, H, H, W, C);
    taesd_blocks(r, e, 7, 9, x, H, W);                                                     /* 7-9 */
    x = taesd_down(r, &e[10], x, &H, &W);                                                  /* 10: to H/8 */
    taesd_show(r, NULL, 10, x, 0, H, H, W, C);
    taesd_blocks(r, e, 11, 13, x, H, W);                                                   /* 11-13 */
    P = (size_t)H * W;
    if (!(z = taesd_alloc(r, P * lat))) return;
    taesd_conv(r, z, x, 0, 0, H, H, W, C, 1, &e[14].conv[0], lat, 0);                     /* 14: conv C → latent */
    taesd_show(r, NULL, 14, z, 0, H, H, W, lat);
    for (int c = 0; c < lat && !r->pool->measure; c++)   /* NCHW, on the pipeline's scale */
        for (size_t i = 0; i < P; i++) latents[c * P + i] = z[i * lat + c] * r->t->info.scaling_factor;
}

/* ---- the calls, and their plans ---- */

/* Whether an H x W image keeps every count inside the kernels' ints and every tensor (C
   channels) inside size_t. */
static int taesd_size_ok(int64_t H, int64_t W, int C)
{
    if (H < 1 || W < 1 || H > INT32_MAX || W > INT32_MAX || H * W > INT32_MAX) return 0;
    return (uint64_t)(H * W) * (uint64_t)(C > 3 ? C : 3) <= (uint64_t)(SIZE_MAX / (8 * sizeof(float)));
}

/* A decode or encode with a probe (NULL for none): the public calls, their plans (on a measuring
   arena and pool) and the tests' window into the layers. */
static int taesd_run_pass(const sd_taesd *t, int decode, const float *in, int h, int w, float *out, sd_pool *pool,
                          taesd_probe probe, void *user, sd_arena *a, sd_error *err)
{
    const char *call = decode ? "sd_taesd_decode" : "sd_taesd_encode";
    taesd_run r;
    if (!t || !in || !out || !pool || !a) return fail(err, SD_ERR_ARG, "%s: NULL argument", call);
    if (!(decode ? t->info.has_decoder : t->info.has_encoder))
        return fail(err, SD_ERR_UNSUPPORTED, "%s: this TAESD was loaded without %s", call, decode ? "a decoder" : "an encoder");
    if (!taesd_size_ok(decode ? 8 * (int64_t)h : h, decode ? 8 * (int64_t)w : w, t->info.channels))
        return fail(err, SD_ERR_ARG, "%s: %s %d x %d is outside 1 .. 2^31 - 1 pixels", call, decode ? "latent" : "image", h, w);
    memset(&r, 0, sizeof r);
    r.t = t; r.pool = pool; r.a = a; r.err = err; r.C = t->info.channels; r.decoder = decode;
    r.probe = probe; r.user = user;
    size_t mark = sd_arena_mark(a);
    if (decode) taesd_decoder_forward(&r, in, h, w, out);
    else taesd_encoder_forward(&r, in, h, w, out);
    sd_arena_reset(a, mark);
    return r.rc;
}

static size_t taesd_plan(const sd_taesd *t, int decode, int h, int w)
{
    sd_arena m;
    sd_pool pool;
    arena_measure(&m);
    pool_measure(&pool);
    return taesd_run_pass(t, decode, dummy_floats(), h, w, dummy_floats(), &pool, NULL, NULL, &m, NULL) ? 0 : m.peak;
}

SD_API size_t sd_taesd_decode_arena_bytes(const sd_taesd *taesd, int h, int w) { return taesd_plan(taesd, 1, h, w); }
SD_API size_t sd_taesd_encode_arena_bytes(const sd_taesd *taesd, int height, int width) { return taesd_plan(taesd, 0, height, width); }

/* The arena is checked against the plan first, so that a call never fails halfway. */
static int taesd_call(const sd_taesd *t, int decode, const float *in, int h, int w, float *out, sd_pool *pool, sd_arena *a, sd_error *err)
{
    size_t need = taesd_plan(t, decode, h, w);
    if (!need || !a || !pool || pool->measure) return taesd_run_pass(t, decode, in, h, w, out, pool, NULL, NULL, a, err);
    if (need > a->size - a->used)
        return fail(err, SD_ERR_MEMORY, "%s: %d x %d needs %zu arena bytes, %zu are left", decode ? "sd_taesd_decode" : "sd_taesd_encode",
                    h, w, need, a->size - a->used);
    return taesd_run_pass(t, decode, in, h, w, out, pool, NULL, NULL, a, err);
}

SD_API int sd_taesd_decode(const sd_taesd *taesd, const float *latents, int h, int w, float *image,
                           sd_pool *pool, sd_arena *a, sd_error *err)
{
    return taesd_call(taesd, 1, latents, h, w, image, pool, a, err);
}

SD_API int sd_taesd_encode(const sd_taesd *taesd, const float *image, int height, int width, float *latents,
                           sd_pool *pool, sd_arena *a, sd_error *err)
{
    return taesd_call(taesd, 0, image, height, width, latents, pool, a, err);
}

/* ---- 9. Samplers ---------------------------------------------------------------------------- */
/* Diffusion adds Gaussian noise over T training steps: x_t = sqrt(a_t)·x_0 + sqrt(1 - a_t)·noise,
   with a_t the cumulative product of (1 - beta) (Ho et al. 2020, eq. 4). A sampler walks back
   from pure noise over a few of those timesteps, asking the UNet at each one what the noise is.
   The tables are computed in float32 the way PyTorch computes diffusers' (they come out bit for
   bit); the sampler steps follow diffusers' schedulers, which define SD's behaviour. */

/* Random numbers: initial noise exactly as PyTorch draws it on the CPU, so that a seed gives the image diffusers
   gives. The generator is the 32-bit Mersenne Twister (Matsumoto & Nishimura 1998), seeded with
   the low 32 bits of the seed. torch.randn then takes one of two roads:
   - 16 elements or more (every latent): one float uniform per element, then Box–Muller on blocks
     of 16 (elements j and j+8 of a block form a pair). A length that is not a multiple of 16 gets
     its last 16 elements drawn again and transformed again. On x86-64 (AVX2) PyTorch evaluates
     log, sin and cos there with the single-precision Cephes polynomials of avx_mathfun.h, built
     with fused multiply-adds; the functions below repeat those operations one by one, which is
     what makes the numbers bit-exact. (PyTorch builds without AVX2, on ARM for one, use libm's
     logf/sinf/cosf there instead, so their noise differs slightly from this.)
   - fewer than 16: Box–Muller in double precision on 53-bit uniforms, one normal per element;
     each pair's second value is kept in the generator for the next short draw.
   All float arithmetic here must be IEEE single precision (SSE or NEON, not x87; no -ffast-math). */

#define MT_N 624
#define MT_M 397

SD_API void sd_rng_seed(sd_rng *r, uint64_t seed)
{
    r->mt[0] = (uint32_t)seed;   /* torch keeps only the low 32 bits: 2^32 + 7 seeds like 7 */
    for (int i = 1; i < MT_N; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->next = MT_N;
    r->has_spare = 0;
    r->spare = 0;
}

/* The next 32-bit word of mt19937: regenerate the whole state every 624 words, then temper. */
static uint32_t mt_next(sd_rng *r)
{
    if ((unsigned)r->next >= MT_N) {
        for (int i = 0; i < MT_N; i++) {
            uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % MT_N] & 0x7fffffffu);
            r->mt[i] = r->mt[(i + MT_M) % MT_N] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
        }
        r->next = 0;
    }
    uint32_t y = r->mt[r->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* torch's float uniform in [0, 1): the low 24 bits of one word times 2^-24. */
static float uniform_float(sd_rng *r)
{
    return (float)(mt_next(r) & 0xffffff) * (1.0f / 16777216.0f);
}

/* torch's double uniform in [0, 1): the low 53 bits of two words (the first one high) times 2^-53. */
static double uniform_double(sd_rng *r)
{
    uint64_t hi = mt_next(r);
    uint64_t v = hi << 32 | mt_next(r);
    return (double)(v & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* One N(0, 1) value of the short-tensor road: Box–Muller in double, keeping the pair's sine. */
static double normal_double(sd_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = uniform_double(r), u2 = uniform_double(r);
    double radius = sqrt(-2.0 * log(1.0 - u2)), theta = 2.0 * 3.14159265358979323846 * u1;
    r->spare = radius * sin(theta);
    r->has_spare = 1;
    return radius * cos(theta);
}

static float float_from_bits(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static uint32_t bits_from_float(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

/* Natural log of a positive normal float, Cephes style: x = m·2^e with m in [sqrt(1/2), sqrt(2)),
   log m from a polynomial in m - 1 (which the code keeps in m), plus e·ln 2 in two parts. */
static float cephes_logf(float x)
{
    static const float p[9] = { 7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f,
                                -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                                2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f };
    uint32_t b = bits_from_float(x);
    float e = (float)((int)(b >> 23) - 127) + 1.0f;
    float m = float_from_bits((b & 0x807fffffu) | 0x3f000000u);   /* mantissa in [0.5, 1) */
    if (m < 0.707106781186547524f) { e -= 1.0f; m = m - 1.0f + m; }
    else m = m - 1.0f;
    float z = m * m, y = p[0];
    for (int i = 1; i < 9; i++) y = fmaf(y, m, p[i]);
    y = y * m;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = y - z * 0.5f;
    return fmaf(e, 0.693359375f, m + y);
}

/* sin and cos of x >= 0 at once, Cephes style: reduce by multiples of pi/4 in three parts, then
   the sine or cosine polynomial on [-pi/4, pi/4] depending on the octant, with the signs fixed up. */
static void cephes_sincosf(float x, float *sin_out, float *cos_out)
{
    int j = ((int)(x * 1.27323954473516f) + 1) & ~1;   /* nearest even multiple of pi/4 */
    float y = (float)j;
    uint32_t sin_sign = (uint32_t)(j & 4) << 29, cos_sign = (uint32_t)(~(j - 2) & 4) << 29;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float c = fmaf(2.443315711809948e-5f, z, -1.388731625493765e-3f);
    c = fmaf(c, z, 4.166664568298827e-2f);
    c = c * z;
    c = fmaf(c, z, -(z * 0.5f)) + 1.0f;
    float s = fmaf(-1.9515295891e-4f, z, 8.3321608736e-3f);
    s = fmaf(s, z, -1.6666654611e-1f);
    s = s * z;
    s = fmaf(s, x, x);
    /* Odd octant pairs swap the polynomials. The vector code selects by masking and adds the
       other lane's +0, which turns a -0 into +0; so does the `+ 0.0f` here. */
    float sin_v = ((j & 2) ? c : s) + 0.0f, cos_v = ((j & 2) ? s : c) + 0.0f;
    *sin_out = float_from_bits(bits_from_float(sin_v) ^ sin_sign);
    *cos_out = float_from_bits(bits_from_float(cos_v) ^ cos_sign);
}

/* Box–Muller on a block of 16 uniforms: u[j] gives the radius and u[j+8] the angle of pair j. */
static void box_muller16(float *u)
{
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float radius = sqrtf(-2.0f * cephes_logf(1.0f - u[j])), s, c;
        cephes_sincosf(two_pi * u[j + 8], &s, &c);
        u[j] = radius * c;
        u[j + 8] = radius * s;
    }
}

SD_API void sd_randn(sd_rng *r, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)normal_double(r);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform_float(r);
    for (size_t i = 0; i + 16 <= n; i += 16) box_muller16(out + i);
    if (n % 16) {
        for (size_t i = n - 16; i < n; i++) out[i] = uniform_float(r);
        box_muller16(out + n - 16);
    }
}

SD_API void sd_rand(sd_rng *r, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = uniform_float(r);
}


/* torch.linspace(a, b, n) in float32 as PyTorch's x86 CPU kernel computes it: the first half
   counts up from a and the second half down from b, each point a fused multiply-add. Vectors of
   8 points, two per loop pass, step on from their first point; what is left after the last pass
   goes point by point. */
static float linspace_point(float a, float b, float step, int n, int i)
{
    return i < n / 2 ? fmaf(step, (float)i, a) : fmaf(-step, (float)(n - 1 - i), b);
}

static void torch_linspace(float a, float b, int n, float *out)
{
    float step = n > 1 ? (b - a) / (float)(n - 1) : 0.0f;
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int v = i; v < i + 16; v += 8) {
            float first = linspace_point(a, b, step, n, v);
            for (int j = 0; j < 8; j++) out[v + j] = first + (float)j * step;
        }
    for (; i < n; i++) out[i] = linspace_point(a, b, step, n, i);
}

SD_API int sd_schedule_init(sd_schedule *s, int num_train_timesteps, double beta_start,
                            double beta_end, int beta_schedule, sd_error *err)
{
    int T = num_train_timesteps;
    if (!s) return fail(err, SD_ERR_ARG, "schedule: NULL argument");
    if (T < 1 || T > SD_MAX_TRAIN_TIMESTEPS)
        return fail(err, SD_ERR_ARG, "schedule: %d training timesteps, expected 1..%d", T, SD_MAX_TRAIN_TIMESTEPS);
    if (!(beta_start > 0 && beta_start <= beta_end && beta_end < 1))
        return fail(err, SD_ERR_ARG, "schedule: betas %g..%g, expected 0 < start <= end < 1", beta_start, beta_end);
    s->num_train_timesteps = T;
    if (beta_schedule == SD_BETA_SCALED_LINEAR) {   /* linear in sqrt(beta): SD's schedule */
        torch_linspace((float)sqrt(beta_start), (float)sqrt(beta_end), T, s->betas);
        for (int t = 0; t < T; t++) s->betas[t] *= s->betas[t];
    } else if (beta_schedule == SD_BETA_LINEAR) {
        torch_linspace((float)beta_start, (float)beta_end, T, s->betas);
    } else {
        return fail(err, SD_ERR_ARG, "schedule: unknown beta schedule %d", beta_schedule);
    }
    double a = 1;   /* torch.cumprod on the CPU accumulates float32 in double */
    for (int t = 0; t < T; t++) {
        a *= 1.0f - s->betas[t];
        s->alphas_cumprod[t] = (float)a;
        s->sigmas[t] = sqrtf((1.0f - s->alphas_cumprod[t]) / s->alphas_cumprod[t]);
    }
    for (int t = T; t < SD_MAX_TRAIN_TIMESTEPS; t++) s->betas[t] = s->alphas_cumprod[t] = s->sigmas[t] = 0;
    s->final_alpha_cumprod = s->alphas_cumprod[0];
    return SD_OK;
}

SD_API int sd_ddim_timesteps(const sd_schedule *s, int steps, int spacing, int steps_offset,
                             int *out, sd_error *err)
{
    if (!s || !out) return fail(err, SD_ERR_ARG, "ddim timesteps: NULL argument");
    int T = s->num_train_timesteps;
    if (steps < 1 || steps > T)
        return fail(err, SD_ERR_ARG, "ddim timesteps: %d steps, expected 1..%d", steps, T);
    for (int i = 0; i < steps; i++) {
        double t;
        if (spacing == SD_SPACING_LEADING) {          /* every T/steps-th, counted from 0, shifted */
            t = (double)(steps - 1 - i) * (T / steps) + steps_offset;
        } else if (spacing == SD_SPACING_TRAILING) {  /* counted back from T: numpy arange(T, 0, -T/steps) - 1 */
            /* (for 62 step counts, 61 the first, numpy's rounding adds a 62nd timestep, -1, which
               diffusers would then use; only the first `steps` are meant) */
            double delta = ((double)T - (double)T / steps) - T;
            t = nearbyint(T + i * delta) - 1;
        } else if (spacing == SD_SPACING_LINSPACE) {  /* numpy linspace(0, T-1, steps), rounded, reversed */
            int k = steps - 1 - i;
            t = steps == 1 ? 0 : k == steps - 1 ? T - 1 : nearbyint(k * ((double)(T - 1) / (steps - 1)));
        } else {
            return fail(err, SD_ERR_ARG, "ddim timesteps: unknown spacing %d", spacing);
        }
        if (t < 0 || t >= T)
            return fail(err, SD_ERR_ARG, "ddim timesteps: timestep %.0f of %d steps (steps_offset %d) is outside 0..%d",
                        t, steps, steps_offset, T - 1);
        out[i] = (int)t;
    }
    return SD_OK;
}

SD_API int sd_ddim_prev_timestep(const sd_schedule *s, int t, int steps)
{
    return s && steps > 0 ? t - s->num_train_timesteps / steps : -1;
}

SD_API int sd_ddim_step(const sd_schedule *s, int t, int t_prev, int prediction, float eta,
                        const float *x, const float *model_out, size_t n,
                        const float *noise, sd_rng *rng,
                        float *prev_out, float *x0_out, sd_error *err)
{
    if (!s || !x || !model_out || !prev_out) return fail(err, SD_ERR_ARG, "ddim step: NULL argument");
    if (t < 0 || t >= s->num_train_timesteps || t_prev >= t)
        return fail(err, SD_ERR_ARG, "ddim step: from timestep %d to %d, expected to < from and 0 <= from < %d",
                    t, t_prev, s->num_train_timesteps);
    if (prediction != SD_PREDICT_EPSILON && prediction != SD_PREDICT_V)
        return fail(err, SD_ERR_ARG, "ddim step: unknown prediction type %d", prediction);
    if (!(eta >= 0 && isfinite(eta))) return fail(err, SD_ERR_ARG, "ddim step: eta %g, expected >= 0", eta);
    if (eta > 0 && !noise && !rng) return fail(err, SD_ERR_ARG, "ddim step: eta %g needs noise or a generator", eta);
    if (eta > 0 && !noise && (prev_out == x || prev_out == model_out))
        return fail(err, SD_ERR_ARG, "ddim step: drawing noise into prev_out would overwrite its input");

    float a_t = s->alphas_cumprod[t], b_t = 1.0f - a_t;
    float a_prev = t_prev >= 0 ? s->alphas_cumprod[t_prev] : s->final_alpha_cumprod, b_prev = 1.0f - a_prev;
    float sa = sqrtf(a_t), sb = sqrtf(b_t), sa_prev = sqrtf(a_prev);
    /* sigma_t of eq. 16: eta = 1 is DDPM's posterior noise, 0 none */
    float sigma = eta * sqrtf((b_prev / b_t) * (1.0f - a_t / a_prev));
    float direction = sqrtf(1.0f - a_prev - sigma * sigma);   /* weight of the noise pointing to x_t */
    if (eta > 0 && !noise) {
        sd_randn(rng, prev_out, n);
        noise = prev_out;
    }
    for (size_t i = 0; i < n; i++) {
        float x0, eps;
        if (prediction == SD_PREDICT_EPSILON) {
            eps = model_out[i];
            x0 = (x[i] - sb * eps) / sa;
        } else {
            x0 = sa * x[i] - sb * model_out[i];
            eps = sa * model_out[i] + sb * x[i];
        }
        float prev = sa_prev * x0 + direction * eps;
        if (eta > 0) prev += sigma * noise[i];
        if (x0_out) x0_out[i] = x0;
        prev_out[i] = prev;
    }
    return SD_OK;
}

SD_API int sd_img2img_start(int steps, double strength, int *start, sd_error *err)
{
    if (!start) return fail(err, SD_ERR_ARG, "img2img: NULL argument");
    if (steps < 1) return fail(err, SD_ERR_ARG, "img2img: %d steps, expected at least 1", steps);
    if (!(strength >= 0 && strength <= 1)) return fail(err, SD_ERR_ARG, "img2img: strength %g is outside [0, 1]", strength);
    int kept = (int)(steps * strength);   /* Python's int() truncates */
    if (kept < 1) return fail(err, SD_ERR_ARG, "img2img: strength %g keeps none of the %d steps", strength, steps);
    *start = steps - kept;
    return SD_OK;
}

SD_API int sd_add_noise(const sd_schedule *s, int t, const float *x0, const float *noise,
                        size_t n, float *out, sd_error *err)
{
    if (!s || !x0 || !noise || !out) return fail(err, SD_ERR_ARG, "add noise: NULL argument");
    if (t < 0 || t >= s->num_train_timesteps)
        return fail(err, SD_ERR_ARG, "add noise: timestep %d is outside 0..%d", t, s->num_train_timesteps - 1);
    float sa = sqrtf(s->alphas_cumprod[t]), sb = sqrtf(1.0f - s->alphas_cumprod[t]);
    for (size_t i = 0; i < n; i++) out[i] = sa * x0[i] + sb * noise[i];
    return SD_OK;
}

SD_API void sd_guidance(const float *uncond, const float *cond, float scale, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) out[i] = uncond[i] + scale * (cond[i] - uncond[i]);
}

SD_API void sd_image_guidance(const float *text, const float *image, const float *uncond, float scale,
                              float image_scale, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) out[i] = uncond[i] + scale * (text[i] - image[i]) + image_scale * (image[i] - uncond[i]);
}

/* The i-th of n points of numpy.linspace(0, T - 1, n), counted from the top: numpy multiplies the
   index by the step in double and puts the end point exactly. */
static double linspace_from_top(int T, int n, int i)
{
    int k = n - 1 - i;
    return n == 1 ? 0 : k == n - 1 ? T - 1 : k * ((double)(T - 1) / (n - 1));
}

/* numpy.interp of the training sigmas at a (fractional) timestep t, in double as numpy does. */
static double interp_sigma(const sd_schedule *s, double t)
{
    int T = s->num_train_timesteps;
    if (t <= 0) return s->sigmas[0];
    if (t >= T - 1) return s->sigmas[T - 1];
    int j = (int)t;
    if (t == j) return s->sigmas[j];
    return ((double)s->sigmas[j + 1] - s->sigmas[j]) * (t - j) + s->sigmas[j];
}

/* The fractional timestep of a sigma, by linear interpolation of log sigma over the training
   table (diffusers' _sigma_to_t): log_sigmas are float32 as numpy keeps them, the rest double,
   except the float32 difference of the two table entries that numpy computes in float32. */
static double sigma_to_timestep(const float *log_sigmas, int T, double sigma)
{
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;   /* the last entry not above ls (0 if none), kept below the top one */
    for (int i = 0; i < T; i++) if (ls - log_sigmas[i] >= 0) low = i;
    if (low > T - 2) low = T - 2;
    float span = log_sigmas[low] - log_sigmas[low + 1];
    double w = ((double)log_sigmas[low] - ls) / span;
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * low + w * (low + 1);
}

/* Karras et al. (2022), eq. 5: sigmas evenly spaced in sigma^(1/7) from the schedule's largest to
   its smallest, in double (numpy), stored as float32; the timesteps the UNet sees are those
   sigmas mapped back onto the training table, rounded half to even as numpy.round does. */
static void karras_schedule(sd_sampler *smp, const sd_schedule *s)
{
    int T = s->num_train_timesteps, n = smp->steps;
    float log_sigmas[SD_MAX_TRAIN_TIMESTEPS];
    for (int t = 0; t < T; t++) log_sigmas[t] = logf(s->sigmas[t]);
    double rho = 7.0, max_inv = pow(s->sigmas[T - 1], 1 / rho), min_inv = pow(s->sigmas[0], 1 / rho);
    for (int k = 0; k < n; k++) {
        double ramp = k == n - 1 && n > 1 ? 1 : k * (n > 1 ? 1.0 / (n - 1) : 0);   /* numpy.linspace(0, 1, n) */
        double sigma = pow(max_inv + ramp * (min_inv - max_inv), rho);
        smp->sigmas[k] = (float)sigma;
        smp->timesteps[k] = (float)nearbyint(sigma_to_timestep(log_sigmas, T, sigma));
    }
}

/* alpha = 1/sqrt(sigma² + 1) and sigma·alpha: the variance-preserving pair (sqrt(a_t), sqrt(1 - a_t))
   of a noise level, in float32 as diffusers computes them. */
static float vp_alpha(float sigma) { return 1.0f / sqrtf(sigma * sigma + 1.0f); }

/* DPM-Solver's time variable: lambda = log(alpha) - log(sigma·alpha), half the log signal-to-noise ratio. */
static float dpm_lambda(float sigma)
{
    float alpha = vp_alpha(sigma);
    return logf(alpha) - logf(sigma * alpha);
}

/* LCM (Luo et al. 2023, §4.2 and alg. 3): the UNet was distilled to map any point of the
   probability-flow ODE to its origin, on a skipping schedule of 50 of the training timesteps
   (every 20th: 999, 979, ..., 19). Inference takes `steps` of those, evenly spaced (numpy's
   linspace(0, 50, steps, endpoint=False), floored, as LCMScheduler picks them), and at each one
   predicts the clean latents and noises them afresh down to the next timestep. */
#define LCM_ORIGINAL_STEPS 50
#define LCM_TIMESTEP_SCALING 10.0

static int lcm_schedule(sd_sampler *smp, const sd_schedule *s, sd_error *err)
{
    int n = smp->steps, every = s->num_train_timesteps / LCM_ORIGINAL_STEPS;
    if (every < 1 || n > LCM_ORIGINAL_STEPS)
        return fail(err, SD_ERR_ARG, "sampler: LCM takes 1..%d steps of a schedule of %d or more training timesteps, not %d of %d",
                    LCM_ORIGINAL_STEPS, LCM_ORIGINAL_STEPS, n, s->num_train_timesteps);
    for (int k = 0; k < n; k++) {
        int index = (int)floor(k * ((double)LCM_ORIGINAL_STEPS / n));   /* into the 50, largest first */
        smp->timesteps[k] = (float)((LCM_ORIGINAL_STEPS - index) * every - 1);
    }
    return SD_OK;
}

SD_API void sd_lcm_scalings(float t, float *c_skip, float *c_out)
{
    double u = LCM_TIMESTEP_SCALING * t, sigma_data2 = 0.25;
    if (c_skip) *c_skip = (float)(sigma_data2 / (u * u + sigma_data2));
    if (c_out) *c_out = (float)(u / sqrt(u * u + sigma_data2));
}

/* One LCM step: x0 from the UNet's output as DDIM reads it, the consistency function's output
   denoised = c_out·x0 + c_skip·x (at these timesteps c_skip < 1e-5: nearly x0 itself), then
   unless this is the last step, denoised noised to the next timestep with fresh noise. */
static void lcm_step(const sd_sampler *smp, int k, const float *x, const float *m, size_t n, const float *noise,
                     float *out, float *denoised_out)
{
    const sd_schedule *s = smp->schedule;
    int t = (int)smp->timesteps[k], last = k + 1 == smp->steps;
    float a_t = s->alphas_cumprod[t], sa = sqrtf(a_t), sb = sqrtf(1.0f - a_t), c_skip, c_out;
    float a_next = last ? a_t : s->alphas_cumprod[(int)smp->timesteps[k + 1]], sa_next = sqrtf(a_next), sb_next = sqrtf(1.0f - a_next);
    sd_lcm_scalings((float)t, &c_skip, &c_out);
    for (size_t i = 0; i < n; i++) {
        float x0 = smp->prediction == SD_PREDICT_EPSILON ? (x[i] - sb * m[i]) / sa : sa * x[i] - sb * m[i];
        float denoised = c_out * x0 + c_skip * x[i];
        if (denoised_out) denoised_out[i] = denoised;
        out[i] = last ? denoised : sa_next * denoised + sb_next * noise[i];
    }
}

/* The timesteps and sigmas of the run. Everything but Euler's linspace and Karras is integral and
   is DDIM's spacing rule (LCM: its own); DPM-Solver spreads steps + 1 points and drops the last
   (leading, linspace). */
static int sampler_schedule(sd_sampler *smp, const sd_schedule *s, int spacing, int steps_offset, sd_error *err)
{
    int T = s->num_train_timesteps, n = smp->steps, ts[SD_MAX_TRAIN_TIMESTEPS], rc;
    int euler = smp->kind == SD_SAMPLER_EULER || smp->kind == SD_SAMPLER_EULER_A;
    if (smp->kind == SD_SAMPLER_LCM) {
        if ((rc = lcm_schedule(smp, s, err))) return rc;
    } else if (smp->kind == SD_SAMPLER_DPMPP_2M && smp->karras) {
        karras_schedule(smp, s);
    } else if (euler && spacing == SD_SPACING_LINSPACE) {   /* float32 and fractional: 999, 799.2, ... */
        for (int k = 0; k < n; k++) smp->timesteps[k] = (float)linspace_from_top(T, n, k);
    } else {
        int points = smp->kind == SD_SAMPLER_DPMPP_2M && spacing != SD_SPACING_TRAILING ? n + 1 : n;
        if (points > T)
            return fail(err, SD_ERR_ARG, "sampler: DPM++ 2M takes at most %d steps with this spacing, not %d", T - 1, n);
        if ((rc = sd_ddim_timesteps(s, points, spacing, steps_offset, ts, err))) return rc;
        for (int k = 0; k < n; k++) smp->timesteps[k] = (float)ts[k];   /* DPM: the lowest point dropped */
    }
    if (!(smp->kind == SD_SAMPLER_DPMPP_2M && smp->karras))
        for (int k = 0; k < n; k++) smp->sigmas[k] = (float)interp_sigma(s, smp->timesteps[k]);
    smp->sigmas[n] = 0;   /* every sampler here ends on the clean latents */

    /* Euler's latents carry noise of the largest sigma, but diffusers' rule for leading spacing
       (SDXL's default) is sqrt(sigma_max² + 1). DDIM and DPM++ work on variance-preserving
       latents: unit noise. */
    float max_sigma = 0;
    for (int k = 0; k < n; k++) if (smp->sigmas[k] > max_sigma) max_sigma = smp->sigmas[k];
    smp->init_noise_sigma = !euler ? 1.0f : spacing == SD_SPACING_LEADING ? sqrtf(max_sigma * max_sigma + 1.0f) : max_sigma;
    return SD_OK;
}

SD_API int sd_sampler_init(sd_sampler *smp, const sd_schedule *s, int kind, int steps, int spacing,
                           int steps_offset, int karras, int prediction, float eta, sd_error *err)
{
    static const char *names[] = { "DDIM", "Euler", "Euler a", "DPM++ 2M", "LCM" };
    if (!smp || !s) return fail(err, SD_ERR_ARG, "sampler: NULL argument");
    int T = s->num_train_timesteps;
    if (kind < SD_SAMPLER_DDIM || kind > SD_SAMPLER_LCM) return fail(err, SD_ERR_ARG, "sampler: unknown kind %d", kind);
    if (T < 2 || T > SD_MAX_TRAIN_TIMESTEPS) return fail(err, SD_ERR_ARG, "sampler: schedule of %d training timesteps, expected 2..%d", T, SD_MAX_TRAIN_TIMESTEPS);
    if (steps < 1 || steps > T) return fail(err, SD_ERR_ARG, "sampler: %d steps, expected 1..%d", steps, T);
    if (spacing != SD_SPACING_LEADING && spacing != SD_SPACING_TRAILING && spacing != SD_SPACING_LINSPACE)
        return fail(err, SD_ERR_ARG, "sampler: unknown timestep spacing %d", spacing);
    if (prediction != SD_PREDICT_EPSILON && prediction != SD_PREDICT_V)
        return fail(err, SD_ERR_ARG, "sampler: unknown prediction type %d", prediction);
    if (karras && kind != SD_SAMPLER_DPMPP_2M)
        return fail(err, SD_ERR_UNSUPPORTED, "sampler: Karras sigmas are available with DPM++ 2M only, not %s", names[kind]);
    if (!(eta >= 0 && isfinite(eta)) || (eta != 0 && kind != SD_SAMPLER_DDIM))
        return fail(err, SD_ERR_ARG, "sampler: eta %g, expected >= 0 and only for DDIM (%s)", eta, names[kind]);
    memset(smp, 0, sizeof *smp);
    smp->kind = kind;
    smp->steps = steps;
    smp->prediction = prediction;
    smp->karras = karras != 0;
    smp->eta = eta;
    smp->schedule = s;
    smp->history_step = -1;
    return sampler_schedule(smp, s, spacing, steps_offset, err);
}

SD_API float sd_sampler_input_scale(const sd_sampler *smp, int k)
{
    if (!smp || k < 0 || k >= smp->steps || (smp->kind != SD_SAMPLER_EULER && smp->kind != SD_SAMPLER_EULER_A)) return 1.0f;
    return 1.0f / sqrtf(smp->sigmas[k] * smp->sigmas[k] + 1.0f);
}

/* x0 = cx·x + cm·model_out: the clean latents the UNet's output implies at noise level sigma.
   Euler's latents are x = x0 + sigma·noise; DPM-Solver's (vp) are that times alpha, DDIM's scale.
   epsilon: noise = model_out; v = alpha·noise - sigma·alpha·x0 (Salimans & Ho 2022). */
static void x0_coefficients(int prediction, float sigma, int vp, float *cx, float *cm)
{
    float alpha = vp_alpha(sigma);
    if (prediction == SD_PREDICT_EPSILON) { *cx = vp ? 1.0f / alpha : 1.0f; *cm = -sigma; }
    else if (vp) { *cx = alpha; *cm = -sigma * alpha; }
    else { *cx = 1.0f / (sigma * sigma + 1.0f); *cm = -sigma * alpha; }
}

/* Euler's method on the probability-flow ODE dx/dsigma = (x - x0)/sigma (Karras et al. 2022, alg. 2)
   from sigma down to sigma_down, plus sigma_up·noise: plain Euler has sigma_down = sigma_next and
   no noise; Euler a steps further down and adds fresh noise back up to sigma_next (ancestral sampling). */
static void euler_step(const sd_sampler *smp, int k, float sigma_down, float sigma_up, const float *x,
                       const float *m, size_t n, const float *noise, float *out, float *x0_out)
{
    float sigma = smp->sigmas[k], cx, cm, dt = sigma_down - sigma;
    x0_coefficients(smp->prediction, sigma, 0, &cx, &cm);
    for (size_t i = 0; i < n; i++) {
        float x0 = cx * x[i] + cm * m[i], d = (x[i] - x0) / sigma;
        float next = x[i] + d * dt;
        if (noise) next += noise[i] * sigma_up;
        if (x0_out) x0_out[i] = x0;
        out[i] = next;
    }
}

/* DPM-Solver++(2M) (Lu et al. 2022, alg. 2) with the midpoint rule: exact integration of the
   linear part from lambda_s to lambda_t, the x0 prediction extrapolated from this and the
   previous step (second order) or held constant (first order: the first step, the last, and
   any step without the previous x0). The last step, to sigma 0, lands on x0 itself. */
static void dpm_step(sd_sampler *smp, int k, const float *x, const float *m, size_t n, float *history,
                     float *out, float *x0_out)
{
    float sigma = smp->sigmas[k], sigma_next = smp->sigmas[k + 1], cx, cm;
    x0_coefficients(smp->prediction, sigma, 1, &cx, &cm);
    int second = k > 0 && smp->history_step == k - 1 && k + 1 < smp->steps;
    float alpha_t = vp_alpha(sigma_next), ratio = 0, c0 = 0, c1 = 0;
    if (sigma_next > 0) {
        float lambda_s = dpm_lambda(sigma), h = dpm_lambda(sigma_next) - lambda_s;
        ratio = (sigma_next * alpha_t) / (sigma * vp_alpha(sigma));
        c0 = alpha_t * (expf(-h) - 1.0f);
        if (second) {   /* D1 = (x0_k - x0_{k-1}) / r0, r0 = h_{k-1} / h_k */
            float r0 = (lambda_s - dpm_lambda(smp->sigmas[k - 1])) / h;
            c1 = 0.5f * c0 * (1.0f / r0);
        }
    }
    for (size_t i = 0; i < n; i++) {
        float x0 = cx * x[i] + cm * m[i];
        float next = sigma_next > 0 ? ratio * x[i] - c0 * x0 : x0;
        if (second) next -= c1 * (x0 - history[i]);
        history[i] = x0;
        if (x0_out) x0_out[i] = x0;
        out[i] = next;
    }
    smp->history_step = k;
}

static int overlaps(const float *a, const float *b, size_t n)
{
    uintptr_t p = (uintptr_t)a, q = (uintptr_t)b, bytes = n * sizeof(float);
    return a && b && n && p < q + bytes && q < p + bytes;
}

SD_API int sd_sampler_step(sd_sampler *smp, int k, const float *x, const float *model_out, size_t n,
                           const float *noise, sd_rng *rng, float *history, float *out,
                           float *x0_out, sd_error *err)
{
    if (!smp || !smp->schedule || !x || !model_out || !out) return fail(err, SD_ERR_ARG, "sampler step: NULL argument");
    if (k < 0 || k >= smp->steps) return fail(err, SD_ERR_ARG, "sampler step: step %d of %d steps", k, smp->steps);
    if (smp->kind == SD_SAMPLER_DDIM) {
        const sd_schedule *s = smp->schedule;
        int t = (int)smp->timesteps[k];
        return sd_ddim_step(s, t, sd_ddim_prev_timestep(s, t, smp->steps), smp->prediction, smp->eta,
                            x, model_out, n, noise, rng, out, x0_out, err);
    }
    if (smp->kind == SD_SAMPLER_DPMPP_2M) {
        if (!history) return fail(err, SD_ERR_ARG, "sampler step: DPM++ 2M needs a history buffer of %zu floats", n);
        if (overlaps(history, x, n) || overlaps(history, model_out, n) || overlaps(history, out, n) || overlaps(history, x0_out, n))
            return fail(err, SD_ERR_ARG, "sampler step: the DPM++ 2M history buffer overlaps the latents");
        dpm_step(smp, k, x, model_out, n, history, out, x0_out);
        return SD_OK;
    }
    if (smp->kind == SD_SAMPLER_LCM) {
        if (k + 1 < smp->steps && !noise) {   /* diffusers' step() draws at every step but the last */
            if (!rng) return fail(err, SD_ERR_ARG, "sampler step: LCM needs noise or a generator before its last step");
            if (out == x || out == model_out) return fail(err, SD_ERR_ARG, "sampler step: drawing LCM's noise into out would overwrite its input");
            sd_randn(rng, out, n);
            noise = out;
        }
        lcm_step(smp, k, x, model_out, n, noise, out, x0_out);
        return SD_OK;
    }
    float sigma = smp->sigmas[k], sigma_next = smp->sigmas[k + 1], sigma_up = 0, sigma_down = sigma_next;
    if (smp->kind == SD_SAMPLER_EULER_A) {
        if (!noise && !rng) return fail(err, SD_ERR_ARG, "sampler step: Euler a needs noise or a generator");
        if (!noise && (out == x || out == model_out))
            return fail(err, SD_ERR_ARG, "sampler step: drawing Euler a's noise into out would overwrite its input");
        /* the ancestral split (k-diffusion's get_ancestral_step): go down to sigma_down, where
           adding sigma_up of fresh noise brings the variance back to sigma_next² */
        sigma_up = sqrtf(sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma));
        sigma_down = sqrtf(sigma_next * sigma_next - sigma_up * sigma_up);
        if (!noise) {   /* every step draws, the last too (sigma_up = 0), as diffusers' step() does */
            sd_randn(rng, out, n);
            noise = out;
        }
    }
    euler_step(smp, k, sigma_down, sigma_up, x, model_out, n, smp->kind == SD_SAMPLER_EULER_A ? noise : NULL, out, x0_out);
    return SD_OK;
}

SD_API int sd_sampler_add_noise(const sd_sampler *smp, int k, const float *x0, const float *noise,
                                size_t n, float *out, sd_error *err)
{
    if (!smp || !smp->schedule || !x0 || !noise || !out) return fail(err, SD_ERR_ARG, "sampler add noise: NULL argument");
    if (k < 0 || k >= smp->steps) return fail(err, SD_ERR_ARG, "sampler add noise: step %d of %d steps", k, smp->steps);
    if (smp->kind == SD_SAMPLER_DDIM || smp->kind == SD_SAMPLER_LCM) return sd_add_noise(smp->schedule, (int)smp->timesteps[k], x0, noise, n, out, err);
    float sigma = smp->sigmas[k];
    if (smp->kind == SD_SAMPLER_DPMPP_2M) {   /* variance preserving: alpha·x0 + sigma·alpha·noise */
        float alpha = vp_alpha(sigma), sigma_t = sigma * alpha;
        for (size_t i = 0; i < n; i++) out[i] = alpha * x0[i] + sigma_t * noise[i];
    } else {
        for (size_t i = 0; i < n; i++) out[i] = x0[i] + noise[i] * sigma;
    }
    return SD_OK;
}

/* ---- 10. Pipeline -------------------------------------------------------------------------- */
/* The front door: prompt → tokens → text encoder context (unconditional and conditional) → a
   sampler over the UNet with classifier-free guidance (Ho & Salimans 2022) → VAE decoder →
   pixels, as diffusers' StableDiffusion(XL)Pipeline and StableDiffusion(XL)Img2ImgPipeline do it. */

struct sd_model {
    sd_safetensors files[SD_MAX_FILES];
    const sd_safetensors *meta;   /* the file whose __metadata__ describes the model, if any */
    sd_safetensors config_meta;   /* or the same keys, read from diffusers config.json files */
    sd_model_info info;
    sd_clip_vocab *vocab;
    sd_clip_pad pad[2];           /* per encoder: SD1 pads with <|endoftext|>, SD2 with "!", SDXL one of each */
    sd_text_encoder te[2];        /* te[1]: SDXL's second encoder (no layers otherwise) */
    int encoders;                 /* 1, or 2 for SDXL */
    int context_dim;              /* the encoders' widths together: what the UNet attends to */
    int zero_negative;            /* SDXL: no negative prompt = zeros (force_zeros_for_empty_prompt) */
    sd_unet_model *unet;
    sd_vae *vae;
    sd_schedule schedule;
    int steps_offset;
};

/* A number from the checkpoint's `sd.*` metadata, or the default. */
static double meta_number(const sd_safetensors *meta, const char *key, double dflt)
{
    const char *v = meta ? sd_safetensors_meta(meta, key) : NULL;
    double d;
    return v && parse_number(v, &d) ? d : dflt;
}

/* The config.json keys of a diffusers folder that say what tensor shapes cannot, and the sd.*
   metadata keys of single files that say the same, by the kind of config that holds them: the
   text encoder's (CLIPTextModel), SDXL's second (CLIPTextModelWithProjection), the others'.
   diffusers calls the UNet's heads `attention_head_dim` (a list, one per level, for SD2/SDXL),
   or `num_attention_heads` in newer configs. */
enum { CONFIG_TEXT, CONFIG_TEXT2, CONFIG_OTHER };
static const struct { int kind; const char *json, *meta; } config_keys[] = {
    {CONFIG_TEXT, "num_attention_heads", "sd.clip.heads"}, {CONFIG_TEXT, "hidden_act", "sd.clip.hidden_act"},
    {CONFIG_TEXT, "layer_norm_eps", "sd.clip.layer_norm_eps"},
    {CONFIG_TEXT2, "num_attention_heads", "sd.clip2.heads"}, {CONFIG_TEXT2, "hidden_act", "sd.clip2.hidden_act"},
    {CONFIG_TEXT2, "layer_norm_eps", "sd.clip2.layer_norm_eps"},
    {CONFIG_OTHER, "num_attention_heads", "sd.unet.num_heads"},   /* when set, it wins over attention_head_dim */
    {CONFIG_OTHER, "attention_head_dim", "sd.unet.num_heads"},
    {CONFIG_OTHER, "prediction_type", "sd.scheduler.prediction_type"}, {CONFIG_OTHER, "steps_offset", "sd.scheduler.steps_offset"},
    {CONFIG_OTHER, "num_train_timesteps", "sd.scheduler.num_train_timesteps"}, {CONFIG_OTHER, "beta_start", "sd.scheduler.beta_start"},
    {CONFIG_OTHER, "beta_end", "sd.scheduler.beta_end"}, {CONFIG_OTHER, "scaling_factor", "sd.vae.scaling_factor"},
    {CONFIG_OTHER, "timestep_spacing", "sd.scheduler.timestep_spacing"},
};
#define CONFIG_KEYS (int)(sizeof config_keys / sizeof config_keys[0])

/* Which kind of config.json a text is (transformers' text-encoder configs have model_type). */
static int config_kind(const char *text, size_t size)
{
    json j;
    char value[128];
    if (!json_find(&j, text, size, "model_type") || !json_scalar(&j, value, sizeof value) || strcmp(value, "clip_text_model"))
        return CONFIG_OTHER;
    return json_find(&j, text, size, "architectures") && json_scalar(&j, value, sizeof value) &&
           strstr(value, "WithProjection") ? CONFIG_TEXT2 : CONFIG_TEXT;
}

/* Builds m->config_meta (a table of metadata pairs, no tensors) from the caller's config texts. */
static int read_configs(sd_model *m, const sd_source *src, sd_arena *a, sd_error *err)
{
    sd_safetensors *cm = &m->config_meta;
    cm->meta_keys = (const char **)arena_array(a, CONFIG_KEYS, sizeof(char *), err);
    cm->meta_values = (const char **)arena_array(a, CONFIG_KEYS, sizeof(char *), err);
    if (!cm->meta_values) return SD_ERR_MEMORY;
    for (int k = 0; k < CONFIG_KEYS; k++)
        for (int i = 0; i < src->config_count; i++) {
            json j;
            char value[64], *copy;
            if (!src->config[i] || config_kind(src->config[i], src->config_size[i]) != config_keys[k].kind ||
                !json_find(&j, src->config[i], src->config_size[i], config_keys[k].json) ||
                !json_scalar(&j, value, sizeof value)) continue;
            if (!(copy = (char *)sd_arena_alloc(a, strlen(value) + 1, err))) return SD_ERR_MEMORY;
            memcpy(copy, value, strlen(value) + 1);
            cm->meta_keys[cm->meta_count] = config_keys[k].meta;
            cm->meta_values[cm->meta_count++] = copy;
            break;
        }
    if (cm->meta_count) m->meta = cm;
    return SD_OK;
}

/* Which file holds the VAE: the one with an encoder or decoder under either name map. */
static const sd_safetensors *find_vae_file(const sd_model *m, int nfiles)
{
    for (int i = 0; i < nfiles; i++)
        if (sd_safetensors_find(&m->files[i], "first_stage_model.decoder.conv_in.weight") ||
            sd_safetensors_find(&m->files[i], "decoder.conv_in.weight"))
            return &m->files[i];
    return NULL;
}

/* Whether an SD2 checkpoint without a prediction type is the 768 v-prediction model (SD 2.x
   768) rather than an epsilon one (SD 2.x base, SD-Turbo). The files do not say; the weights do:
   ComfyUI's rule, that the spread of one LayerNorm bias of the last up block is above 0.09 only
   in the v models. Without that tensor: v, the 768 model being the common download. */
static int sd2_looks_v(const sd_model *m)
{
    const sd_tensor *t = NULL;
    for (int i = 0; i < SD_MAX_FILES && !t; i++)
        if (m->files[i].count) t = sd_safetensors_find(&m->files[i], "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias");
    if (!t || t->ndim != 1 || t->shape[0] < 2 || !dtype_is_weight(t->dtype)) return 1;
    double sum = 0, sq = 0, n = (double)t->shape[0];
    for (int64_t i = 0; i < t->shape[0]; i++) {
        double v = tensor_get(t, (size_t)i);
        sum += v;
        sq += v * v;
    }
    return sqrt(sq / n - (sum / n) * (sum / n)) > 0.09;
}

/* File i's first 8 bytes (fewer in a shorter file, the rest zero): from memory, or read into
   head through the callback (NULL if that fails). */
static const unsigned char *model_file_head(const sd_source *src, int i, unsigned char head[8])
{
    size_t n = src->size[i] < 8 ? src->size[i] : 8;
    if (src->data[i] || !src->read) return (const unsigned char *)src->data[i];
    memset(head, 0, 8);
    return n && src->read(src->read_user, i, 0, head, n) ? NULL : head;
}

/* Whether file i of a model is a GGUF file (by its magic) rather than safetensors. */
static int model_file_is_gguf(const sd_source *src, int i)
{
    unsigned char head[8];
    const unsigned char *b = model_file_head(src, i, head);
    return b && src->size[i] >= 4 && !memcmp(b, "GGUF", 4);
}

/* A safetensors file read through the caller's callback: its header read into the arena, its
   tensors left where they are (data NULL, read on use through r). */
static int st_open_read(sd_safetensors *st, const sd_source *src, int i, sd_arena *a, sd_error *err)
{
    unsigned char head[8];
    uint64_t hlen;
    int rc;
    sd_reader *r = (sd_reader *)sd_arena_alloc(a, sizeof *r, err);
    if (!r) return SD_ERR_MEMORY;
    memset(r, 0, sizeof *r);
    r->read = src->read, r->user = src->read_user, r->file = i;
    if (!model_file_head(src, i, head)) return fail(err, SD_ERR_IO, "model: the read callback failed on the first bytes of file %d", i);
    if (src->size[i] >= 4 && !memcmp(head, "GGUF", 4))
        return fail(err, SD_ERR_UNSUPPORTED, "model: file %d is GGUF, which sd.h reads from memory only (data[%d], e.g. mmap'd)", i, i);
    if ((rc = st_header_length(head, src->size[i], &hlen, err))) return rc;
    unsigned char *b = (unsigned char *)sd_arena_alloc(a, 8 + (size_t)hlen, err);
    if (!b) return SD_ERR_MEMORY;
    if (src->read(src->read_user, i, 0, b, 8 + (size_t)hlen))
        return fail(err, SD_ERR_IO, "model: the read callback failed on the %llu-byte header of file %d", (unsigned long long)hlen, i);
    memset(st, 0, sizeof *st);
    st->reader = r;
    return st_open(st, b, src->size[i], a, err);
}

static int model_load(sd_model *m, const sd_source *src, sd_arena *a, sd_error *err)
{
    int rc, n = src->count;
    for (int i = 0; i < n; i++) {
        if (!src->data[i] && src->read) rc = st_open_read(&m->files[i], src, i, a, err);
        else if (model_file_is_gguf(src, i)) rc = sd_gguf_open(&m->files[i], src->data[i], src->size[i], a, err);
        else rc = sd_safetensors_open(&m->files[i], src->data[i], src->size[i], a, err);
        if (rc) return rc;
        if (sd_safetensors_meta(&m->files[i], "sd.version")) m->meta = &m->files[i];
    }
    if (!m->meta && src->config_count > 0 && (rc = read_configs(m, src, a, err))) return rc;
    if ((rc = sd_clip_vocab_load(&m->vocab, src->merges, src->merges_size, NULL, 0, a, err))) return rc;
    if ((rc = sd_unet_load(&m->unet, m->files, n, m->meta, a, err))) return rc;
    if ((rc = sd_text_encoder_load(&m->te[0], m->files, n, m->meta, 0, a, err))) return rc;
    /* SDXL: the UNet's added conditioning takes the second encoder's pooled embedding */
    m->encoders = sd_unet_add_dim(m->unet) ? 2 : 1;
    if (m->encoders == 2 && (rc = sd_text_encoder_load(&m->te[1], m->files, n, m->meta, 1, a, err))) return rc;
    if (m->encoders == 2 && !m->te[1].proj_dim)
        return fail(err, SD_ERR_MISSING, "model: the SDXL UNet takes a pooled text embedding, but the second text encoder has no text_projection");
    const sd_safetensors *vf = find_vae_file(m, n);
    if (!vf) return fail(err, SD_ERR_MISSING, "model: no VAE (first_stage_model.decoder.* or a diffusers vae/ file) among the %d files", n);
    if ((rc = sd_vae_load(&m->vae, vf, a, err))) return rc;
    if (m->meta && sd_safetensors_meta(m->meta, "sd.vae.scaling_factor"))
        sd_vae_set_scaling_factor(m->vae, (float)meta_number(m->meta, "sd.vae.scaling_factor", 0.18215));
    else if (m->encoders == 2)
        sd_vae_set_scaling_factor(m->vae, 0.13025f);   /* SDXL's VAE, retrained: its latents are larger */

    /* the parts must fit together the way the pipeline joins them */
    const sd_vae_config *vc = sd_vae_get_config(m->vae);
    m->context_dim = m->te[0].width + (m->encoders == 2 ? m->te[1].width : 0);
    /* 4 input channels: the latents; 9: latents, mask and masked-image latents (inpainting);
       8: latents and image latents (InstructPix2Pix) */
    if ((m->unet->in_channels != 4 && m->unet->in_channels != 8 && m->unet->in_channels != 9) || m->unet->out_channels != 4)
        return fail(err, SD_ERR_UNSUPPORTED, "model: the UNet takes %d and gives %d channels; sd.h runs UNets of 4 (txt2img), 9 (inpainting) "
                    "or 8 (InstructPix2Pix) input channels and 4 output channels", m->unet->in_channels, m->unet->out_channels);
    if (vc->embed_dim != 4 || vc->levels != 4)
        return fail(err, SD_ERR_UNSUPPORTED, "model: the VAE has %d latent channels and %d levels; the pipeline needs 4 and 4 (8x)", vc->embed_dim, vc->levels);
    if (m->unet->context_dim != m->context_dim)
        return fail(err, SD_ERR_SHAPE, "model: the UNet attends to %d-wide context but the text encoder%s %d", m->unet->context_dim,
                    m->encoders == 2 ? "s give" : " gives", m->context_dim);
    if (m->encoders == 2 && !size_embedding_width(m->unet->add_dim, m->te[1].proj_dim))
        return fail(err, SD_ERR_SHAPE, "model: the UNet's added conditioning is %d wide, which is not the %d-wide pooled text "
                    "embedding and six even-sized size embeddings", m->unet->add_dim, m->te[1].proj_dim);

    /* the family: SD2 is OpenCLIP's gelu text tower (1024 wide in real checkpoints); SDXL reads
       both encoders' penultimate layer without the final LayerNorm */
    sd_model_info *in = &m->info;
    in->version = m->encoders == 2 ? SD_VERSION_XL : (int)meta_number(m->meta, "sd.version", m->te[0].gelu ? 2 : 1) == 2 ? 2 : 1;
    for (int e = 0; e < m->encoders && in->version == SD_VERSION_XL; e++)
        if (!clip_meta(m->meta, e ? "sd.clip2" : "sd.clip", "output")) {
            m->te[e].output_layer = m->te[e].layers - 1;
            m->te[e].output_final_ln = 0;
        }
    in->diffusers = sd_safetensors_find(&m->files[0], "model.diffusion_model.out.2.weight") == NULL &&
                    sd_safetensors_find(&m->files[0], "cond_stage_model.transformer.text_model.final_layer_norm.weight") == NULL;
    {
        const char *pt = m->meta ? sd_safetensors_meta(m->meta, "sd.scheduler.prediction_type") : NULL;
        in->prediction = pt ? (!strcmp(pt, "v_prediction") ? SD_PREDICT_V : SD_PREDICT_EPSILON)
                            : in->version == 2 && sd2_looks_v(m) ? SD_PREDICT_V : SD_PREDICT_EPSILON;
    }
    in->text_width = m->context_dim;
    in->text_layers = m->te[0].layers;
    in->unet_in_channels = m->unet->in_channels;
    in->vae_scale = sd_vae_get_config(m->vae)->scaling_factor;
    in->guidance_dim = m->unet->guidance_dim;
    /* SD1's tokenizer pads with <|endoftext|>, OpenCLIP's (SD2, SDXL's second) with "!" (id 0),
       unless the metadata says otherwise */
    m->pad[0] = in->version == 2 ? SD_CLIP_PAD_EXCLAMATION : SD_CLIP_PAD_EOS;
    m->pad[1] = SD_CLIP_PAD_EXCLAMATION;
    for (int e = 0; e < m->encoders; e++) {
        const char *pad = clip_meta(m->meta, e ? "sd.clip2" : "sd.clip", "pad_token_id");
        if (pad && !strcmp(pad, "0")) m->pad[e] = SD_CLIP_PAD_EXCLAMATION;
        else if (pad && !strcmp(pad, "49407")) m->pad[e] = SD_CLIP_PAD_EOS;
        else if (pad) return fail(err, SD_ERR_UNSUPPORTED, "model: metadata %s.pad_token_id = '%.20s': sd.h pads with 49407 or 0",
                                  e ? "sd.clip2" : "sd.clip", pad);
    }
    {
        const char *zeros = m->meta ? sd_safetensors_meta(m->meta, "sd.cond.force_zeros_for_empty_prompt") : NULL;
        m->zero_negative = in->version == SD_VERSION_XL && !(zeros && !strcmp(zeros, "false"));
    }
    double offset = meta_number(m->meta, "sd.scheduler.steps_offset", 1), train = meta_number(m->meta, "sd.scheduler.num_train_timesteps", 1000);
    if (!(offset >= 0 && offset < 1000 && train >= 1 && train <= SD_MAX_TRAIN_TIMESTEPS))
        return fail(err, SD_ERR_FORMAT, "model: metadata steps_offset %g / num_train_timesteps %g out of range", offset, train);
    m->steps_offset = (int)offset;
    return sd_schedule_init(&m->schedule, (int)train,
                            meta_number(m->meta, "sd.scheduler.beta_start", 0.00085),
                            meta_number(m->meta, "sd.scheduler.beta_end", 0.012), SD_BETA_SCALED_LINEAR, err);
}

SD_API int sd_model_load(sd_model **model, const sd_source *src, sd_arena *a, sd_error *err)
{
    if (model) *model = NULL;
    if (!model || !src || !a || src->count < 1 || src->count > SD_MAX_FILES || !src->merges ||
        src->config_count < 0 || src->config_count > SD_MAX_FILES + 2)
        return fail(err, SD_ERR_ARG, "model: need 1..%d safetensors files and merges.txt", SD_MAX_FILES);
    size_t mark = sd_arena_mark(a);
    sd_model *m = (sd_model *)sd_arena_alloc(a, sizeof *m, err);
    if (!m) return SD_ERR_MEMORY;
    memset(m, 0, sizeof *m);
    int rc = model_load(m, src, a, err);
    if (rc) { sd_arena_reset(a, mark); return rc; }
    *model = m;
    return SD_OK;
}

SD_API size_t sd_model_arena_bytes(const sd_source *src)
{
    size_t total = sizeof(sd_model) + sd_clip_vocab_arena_bytes(src ? src->merges_size : 0) + (4u << 20);
    for (int i = 0; src && i < src->count && i < SD_MAX_FILES; i++) {
        unsigned char head[8];
        const unsigned char *b = model_file_head(src, i, head);
        if (src->data[i] && model_file_is_gguf(src, i)) {   /* GGUF: what the reader's first pass counts */
            total += (size_t)gguf_arena_bytes((const unsigned char *)src->data[i], src->size[i]) + 65536;
            continue;
        }
        total += safetensors_arena_bound(b, src->size[i]);
        if (!src->data[i])   /* read through the callback: the reader and a copy of the header */
            total += arena_piece(sizeof(sd_reader)) + arena_piece(8 + safetensors_header_bytes(b, src->size[i]));
    }
    return total;
}

/* Load-time quantization: every weight sd_quantize_choice picks, quantized into the arena; the
   table entries (which the UNet and VAE point to) and the text encoders' copies of them (views
   into OpenCLIP's fused in_proj among them) are moved to the quantized bytes. A dry run on a
   measuring arena is the plan. The caller's file bytes are only read. */
/* The EMA copy of the UNet that full training checkpoints carry (v1-5-pruned: 7.7 GB): sd.h
   runs model.diffusion_model.*, so quantizing these would only fill the arena. */
static int model_unused(const sd_tensor *t) { return !strncmp(t->name, "model_ema.", 10); }

static void quantize_rebase(sd_tensor *v, const sd_tensor *old, sd_dtype type, const void *data)
{
    if (v->name != old->name || v->dtype != old->dtype || (!v->data && !v->reader)) return;
    size_t first = (size_t)(v->offset - old->offset) / sd_dtype_size(old->dtype);
    v->data = (const unsigned char *)data + dtype_bytes(type, first);
    v->reader = NULL;
    v->nbytes = dtype_bytes(type, (uint64_t)sd_tensor_numel(v));
    v->dtype = type;
}

static int model_quantize(sd_model *m, sd_dtype type, sd_arena *a, sd_error *err)
{
    int64_t longest = 1;
    int dry = arena_measuring(a);
    for (int f = 0; f < SD_MAX_FILES; f++)
        for (int i = 0; i < m->files[f].count; i++)
            if (sd_quantize_choice(&m->files[f].tensors[i], type) != m->files[f].tensors[i].dtype && !model_unused(&m->files[f].tensors[i])) {
                int64_t len = tensor_row_length(&m->files[f].tensors[i]);
                longest = len > longest ? len : longest;
            }
    float *row = arena_floats(a, (size_t)longest, err);
    if (!row) return SD_ERR_MEMORY;
    for (int f = 0; f < SD_MAX_FILES; f++)
        for (int i = 0; i < m->files[f].count; i++) {
            sd_tensor *t = &m->files[f].tensors[i];
            sd_dtype to = sd_quantize_choice(t, type);
            if (to == t->dtype || model_unused(t)) continue;
            void *q = sd_arena_alloc(a, dtype_bytes(to, (uint64_t)sd_tensor_numel(t)), err);
            if (!q) return SD_ERR_MEMORY;
            if (dry) continue;
            sd_tensor_convert(t, to, q, row);
            for (int e = 0; e < m->encoders; e++) {
                sd_text_encoder *te = &m->te[e];
                sd_tensor *top[5];
                top[0] = &te->token_embedding, top[1] = &te->position_embedding, top[2] = &te->final_ln_w;
                top[3] = &te->final_ln_b, top[4] = &te->projection;
                for (int k = 0; k < 5; k++) quantize_rebase(top[k], t, to, q);
                for (int l = 0; l < te->layers; l++)
                    for (size_t k = 0; k < sizeof clip_layer_names / sizeof clip_layer_names[0]; k++)
                        quantize_rebase((sd_tensor *)(void *)((char *)&te->layer[l] + clip_layer_names[k].field), t, to, q);
            }
            t->data = q;
            t->reader = NULL;
            t->dtype = to;
            t->nbytes = dtype_bytes(to, (uint64_t)sd_tensor_numel(t));
        }
    return SD_OK;
}

SD_API size_t sd_model_quantize_arena_bytes(const sd_model *m, sd_dtype type)
{
    sd_arena dry;
    if (!m || !quant_type_ok(type)) return 0;
    arena_measure(&dry);
    return model_quantize((sd_model *)(uintptr_t)m, type, &dry, NULL) ? 0 : dry.peak;
}

SD_API int sd_model_quantize(sd_model *m, sd_dtype type, sd_arena *a, sd_error *err)
{
    if (!m || !a) return fail(err, SD_ERR_ARG, "quantize: NULL model or arena");
    if (!quant_type_ok(type)) return fail(err, SD_ERR_ARG, "quantize: %s is not one of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1", sd_dtype_name(type));
    size_t need = sd_model_quantize_arena_bytes(m, type);
    if (a->size - a->used < need)
        return fail(err, SD_ERR_MEMORY, "quantize: needs %zu arena bytes, the arena has %zu free", need, a->size - a->used);
    return model_quantize(m, type, a, err);
}

SD_API void sd_model_get_info(const sd_model *model, sd_model_info *info)
{
    if (model && info) *info = model->info;
    else if (info) memset(info, 0, sizeof *info);
}

SD_API void sd_params_init(sd_params *p)
{
    memset(p, 0, sizeof *p);
    p->width = p->height = 512;
    p->steps = 20;
    p->guidance = 7.5f;
    p->sampler = SD_SAMPLER_DDIM;
    p->spacing = -1;
    p->batch_count = 1;
    p->weighting = 1;
    p->prediction = -1;
    p->threads = 1;
    p->image_guidance = 1.5f;
    p->taesd_use = SD_TAESD_USE_ALL;
}

/* The sampler of a generation: the spacing asked for, or the model's scheduler config's, or
   the sampler class's default as diffusers has it. */
static int sampler_init(const sd_model *m, const sd_params *p, sd_sampler *smp, sd_error *err)
{
    int spacing = p->spacing;
    const char *s = m->meta ? sd_safetensors_meta(m->meta, "sd.scheduler.timestep_spacing") : NULL;
    if (spacing < 0 && s) spacing = !strcmp(s, "trailing") ? SD_SPACING_TRAILING : !strcmp(s, "linspace") ? SD_SPACING_LINSPACE : SD_SPACING_LEADING;
    if (spacing < 0) spacing = p->sampler == SD_SAMPLER_DDIM || m->info.version == SD_VERSION_XL ? SD_SPACING_LEADING : SD_SPACING_LINSPACE;
    return sd_sampler_init(smp, &m->schedule, p->sampler, p->steps, spacing, m->steps_offset, p->karras,
                           p->prediction >= 0 ? p->prediction : m->info.prediction, p->eta, err);
}

/* How the init image guides a generation: follows the UNet's input channels and the inputs. */
enum { GUIDE_NONE, GUIDE_IMG2IMG, GUIDE_BLEND, GUIDE_INPAINT, GUIDE_IP2P };

static int guide_mode(const sd_model *m, const sd_params *p)
{
    int ch = m->unet->in_channels;
    return ch == 9 ? GUIDE_INPAINT : ch == 8 ? GUIDE_IP2P : !p->init_rgb ? GUIDE_NONE : p->mask ? GUIDE_BLEND : GUIDE_IMG2IMG;
}

/* The UNet's batch: 1, or 2 with classifier-free guidance (unconditional row first), or
   InstructPix2Pix's 3 (text + image, image only, neither), which diffusers runs only when
   guidance > 1 and image_guidance >= 1. An LCM-distilled UNet is guided by its input: 1. */
static int batch_rows(const sd_model *m, const sd_params *p)
{
    if (m->unet->guidance_dim) return 1;
    if (guide_mode(m, p) == GUIDE_IP2P) return p->guidance > 1.0f && p->image_guidance >= 1.0f ? 3 : 1;
    return p->guidance > 1.0f ? 2 : 1;
}

/* Whether row b of B takes the negative prompt: the first of CFG's two, the last two of InstructPix2Pix's three. */
static int negative_row(int B, int b) { return B == 3 ? b > 0 : B == 2 && b == 0; }

/* The strength asked for, or the pipeline's default (diffusers'): inpainting 1 (SDXL 0.9999), img2img 0.8. */
static double strength_of(const sd_model *m, const sd_params *p)
{
    int mode = guide_mode(m, p);
    if (p->strength > 0) return p->strength;
    return mode == GUIDE_INPAINT || mode == GUIDE_BLEND ? (m->info.version == SD_VERSION_XL ? 0.9999 : 1.0) : 0.8;
}

/* Whether TAESD does `use` (SD_TAESD_USE_*) in this generation: asked for, and it has the half
   that does it (the encoder for ENCODE, the decoder for the others). */
static int taesd_does(const sd_params *p, int use)
{
    return p->taesd && (p->taesd_use & use) && (use == SD_TAESD_USE_ENCODE ? p->taesd->info.has_encoder : p->taesd->info.has_decoder);
}

/* A TAESD must work in the model's latent space: as many channels, and the variant made for its
   family (TAESDXL for SDXL's latents, TAESD for SD 1.x / 2.x's; the other runs but gives wrong
   colours). */
static int check_taesd(const sd_model *m, const sd_params *p, sd_error *err)
{
    const sd_taesd_info *t = &p->taesd->info;
    int lat = sd_vae_get_config(m->vae)->embed_dim, xl = m->info.version == SD_VERSION_XL;
    if (p->taesd_use & ~SD_TAESD_USE_ALL) return fail(err, SD_ERR_ARG, "generate: taesd_use %d is not a set of SD_TAESD_USE_*", p->taesd_use);
    if (t->latent_channels != lat)
        return fail(err, SD_ERR_SHAPE, "generate: the TAESD takes %d latent channels, this model's latents have %d", t->latent_channels, lat);
    if ((t->variant == SD_TAESD_XL) != xl)
        return fail(err, SD_ERR_ARG, "generate: a %s was given for an %s model; TAESDXL decodes SDXL latents, TAESD those of SD 1.x and 2.x",
                    t->variant == SD_TAESD_XL ? "TAESDXL" : "TAESD (SD 1.x/2.x)", xl ? "SDXL" : m->info.version == 2 ? "SD 2" : "SD 1");
    return SD_OK;
}

static int check_params(const sd_model *m, const sd_params *p, sd_error *err)
{
    int rc;
    if (!m || !p) return fail(err, SD_ERR_ARG, "generate: NULL model or parameters");
    if (p->width < 8 || p->height < 8 || p->width % 8 || p->height % 8 || p->width > 8192 || p->height > 8192)
        return fail(err, SD_ERR_ARG, "generate: %d x %d pixels: width and height must be multiples of 8 in 8..8192", p->width, p->height);
    if (p->steps < 1 || p->steps > m->schedule.num_train_timesteps)
        return fail(err, SD_ERR_ARG, "generate: %d steps, expected 1..%d", p->steps, m->schedule.num_train_timesteps);
    if (!(p->guidance >= 0 && p->guidance < 1000)) return fail(err, SD_ERR_ARG, "generate: guidance %g out of range", p->guidance);
    if (p->batch_count < 1 || p->batch_count > 10000) return fail(err, SD_ERR_ARG, "generate: batch_count %d, expected 1..10000", p->batch_count);
    if (p->threads < 1 || p->threads > SD_MAX_THREADS) return fail(err, SD_ERR_ARG, "generate: %d threads, expected 1..%d", p->threads, SD_MAX_THREADS);
    if (p->quant != SD_QUANT_EXACT && p->quant != SD_QUANT_FAST) return fail(err, SD_ERR_ARG, "generate: quant %d is not SD_QUANT_EXACT or SD_QUANT_FAST", p->quant);
    int skip_max = m->te[0].output_layer;
    if (m->encoders == 2 && m->te[1].output_layer < skip_max) skip_max = m->te[1].output_layer;
    if (p->clip_skip < 0 || p->clip_skip > skip_max) return fail(err, SD_ERR_ARG, "generate: clip_skip %d, expected 0..%d", p->clip_skip, skip_max);
    if (p->comma_wrap < 0 || p->comma_wrap > 74) return fail(err, SD_ERR_ARG, "generate: comma_wrap %d, expected 0..74", p->comma_wrap);
    if (p->lora_count < 0 || p->lora_count > 4096 || (p->lora_count && !p->loras))
        return fail(err, SD_ERR_ARG, "generate: %d LoRAs in the list%s", p->lora_count, p->lora_count > 0 ? ", but no list" : "");
    for (int i = 0; i < 2; i++)
        if (p->original_size[i] < 0 || p->crop_top_left[i] < 0 || p->target_size[i] < 0 ||
            p->original_size[i] > 65536 || p->crop_top_left[i] > 65536 || p->target_size[i] > 65536)
            return fail(err, SD_ERR_ARG, "generate: SDXL size conditioning out of 0..65536");
    if (!(p->strength >= 0 && p->strength <= 1)) return fail(err, SD_ERR_ARG, "generate: strength %g, expected (0, 1] (0: the default)", p->strength);
    if (!(p->image_guidance >= 0 && p->image_guidance < 1000)) return fail(err, SD_ERR_ARG, "generate: image guidance %g out of range", p->image_guidance);
    int ch = m->unet->in_channels;
    if (ch != 4 && !p->init_rgb)
        return fail(err, SD_ERR_ARG, "generate: this %s model (%d-channel UNet) needs an init image", ch == 9 ? "inpainting" : "InstructPix2Pix", ch);
    if (ch == 9 && !p->mask) return fail(err, SD_ERR_ARG, "generate: this inpainting model (9-channel UNet) needs a mask");
    if (ch == 8 && p->mask) return fail(err, SD_ERR_ARG, "generate: an InstructPix2Pix model (8-channel UNet) takes no mask");
    if (p->mask && !p->init_rgb) return fail(err, SD_ERR_ARG, "generate: a mask needs an init image (the picture to repaint)");
    if (p->prediction != -1 && p->prediction != SD_PREDICT_EPSILON && p->prediction != SD_PREDICT_V)
        return fail(err, SD_ERR_ARG, "generate: unknown prediction type %d", p->prediction);
    if (!(p->eta >= 0 && p->eta <= 1)) return fail(err, SD_ERR_ARG, "generate: eta %g, expected 0..1", p->eta);
    if (p->vae_tile < 0 || (p->vae_tile > 0 && p->vae_tile < 8))
        return fail(err, SD_ERR_ARG, "generate: vae_tile %d, expected 0 (off) or at least 8 latent pixels", p->vae_tile);
    if (p->embeddings && p->embeddings->model != m) return fail(err, SD_ERR_ARG, "generate: the embeddings were loaded for another model");
    if (p->init_rgb && !sd_vae_get_config(m->vae)->has_encoder && !taesd_does(p, SD_TAESD_USE_ENCODE))
        return fail(err, SD_ERR_UNSUPPORTED, "generate: img2img needs a VAE encoder; this checkpoint has only the decoder");
    if (p->taesd && (rc = check_taesd(m, p, err))) return rc;
    /* the schedule itself, so that no error waits until after the text encoder has run */
    sd_sampler smp;
    int start;
    if ((rc = sampler_init(m, p, &smp, err))) return rc;
    if (p->init_rgb && guide_mode(m, p) != GUIDE_IP2P && (rc = sd_img2img_start(p->steps, strength_of(m, p), &start, err))) return rc;
    return SD_OK;
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

/* Whether the decode goes in tiles: asked for, and the latent larger than one tile. */
static int tiled_decode(const sd_params *p, int h, int w) { return p->vae_tile > 0 && (h > p->vae_tile || w > p->vae_tile); }

/* ---- textual inversion: the embedding files ---- */
/* Each file is checked against the model's text encoders and its name tokenized for each; the
   vectors stay in the caller's bytes, one view per vector, numbered across the files in order. */

#define TI_MAX_EMBEDDINGS 65536
#define TI_MAX_NAME 1024   /* bytes of a name */

/* The tensor of an embedding file for each text encoder of the model, by the formats' names:
   SDXL's clip_l and clip_g, A1111's emb_params or string_to_param.*, or diffusers' one tensor. */
static int embedding_tensors(const sd_safetensors *st, const char *name, int encoders, const sd_tensor **t, sd_error *err)
{
    const sd_tensor *l = sd_safetensors_find(st, "clip_l"), *g = sd_safetensors_find(st, "clip_g"), *one;
    if (l || g) {
        if (encoders != 2)
            return fail(err, SD_ERR_SHAPE, "embedding '%s': tensors 'clip_l' and 'clip_g' are for SDXL's two text encoders; this model has one", name);
        if (!l || !g) return fail(err, SD_ERR_MISSING, "embedding '%s' has tensor '%s' but no '%s'", name, l ? "clip_l" : "clip_g", l ? "clip_g" : "clip_l");
        t[0] = l;
        t[1] = g;
        return SD_OK;
    }
    one = sd_safetensors_find(st, "emb_params");
    for (int i = 0; i < st->count && !one; i++)
        if (!strncmp(st->tensors[i].name, "string_to_param.", 16)) one = &st->tensors[i];
    if (!one && st->count == 1) one = &st->tensors[0];   /* diffusers' learned_embeds: named after its token */
    if (!one)
        return fail(err, SD_ERR_MISSING, "embedding '%s': no tensor 'emb_params', 'string_to_param.*' or 'clip_l'/'clip_g', and not "
                    "one tensor alone (the file has %d)", name, st->count);
    if (encoders == 2)
        return fail(err, SD_ERR_SHAPE, "embedding '%s': tensor '%s' is for one text encoder; SDXL's two take 'clip_l' and 'clip_g'", name, one->name);
    t[0] = one;
    return SD_OK;
}

/* Tensor t as vectors for text encoder te: [n, width], or [width] for one; *n gets n. */
static int embedding_vectors(const sd_tensor *t, const sd_text_encoder *te, const char *name, int *n, sd_error *err)
{
    int64_t rows = t->ndim == 2 ? t->shape[0] : 1, width = t->ndim >= 1 ? t->shape[t->ndim - 1] : 0;
    if (t->dtype != SD_F32 && t->dtype != SD_F16 && t->dtype != SD_BF16)
        return fail(err, SD_ERR_SHAPE, "embedding '%s': tensor '%s' is %s; F32, F16 or BF16 expected", name, t->name, sd_dtype_name(t->dtype));
    if ((t->ndim != 1 && t->ndim != 2) || width != te->width)
        return fail(err, SD_ERR_SHAPE, "embedding '%s': tensor '%s' has %d dimensions of which the last is %lld; the text encoder takes "
                    "vectors [n, %d]", name, t->name, t->ndim, (long long)width, te->width);
    if (rows < 1 || rows > 75)
        return fail(err, SD_ERR_UNSUPPORTED, "embedding '%s': tensor '%s' holds %lld vectors; a prompt chunk has room for 1..75",
                    name, t->name, (long long)rows);
    *n = (int)rows;
    return SD_OK;
}

/* Opens embedding file f (its tables in the arena, which the caller gives back) and checks it
   against the model's encoders: t[e] gets the tensor for encoder e, *vectors their count. */
static int embedding_open(const sd_model *m, const sd_embedding_file *f, const sd_tensor **t, int *vectors, sd_arena *a, sd_error *err)
{
    sd_safetensors st;
    int n[2] = {0, 0}, rc = sd_safetensors_open(&st, f->data, f->size, a, err);
    if (rc) {
        char why[sizeof err->message];
        snprintf(why, sizeof why, "%s", err ? err->message : "");
        return fail(err, rc, "embedding '%.60s': %s", f->name, why);
    }
    if ((rc = embedding_tensors(&st, f->name, m->encoders, t, err))) return rc;
    for (int e = 0; e < m->encoders && !rc; e++) rc = embedding_vectors(t[e], &m->te[e], f->name, &n[e], err);
    if (!rc && m->encoders == 2 && n[0] != n[1])
        rc = fail(err, SD_ERR_SHAPE, "embedding '%s': tensor 'clip_l' holds %d vectors, 'clip_g' %d", f->name, n[0], n[1]);
    *vectors = n[0];
    return rc;
}

/* The tokens of f's name for text encoder e, as a prompt's would be (cap may be 0: *len only). */
static int embedding_name_ids(const sd_model *m, const sd_embedding_file *f, int e, int32_t *ids, int cap, int *len, sd_arena *a, sd_error *err)
{
    size_t n;
    int rc = sd_clip_token_ids(m->vocab, f->name, strlen(f->name), m->pad[e], ids, (size_t)cap, &n, a, err);
    if (rc) return rc;
    if (n == 0 || n > 1000) return fail(err, SD_ERR_ARG, "embedding '%s': the name is %zu tokens; a prompt could not name it", f->name, n);
    *len = (int)n;
    return SD_OK;
}

SD_API size_t sd_embeddings_arena_bytes(const sd_embedding_file *files, int count)
{
    size_t total = aligned_bytes(sizeof(sd_embeddings)) + aligned_bytes((size_t)(count > 0 ? count : 1) * sizeof(ti_embedding)), scratch = 0;
    if (count < 0 || count > TI_MAX_EMBEDDINGS || (count && !files)) return 0;
    total += 2 * aligned_bytes((size_t)75 * (count > 0 ? count : 1) * sizeof(sd_tensor));   /* the vector tables */
    for (int i = 0; i < count; i++) {
        size_t len = files[i].name ? strlen(files[i].name) : 0;
        /* the name, its tokens for two encoders (at most 3 a byte), then the larger scratch */
        total += aligned_bytes(len + 1) + 2 * aligned_bytes((3 * len + 1) * sizeof(int32_t));
        scratch = max_size(scratch, max_size(safetensors_arena_bound(files[i].data, files[i].size), sd_clip_scratch_bytes(len)));
    }
    return total + scratch;
}

SD_API int sd_embeddings_load(sd_embeddings **out, const sd_model *m, const sd_embedding_file *files, int count,
                              sd_arena *a, sd_error *err)
{
    if (out) *out = NULL;
    if (!out || !m || !a || count < 0 || count > TI_MAX_EMBEDDINGS || (count && !files))
        return fail(err, SD_ERR_ARG, "embeddings: NULL argument or %d files (0..%d)", count, TI_MAX_EMBEDDINGS);
    size_t mark = sd_arena_mark(a), scratch;
    sd_embeddings *set = (sd_embeddings *)arena_array(a, 1, sizeof *set, err);
    ti_embedding *items = set ? (ti_embedding *)arena_array(a, (size_t)(count > 0 ? count : 1), sizeof *items, err) : NULL;
    const sd_tensor *t[2];
    sd_tensor *table[2] = {NULL, NULL};
    int rc = items ? SD_OK : SD_ERR_MEMORY;
    if (rc) goto done;
    memset(set, 0, sizeof *set);
    memset(items, 0, (size_t)(count > 0 ? count : 1) * sizeof *items);
    set->model = m;
    set->items = items;
    set->count = count;
    set->growth = 1;
    /* the names and the files' checks, and how many vectors there are */
    for (int i = 0; i < count && !rc; i++) {
        const sd_embedding_file *f = &files[i];
        ti_embedding *x = &items[i];
        size_t len = f->name ? strlen(f->name) : 0;
        char *name;
        if (!len || len > TI_MAX_NAME || !f->data) {
            rc = fail(err, SD_ERR_ARG, "embedding %d: needs a name of 1..%d bytes and the file's bytes", i, TI_MAX_NAME);
            break;
        }
        if (!(name = (char *)sd_arena_alloc(a, len + 1, err))) { rc = SD_ERR_MEMORY; break; }
        memcpy(name, f->name, len + 1);
        x->name = name;
        scratch = sd_arena_mark(a);
        rc = embedding_open(m, f, t, &x->vectors, a, err);
        for (int e = 0; e < m->encoders && !rc; e++) rc = embedding_name_ids(m, f, e, NULL, 0, &x->name_len[e], a, err);
        sd_arena_reset(a, scratch);
        if (rc) break;
        x->first_id = SD_CLIP_VOCAB_SIZE + set->total;
        set->total += x->vectors;
        if (x->vectors > set->widest) set->widest = x->vectors;
        for (int e = 0; e < m->encoders; e++)   /* a name of L tokens becomes n vectors */
            if ((x->vectors + x->name_len[e] - 1) / x->name_len[e] > set->growth) set->growth = (x->vectors + x->name_len[e] - 1) / x->name_len[e];
    }
    /* then the tables: one view per vector, and each name's tokens */
    for (int e = 0; e < m->encoders && !rc; e++)
        if (!(set->vectors[e] = table[e] = (sd_tensor *)arena_array(a, (size_t)(set->total > 0 ? set->total : 1), sizeof(sd_tensor), err)))
            rc = SD_ERR_MEMORY;
    for (int i = 0; i < count && !rc; i++) {
        ti_embedding *x = &items[i];
        int n, len;
        for (int e = 0; e < m->encoders && !rc; e++) {
            int32_t *ids = (int32_t *)arena_array(a, (size_t)x->name_len[e], sizeof(int32_t), err);
            if (!ids) { rc = SD_ERR_MEMORY; break; }
            rc = embedding_name_ids(m, &files[i], e, ids, x->name_len[e], &len, a, err);
            x->name_ids[e] = ids;
        }
        scratch = sd_arena_mark(a);
        if (!rc) rc = embedding_open(m, &files[i], t, &n, a, err);
        for (int e = 0; e < m->encoders && !rc; e++)
            for (int v = 0; v < x->vectors; v++) {
                sd_tensor *view = &table[e][x->first_id - SD_CLIP_VOCAB_SIZE + v];
                *view = t[e]->ndim == 2 ? tensor_rows(t[e], v, 1) : *t[e];
                view->name = x->name;   /* the file's own tables are given back below */
            }
        sd_arena_reset(a, scratch);
    }
done:
    if (rc) { sd_arena_reset(a, mark); return rc; }
    *out = set;
    return SD_OK;
}

SD_API int sd_embeddings_prompt_chunks(const sd_embeddings *set, int encoder, const char *text, size_t size, int weighting,
                                       int comma_wrap, int min_chunks, int32_t **ids, float **weights, int *chunks,
                                       sd_arena *a, sd_error *err)
{
    if (!set || encoder < 0 || encoder >= set->model->encoders)
        return fail(err, SD_ERR_ARG, "embeddings prompt chunks: no set, or no text encoder %d", encoder);
    return prompt_chunks_with(set->model->vocab, set, encoder, text, size, set->model->pad[encoder], weighting, comma_wrap,
                              min_chunks, ids, weights, chunks, a, err);
}

SD_API int sd_embeddings_text_encoder(const sd_embeddings *set, int encoder, sd_text_encoder *te, sd_error *err)
{
    if (!set || !te || encoder < 0 || encoder >= set->model->encoders)
        return fail(err, SD_ERR_ARG, "embeddings text encoder: NULL argument, or no text encoder %d", encoder);
    *te = set->model->te[encoder];
    te->extra_tokens = set->vectors[encoder];
    te->extra_token_count = set->total;
    return SD_OK;
}

/* AUTOMATIC1111's extra-network tag (modules/extra_networks.py: re <(\w+):([^>]+)>, such as
   <lora:NAME:0.8>) at text[i]: its length, or 0; *kind gets the length of its \w+ part. None
   starts at or after `end`, the last '>' of the text (which keeps a scan of the text linear). */
static size_t prompt_tag(const sd_clip_vocab *v, const char *text, size_t i, size_t end, size_t *kind)
{
    const unsigned char *s = (const unsigned char *)text + i;
    size_t k = 1, n, len = 1;
    if (i >= end || s[0] != '<') return 0;
    for (;; k += len) {
        for (n = 0; n < 4 && s[k + n]; n++) {}
        if (!n || !prompt_word(v, prompt_char(s + k, n, &len))) break;
    }
    if (k == 1 || s[k] != ':' || !s[k + 1] || s[k + 1] == '>') return 0;
    *kind = k - 1;
    for (n = k + 1; s[n] && s[n] != '>'; n++) {}
    return s[n] == '>' ? n + 1 : 0;
}

/* Where prompt_tag may look: up to the last '>'. */
static size_t prompt_tags_end(const char *text)
{
    const char *gt = text ? strrchr(text, '>') : NULL;
    return gt ? (size_t)(gt - text) : 0;
}

/* The text without its tags, removed in one pass as A1111's re.sub does, into out (may be NULL);
   returns its length. */
static size_t prompt_untagged(const sd_clip_vocab *v, const char *text, char *out)
{
    size_t n = 0, end = prompt_tags_end(text), kind, tag;
    for (size_t i = 0; text && text[i]; i++) {
        if ((tag = prompt_tag(v, text, i, end, &kind))) { i += tag - 1; continue; }
        if (out) out[n] = text[i];
        n++;
    }
    if (out) out[n] = 0;
    return n;
}

/* The most chunks of 77 tokens a prompt can give, from its length alone, so that memory can be
   planned before tokenizing: a chunk per BREAK, and one per 75 tokens (75 - comma_wrap when
   chunks may end early at a comma). A token takes at least a third of a byte of non-ASCII
   text (NFC turns the 4 bytes of U+1D160 into 12, and those into 9 tokens) and two thirds of
   a byte of ASCII (whose worst is an HTML entity: "&nGt;", 5 bytes, is 2 characters, 6 bytes).
   tags: count the text as it will be once its tags are removed (a dry run's prompt).
   Embeddings: a name's L tokens become n vectors (at most `growth` per token), and a chunk
   whose room an embedding of n vectors does not find still holds 76 - n. */
static int prompt_chunk_bound(const sd_clip_vocab *v, const char *text, int tags, int comma_wrap, const sd_embeddings *set)
{
    size_t half_tokens = 0, breaks = 0, chunks, per = (size_t)(75 - comma_wrap);   /* the token bound, doubled */
    size_t end = tags ? prompt_tags_end(text) : 0, kind, tag;
    char last[5] = {0, 0, 0, 0, 0};   /* the last 5 bytes kept, to find BREAK across removed tags */
    for (size_t i = 0; text && text[i]; i++) {
        if ((tag = prompt_tag(v, text, i, end, &kind))) { i += tag - 1; continue; }
        half_tokens += (unsigned char)text[i] < 0x80 ? 3 : 6;
        memmove(last, last + 1, 4);
        last[4] = text[i];
        breaks += !memcmp(last, "BREAK", 5);
    }
    if (set) {
        half_tokens *= (size_t)set->growth;
        if (per > (size_t)(76 - set->widest)) per = (size_t)(76 - set->widest);
    }
    chunks = breaks + (half_tokens ? (half_tokens + 2 * per - 1) / (2 * per) : 1);   /* each run between BREAKs wastes less than a chunk */
    return chunks < SD_PROMPT_MAX_CHUNKS ? (int)chunks : SD_PROMPT_MAX_CHUNKS;
}

/* tags: the prompt (not the negative prompt) still has the tags a generation removes (a dry run). */
static int chunk_bound(const sd_clip_vocab *v, const sd_params *p, int tags)
{
    int c = prompt_chunk_bound(v, p->prompt, tags, p->comma_wrap, p->embeddings);
    int n = prompt_chunk_bound(v, p->negative_prompt, 0, p->comma_wrap, p->embeddings);
    return c > n ? c : n;
}

/* The text of batch item b of B: with guidance (B = 2) the negative prompt first. */
static const char *batch_text(const sd_params *p, int B, int b)
{
    const char *t = negative_row(B, b) ? p->negative_prompt : p->prompt;
    return t ? t : "";
}

/* The tokenizer's scratch depends on the text: a dry run takes its bound (tags: of the text
   without its tags). */
static int prompt_scratch_plan(const sd_clip_vocab *v, const char *text, int tags, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a);
    int rc = sd_arena_alloc(a, sd_prompt_arena_bytes(tags ? prompt_untagged(v, text, NULL) : strlen(text)), err) ? SD_OK : SD_ERR_MEMORY;
    sd_arena_reset(a, mark);
    return rc;
}

/* Batch item b's prompt as chunks for encoder e, padded to `chunks`, into ids and weights [chunks, 77]. */
static int prompt_chunks(const sd_model *m, const sd_params *p, int B, int b, int e, int chunks,
                         int32_t *ids, float *weights, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a);
    const char *text = batch_text(p, B, b);
    int32_t *cids;
    float *cw;
    if (arena_measuring(a)) return prompt_scratch_plan(m->vocab, text, !negative_row(B, b), a, err);
    int got, rc = prompt_chunks_with(m->vocab, p->embeddings, e, text, strlen(text), m->pad[e], p->weighting, p->comma_wrap, chunks,
                                     &cids, &cw, &got, a, err);
    if (!rc && got != chunks) rc = fail(err, SD_ERR_ARG, "generate: the prompts tokenize to %d chunks, not the %d planned", got, chunks);
    if (!rc) {
        memcpy(ids, cids, (size_t)chunks * SD_TEXT_TOKENS * sizeof *ids);
        memcpy(weights, cw, (size_t)chunks * SD_TEXT_TOKENS * sizeof *weights);
    }
    sd_arena_reset(a, mark);
    return rc;
}

/* 1. Text: ctx [B, C·77, context_dim] (SDXL: both encoders' outputs side by side; C chunks of 77
   tokens, the shorter prompt padded with empty chunks) and SDXL's y [B, add_dim]. With guidance
   the batch is (negative prompt, prompt), unconditional first. Each chunk goes through the
   encoder on its own and is weighted by its tokens' (A1111's) weights. */
static int encode_text(const sd_model *m, const sd_params *p, int B, int C, float *ctx, float *y, sd_pool *pool, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a), rows = (size_t)B * C * SD_TEXT_TOKENS, width = 0, D = (size_t)m->context_dim, offset = 0;
    for (int e = 0; e < m->encoders; e++) width = max_size(width, (size_t)m->te[e].width);
    int32_t *ids = (int32_t *)arena_array(a, rows, sizeof(int32_t), err);
    float *weights = ids ? arena_floats(a, rows, err) : NULL, *hidden = weights ? arena_floats(a, rows * width, err) : NULL;
    float *pooled = hidden && m->encoders == 2 ? arena_floats(a, (size_t)B * C * m->te[1].proj_dim, err) : NULL;
    int rc = SD_OK;
    if (!hidden || (m->encoders == 2 && !pooled)) { rc = SD_ERR_MEMORY; goto done; }
    for (int e = 0; e < m->encoders; e++) {
        sd_text_encoder te = m->te[e];   /* with the embeddings' vectors, if any */
        if (p->embeddings) sd_embeddings_text_encoder(p->embeddings, e, &te, NULL);
        for (int b = 0; b < B && !rc; b++)
            rc = prompt_chunks(m, p, B, b, e, C, ids + (size_t)b * C * SD_TEXT_TOKENS, weights + (size_t)b * C * SD_TEXT_TOKENS, a, err);
        if (rc || (rc = sd_text_encode(&te, ids, B * C, p->clip_skip, hidden, e == 1 ? pooled : NULL, pool, a, err))) goto done;
        if (pool->measure) continue;
        for (int c = 0; c < B * C; c++)
            sd_prompt_weight(hidden + (size_t)c * SD_TEXT_TOKENS * te.width, weights + (size_t)c * SD_TEXT_TOKENS, SD_TEXT_TOKENS, te.width);
        for (size_t r = 0; r < rows; r++) memcpy(ctx + r * D + offset, hidden + r * te.width, (size_t)te.width * sizeof(float));
        offset += (size_t)te.width;
    }
    if (m->encoders == 2 && !pool->measure) {
        /* SDXL: no negative prompt means zeros, not the encoding of ""; the pooled embedding is
           the first chunk's */
        int P = m->te[1].proj_dim, H = p->height, W = p->width;
        for (int b = 0; b < B; b++)
            if (negative_row(B, b) && !p->negative_prompt && m->zero_negative) {
                memset(ctx + (size_t)b * C * SD_TEXT_TOKENS * D, 0, (size_t)C * SD_TEXT_TOKENS * D * sizeof(float));
                memset(pooled + (size_t)b * C * P, 0, (size_t)P * sizeof(float));
            }
        /* the size conditioning: the image's original size, the crop's top-left corner, the target size */
        float sizes[6] = {(float)(p->original_size[0] ? p->original_size[0] : H), (float)(p->original_size[1] ? p->original_size[1] : W),
                          (float)p->crop_top_left[0], (float)p->crop_top_left[1],
                          (float)(p->target_size[0] ? p->target_size[0] : H), (float)(p->target_size[1] ? p->target_size[1] : W)};
        for (int b = 0; b < B && !rc; b++)
            rc = sd_unet_add_vector(m->unet, pooled + (size_t)b * C * P, P, sizes, y + (size_t)b * sd_unet_add_dim(m->unet), err);
    }
done:
    sd_arena_reset(a, mark);
    return rc;
}

/* How many chunks the prompts take (the most of any prompt with either tokenizer: SDXL's second
   pads with "!", which makes every "!" a token of its own). */
static int count_chunks(const sd_model *m, const sd_params *p, int B, int *chunks, sd_arena *a, sd_error *err)
{
    *chunks = 1;
    for (int e = 0; e < m->encoders; e++)
        for (int b = 0; b < B; b++) {
            size_t mark = sd_arena_mark(a);
            int32_t *ids;
            const char *text = batch_text(p, B, b);
            if (arena_measuring(a)) {   /* a dry run plans for the most chunks the lengths allow */
                *chunks = chunk_bound(m->vocab, p, 1);
                if (prompt_scratch_plan(m->vocab, text, !negative_row(B, b), a, err)) return SD_ERR_MEMORY;
                continue;
            }
            int got, rc = prompt_chunks_with(m->vocab, p->embeddings, e, text, strlen(text), m->pad[e], p->weighting, p->comma_wrap, 1,
                                             &ids, NULL, &got, a, err);
            sd_arena_reset(a, mark);
            if (rc) return rc;
            if (got > *chunks) *chunks = got;
        }
    if (*chunks > chunk_bound(m->vocab, p, 0))
        return fail(err, SD_ERR_ARG, "generate: the prompt tokenizes to %d chunks of 75 tokens, more than the %d its length allows for",
                    *chunks, chunk_bound(m->vocab, p, 0));
    return SD_OK;
}

/* ---- the init image: img2img, inpainting, InstructPix2Pix ---- */

SD_API void sd_inpaint_mask(const uint8_t *mask, int height, int width, float *mask_image, float *mask_latent)
{
    for (size_t i = 0; mask_image && i < (size_t)height * width; i++) mask_image[i] = mask[i] >= 128 ? 1.0f : 0.0f;
    for (int y = 0; mask_latent && y < height / 8; y++)
        for (int x = 0; x < width / 8; x++) mask_latent[(size_t)y * (width / 8) + x] = mask[(size_t)8 * y * width + 8 * x] >= 128 ? 1.0f : 0.0f;
}

SD_API void sd_masked_image(const uint8_t *rgb, const uint8_t *mask, int height, int width, float *out)
{
    size_t plane = (size_t)height * width;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < plane; i++) out[c * plane + i] = mask && mask[i] >= 128 ? 0.0f : (float)rgb[3 * i + c] / 255.0f * 2.0f - 1.0f;
}

/* An image's latent: the VAE encoder's posterior of image [3, H, W] in [-1, 1] (NULL: the init
   image), either sampled with the next draw (or the caller's noise) and scaled, as img2img and
   inpainting take it, or its unscaled mode (mean), as InstructPix2Pix takes it. */
static int encode_latent(const sd_model *m, const sd_params *p, const float *image, int sample, const float *given, int first,
                         sd_rng *rng, float *out, sd_pool *pool, sd_arena *a, sd_error *err)
{
    int h = p->height / 8, w = p->width / 8, rc;
    size_t lat = (size_t)4 * h * w, plane = (size_t)p->height * p->width, mark = sd_arena_mark(a);
    float *rgb = image ? NULL : arena_floats(a, 3 * plane, err), *moments = arena_floats(a, 2 * lat, err);
    float *std = arena_floats(a, lat, err), *noise = arena_floats(a, lat, err);
    if (!noise || (!image && !rgb)) return SD_ERR_MEMORY;
    if (!image && !pool->measure) sd_masked_image(p->init_rgb, NULL, p->height, p->width, rgb);
    if (taesd_does(p, SD_TAESD_USE_ENCODE)) {   /* TAESD: the latent itself, no posterior, no draw */
        rc = sd_taesd_encode(p->taesd, image ? image : rgb, p->height, p->width, out, pool, a, err);
        goto done;
    }
    if ((rc = sd_vae_encode(m->vae, image ? image : rgb, p->height, p->width, moments, pool, a, err)) || pool->measure) goto done;
    sd_vae_posterior(moments, 4, h, w, out, NULL, std);
    if (sample) {
        if (given && first) memcpy(noise, given, lat * sizeof(float));
        else sd_randn(rng, noise, lat);
        sd_vae_sample(out, std, noise, lat, out);
        for (size_t i = 0; i < lat; i++) out[i] *= m->info.vae_scale;
    }
done:
    sd_arena_reset(a, mark);
    return rc;
}

/* What the run keeps of the init image: the UNet's extra input channels (inpainting: the latent
   mask and the masked image's latent; InstructPix2Pix: the image's latent) and, for the blend
   of ordinary models, the clean latent, its noise and the latent mask. */
typedef struct image_cond {
    float *extra;   /* [extra_channels, h, w], concatenated after the latents */
    int extra_channels;
    float *init, *noise, *mask;   /* GUIDE_BLEND */
} image_cond;

/* 2. The starting latents and the image conditioning, drawing from the generator in diffusers'
   order: txt2img and InstructPix2Pix noise from the seed at the sampler's first noise level;
   img2img the init image's latent (a posterior sample) noised to the first kept step;
   inpainting the same unless strength is exactly 1 (pure noise), then the masked image's latent
   (the draw is taken by ordinary models too, which do not use it). */
static int start_latents(const sd_model *m, const sd_params *p, int first, const sd_sampler *smp, int start, sd_rng *rng,
                         float *latents, image_cond *ic, sd_pool *pool, sd_arena *a, sd_error *err)
{
    int mode = guide_mode(m, p), h = p->height / 8, w = p->width / 8, rc = SD_OK, dry = pool->measure;
    size_t lat = (size_t)4 * h * w, hw = (size_t)h * w, mark = sd_arena_mark(a);
    float *init = ic->init ? ic->init : arena_floats(a, lat, err), *noise = ic->noise ? ic->noise : arena_floats(a, lat, err);
    if (!init || !noise) return SD_ERR_MEMORY;
    if (mode == GUIDE_IP2P) rc = encode_latent(m, p, NULL, 0, NULL, first, rng, ic->extra, pool, a, err);
    int masked = mode == GUIDE_INPAINT || mode == GUIDE_BLEND, strength_max = masked && strength_of(m, p) == 1.0;
    int pure_noise = mode == GUIDE_NONE || mode == GUIDE_IP2P || strength_max;
    if (!rc && (mode == GUIDE_IMG2IMG || mode == GUIDE_BLEND || (mode == GUIDE_INPAINT && !strength_max)))
        rc = encode_latent(m, p, NULL, 1, p->posterior_noise, first, rng, init, pool, a, err);
    if (rc) return rc;
    if (!dry) {   /* the latent noise */
        const float *given = pure_noise && mode != GUIDE_INPAINT && mode != GUIDE_BLEND ? p->initial_latents : p->noise;
        if (given && first) memcpy(noise, given, lat * sizeof(float));
        else sd_randn(rng, noise, lat);
    }
    if (masked) {
        size_t stage = sd_arena_mark(a);
        float *image = arena_floats(a, 3 * (size_t)p->height * p->width, err);
        if (!image) return SD_ERR_MEMORY;
        if (!dry) sd_masked_image(p->init_rgb, p->mask, p->height, p->width, image);
        if (!dry) sd_inpaint_mask(p->mask, p->height, p->width, NULL, mode == GUIDE_INPAINT ? ic->extra : ic->mask);
        if (mode == GUIDE_INPAINT) rc = encode_latent(m, p, image, 1, p->masked_image_noise, first, rng, ic->extra + hw, pool, a, err);
        else if (!dry && !(p->masked_image_noise && first)) sd_randn(rng, image, lat);   /* the draw an ordinary model does not use */
        sd_arena_reset(a, stage);
        if (rc) return rc;
    }
    if (!dry) {
        if (pure_noise) for (size_t i = 0; i < lat; i++) latents[i] = noise[i] * smp->init_noise_sigma;
        else rc = sd_sampler_add_noise(smp, start, init, noise, lat, latents, err);
    }
    if (!ic->init) sd_arena_reset(a, mark);   /* the blend keeps them */
    return rc;
}

/* Decoded image [3, plane] (about [-1, 1]) → RGB8 pixels: round(255·clamp(x/2 + 1/2)). */
static void image_to_rgb8(const float *image, size_t plane, uint8_t *rgb)
{
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) {
            float v = image[c * plane + i] * 0.5f + 0.5f;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            rgb[3 * i + c] = (uint8_t)nearbyintf(v * 255.0f);   /* numpy's round: half to even */
        }
}

/* The latents after step `step` as TAESD decodes them, for preview_rgb (when asked for). */
static int preview_image(const sd_params *p, int step, const float *latents, sd_pool *pool, sd_arena *a, sd_error *err)
{
    size_t plane = (size_t)p->height * p->width, mark = sd_arena_mark(a);
    if (!p->preview_rgb || !taesd_does(p, SD_TAESD_USE_PREVIEW)) return SD_OK;
    float *image = arena_floats(a, 3 * plane, err);
    uint8_t *rgb = image ? (uint8_t *)sd_arena_alloc(a, 3 * plane, err) : NULL;
    int rc = rgb ? sd_taesd_decode(p->taesd, latents, p->height / 8, p->width / 8, image, pool, a, err) : SD_ERR_MEMORY;
    if (!rc && !pool->measure) {
        image_to_rgb8(image, plane, rgb);
        p->preview_rgb(p->user, step, rgb, p->width, p->height);
    }
    sd_arena_reset(a, mark);
    return rc;
}

/* 4. The VAE decoder sees latents / scaling_factor (TAESD the latents as they are); pixels =
   round(255·clamp(x/2 + 1/2)). latents is overwritten. A dry run also plans the steps' previews,
   which decode at this depth of the arena. */
static int decode_image(const sd_model *m, const sd_params *p, int first, float *latents, sd_pool *pool, sd_arena *a,
                        uint8_t *rgb, sd_error *err)
{
    int h = p->height / 8, w = p->width / 8, rc, tiny = taesd_does(p, SD_TAESD_USE_DECODE);
    size_t lat = (size_t)4 * h * w, plane = (size_t)p->height * p->width, mark = sd_arena_mark(a);
    if (pool->measure && (rc = preview_image(p, 0, latents, pool, a, err))) return rc;
    float *image = arena_floats(a, 3 * plane, err);
    if (!image) return SD_ERR_MEMORY;
    for (size_t i = 0; i < lat && !pool->measure && !tiny; i++) latents[i] /= m->info.vae_scale;
    rc = tiny ? sd_taesd_decode(p->taesd, latents, h, w, image, pool, a, err)
       : tiled_decode(p, h, w) ? sd_vae_decode_tiled(m->vae, latents, h, w, p->vae_tile, p->vae_tile / 4, image, pool, a, err)
                               : sd_vae_decode(m->vae, latents, h, w, image, pool, a, err);
    if (!rc && !pool->measure) {
        if (p->image_out && first) memcpy(p->image_out, image, 3 * plane * sizeof(float));
        image_to_rgb8(image, plane, rgb);
    }
    sd_arena_reset(a, mark);
    return rc;
}

/* The UNet input of step k: each row's latents, scaled for the sampler, followed by the image
   conditioning's channels (InstructPix2Pix's unconditional row has zeros there). */
static void unet_input_rows(const sd_model *m, const sd_sampler *smp, int k, int B, const float *latents, const image_cond *ic,
                            size_t hw, float *unet_in, float *timesteps)
{
    int ch = m->unet->in_channels;
    float in_scale = sd_sampler_input_scale(smp, k);
    for (int b = 0; b < B; b++) {
        float *row = unet_in + (size_t)b * ch * hw;
        for (size_t i = 0; i < 4 * hw; i++) row[i] = latents[i] * in_scale;
        if (ic->extra_channels) {
            if (B == 3 && b == 2) memset(row + 4 * hw, 0, (size_t)ic->extra_channels * hw * sizeof(float));
            else memcpy(row + 4 * hw, ic->extra, (size_t)ic->extra_channels * hw * sizeof(float));
        }
        timesteps[b] = smp->timesteps[k];
    }
}

/* The inpainting blend of ordinary models after step k: the kept area (mask 0) goes back to the
   init image's latent noised to the next step's level (after the last step: the clean latent). */
static int blend_kept_area(const sd_sampler *smp, int k, const image_cond *ic, size_t hw, float *latents, float *spare, sd_error *err)
{
    int rc = k + 1 < smp->steps ? sd_sampler_add_noise(smp, k + 1, ic->init, ic->noise, 4 * hw, spare, err) : SD_OK;
    const float *kept = k + 1 < smp->steps ? spare : ic->init;
    for (size_t i = 0; i < 4 * hw && !rc; i++) {
        float mk = ic->mask[i % hw];
        latents[i] = (1.0f - mk) * kept[i] + mk * latents[i];
    }
    return rc;
}

/* One image of a generation (steps 2-4) from the text stage's conditioning, with the generator
   seeded for it; rgb gets its pixels. */
static int generate_image(const sd_model *m, const sd_params *p, int first, const sd_unet_cond *cond, int B, sd_rng *rng,
                          sd_pool *pool, sd_arena *a, uint8_t *rgb, sd_error *err)
{
    int h = p->height / 8, w = p->width / 8, rc, start = 0, mode = guide_mode(m, p), ch = m->unet->in_channels;
    size_t hw = (size_t)h * w, lat = 4 * hw, mark = sd_arena_mark(a);
    float *latents = arena_floats(a, lat, err), *noise_pred = arena_floats(a, lat, err), *spare = arena_floats(a, lat, err);
    float *unet_in = arena_floats(a, (size_t)B * ch * hw, err), *unet_out = arena_floats(a, (size_t)B * lat, err);
    float *timesteps = arena_floats(a, (size_t)B, err);
    float *history = p->sampler == SD_SAMPLER_DPMPP_2M ? arena_floats(a, lat, err) : NULL;
    image_cond ic;
    sd_sampler smp;
    memset(&ic, 0, sizeof ic);
    ic.extra_channels = ch - 4;
    if (ic.extra_channels && !(ic.extra = arena_floats(a, (size_t)ic.extra_channels * hw, err))) return SD_ERR_MEMORY;
    if (mode == GUIDE_BLEND && (!(ic.init = arena_floats(a, lat, err)) || !(ic.noise = arena_floats(a, lat, err)) ||
                                !(ic.mask = arena_floats(a, hw, err)))) return SD_ERR_MEMORY;
    if (!timesteps || (p->sampler == SD_SAMPLER_DPMPP_2M && !history)) return SD_ERR_MEMORY;
    if ((rc = sampler_init(m, p, &smp, err))) return rc;
    if (p->init_rgb && mode != GUIDE_IP2P && (rc = sd_img2img_start(p->steps, strength_of(m, p), &start, err))) return rc;
    if ((rc = start_latents(m, p, first, &smp, start, rng, latents, &ic, pool, a, err))) return rc;

    /* 3. Denoise: one batched UNet pass per step (every row sees the same scaled latents),
       guidance, one sampler step. A dry run plans one step: they all take the same memory. */
    for (int k = start; k < p->steps; k++) {
        if (!pool->measure) unet_input_rows(m, &smp, k, B, latents, &ic, hw, unet_in, timesteps);
        if ((rc = sd_unet(m->unet, unet_in, timesteps, cond, B, h, w, unet_out, pool, a, err)) || pool->measure) break;
        if (B == 3) sd_image_guidance(unet_out, unet_out + lat, unet_out + 2 * lat, p->guidance, p->image_guidance, lat, noise_pred);
        else if (B == 2) sd_guidance(unet_out, unet_out + lat, p->guidance, lat, noise_pred);
        else memcpy(noise_pred, unet_out, lat * sizeof(float));
        const float *noise = p->step_noise && first ? p->step_noise + (size_t)k * lat : NULL;
        if ((rc = sd_sampler_step(&smp, k, latents, noise_pred, lat, noise, rng, history, spare, NULL, err))) return rc;
        memcpy(latents, spare, lat * sizeof(float));
        if (mode == GUIDE_BLEND && (rc = blend_kept_area(&smp, k, &ic, hw, latents, spare, err))) return rc;
        if (p->preview) p->preview(p->user, k - start + 1, latents, h, w);
        if ((rc = preview_image(p, k - start + 1, latents, pool, a, err))) return rc;
        if (p->progress && p->progress(p->user, k - start + 1, p->steps - start))
            return fail(err, SD_ERR_CANCELLED, "generate: cancelled after step %d of %d", k - start + 1, p->steps - start);
    }
    if (rc) return rc;
    if (p->latents_out && first && !pool->measure) memcpy(p->latents_out, latents, lat * sizeof(float));
    if ((rc = decode_image(m, p, first, latents, pool, a, rgb, err))) return rc;
    sd_arena_reset(a, mark);
    return SD_OK;
}

/* ---- LoRA: the prompt's tags and the adapters of a generation ---- */

/* An argument of a tag as a number, as Python's float() reads it (" 0.8", "-1", "1e-1"). */
static int tag_number(const char *s, size_t n, double *out)
{
    char buf[64];
    while (n && (*s == ' ' || (*s >= '\t' && *s <= '\r'))) s++, n--;
    while (n && (s[n - 1] == ' ' || (s[n - 1] >= '\t' && s[n - 1] <= '\r'))) n--;
    if (!n || n >= sizeof buf) return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    return parse_number(buf, out) && fabs(*out) < 1e30;
}

/* A LoRA tag's arguments as A1111's extra_networks_lora reads them: split at ':', an item with
   one '=' is named (te=, unet=, dyn=), the others are positional: NAME, the text encoders'
   strength (default 1), the UNet's (default: the text encoders'), dyn. tag[0..len) is the
   whole tag, tag[1..1 + kind) its kind; NAME goes to name (cap bytes). */
static int lora_tag(const char *tag, size_t len, size_t kind, char *name, size_t cap, sd_lora *l, sd_error *err)
{
    const char *end = tag + len - 1, *pos[4] = {NULL, NULL, NULL, NULL}, *named[3] = {NULL, NULL, NULL};
    static const char *const keys[3] = {"te", "unet", "dyn"};
    size_t pos_n[4] = {0, 0, 0, 0}, named_n[3] = {0, 0, 0};
    int npos = 0, shown = len < 120 ? (int)len : 120;
    double te = 1, unet;
    for (const char *s = tag + kind + 2, *e; s <= end; s = e + 1) {   /* the items between "<kind:" and ">" */
        const char *eq;
        size_t n;
        for (e = s; e < end && *e != ':'; e++) {}
        n = (size_t)(e - s);
        eq = (const char *)memchr(s, '=', n);
        if (eq && !memchr(eq + 1, '=', (size_t)(e - eq - 1))) {
            for (int k = 0; k < 3; k++)
                if ((size_t)(eq - s) == strlen(keys[k]) && !strncmp(s, keys[k], strlen(keys[k]))) named[k] = eq + 1, named_n[k] = (size_t)(e - eq - 1);
        } else if (npos < 4) {
            pos[npos] = s;
            pos_n[npos++] = n;
        }
    }
    if (npos > 3 || named[2])
        return fail(err, SD_ERR_UNSUPPORTED, "prompt tag '%.*s': dyn (a LoRA's first ranks only) is not supported", shown, tag);
    if (pos_n[0] >= cap) return fail(err, SD_ERR_ARG, "prompt tag '%.*s': LoRA name longer than %zu bytes", shown, tag, cap - 1);
    memcpy(name, pos[0], pos_n[0]);
    name[pos_n[0]] = 0;
    if ((npos > 1 && !tag_number(pos[1], pos_n[1], &te)) || (named[0] && !tag_number(named[0], named_n[0], &te)))
        return fail(err, SD_ERR_ARG, "prompt tag '%.*s': the text encoder strength is not a number", shown, tag);
    unet = te;
    if ((npos > 2 && !tag_number(pos[2], pos_n[2], &unet)) || (named[1] && !tag_number(named[1], named_n[1], &unet)))
        return fail(err, SD_ERR_ARG, "prompt tag '%.*s': the UNet strength is not a number", shown, tag);
    memset(l, 0, sizeof *l);
    l->text_scale = (float)te;
    l->unet_scale = (float)unet;
    return SD_OK;
}

/* The LoRAs of a generation, before anything else runs: the prompt's tags taken out (q->prompt
   becomes the text without them; tags of other kinds than lora and its alias lyco are dropped
   with a warning, as A1111 skips them), each LoRA tag's file asked of p->lora_resolve, those
   files and p->loras matched to the model, the set put on the pool. A dry run takes the same
   arena bytes and asks for the same files (their headers size the set) but writes nothing:
   q->prompt keeps its tags, which the dry run's text plans skip (chunk_bound). */
static int lora_begin(const sd_model *m, const sd_params *p, sd_params *q, sd_pool *pool, sd_arena *a, sd_error *err)
{
    const char *text = p->prompt ? p->prompt : "";
    size_t end = prompt_tags_end(text), kind, tag, bound = LORA_SET_BYTES + sizeof(sd_safetensors), i;
    int dry = arena_measuring(a), tags = 0, n = 0, rc;
    char name[256];
    sd_lora_set *set = NULL;
    for (i = 0; text[i]; i += tag ? tag : 1) tags += (tag = prompt_tag(m->vocab, text, i, end, &kind)) != 0;
    if (!tags && !p->lora_count) return SD_OK;   /* nothing to do, nothing taken */
    char *rest = (char *)sd_arena_alloc(a, strlen(text) + 1, err);
    sd_lora *list = (sd_lora *)arena_array(a, (size_t)tags + (size_t)p->lora_count, sizeof(sd_lora), err);
    if (!rest || !list) return SD_ERR_MEMORY;
    if (!dry) q->prompt = rest, prompt_untagged(m->vocab, text, rest);
    for (i = 0; text[i]; i += tag ? tag : 1) {
        const void *data = NULL;
        size_t size = 0;
        int shown;
        sd_lora l;
        if (!(tag = prompt_tag(m->vocab, text, i, end, &kind))) continue;
        shown = tag < 120 ? (int)tag : 120;
        if (kind != 4 || (strncmp(text + i + 1, "lora", 4) && strncmp(text + i + 1, "lyco", 4))) {
            if (!dry && p->warnings && p->warnings_size)
                text_append(p->warnings, p->warnings_size, "prompt: removed '%.*s': sd.h applies LoRA tags only\n", shown, text + i);
            continue;
        }
        if ((rc = lora_tag(text + i, tag, kind, name, sizeof name, &l, err))) return rc;
        if (!p->lora_resolve) return fail(err, SD_ERR_ARG, "prompt tag '%.*s': no lora_resolve callback to find LoRA '%s' with", shown, text + i, name);
        if (p->lora_resolve(p->lora_user, name, &data, &size) || (!data && size))
            return fail(err, SD_ERR_MISSING, "prompt tag '%.*s': there is no LoRA named '%s'", shown, text + i, name);
        char *copy = (char *)sd_arena_alloc(a, strlen(name) + 1, err);   /* for messages */
        if (!copy) return SD_ERR_MEMORY;
        bound += lora_file_bound(data, size);
        if (!dry) {
            memcpy(copy, name, strlen(name) + 1);
            l.data = data, l.size = size, l.name = copy;
            list[n] = l;
        }
        n++;
    }
    for (int k = 0; k < p->lora_count; k++, n++) {
        bound += lora_file_bound(p->loras[k].data, p->loras[k].size);
        if (!dry) list[n] = p->loras[k];
    }
    if (!n) return SD_OK;   /* tags of other kinds only */
    if ((rc = lora_load(&set, m->unet, m->te, m->encoders, list, n, bound, a, err)) || (rc = pool_set_lora(pool, set, a, err))) return rc;
    if (!dry && p->warnings && p->warnings_size) text_append(p->warnings, p->warnings_size, "%s", set->warnings);
    return SD_OK;
}

/* The stage a pool needs for model m's weights that come through a callback: SD_WEIGHT_STAGE_BYTES,
   or more where one weight row and its bias's values would not fit; 0 when all is in memory. */
static size_t model_stage_bytes(const sd_model *m)
{
    size_t need = 0;
    for (int f = 0; f < SD_MAX_FILES; f++)
        for (int i = 0; i < m->files[f].count; i++) {
            const sd_tensor *t = &m->files[f].tensors[i];
            if (!t->reader) continue;
            size_t row = (size_t)dtype_bytes(t->dtype, (uint64_t)tensor_row_length(t)) + 8 * (size_t)(t->ndim > 1 ? t->shape[0] : 0);
            need = max_size(need, max_size(row, SD_WEIGHT_STAGE_BYTES));
        }
    return need;
}

static int pool_set_stage(sd_pool *pool, const sd_model *m, sd_arena *a, sd_error *err)
{
    size_t n = model_stage_bytes(m);
    if (!n || pool->stage_bytes >= n) return SD_OK;
    if (!(pool->stage = (unsigned char *)sd_arena_alloc(a, n, err))) return SD_ERR_MEMORY;
    pool->stage_bytes = n;
    return SD_OK;
}

SD_API size_t sd_pool_stage_bytes(const sd_model *m) { return m ? model_stage_bytes(m) : 0; }

SD_API int sd_pool_set_stage(sd_pool *pool, const sd_model *m, sd_arena *a, sd_error *err)
{
    if (!pool || !m || !a) return fail(err, SD_ERR_ARG, "sd_pool_set_stage: NULL pool, model or arena");
    return pool_set_stage(pool, m, a, err);
}

/* The body of sd_generate, also its plan: the pool, the LoRAs, the text once, then each image
   (a dry run plans one). */
static int generate(const sd_model *m, const sd_params *params, sd_arena *a, uint8_t *rgb, sd_error *err)
{
    sd_params q = *params;   /* with the prompt's tags taken out (lora_begin) */
    const sd_params *p = &q;
    int B = batch_rows(m, p), rc, add = sd_unet_add_dim(m->unet), C = 0, gd = m->unet->guidance_dim;
    float *ctx = NULL, *y = NULL, *guidance = NULL;
    sd_unet_cond cond;
    sd_pool pool;
    unsigned failures[SD_MAX_FILES];   /* reads through the callback that failed before this run */
    for (int f = 0; f < SD_MAX_FILES; f++) failures[f] = reader_failures(m->files[f].reader);
    if ((rc = pool_init(&pool, p->threads, a, err))) return rc;
    sd_pool_set_quant(&pool, p->quant);
    if ((rc = pool_set_stage(&pool, m, a, err)) || (rc = lora_begin(m, params, &q, &pool, a, err)) || (rc = count_chunks(m, p, B, &C, a, err))) goto done;
    ctx = arena_floats(a, (size_t)B * C * SD_TEXT_TOKENS * m->context_dim, err);
    y = add ? arena_floats(a, (size_t)B * add, err) : NULL;
    guidance = gd ? arena_floats(a, (size_t)B * gd, err) : NULL;   /* LCM: the guidance scale as the UNet's input */
    cond.context = ctx, cond.context_len = C * SD_TEXT_TOKENS, cond.y = y, cond.guidance = guidance;
    if (!ctx || (add && !y) || (gd && !guidance)) { rc = SD_ERR_MEMORY; goto done; }
    for (int b = 0; b < B && gd && !pool.measure; b++) sd_guidance_embedding(p->guidance - 1.0f, gd, guidance + (size_t)b * gd);
    if ((rc = encode_text(m, p, B, C, ctx, y, &pool, a, err))) goto done;
    for (int i = 0; i < (pool.measure ? 1 : p->batch_count) && !rc; i++) {
        sd_rng rng;
        sd_rng_seed(&rng, p->seed + (uint64_t)i);
        rc = generate_image(m, p, i == 0, &cond, B, &rng, &pool, a, rgb + (size_t)i * 3 * p->width * p->height, err);
        for (int f = 0; f < SD_MAX_FILES && !rc; f++) rc = reader_check(m->files[f].reader, failures[f], err);
    }
done:
    pool_free(&pool);
    return rc;
}

/* The plan of a generation: its dry run's peak, or why it cannot run. */
static int generate_plan(const sd_model *m, const sd_params *p, size_t *need, sd_error *err)
{
    sd_arena dry;
    int rc = check_params(m, p, err);
    arena_measure(&dry);
    if (!rc) rc = generate(m, p, &dry, (uint8_t *)dummy_floats(), err);
    *need = rc ? 0 : dry.peak;
    return rc;
}

SD_API size_t sd_generate_arena_bytes(const sd_model *m, const sd_params *p)
{
    size_t need;
    generate_plan(m, p, &need, NULL);
    return need;
}

SD_API int sd_generate(const sd_model *m, const sd_params *p, sd_arena *a, uint8_t *rgb_out, sd_error *err)
{
    int rc = check_params(m, p, err);
    size_t need, mark;
    if (rc) return rc;
    if (!a || !rgb_out) return fail(err, SD_ERR_ARG, "generate: NULL arena or output");
    if (p->warnings && p->warnings_size) p->warnings[0] = 0;
    if ((rc = generate_plan(m, p, &need, err))) return rc;
    mark = sd_arena_mark(a);
    if (a->size - a->used < need)
        return fail(err, SD_ERR_MEMORY, "generate: needs %zu arena bytes for %d x %d, the arena has %zu free",
                    need, p->width, p->height, a->size - a->used);
    rc = generate(m, p, a, rgb_out, err);
    sd_arena_reset(a, mark);
    return rc;
}

#endif /* SD_IMPLEMENTATION_DONE */
#endif /* SD_IMPLEMENTATION */

/*
MIT License

Copyright (c) 2026 the sd.h authors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
*/
