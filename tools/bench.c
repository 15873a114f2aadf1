/* tools/bench.c - how fast sd.h runs each stage, on full-size checkpoints of random weights.

     make bench                                  every stage on a random SD 1.5, then SDXL
     ./bench unet --sizes 64 --threads 2         one stage (./bench --help lists them)
     ./bench --make-random-model sd15|sd21|sdxl|taesd PATH [f16|f32|bf16]   write such a checkpoint

   It is built on example.c (its main renamed, as test.c does): files are mapped and models
   loaded exactly as the CLI does it, so the figures are those of what users run. */
#define main example_main
#include "../example.c"
#undef main

#include <dlfcn.h>   /* the kernel figures compare with OpenBLAS when it is installed */
#include <sys/resource.h>
#include <sys/wait.h>

/* ---- random full-size checkpoints ---------------------------------------------------------- */
/* The tensors of a real single-file SD 1.5, SD 2.1 or SDXL base 1.0 checkpoint (names, shapes,
   dtype, layout of the original LDM / Stability generative-models code), generated from the
   architecture written out below and filled with random weights of the scale PyTorch initialises
   them to. Speed does not depend on the values, so nobody has to download 2 or 7 GB to measure
   it. The same walk over the architecture counts the multiply-adds of each part at a given latent
   size: the benchmark's GFLOPS come from the model description, not from a table of numbers. Like
   a real download, the file has no sd.* metadata: sd.h works the family out from the shapes. */

enum { RM_TEXT, RM_UNET, RM_VAE_DECODER, RM_VAE_ENCODER, RM_TAESD_DECODER, RM_TAESD_ENCODER, RM_PARTS };
enum { RM_UNIFORM, RM_ONES, RM_ZEROS, RM_NORMAL, RM_ARANGE, RM_CONSTANT };   /* how a tensor is filled */

/* A text encoder: OpenAI's CLIP in transformers' names (q/k/v apart, plus the position_ids
   buffer) or OpenCLIP's (q/k/v fused in in_proj, plus text_projection and logit_scale). MLP 4x
   wide; 77 tokens per prompt. */
typedef struct random_model_encoder {
    const char *prefix;         /* tensor names start with this */
    int openclip;               /* 0: OpenAI CLIP names, 1: OpenCLIP names */
    int width, layers, run;     /* width, layers in the file, layers a generation runs */
    int pooled;                 /* the pipeline also takes the projected pooled output (SDXL's second) */
} random_model_encoder;

/* What tells the families apart, as a table: the walk reads everything that differs from here. */
typedef struct random_model_family {
    const char *kind, *name;    /* "sd15", "SD 1.5" */
    int encoders;               /* 1, or 2 (SDXL: context = both encoders' outputs side by side) */
    random_model_encoder te[2];
    int levels, mult[4];        /* UNet levels and their channels, times 320 */
    int depth[4], mid_depth;    /* transformer blocks per level (0: no attention there) and in the middle */
    int context;                /* cross-attention input width: the encoders' widths summed */
    int adm;                    /* SDXL's added conditioning (label_emb) input width; 0: none */
    int linear_proj;            /* proj_in/proj_out are linear layers (SD2, SDXL), not 1x1 convs (SD1) */
    int latent;                 /* latent side of its native image size (64: 512 px) */
} random_model_family;

static const random_model_family random_model_families[] = {
    /* CLIP ViT-L/14 (768 wide, 12 layers); 8 heads of 40 */
    {"sd15", "SD 1.5", 1, {{"cond_stage_model.transformer.text_model.", 0, 768, 12, 12, 0}, {NULL, 0, 0, 0, 0, 0}},
     4, {1, 2, 4, 4}, {1, 1, 1, 0}, 1, 768, 0, 0, 64},
    /* OpenCLIP ViT-H/14 (1024 wide, 24 layers of which SD runs 23); heads of 64 */
    {"sd21", "SD 2.1", 1, {{"cond_stage_model.model.", 1, 1024, 24, 23, 0}, {NULL, 0, 0, 0, 0, 0}},
     4, {1, 2, 4, 4}, {1, 1, 1, 0}, 1, 1024, 0, 1, 64},
    /* CLIP ViT-L (penultimate layer: 11 of 12 run) and OpenCLIP bigG/14 (1280 wide, 32 layers, all
       run for the pooled output); three levels, no attention at the first, 2 and 10 transformer
       blocks at the others and 10 in the middle; heads of 64; label_emb takes the pooled text
       embedding (1280) and six size numbers embedded 256 wide each (2816) */
    {"sdxl", "SDXL", 2, {{"conditioner.embedders.0.transformer.text_model.", 0, 768, 12, 11, 0},
                         {"conditioner.embedders.1.model.", 1, 1280, 32, 32, 1}},
     3, {1, 2, 4, 0}, {0, 2, 10, 0}, 10, 2048, 2816, 1, 128},
};

static const random_model_family *random_model_family_find(const char *kind)
{
    for (size_t i = 0; i < sizeof random_model_families / sizeof *random_model_families; i++)
        if (!strcmp(kind, random_model_families[i].kind)) return &random_model_families[i];
    return NULL;
}

typedef struct random_model_walk random_model_walk;
struct random_model_walk {
    const random_model_family *f;
    int h, w, batch;            /* latent size and UNet/text batch the multiply-adds are counted for */
    int part;                   /* RM_*: which part the tensors being walked belong to */
    double macs[RM_PARTS];      /* multiply-adds of each part (one FLOP pair each) */
    int count;                  /* tensors walked */
    /* called for every tensor, in file order; NULL when only counting */
    void (*emit)(random_model_walk *k, const char *name, int ndim, const int64_t *shape, int init, float scale);
    void *user;
};

static void random_model_put(random_model_walk *k, const char *prefix, const char *name, const char *suffix,
                             int init, float scale, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    char full[256];
    int64_t shape[4];
    shape[0] = d0, shape[1] = d1, shape[2] = d2, shape[3] = d3;
    snprintf(full, sizeof full, "%s%s%s", prefix, name, suffix);
    k->count++;
    if (k->emit) k->emit(k, full, ndim, shape, init, scale);
}

/* nn.Linear(in, out) applied to `rows` vectors; PyTorch draws weight and bias from ±1/sqrt(in). */
static void random_model_linear(random_model_walk *k, const char *p, const char *name, int out, int in, double rows)
{
    float bound = 1.0f / sqrtf((float)in);
    random_model_put(k, p, name, ".weight", RM_UNIFORM, bound, 2, out, in, 0, 0);
    random_model_put(k, p, name, ".bias", RM_UNIFORM, bound, 1, out, 0, 0, 0);
    k->macs[k->part] += rows * out * in;
}

/* nn.Conv2d(in, out, size) producing `rows` output pixels; the bound is 1/sqrt(in·size²). */
static void random_model_conv(random_model_walk *k, const char *p, const char *name, int out, int in, int size, double rows)
{
    float bound = 1.0f / sqrtf((float)(in * size * size));
    random_model_put(k, p, name, ".weight", RM_UNIFORM, bound, 4, out, in, size, size);
    random_model_put(k, p, name, ".bias", RM_UNIFORM, bound, 1, out, 0, 0, 0);
    k->macs[k->part] += rows * out * in * size * size;
}

/* GroupNorm or LayerNorm over C channels: scale 1, shift 0. */
static void random_model_norm(random_model_walk *k, const char *p, const char *name, int C)
{
    random_model_put(k, p, name, ".weight", RM_ONES, 0, 1, C, 0, 0, 0);
    random_model_put(k, p, name, ".bias", RM_ZEROS, 0, 1, C, 0, 0, 0);
}

/* One text encoder (random_model_encoder says which). Layers past the one a generation reads
   cost nothing; a pooled output adds the projection of each prompt's end-of-text vector. */
static void random_model_encoder_walk(random_model_walk *k, const random_model_encoder *t)
{
    int D = t->width, F = 4 * D;
    const char *p = t->prefix;
    char q[160];
    if (!t->openclip) {   /* the int64 buffer first: at data offset 0 it is aligned for its 8 bytes */
        random_model_put(k, p, "embeddings.position_ids", "", RM_ARANGE, 0, 2, 1, 77, 0, 0);
        random_model_put(k, p, "embeddings.token_embedding.weight", "", RM_NORMAL, 0.02f, 2, 49408, D, 0, 0);
        random_model_put(k, p, "embeddings.position_embedding.weight", "", RM_NORMAL, 0.01f, 2, 77, D, 0, 0);
    } else {
        random_model_put(k, p, "token_embedding.weight", "", RM_NORMAL, 0.02f, 2, 49408, D, 0, 0);
        random_model_put(k, p, "positional_embedding", "", RM_NORMAL, 0.01f, 2, 77, D, 0, 0);
    }
    for (int l = 0; l < t->layers; l++) {
        double rows = l < t->run ? 77.0 * k->batch : 0;
        if (!t->openclip) {
            snprintf(q, sizeof q, "%sencoder.layers.%d.", p, l);
            random_model_norm(k, q, "layer_norm1", D);
            random_model_linear(k, q, "self_attn.q_proj", D, D, rows);
            random_model_linear(k, q, "self_attn.k_proj", D, D, rows);
            random_model_linear(k, q, "self_attn.v_proj", D, D, rows);
            random_model_linear(k, q, "self_attn.out_proj", D, D, rows);
            random_model_norm(k, q, "layer_norm2", D);
            random_model_linear(k, q, "mlp.fc1", F, D, rows);
            random_model_linear(k, q, "mlp.fc2", D, F, rows);
        } else {
            float bound = 1.0f / sqrtf((float)D);
            snprintf(q, sizeof q, "%stransformer.resblocks.%d.", p, l);
            random_model_norm(k, q, "ln_1", D);
            random_model_put(k, q, "attn.in_proj_weight", "", RM_UNIFORM, bound, 2, 3 * D, D, 0, 0);
            random_model_put(k, q, "attn.in_proj_bias", "", RM_UNIFORM, bound, 1, 3 * D, 0, 0, 0);
            k->macs[k->part] += rows * 3 * D * D;
            random_model_linear(k, q, "attn.out_proj", D, D, rows);
            random_model_norm(k, q, "ln_2", D);
            random_model_linear(k, q, "mlp.c_fc", F, D, rows);
            random_model_linear(k, q, "mlp.c_proj", D, F, rows);
        }
        k->macs[k->part] += rows * 77 * D * 2;   /* attention: scores and weighted values (full, though causal) */
    }
    random_model_norm(k, p, t->openclip ? "ln_final" : "final_layer_norm", D);
    if (t->openclip) {   /* stored [width, projection] and used as x·P */
        random_model_put(k, p, "text_projection", "", RM_UNIFORM, 1.0f / sqrtf((float)D), 2, D, D, 0, 0);
        random_model_put(k, p, "logit_scale", "", RM_CONSTANT, 4.6052f, 0, 0, 0, 0, 0);   /* ln 100, as trained */
        if (t->pooled) k->macs[k->part] += (double)k->batch * D * D;
    }
}

static void random_model_text(random_model_walk *k)
{
    k->part = RM_TEXT;
    for (int e = 0; e < k->f->encoders; e++) random_model_encoder_walk(k, &k->f->te[e]);
}

/* ResBlock: GroupNorm-SiLU-conv3x3, + Linear(SiLU(time embedding)), GroupNorm-SiLU-conv3x3, and a
   1x1 conv on the skip path where the width changes. */
static void random_model_resblock(random_model_walk *k, const char *p, int cin, int cout, double rows)
{
    random_model_norm(k, p, "in_layers.0", cin);
    random_model_conv(k, p, "in_layers.2", cout, cin, 3, rows);
    random_model_linear(k, p, "emb_layers.1", cout, 1280, k->batch);
    random_model_norm(k, p, "out_layers.0", cout);
    random_model_conv(k, p, "out_layers.3", cout, cout, 3, rows);
    if (cin != cout) random_model_conv(k, p, "skip_connection", cout, cin, 1, rows);
}

/* SpatialTransformer over n pixels: GroupNorm, proj_in (a 1x1 conv in SD 1, a linear layer in SD 2
   and SDXL), `depth` blocks of self-attention, cross-attention to the 77 text vectors and a GEGLU
   feed-forward (4x wide, value and gate in one matrix), each after a LayerNorm; proj_out. */
static void random_model_transformer(random_model_walk *k, const char *p, int C, int depth, double n)
{
    int text = k->f->context;
    double rows = n * k->batch;
    char q[192];
    random_model_norm(k, p, "norm", C);
    if (k->f->linear_proj) random_model_linear(k, p, "proj_in", C, C, rows);
    else random_model_conv(k, p, "proj_in", C, C, 1, rows);
    for (int d = 0; d < depth; d++) {
        for (int a = 1; a <= 2; a++) {   /* attn1 attends to the image, attn2 to the text */
            int kv = a == 1 ? C : text;
            double kv_rows = a == 1 ? rows : 77.0 * k->batch, keys = a == 1 ? n : 77;
            snprintf(q, sizeof q, "%stransformer_blocks.%d.attn%d.", p, d, a);
            random_model_put(k, q, "to_q.weight", "", RM_UNIFORM, 1.0f / sqrtf((float)C), 2, C, C, 0, 0);
            random_model_put(k, q, "to_k.weight", "", RM_UNIFORM, 1.0f / sqrtf((float)kv), 2, C, kv, 0, 0);
            random_model_put(k, q, "to_v.weight", "", RM_UNIFORM, 1.0f / sqrtf((float)kv), 2, C, kv, 0, 0);
            random_model_linear(k, q, "to_out.0", C, C, rows);
            k->macs[k->part] += rows * C * C + 2 * kv_rows * C * kv + 2 * rows * keys * C;   /* q; k, v; QKᵀ and PV */
        }
        snprintf(q, sizeof q, "%stransformer_blocks.%d.", p, d);
        random_model_linear(k, q, "ff.net.0.proj", 8 * C, C, rows);
        random_model_linear(k, q, "ff.net.2", C, 4 * C, rows);
        random_model_norm(k, q, "norm1", C);
        random_model_norm(k, q, "norm2", C);
        random_model_norm(k, q, "norm3", C);
    }
    if (k->f->linear_proj) random_model_linear(k, p, "proj_out", C, C, rows);
    else random_model_conv(k, p, "proj_out", C, C, 1, rows);
}

/* The UNet (Rombach et al. 2022, LDM code's openaimodel.py numbering): 320 channels times the
   family's multipliers over its levels, two ResBlocks per level on the way down (each followed by
   a transformer where the level has attention) and three on the way up, each taking the matching
   skip connection; a stride-2 conv between levels down, nearest 2x + conv up. SDXL adds label_emb:
   an MLP from its size-and-pooled-text vector into the time embedding. Attention heads (SD 1: 8
   of 40 channels; SD 2, SDXL: 64-wide) are not visible in the tensors. */
static void random_model_unet(random_model_walk *k)
{
    const random_model_family *f = k->f;
    const char *P = "model.diffusion_model.";
    int skip[16], nskip = 0, ch = 320, block = 1, L = f->levels, H[5], W[5];
    char p[128];
    H[0] = k->h, W[0] = k->w;
    for (int l = 1; l < 5; l++) H[l] = (H[l - 1] + 1) / 2, W[l] = (W[l - 1] + 1) / 2;   /* stride-2 convs round up */
#define RM_PIXELS(l) ((double)H[l] * W[l])
    k->part = RM_UNET;
    snprintf(p, sizeof p, "%stime_embed.", P);   /* sinusoid(320) → 1280 → SiLU → 1280 */
    random_model_linear(k, p, "0", 1280, 320, k->batch);
    random_model_linear(k, p, "2", 1280, 1280, k->batch);
    if (f->adm) {   /* y (adm) → 1280 → SiLU → 1280, added to the time embedding */
        snprintf(p, sizeof p, "%slabel_emb.0.", P);
        random_model_linear(k, p, "0", 1280, f->adm, k->batch);
        random_model_linear(k, p, "2", 1280, 1280, k->batch);
    }
    snprintf(p, sizeof p, "%sinput_blocks.0.", P);
    random_model_conv(k, p, "0", 320, 4, 3, k->batch * RM_PIXELS(0));
    skip[nskip++] = ch;
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < 2; j++, block++) {
            snprintf(p, sizeof p, "%sinput_blocks.%d.0.", P, block);
            random_model_resblock(k, p, ch, 320 * f->mult[l], k->batch * RM_PIXELS(l));
            ch = 320 * f->mult[l];
            snprintf(p, sizeof p, "%sinput_blocks.%d.1.", P, block);
            if (f->depth[l]) random_model_transformer(k, p, ch, f->depth[l], RM_PIXELS(l));
            skip[nskip++] = ch;
        }
        if (l < L - 1) {   /* Downsample: 3x3 conv, stride 2 */
            snprintf(p, sizeof p, "%sinput_blocks.%d.0.", P, block++);
            random_model_conv(k, p, "op", ch, ch, 3, k->batch * RM_PIXELS(l + 1));
            skip[nskip++] = ch;
        }
    }
    snprintf(p, sizeof p, "%smiddle_block.0.", P);
    random_model_resblock(k, p, ch, ch, k->batch * RM_PIXELS(L - 1));
    snprintf(p, sizeof p, "%smiddle_block.1.", P);
    random_model_transformer(k, p, ch, f->mid_depth, RM_PIXELS(L - 1));
    snprintf(p, sizeof p, "%smiddle_block.2.", P);
    random_model_resblock(k, p, ch, ch, k->batch * RM_PIXELS(L - 1));
    block = 0;
    for (int l = L - 1; l >= 0; l--)
        for (int j = 0; j < 3; j++, block++) {
            snprintf(p, sizeof p, "%soutput_blocks.%d.0.", P, block);
            random_model_resblock(k, p, ch + skip[--nskip], 320 * f->mult[l], k->batch * RM_PIXELS(l));
            ch = 320 * f->mult[l];
            snprintf(p, sizeof p, "%soutput_blocks.%d.1.", P, block);
            if (f->depth[l]) random_model_transformer(k, p, ch, f->depth[l], RM_PIXELS(l));
            if (j == 2 && l > 0) {   /* Upsample: nearest 2x, then a 3x3 conv at the new size */
                snprintf(p, sizeof p, "%soutput_blocks.%d.%d.", P, block, f->depth[l] ? 2 : 1);
                random_model_conv(k, p, "conv", ch, ch, 3, k->batch * RM_PIXELS(l - 1));
            }
        }
    snprintf(p, sizeof p, "%sout.", P);
    random_model_norm(k, p, "0", ch);
    random_model_conv(k, p, "2", 4, ch, 3, k->batch * RM_PIXELS(0));
#undef RM_PIXELS
}

/* A VAE ResnetBlock (no time input) and the mid block: ResNet, single-head self-attention whose
   q, k, v and output projections are 1x1 convs, ResNet. */
static void random_model_vae_resnet(random_model_walk *k, const char *p, int cin, int cout, double rows)
{
    random_model_norm(k, p, "norm1", cin);
    random_model_conv(k, p, "conv1", cout, cin, 3, rows);
    random_model_norm(k, p, "norm2", cout);
    random_model_conv(k, p, "conv2", cout, cout, 3, rows);
    if (cin != cout) random_model_conv(k, p, "nin_shortcut", cout, cin, 1, rows);
}

static void random_model_vae_mid(random_model_walk *k, const char *stack, int C, double n)
{
    char p[128];
    snprintf(p, sizeof p, "first_stage_model.%s.mid.block_1.", stack);
    random_model_vae_resnet(k, p, C, C, n);
    snprintf(p, sizeof p, "first_stage_model.%s.mid.attn_1.", stack);
    random_model_norm(k, p, "norm", C);
    random_model_conv(k, p, "q", C, C, 1, n);
    random_model_conv(k, p, "k", C, C, 1, n);
    random_model_conv(k, p, "v", C, C, 1, n);
    random_model_conv(k, p, "proj_out", C, C, 1, n);
    k->macs[k->part] += 2 * n * n * C;
    snprintf(p, sizeof p, "first_stage_model.%s.mid.block_2.", stack);
    random_model_vae_resnet(k, p, C, C, n);
}

/* The autoencoder (AutoencoderKL, f = 8): 128 channels times 1, 2, 4, 4; the encoder has two
   ResNets per level, the decoder three, and the decoder's levels are numbered fine to coarse
   (up.3 runs first). One image per call: the batch does not apply. */
static void random_model_vae(random_model_walk *k)
{
    static const int mult[4] = {1, 2, 4, 4};
    const double h = k->h, w = k->w;
    int ch = 128;
    char p[128];
    k->part = RM_VAE_ENCODER;   /* at the image size, 8h x 8w, halving after each level but the last */
    random_model_conv(k, "first_stage_model.encoder.", "conv_in", 128, 3, 3, 64 * h * w);
    for (int i = 0; i < 4; i++) {
        double rows = 64 * h * w / (1 << 2 * i);
        for (int j = 0; j < 2; j++) {
            snprintf(p, sizeof p, "first_stage_model.encoder.down.%d.block.%d.", i, j);
            random_model_vae_resnet(k, p, ch, 128 * mult[i], rows);
            ch = 128 * mult[i];
        }
        snprintf(p, sizeof p, "first_stage_model.encoder.down.%d.downsample.", i);
        if (i < 3) random_model_conv(k, p, "conv", ch, ch, 3, rows / 4);
    }
    random_model_vae_mid(k, "encoder", ch, h * w);
    random_model_norm(k, "first_stage_model.encoder.", "norm_out", ch);
    random_model_conv(k, "first_stage_model.encoder.", "conv_out", 8, ch, 3, h * w);
    random_model_conv(k, "first_stage_model.", "quant_conv", 8, 8, 1, h * w);
    k->part = RM_VAE_DECODER;
    random_model_conv(k, "first_stage_model.", "post_quant_conv", 4, 4, 1, h * w);
    random_model_conv(k, "first_stage_model.decoder.", "conv_in", 512, 4, 3, h * w);
    ch = 512;
    random_model_vae_mid(k, "decoder", ch, h * w);
    for (int i = 3; i >= 0; i--) {
        double rows = h * w * (1 << 2 * (3 - i));
        for (int j = 0; j < 3; j++) {
            snprintf(p, sizeof p, "first_stage_model.decoder.up.%d.block.%d.", i, j);
            random_model_vae_resnet(k, p, ch, 128 * mult[i], rows);
            ch = 128 * mult[i];
        }
        snprintf(p, sizeof p, "first_stage_model.decoder.up.%d.upsample.", i);
        if (i > 0) random_model_conv(k, p, "conv", ch, ch, 3, rows * 4);
    }
    random_model_norm(k, "first_stage_model.decoder.", "norm_out", ch);
    random_model_conv(k, "first_stage_model.decoder.", "conv_out", 3, ch, 3, 64 * h * w);
}

/* TAESD, the tiny autoencoder, as diffusers' AutoencoderTiny file holds it (encoder.layers.N.*,
   decoder.layers.N.*; the original pair of files has the same tensors, numbered from 0 in each):
   every layer a 3x3 conv of 64 channels, Blocks of three with ReLU. Encoder: conv RGB → 64,
   Block, then three times a stride-2 conv without bias and three Blocks, conv 64 → 4. Decoder
   (its tanh clamp has no weights): conv 4 → 64, ReLU, three Blocks, then three times nearest 2x,
   a conv without bias and Blocks (3, 3, 1), conv 64 → 3. Layers as letters: C conv, R ReLU, B Block,
   D stride-2 conv, U upsampling, K the conv after it, which sd.h runs as four 2x2 convs of the
   small image (4 multiply-adds per tap and channel pair instead of 9: counted so). The image is
   8h x 8w. */
static void random_model_taesd(random_model_walk *k)
{
    static const char *const stacks[2] = {"CBDBBBDBBBDBBBC", "CRBBBUKBBBUKBBBUKBC"};
    char p[64];
    for (int d = 0; d < 2; d++) {
        double H = d ? k->h : 8.0 * k->h, W = d ? k->w : 8.0 * k->w;
        k->part = d ? RM_TAESD_DECODER : RM_TAESD_ENCODER;
        for (int i = 0; stacks[d][i]; i++) {
            char c = stacks[d][i];
            int first = i == 0, last = !stacks[d][i + 1];
            int in = first ? (d ? 4 : 3) : 64, out = last ? (d ? 3 : 4) : 64;
            snprintf(p, sizeof p, "%s.layers.%d", d ? "decoder" : "encoder", i);
            if (c == 'D') H = ceil(H / 2), W = ceil(W / 2);
            if (c == 'U') H *= 2, W *= 2;
            if (c == 'C') random_model_conv(k, p, "", out, in, 3, H * W);
            if (c == 'D' || c == 'K') {   /* no bias; default bound 1/sqrt(fan_in) */
                random_model_put(k, p, ".weight", "", RM_UNIFORM, 1.0f / sqrtf(64.0f * 9), 4, 64, 64, 3, 3);
                k->macs[k->part] += H * W * 64 * 64 * (c == 'K' ? 4 : 9);
            }
            for (int j = 0; c == 'B' && j < 3; j++) {
                char q[80];
                snprintf(q, sizeof q, "%s.conv.%d", p, 2 * j);
                random_model_conv(k, q, "", 64, 64, 3, H * W);
            }
        }
    }
}

/* The whole checkpoint, text encoders first (the int64 buffer of the first must lead the data). */
static void random_model_walk_all(random_model_walk *k)
{
    random_model_text(k);
    random_model_unet(k);
    random_model_vae(k);
}

/* Multiply-adds of each part of a family's model at an h x w latent. */
static void random_model_count(const random_model_family *f, int h, int w, int batch, double macs[RM_PARTS])
{
    random_model_walk k;
    memset(&k, 0, sizeof k);
    k.f = f, k.h = h, k.w = w, k.batch = batch;
    random_model_walk_all(&k);
    memcpy(macs, k.macs, sizeof k.macs);
}

/* ---- writing: the JSON header in one pass, then the data streamed in a second ---- */

typedef struct random_model_file {
    FILE *f;
    sd_dtype dtype;
    char *json;                 /* header being built (first pass) */
    size_t len, cap, offset;    /* its length, capacity; data bytes so far */
    int failed;
    float *chunk;               /* values in flight (second pass) */
    unsigned char *bytes;
} random_model_file;

enum { RANDOM_MODEL_CHUNK = 1 << 16 };

static void random_model_json(random_model_file *o, const char *fmt, ...)
{
    va_list ap;
    int n;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(o->json + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) { o->failed = 1; return; }
        if ((size_t)n < o->cap - o->len) break;
        char *grown = (char *)realloc(o->json, o->cap * 2 + (size_t)n);
        if (!grown) { o->failed = 1; return; }
        o->json = grown, o->cap = o->cap * 2 + (size_t)n;
    }
    o->len += (size_t)n;
}

static int64_t random_model_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

static void random_model_header_entry(random_model_walk *k, const char *name, int ndim, const int64_t *shape, int init, float scale)
{
    random_model_file *o = (random_model_file *)k->user;
    sd_dtype dt = init == RM_ARANGE ? SD_I64 : o->dtype;
    size_t bytes = (size_t)random_model_numel(ndim, shape) * sd_dtype_size(dt);
    (void)scale;
    random_model_json(o, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", o->len > 1 ? "," : "", name, sd_dtype_name(dt));
    for (int d = 0; d < ndim; d++) random_model_json(o, "%s%lld", d ? "," : "", (long long)shape[d]);
    random_model_json(o, "],\"data_offsets\":[%zu,%zu]}", o->offset, o->offset + bytes);
    o->offset += bytes;
}

/* splitmix64: each tensor has its own stream, seeded from its name, so a tensor's values do not
   depend on what comes before it. */
static uint64_t random_model_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double random_model_uniform(uint64_t *s) { return (double)(random_model_next(s) >> 11) * (1.0 / 9007199254740992.0); }

static void random_model_data(random_model_walk *k, const char *name, int ndim, const int64_t *shape, int init, float scale)
{
    random_model_file *o = (random_model_file *)k->user;
    int64_t n = random_model_numel(ndim, shape), done = 0;
    uint64_t seed = 0x5d15eedull;   /* the fixed seed, mixed with the name (FNV-1a) */
    for (const char *c = name; *c; c++) seed = (seed ^ (unsigned char)*c) * 0x100000001b3ull;
    if (init == RM_ARANGE) {   /* position_ids: 0, 1, ..., 76 as little-endian int64 */
        for (int64_t i = 0; i < n; i++) {
            unsigned char b[8];
            for (int j = 0; j < 8; j++) b[j] = (unsigned char)((uint64_t)i >> 8 * j);
            if (fwrite(b, 1, 8, o->f) != 8) o->failed = 1;
        }
        return;
    }
    while (done < n && !o->failed) {
        int m = n - done < RANDOM_MODEL_CHUNK ? (int)(n - done) : RANDOM_MODEL_CHUNK;
        for (int i = 0; i < m; i++) {
            float v = init == RM_ONES ? 1.0f : init == RM_ZEROS ? 0.0f : scale;
            if (init == RM_UNIFORM) v = (float)((2 * random_model_uniform(&seed) - 1) * scale);
            else if (init == RM_NORMAL) {   /* Box-Muller, one of the pair */
                double u1 = random_model_uniform(&seed), u2 = random_model_uniform(&seed);
                v = (float)(sqrt(-2 * log(1 - u1)) * cos(6.283185307179586 * u2) * scale);
            }
            o->chunk[i] = v;
        }
        size_t size = sd_dtype_size(o->dtype);
        for (int i = 0; i < m; i++) {
            uint32_t bits;
            uint16_t half;
            memcpy(&bits, &o->chunk[i], 4);
            if (o->dtype == SD_F32) { memcpy(o->bytes + 4 * (size_t)i, &bits, 4); continue; }
            half = o->dtype == SD_F16 ? sd_f32_to_f16(o->chunk[i])
                                      : (uint16_t)((bits + 0x7fffu + (bits >> 16 & 1)) >> 16);   /* bf16, nearest even */
            memcpy(o->bytes + 2 * (size_t)i, &half, 2);
        }
        if (fwrite(o->bytes, size, (size_t)m, o->f) != (size_t)m) o->failed = 1;
        done += m;
    }
}

/* Writes a checkpoint of `kind` ("sd15", "sd21", "sdxl", or "taesd": a TAESD) with random weights of dtype "f16" (NULL too),
   "f32" or "bf16" to path (through path.tmp, renamed when complete). Returns 0 or prints why not. */
static int random_model_write(const char *kind, const char *path, const char *dtype)
{
    random_model_walk k;
    random_model_file o;
    char tmp[4096];
    unsigned char len8[8];
    double t0 = now();
    void (*walk)(random_model_walk *) = strcmp(kind, "taesd") ? random_model_walk_all : random_model_taesd;
    memset(&k, 0, sizeof k);
    memset(&o, 0, sizeof o);
    if (!(k.f = random_model_family_find(kind)) && strcmp(kind, "taesd")) {
        fprintf(stderr, "random model: kind '%s' is not sd15, sd21, sdxl or taesd\n", kind);
        return 1;
    }
    if (!dtype || !strcmp(dtype, "f16")) o.dtype = SD_F16;
    else if (!strcmp(dtype, "f32")) o.dtype = SD_F32;
    else if (!strcmp(dtype, "bf16")) o.dtype = SD_BF16;
    else { fprintf(stderr, "random model: dtype '%s' is not f16, f32 or bf16\n", dtype); return 1; }
    k.h = k.w = 64, k.batch = 1;
    k.user = &o;

    /* header: names, dtypes, shapes and offsets; padded with spaces so that the data starts at a
       multiple of 8 bytes (as the safetensors library does), which keeps every tensor aligned */
    o.cap = 1 << 18;
    if (!(o.json = (char *)malloc(o.cap))) { fprintf(stderr, "random model: out of memory\n"); return 1; }
    random_model_json(&o, "{");
    k.emit = random_model_header_entry;
    walk(&k);
    random_model_json(&o, "}");
    while ((8 + o.len) % 8) random_model_json(&o, " ");
    if (o.failed) { fprintf(stderr, "random model: out of memory for the header\n"); free(o.json); return 1; }

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!(o.f = fopen(tmp, "wb"))) { fprintf(stderr, "random model: cannot create %s: %s\n", tmp, strerror(errno)); free(o.json); return 1; }
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)o.len >> 8 * i);
    if (fwrite(len8, 1, 8, o.f) != 8 || fwrite(o.json, 1, o.len, o.f) != o.len) o.failed = 1;
    free(o.json);

    /* data, tensor by tensor in header order, a chunk at a time */
    o.chunk = (float *)malloc(RANDOM_MODEL_CHUNK * sizeof(float));
    o.bytes = (unsigned char *)malloc(RANDOM_MODEL_CHUNK * sizeof(float));
    if (!o.chunk || !o.bytes) o.failed = 1;
    k.emit = random_model_data;
    k.count = 0;
    if (!o.failed) walk(&k);
    free(o.chunk);
    free(o.bytes);
    if (fclose(o.f) || o.failed) {
        fprintf(stderr, "random model: writing %s failed: %s\n", tmp, strerror(errno));
        remove(tmp);
        return 1;
    }
    if (rename(tmp, path)) { fprintf(stderr, "random model: cannot rename %s to %s: %s\n", tmp, path, strerror(errno)); return 1; }
    printf("random_model kind=%s path=%s dtype=%s tensors=%d bytes=%zu seconds=%.1f\n", kind, path,
           sd_dtype_name(o.dtype), k.count, 8 + o.len + o.offset, now() - t0);
    return 0;
}

/* Loads a checkpoint as the CLI does (sd_model_load, merges.txt found the usual way) and says what
   the loader made of it: a random model must pass for the real thing. */
static int random_model_check(const char *kind, const char *path)
{
    options o;
    sd_model *model;
    sd_model_info info;
    sd_arena arena;
    sd_taesd *taesd;
    double t0 = now();
    memset(&o, 0, sizeof o);
    o.model = o.taesd = path;
    o.type = SD_DTYPE_COUNT;   /* no load-time quantization */
    if (!strcmp(kind, "taesd")) {
        if (load_taesd(&o, 0, &taesd, &arena)) return 1;
        printf("random_model_check path=%s loaded=1 taesd=1 seconds=%.2f\n", path, now() - t0);
        return 0;
    }
    if (load_model(&o, &model, &arena)) return 1;
    sd_model_get_info(model, &info);
    printf("random_model_check path=%s loaded=1 version=%d prediction=%s text_width=%d text_layers=%d vae_scale=%g "
           "table_bytes=%zu seconds=%.2f\n", path, info.version, info.prediction == SD_PREDICT_V ? "v" : "epsilon",
           info.text_width, info.text_layers, info.vae_scale, arena.used, now() - t0);
    return 0;
}

/* ---- the benchmark ------------------------------------------------------------------------- */
/* One line per measurement, `name key=value ...`, on stdout. Seconds are the median of --runs
   runs (after the weights and the arena have been touched once, so page faults are not timed);
   GFLOPS count 2 per multiply-add from the architecture walk above. */

typedef struct bench_options {
    const char *what, *model, *kind, *dtype, *merges, *taesd, *reference;
    int sizes[16], nsizes, vae_sizes[16], nvae, taesd_sizes[16], ntaesd, threads[16], nthreads;
    int batch, runs, image, steps, vae_tile, sampler, lora_rank;
    int decoders;               /* txt2img: 1 the VAE, 2 TAESD, 3 one run with each */
    float guidance;             /* txt2img guidance; < 0: 7.5, but 1 (no unconditional pass) for LCM */
    int modes[2], nmodes;       /* SD_QUANT_EXACT / _FAST per run of the stages; 0: exact, and fast for block types */
} bench_options;

/* The stages of one checkpoint, opened through the public API, weights used in place. */
/* Decode times of the VAE, which TAESD's lines compare with. */
typedef struct bench_times { struct { int size, threads; double seconds; } t[32]; int n; } bench_times;

typedef struct bench_model {
    const unsigned char *data;
    size_t size;
    void *tables;
    sd_arena arena;
    sd_safetensors st;
    sd_text_encoder te[2];      /* SDXL has two; the UNet's context is their outputs side by side */
    int encoders, context;      /* how many, and the context width */
    sd_unet_model *unet;
    sd_vae *vae;
    const random_model_family *family;   /* SD 1.5, SD 2.1 or SDXL: what the FLOP count assumes */
    int matches;                /* the file has that family's tensors (names and shapes) */
    char w[8];                  /* weight type of the UNet's convs: "f16", ... */
    sd_taesd *taesd;            /* the tiny autoencoder, when a stage wants it (bench_taesd_load) */
    sd_arena taesd_tables;
    bench_times *vae_timed;     /* the VAE decodes timed so far, for TAESD's lines (shared with the rows' processes) */
} bench_model;

/* CPU seconds of the whole process: CPU time over wall time is how many cores the runs kept
   busy, which shows when other work on the machine took some of them. */
static double bench_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int bench_compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double bench_median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, bench_compare);
    return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

static int bench_list(const char *s, int *out, int max, int lo, const char *flag)
{
    int n = 0;
    char *end;
    for (;;) {
        long v = strtol(s, &end, 10);
        if (end == s || v < lo || v > 4096 || n == max || (*end && *end != ',')) {
            fprintf(stderr, "%s wants a comma-separated list of up to %d integers in %d..4096, got '%s'\n", flag, max, lo, s);
            exit(1);
        }
        out[n++] = (int)v;
        if (!*end) return n;
        s = end + 1;
    }
}

/* Whether WHAT names a stage (by its name or the name its lines carry); "all" is all but txt2img. */
static int bench_wants(const bench_options *o, const char *name, const char *line_name)
{
    for (const char *s = o->what; *s; s += strcspn(s, ",") + (s[strcspn(s, ",")] == ',')) {
        size_t len = strcspn(s, ",");
        if ((len == strlen(name) && !strncmp(s, name, len)) || (len == strlen(line_name) && !strncmp(s, line_name, len)) ||
            (len == 3 && !strncmp(s, "all", 3) && strcmp(name, "txt2img") && strcmp(name, "error")))
            return 1;
    }
    return 0;
}

/* An arena for one stage: its own bytes plus the pool's, faulted in once so that the timed runs
   do not pay for first touches. */
static void *bench_arena(sd_arena *a, size_t stage_bytes, int threads, sd_pool *pool)
{
    sd_error err;
    size_t size = pool_arena_bytes(threads) + stage_bytes + SD_ARENA_ALIGN;
    void *mem = malloc(size);
    if (!mem) { fprintf(stderr, "bench: cannot allocate %zu bytes\n", size); return NULL; }
    memset(mem, 0, size);
    sd_arena_init(a, mem, size);
    if (pool_init(pool, threads, a, &err)) { fprintf(stderr, "bench: %s\n", err.message); free(mem); return NULL; }
    return mem;
}

static void bench_fill(float *x, size_t n, uint64_t seed)
{
    sd_rng r;
    sd_rng_seed(&r, seed);
    sd_randn(&r, x, n);
}

static int bench_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(x[i] == x[i]) || x[i] > 3e38f || x[i] < -3e38f) return 0;
    return 1;
}

/* Checks every tensor of the architecture walk against the file (name and shape). */
static void bench_match(random_model_walk *k, const char *name, int ndim, const int64_t *shape, int init, float scale)
{
    bench_model *m = (bench_model *)k->user;
    const sd_tensor *t = sd_safetensors_find(&m->st, name);
    int ok = t && t->ndim == ndim;
    (void)init, (void)scale;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    if (t && !ok && ndim == 4 && t->ndim == 2)   /* a quantized convolution weight in a GGUF file: [Cout, Cin·k·k] */
        ok = t->shape[0] == shape[0] && t->shape[1] == shape[1] * shape[2] * shape[3];
    if (!ok && m->matches) fprintf(stderr, "note: the file has no tensor %s as %s has it: no GFLOPS\n", name, m->family->name);
    if (!ok) m->matches = 0;
}

static volatile unsigned bench_sink;   /* keeps the page-touching loop from being optimised away */

/* A weight type as the lines give it: "f16", ... */
static void bench_dtype(char w[8], const sd_tensor *t)
{
    snprintf(w, 8, "%s", t ? sd_dtype_name(t->dtype) : "?");
    for (char *c = w; *c; c++) *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
}

/* The TAESD of the taesd stages: --taesd PATH (a file or folder, as the CLI takes it), else a
   random one in weights/bench/taesd-f16.safetensors (diffusers layout, 4.9 MB, made once). */
static int bench_taesd_load(const bench_options *bo, bench_model *m)
{
    options o;
    struct stat sb;
    const char *path = bo->taesd ? bo->taesd : "weights/bench/taesd-f16.safetensors";
    if (m->taesd) return 0;
    if (!bo->taesd && stat(path, &sb)) {
        mkdir("weights", 0777);
        mkdir("weights/bench", 0777);
        if (random_model_write("taesd", path, "f16")) return 1;
    }
    memset(&o, 0, sizeof o);
    o.taesd = path;
    return load_taesd(&o, m->encoders > 1, &m->taesd, &m->taesd_tables);
}

static int bench_model_load(bench_model *m, const char *path)
{
    sd_source src;
    sd_error err;
    random_model_walk k;
    double t0 = now(), t1;
    memset(m, 0, sizeof *m);
    if (!(m->data = (const unsigned char *)map_file(path, &m->size))) { fprintf(stderr, "cannot read %s: %s\n", path, strerror(errno)); return 1; }
    memset(&src, 0, sizeof src);
    src.data[0] = m->data, src.size[0] = m->size, src.count = 1;
    size_t bytes = sd_model_arena_bytes(&src);
    if (!bytes || !(m->tables = malloc(bytes))) { fprintf(stderr, "%s: too short, or no memory for its tables\n", path); return 1; }
    sd_arena_init(&m->arena, m->tables, bytes);
    if ((m->size >= 4 && !memcmp(m->data, "GGUF", 4) ? sd_gguf_open : sd_safetensors_open)(&m->st, m->data, m->size, &m->arena, &err) ||
        sd_text_encoder_load(&m->te[0], &m->st, 1, NULL, 0, &m->arena, &err) ||
        sd_unet_load(&m->unet, &m->st, 1, NULL, &m->arena, &err) ||
        sd_vae_load(&m->vae, &m->st, &m->arena, &err) ||   /* SDXL: a UNet with added conditioning, two encoders */
        (sd_unet_add_dim(m->unet) > 0 && sd_text_encoder_load(&m->te[1], &m->st, 1, NULL, 1, &m->arena, &err))) {
        fprintf(stderr, "%s: %s\n", path, err.message);
        return 1;
    }
    t1 = now();
    for (size_t i = 0; i < m->size; i += 4096) bench_sink += m->data[i];   /* every page in, once */
    m->encoders = sd_unet_add_dim(m->unet) > 0 ? 2 : 1;
    m->context = m->te[0].width + (m->encoders > 1 ? m->te[1].width : 0);
    m->family = random_model_family_find(m->encoders > 1 ? "sdxl" : m->te[0].gelu ? "sd21" : "sd15");
    const sd_tensor *t = sd_safetensors_find(&m->st, "model.diffusion_model.input_blocks.1.0.in_layers.2.weight");
    if (!t) t = sd_safetensors_find(&m->st, "down_blocks.0.resnets.0.conv1.weight");
    bench_dtype(m->w, t);
    memset(&k, 0, sizeof k);
    k.f = m->family, k.h = k.w = 64, k.batch = 1, k.emit = bench_match, k.user = m;
    m->matches = 1;
    random_model_walk_all(&k);
    printf("model path=%s tensors=%d bytes=%zu w=%s family=%s open_seconds=%.3f touch_seconds=%.2f\n", path,
           m->st.count, m->size, m->w, m->family->kind, t1 - t0, now() - t1);
    for (int s = m->family->latent / 2; s <= m->family->latent && m->matches; s *= 2) {   /* the work the GFLOPS below divide by */
        double macs[RM_PARTS];
        random_model_count(m->family, s, s, 1, macs);
        printf("flops latent=%d image=%d unet_gflop=%.1f vae_decode_gflop=%.1f vae_encode_gflop=%.1f text_encoder_gflop=%.2f\n",
               s, 8 * s, 2e-9 * macs[RM_UNET], 2e-9 * macs[RM_VAE_DECODER], 2e-9 * macs[RM_VAE_ENCODER], 2e-9 * macs[RM_TEXT]);
    }
    fflush(stdout);
    return 0;
}

static void bench_print_flops(const bench_model *m, double macs, double seconds)
{
    if (m->matches) printf(" gflops=%.1f", 2 * macs / seconds * 1e-9);
}

/* plan_us: microseconds one call of a plan takes (the dry run behind an *_arena_bytes function),
   the mean of 100 calls. */
#define BENCH_PLAN_US(us, call) \
    do { double t0_ = now(); for (int i_ = 0; i_ < 100; i_++) bench_sink += (unsigned)(call); (us) = (now() - t0_) * 1e4; } while (0)

/* The end of a stage's line: how busy the cores were, the planned and measured arena, how long
   planning took, and a warning if the output is not finite. */
/* The process's peak resident memory in MB (ru_maxrss): each stage's line comes from a process
   of its own (BENCH_ROW), so this is the stage's, model pages it read included. */
static double bench_rss_mb(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? 0.0 : ru.ru_maxrss / 1024.0;
}

static void bench_print_tail(double cpu0, double wall0, size_t need, size_t peak, double plan_us, const float *out, size_t n)
{
    printf(" cores_busy=%.2f arena_bytes=%zu arena_peak=%zu plan_us=%.1f peak_rss_mb=%.0f%s\n", (bench_cpu() - cpu0) / (now() - wall0), need, peak,
           plan_us, bench_rss_mb(), bench_finite(out, n) ? "" : " output=NONFINITE");
    fflush(stdout);
}

static const char *bench_mode_name(int mode) { return mode == SD_QUANT_FAST ? "fast" : "exact"; }

/* A LoRA of rank r on every attention and resnet layer of the UNet (kohya names, diffusers' map),
   made in memory with random F16 weights: what the UNet's LoRA line applies. The layers and their
   names come from sd.h's own walk over the model (lora_unet_modules). */
typedef struct bench_lora { char *json; size_t len, cap, data; int rank, layers; } bench_lora;

static void bench_lora_put(bench_lora *b, const char *fmt, ...)
{
    va_list ap;
    if (b->len + 512 > b->cap && !(b->json = (char *)realloc(b->json, b->cap = 2 * b->cap + 4096))) { fprintf(stderr, "bench: no memory\n"); exit(1); }
    va_start(ap, fmt);
    b->len += (size_t)vsnprintf(b->json + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
}

static void bench_lora_layer(void *user, const lora_module *m)
{
    bench_lora *b = (bench_lora *)user;
    char name[256];
    long long N = (long long)m->w->shape[0], K = (long long)m->w->shape[1];
    size_t down = (size_t)b->rank * (size_t)K * (size_t)(m->k * m->k) * 2, up = (size_t)N * (size_t)b->rank * 2;
    if (!strstr(m->path[1], "attentions.") && !strstr(m->path[1], "resnets.")) return;
    snprintf(name, sizeof name, "lora_unet_%s", m->path[1]);
    for (char *c = name; *c; c++) if (*c == '.') *c = '_';
    if (m->k == 1) bench_lora_put(b, "%s\"%s.lora_down.weight\":{\"dtype\":\"F16\",\"shape\":[%d,%lld],\"data_offsets\":[%zu,%zu]}",
                                  b->layers ? "," : "", name, b->rank, K, b->data, b->data + down);
    else bench_lora_put(b, "%s\"%s.lora_down.weight\":{\"dtype\":\"F16\",\"shape\":[%d,%lld,%d,%d],\"data_offsets\":[%zu,%zu]}",
                        b->layers ? "," : "", name, b->rank, K, m->k, m->k, b->data, b->data + down);
    bench_lora_put(b, ",\"%s.lora_up.weight\":{\"dtype\":\"F16\",\"shape\":[%lld,%d],\"data_offsets\":[%zu,%zu]}",
                   name, N, b->rank, b->data + down, b->data + down + up);
    b->data += down + up;
    b->layers++;
}

/* The file's bytes (malloc'd): header, then the weights, uniform in +-0.01. */
static unsigned char *bench_lora_make(const bench_model *m, int rank, size_t *size, int *layers)
{
    bench_lora b;
    uint64_t r = 12345;
    memset(&b, 0, sizeof b);
    b.rank = rank;
    bench_lora_put(&b, "{");
    lora_unet_modules(m->unet, bench_lora_layer, &b);
    bench_lora_put(&b, "}");
    while (b.len % 8) bench_lora_put(&b, " ");
    *size = 8 + b.len + b.data;
    *layers = b.layers;
    unsigned char *f = (unsigned char *)malloc(*size);
    if (!f) { fprintf(stderr, "bench: no memory for a %zu-byte LoRA\n", *size); exit(1); }
    for (int i = 0; i < 8; i++) f[i] = (unsigned char)((uint64_t)b.len >> (8 * i));
    memcpy(f + 8, b.json, b.len);
    for (size_t i = 0; i < b.data / 2; i++) {
        uint16_t h = sd_f32_to_f16((float)(random_model_uniform(&r) * 0.02 - 0.01));
        memcpy(f + 8 + b.len + 2 * i, &h, 2);
    }
    free(b.json);
    return f;
}

/* The denoiser: one batched evaluation (batch 2 is a guided sampling step) at size x size latents,
   conditioned on random vectors of the right sizes (SDXL: the context and the added-conditioning
   vector y both). With a LoRA set, each run is a pair, without and with it, and a second line
   gives the latter: taking turns, both see the same load on a shared machine. */
static int bench_unet(const bench_options *o, bench_model *m, int size, int threads, int mode, const sd_lora_set *lora, int layers)
{
    sd_arena a;
    sd_pool pool;
    sd_error err;
    double macs[RM_PARTS], t[2][64], cpu[2] = {0, 0}, plan_us;
    int B = o->batch, ydim = sd_unet_add_dim(m->unet), kinds = lora ? 2 : 1;
    size_t lat = (size_t)B * 4 * size * size, need = sd_unet_arena_bytes(m->unet, B, size, size, SD_TEXT_TOKENS);
    BENCH_PLAN_US(plan_us, sd_unet_arena_bytes(m->unet, B, size, size, SD_TEXT_TOKENS));
    size_t nctx = (size_t)B * SD_TEXT_TOKENS * m->context, ny = (size_t)B * ydim;
    float *x = (float *)malloc(lat * sizeof(float)), *out = (float *)malloc(lat * sizeof(float));
    float *ctx = (float *)malloc(nctx * sizeof(float)), *y = (float *)malloc((ny ? ny : 1) * sizeof(float)), ts[64];
    void *mem;
    if (need == (size_t)-1 || !x || !out || !ctx || !y || !(mem = bench_arena(&a, need + (lora ? SD_LORA_SCRATCH_BYTES : 0), threads, &pool))) return 1;
    if (lora && sd_pool_set_lora(&pool, lora, &a, &err)) { fprintf(stderr, "bench: %s\n", err.message); return 1; }
    sd_pool_set_quant(&pool, mode);
    bench_fill(x, lat, 1);
    bench_fill(ctx, nctx, 2);
    bench_fill(y, ny, 4);
    for (int b = 0; b < B && b < 64; b++) ts[b] = 981.0f;
    size_t base = sd_arena_mark(&a);
    double wall0 = now(), cpu0 = bench_cpu();
    a.peak = a.used;
    for (int r = 0; r < o->runs; r++)
        for (int k = 0; k < kinds; k++) {
            double t0 = now(), c0 = bench_cpu();
            sd_unet_cond cond = {ctx, SD_TEXT_TOKENS, ydim ? y : NULL, NULL};
            pool.lora = k ? lora : NULL;
            if (sd_unet(m->unet, x, ts, &cond, B, size, size, out, &pool, &a, &err)) {
                fprintf(stderr, "unet size=%d batch=%d threads=%d: %s\n", size, B, threads, err.message);
                return 1;
            }
            t[k][r] = now() - t0;
            cpu[k] += bench_cpu() - c0;
        }
    random_model_count(m->family, size, size, B, macs);
    double s[2];
    for (int k = 0; k < kinds; k++) {
        s[k] = bench_median(t[k], o->runs);
        printf("unet size=%d batch=%d threads=%d w=%s mode=%s runs=%d seconds=%.3f", size, B, threads, m->w, bench_mode_name(mode), o->runs, s[k]);
        if (k) printf(" lora_rank=%d lora_layers=%d lora_cost=%+.1f%% lora_cost_cpu=%+.1f%%", o->lora_rank, layers, 100 * (s[1] / s[0] - 1),
                      100 * (cpu[1] / cpu[0] - 1));
        else bench_print_flops(m, macs[RM_UNET], s[0]);
        bench_print_tail(cpu0, wall0, need, a.peak - base, plan_us, out, lat);
    }
    pool_free(&pool);
    free(mem); free(x); free(out); free(ctx); free(y);
    return 0;
}

/* The decoder: one size x size latent to an 8x larger image, by the VAE or (taesd) by TAESD,
   whose line also gives the VAE's time at that size when this run measured it. */
static size_t bench_decode_plan(const bench_model *m, int taesd, int size)
{
    return taesd ? sd_taesd_decode_arena_bytes(m->taesd, size, size) : sd_vae_decode_arena_bytes(sd_vae_get_config(m->vae), size, size);
}

static int bench_decode(const bench_options *o, bench_model *m, int size, int threads, int mode, int taesd)
{
    sd_arena a;
    sd_pool pool;
    sd_error err;
    double macs[RM_PARTS], t[64], plan_us;
    const char *name = taesd ? "taesd_decode" : "vae_decode";
    size_t lat = (size_t)4 * size * size, pix = (size_t)3 * 64 * size * size, need = bench_decode_plan(m, taesd, size);
    BENCH_PLAN_US(plan_us, bench_decode_plan(m, taesd, size));
    float *z = (float *)malloc(lat * sizeof(float)), *image = (float *)malloc(pix * sizeof(float));
    void *mem;
    if (!need || !z || !image || !(mem = bench_arena(&a, need, threads, &pool))) return 1;
    sd_pool_set_quant(&pool, mode);
    bench_fill(z, lat, 3);
    size_t base = sd_arena_mark(&a);
    double wall0 = now(), cpu0 = bench_cpu();
    a.peak = a.used;
    for (int r = 0; r < o->runs; r++) {
        double t0 = now();
        if (taesd ? sd_taesd_decode(m->taesd, z, size, size, image, &pool, &a, &err) : sd_vae_decode(m->vae, z, size, size, image, &pool, &a, &err)) {
            fprintf(stderr, "%s size=%d threads=%d: %s\n", name, 8 * size, threads, err.message);
            return 1;
        }
        t[r] = now() - t0;
    }
    random_model_count(m->family, size, size, 1, macs);
    if (taesd) {   /* its multiply-adds from its own walk */
        random_model_walk k;
        memset(&k, 0, sizeof k);
        k.h = k.w = size;
        random_model_taesd(&k);
        macs[RM_TAESD_DECODER] = k.macs[RM_TAESD_DECODER];
    }
    double s = bench_median(t, o->runs);
    char w[8];
    bench_dtype(w, taesd ? m->taesd->decoder[1].conv[0].w : NULL);
    printf("%s size=%d latent=%d threads=%d w=%s mode=%s runs=%d seconds=%.3f", name, 8 * size, size, threads, taesd ? w : m->w,
           bench_mode_name(mode), o->runs, s);
    if (taesd) printf(" gflops=%.1f", 2 * macs[RM_TAESD_DECODER] / s * 1e-9);
    else bench_print_flops(m, macs[RM_VAE_DECODER], s);
    bench_times *vt = m->vae_timed;
    for (int i = 0; vt && i < vt->n; i++)
        if (taesd && vt->t[i].size == size && vt->t[i].threads == threads)
            printf(" vae_seconds=%.3f speedup=%.1f", vt->t[i].seconds, vt->t[i].seconds / s);
    if (!taesd && vt && vt->n < 32) {
        vt->t[vt->n].size = size, vt->t[vt->n].threads = threads, vt->t[vt->n].seconds = s;
        vt->n++;
    }
    bench_print_tail(cpu0, wall0, need, a.peak - base, plan_us, image, pix);
    pool_free(&pool);
    free(mem); free(z); free(image);
    return 0;
}

/* The text encoder on `batch` prompts of 77 tokens (what the ids are does not change the work).
   SDXL: both encoders, one after the other as a generation runs them, the second with the pooled
   output; the line gives their time together. */
static int bench_text(const bench_options *o, bench_model *m, int threads, int mode)
{
    sd_arena a;
    sd_pool pool;
    sd_error err;
    double macs[RM_PARTS], t[64], plan_us;
    int B = o->batch, proj = m->encoders > 1 ? m->te[1].proj_dim : 0;
    size_t need = 0, n = (size_t)B * SD_TEXT_TOKENS * m->context + (size_t)B * proj;
    for (int e = 0; e < m->encoders; e++) {   /* one at a time: the larger need */
        size_t bytes = sd_text_encoder_arena_bytes(&m->te[e], B, e == 1);
        if (bytes == (size_t)-1) return 1;
        if (bytes > need) need = bytes;
    }
    BENCH_PLAN_US(plan_us, sd_text_encoder_arena_bytes(&m->te[m->encoders - 1], B, m->encoders > 1));
    int32_t *ids = (int32_t *)malloc((size_t)B * 77 * sizeof(int32_t));
    float *out = (float *)malloc(n * sizeof(float));   /* each encoder's output, then the pooled */
    void *mem;
    if (!ids || !out || !(mem = bench_arena(&a, need, threads, &pool))) return 1;
    sd_pool_set_quant(&pool, mode);
    for (int i = 0; i < B * 77; i++) ids[i] = i % 77 == 0 ? SD_CLIP_BOS : i % 77 < 20 ? 320 + 37 * (i % 77) : SD_CLIP_EOS;
    size_t base = sd_arena_mark(&a);
    double wall0 = now(), cpu0 = bench_cpu();
    a.peak = a.used;
    for (int r = 0; r < o->runs; r++) {
        double t0 = now();
        float *dst = out;
        for (int e = 0; e < m->encoders; e++) {
            float *pooled = e == 1 ? out + (n - (size_t)B * proj) : NULL;
            if (sd_text_encode(&m->te[e], ids, B, 0, dst, pooled, &pool, &a, &err)) {
                fprintf(stderr, "text_encoder %d threads=%d: %s\n", e + 1, threads, err.message);
                return 1;
            }
            dst += (size_t)B * SD_TEXT_TOKENS * m->te[e].width;
        }
        t[r] = now() - t0;
    }
    random_model_count(m->family, 64, 64, B, macs);
    double s = bench_median(t, o->runs);
    printf("text_encoder batch=%d encoders=%d threads=%d w=%s mode=%s runs=%d seconds=%.4f", B, m->encoders, threads, m->w, bench_mode_name(mode),
           o->runs, s);
    bench_print_flops(m, macs[RM_TEXT], s);
    bench_print_tail(cpu0, wall0, need, a.peak - base, plan_us, out, n);
    pool_free(&pool);
    free(mem); free(ids); free(out);
    return 0;
}

/* The tokenizer: building the vocabulary from merges.txt, then prompts of several kinds. */
static int bench_tokenizer(const bench_options *o)
{
    static const char *const prompts[] = {
        "a photograph of an astronaut riding a horse",
        "A highly detailed digital painting of a majestic ancient castle on a cliff above a stormy sea at sunset, "
        "dramatic lighting, volumetric clouds, (masterpiece:1.2), best quality, 8k, trending on artstation",
        "portrait of a woman, by Alphonse Mucha and Greg Rutkowski, art nouveau, intricate, elegant, highly detailed",
        "caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e, na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 emoji!!",
        "low quality, blurry, deformed hands, extra fingers, watermark, text, signature, jpeg artifacts",
    };
    const int np = (int)(sizeof prompts / sizeof *prompts);
    size_t size = 0, longest = 0, count = 0, total = 0;
    const char *merges = (const char *)map_file(o->merges, &size);
    sd_clip_vocab *v = NULL;
    sd_arena va, sa;
    sd_error err;
    int32_t ids[SD_CLIP_CONTEXT];
    double t[64], rate[64], per[64];
    if (!merges) { fprintf(stderr, "cannot read %s: %s\n", o->merges, strerror(errno)); return 1; }
    size_t vbytes = sd_clip_vocab_arena_bytes(size) + SD_ARENA_ALIGN;
    void *vmem = malloc(vbytes);
    for (int i = 0; i < np; i++) if (strlen(prompts[i]) > longest) longest = strlen(prompts[i]);
    size_t sbytes = sd_clip_scratch_bytes(longest) + SD_ARENA_ALIGN;
    void *smem = malloc(sbytes);
    if (!vmem || !smem) return 1;
    sd_arena_init(&va, vmem, vbytes);
    sd_arena_init(&sa, smem, sbytes);
    for (int r = 0; r < o->runs; r++) {
        double t0 = now();
        sd_arena_reset(&va, 0);
        if (sd_clip_vocab_load(&v, merges, size, NULL, 0, &va, &err)) { fprintf(stderr, "%s: %s\n", o->merges, err.message); return 1; }
        t[r] = now() - t0;
    }
    for (int r = 0; r < o->runs; r++) {   /* each run: 200 passes over the prompts */
        double t0 = now();
        total = 0;
        for (int k = 0; k < 200; k++)
            for (int i = 0; i < np; i++) {
                if (sd_clip_token_ids(v, prompts[i], strlen(prompts[i]), SD_CLIP_PAD_EOS, NULL, 0, &count, &sa, &err)) {
                    fprintf(stderr, "tokenizer: %s\n", err.message);
                    return 1;
                }
                total += count;
            }
        rate[r] = (double)total / (now() - t0);
        t0 = now();
        for (int k = 0; k < 200; k++)
            for (int i = 0; i < np; i++) sd_clip_tokenize(v, prompts[i], strlen(prompts[i]), SD_CLIP_PAD_EOS, ids, NULL, &sa, &err);
        per[r] = (now() - t0) / (200.0 * np);
    }
    printf("tokenizer runs=%d load_seconds=%.4f tokens_per_second=%.0f us_per_prompt=%.1f vocab_bytes=%zu\n", o->runs,
           bench_median(t, o->runs), bench_median(rate, o->runs), bench_median(per, o->runs) * 1e6, va.peak);
    fflush(stdout);
    free(vmem);
    free(smem);
    return 0;
}

/* The whole pipeline as a user runs it: text, `steps` steps of the sampler (DDIM: guided, batch 2;
   LCM, the LCM-LoRA recipe: guidance 1, batch 1), VAE decode. */
typedef struct bench_steps { double start, at[1001]; int steps; } bench_steps;

static int bench_step_done(void *user, int step, int steps)
{
    bench_steps *s = (bench_steps *)user;
    if (step >= 1 && step <= 1000) s->at[step] = now();
    s->steps = steps;
    return 0;
}

/* The pipeline on the checkpoint already mapped, as the CLI loads it; *tables: free when done. */
static sd_model *bench_pipeline(const bench_options *o, const bench_model *bm, void **tables)
{
    sd_source src;
    sd_model *model;
    sd_arena a;
    sd_error err;
    memset(&src, 0, sizeof src);
    src.data[0] = bm->data, src.size[0] = bm->size, src.count = 1;
    if (!(src.merges = (const char *)map_file(o->merges, &src.merges_size))) {
        fprintf(stderr, "cannot read %s: %s\n", o->merges, strerror(errno));
        return NULL;
    }
    size_t table_bytes = sd_model_arena_bytes(&src);
    if (!(*tables = malloc(table_bytes))) return NULL;
    sd_arena_init(&a, *tables, table_bytes);
    if (sd_model_load(&model, &src, &a, &err)) { fprintf(stderr, "%s: %s\n", o->model, err.message); return NULL; }
    return model;
}

/* The benchmark's generation: its prompt and seed at --txt2img-size, --steps, --sampler, --guidance. */
static void bench_params(const bench_options *o, sd_params *p, int threads, int quant)
{
    sd_params_init(p);
    p->prompt = "a photograph of an astronaut riding a horse";
    p->negative_prompt = "";
    p->width = p->height = o->image;
    p->steps = o->steps;
    p->sampler = o->sampler;
    p->guidance = o->guidance >= 0 ? o->guidance : o->sampler == SD_SAMPLER_LCM ? 1.0f : 7.5f;
    p->threads = threads;
    p->quant = quant;
    p->seed = 42;
}

static int bench_txt2img(const bench_options *o, bench_model *bm, int threads, int taesd)
{
    sd_model *model;
    sd_arena a;
    sd_params p;
    sd_error err;
    bench_steps st;
    double macs[RM_PARTS], step[1000];
    void *table_mem;
    if (!(model = bench_pipeline(o, bm, &table_mem))) return 1;
    bench_params(o, &p, threads, o->nmodes ? o->modes[0] : SD_QUANT_EXACT);
    p.taesd = taesd ? bm->taesd : NULL;   /* the final image only: no previews */
    p.taesd_use = SD_TAESD_USE_DECODE;
    p.progress = bench_step_done;
    p.user = &st;
    size_t untiled = sd_generate_arena_bytes(model, &p);   /* the whole-image decode, for comparison */
    p.vae_tile = o->vae_tile;
    size_t need = sd_generate_arena_bytes(model, &p), npix = (size_t)3 * p.width * p.height;
    double plan_us;
    BENCH_PLAN_US(plan_us, sd_generate_arena_bytes(model, &p));
    void *mem = need ? malloc(need + SD_ARENA_ALIGN) : NULL;
    uint8_t *rgb = (uint8_t *)malloc(npix);
    float *image = (float *)malloc(npix * sizeof(float));   /* the decoder's output, to check it is finite */
    if (!mem || !rgb || !image) { fprintf(stderr, "txt2img: cannot allocate %zu bytes\n", need); return 1; }
    p.image_out = image;
    memset(mem, 0, need + SD_ARENA_ALIGN);
    sd_arena_init(&a, mem, need + SD_ARENA_ALIGN);
    memset(&st, 0, sizeof st);
    double cpu0 = bench_cpu();
    st.start = now();
    if (sd_generate(model, &p, &a, rgb, &err)) { fprintf(stderr, "txt2img: %s\n", err.message); return 1; }
    double end = now(), last = st.at[p.steps];
    for (int k = 2; k <= p.steps; k++) step[k - 2] = st.at[k] - st.at[k - 1];
    double per = p.steps > 1 ? bench_median(step, p.steps - 1) : last - st.start;
    static const char *const samplers[5] = {"ddim", "euler", "euler_a", "dpm++2m", "lcm"};
    random_model_count(bm->family, o->image / 8, o->image / 8, p.guidance > 1 ? 2 : 1, macs);
    printf("txt2img size=%d sampler=%s steps=%d guidance=%g decoder=%s threads=%d w=%s mode=%s vae_tile=%d seconds=%.2f seconds_per_step=%.2f "
           "first_step_seconds=%.2f decode_seconds=%.2f", o->image, samplers[p.sampler], p.steps, p.guidance, taesd ? "taesd" : "vae",
           threads, bm->w, bench_mode_name(p.quant), p.vae_tile, end - st.start, per, st.at[1] - st.start, end - last);
    bench_print_flops(bm, macs[RM_UNET], per);
    printf(" cores_busy=%.2f arena_bytes=%zu arena_peak=%zu plan_us=%.1f peak_rss_mb=%.0f", (bench_cpu() - cpu0) / (end - st.start), need, a.peak,
           plan_us, bench_rss_mb());
    if (p.vae_tile) printf(" untiled_arena_bytes=%zu", untiled);
    printf("%s\n", bench_finite(image, npix) ? "" : " output=NONFINITE");
    fflush(stdout);
    free(mem);
    free(rgb);
    free(image);
    free(table_mem);
    return 0;
}

/* ---- error: what quantized weights and the fast mode change ------------------------------------
   The model of --model in each mode against --reference (the random f16 model by default) in
   the exact mode, on the same inputs: the UNet at --sizes (one guided step's batch, relative RMS
   and relative max of the difference: sqrt(Σd²/Σref²), max|d|/max|ref|) and a whole txt2img at
   --txt2img-size, --steps (PSNR of the 8-bit image). */
static void bench_unet_inputs(const bench_model *m, int B, int size, float *x, float *ctx, float *y, float *ts)
{
    bench_fill(x, (size_t)B * 4 * size * size, 1);
    bench_fill(ctx, (size_t)B * SD_TEXT_TOKENS * m->context, 2);
    bench_fill(y, (size_t)B * sd_unet_add_dim(m->unet), 4);
    for (int b = 0; b < B; b++) ts[b] = 981.0f;
}

static int bench_unet_once(bench_model *m, int B, int size, int threads, int mode, float *out)
{
    sd_arena a;
    sd_pool pool;
    sd_error err;
    size_t lat = (size_t)B * 4 * size * size, nctx = (size_t)B * SD_TEXT_TOKENS * m->context, ny = (size_t)B * sd_unet_add_dim(m->unet);
    size_t need = sd_unet_arena_bytes(m->unet, B, size, size, SD_TEXT_TOKENS);
    float *x = (float *)malloc(lat * sizeof(float)), *ctx = (float *)malloc(nctx * sizeof(float)), *y = (float *)malloc((ny ? ny : 1) * sizeof(float)), ts[64];
    void *mem = need != (size_t)-1 && x && ctx && y ? bench_arena(&a, need, threads, &pool) : NULL;
    if (!mem) return 1;
    sd_pool_set_quant(&pool, mode);
    bench_unet_inputs(m, B, size, x, ctx, y, ts);
    sd_unet_cond cond = {ctx, SD_TEXT_TOKENS, ny ? y : NULL, NULL};
    int rc = sd_unet(m->unet, x, ts, &cond, B, size, size, out, &pool, &a, &err);
    if (rc) fprintf(stderr, "unet: %s\n", err.message);
    pool_free(&pool);
    free(mem); free(x); free(ctx); free(y);
    return rc;
}

static int bench_generate(const bench_options *o, bench_model *m, int threads, int mode, uint8_t *rgb)
{
    sd_params p;
    sd_arena a;
    sd_error err;
    void *tables;
    sd_model *model = bench_pipeline(o, m, &tables);
    if (!model) return 1;
    bench_params(o, &p, threads, mode);
    size_t need = sd_generate_arena_bytes(model, &p);
    void *mem = need ? malloc(need + SD_ARENA_ALIGN) : NULL;
    if (!mem) return 1;
    sd_arena_init(&a, mem, need + SD_ARENA_ALIGN);
    int rc = sd_generate(model, &p, &a, rgb, &err);
    if (rc) fprintf(stderr, "txt2img: %s\n", err.message);
    free(mem);
    free(tables);
    return rc;
}

static int bench_error(const bench_options *o, bench_model *m, int threads)
{
    bench_model r;
    char path[512];
    const char *ref = o->reference;
    if (!ref) snprintf(path, sizeof path, "weights/bench/%s-f16.safetensors", o->kind), ref = path;
    if (bench_model_load(&r, ref)) return 1;
    for (int s = 0; s < o->nsizes; s++) {
        int size = o->sizes[s], B = o->batch;
        size_t lat = (size_t)B * 4 * size * size;
        float *want = (float *)malloc(lat * sizeof(float)), *got[2] = {(float *)malloc(lat * sizeof(float)), (float *)malloc(lat * sizeof(float))};
        if (!want || !got[0] || !got[1] || bench_unet_once(&r, B, size, threads, SD_QUANT_EXACT, want)) return 1;
        for (int q = 0; q < o->nmodes; q++) {
            double d2 = 0, r2 = 0, dm = 0, rm = 0, e2 = 0, em = 0, x2 = 0, xm = 0;
            if (bench_unet_once(m, B, size, threads, o->modes[q], got[q])) return 1;
            for (size_t i = 0; i < lat; i++) {
                double d = (double)got[q][i] - want[i], e = q ? (double)got[q][i] - got[0][i] : 0;
                d2 += d * d, r2 += (double)want[i] * want[i], dm = fmax(dm, fabs(d)), rm = fmax(rm, fabs(want[i]));
                e2 += e * e, x2 += (double)got[0][i] * got[0][i], em = fmax(em, fabs(e)), xm = fmax(xm, fabs(got[0][i]));
            }
            printf("error unet size=%d batch=%d w=%s mode=%s rel_rms=%.5f rel_max=%.5f", size, B, m->w, bench_mode_name(o->modes[q]),
                   sqrt(d2 / r2), dm / rm);
            if (q) printf(" vs_%s_rel_rms=%.5f vs_%s_rel_max=%.5f", bench_mode_name(o->modes[0]), sqrt(e2 / x2), bench_mode_name(o->modes[0]), em / xm);
            printf(" reference=%s\n", ref);
            fflush(stdout);
        }
        free(want); free(got[0]); free(got[1]);
    }
    if (o->image > 0) {
        size_t npix = (size_t)3 * o->image * o->image;
        uint8_t *want = (uint8_t *)malloc(npix), *got = (uint8_t *)malloc(npix);
        if (!want || !got || bench_generate(o, &r, threads, SD_QUANT_EXACT, want)) return 1;
        for (int q = 0; q < o->nmodes; q++) {
            double se = 0;
            int worst = 0;
            if (bench_generate(o, m, threads, o->modes[q], got)) return 1;
            for (size_t i = 0; i < npix; i++) {
                int d = (int)got[i] - (int)want[i];
                se += (double)d * d;
                worst = abs(d) > worst ? abs(d) : worst;
            }
            printf("error txt2img size=%d steps=%d w=%s mode=%s psnr_db=%.2f max_diff=%d mean_abs_diff_sq=%.3f reference=%s\n", o->image, o->steps,
                   m->w, bench_mode_name(o->modes[q]), se > 0 ? 10 * log10(255.0 * 255.0 / (se / npix)) : INFINITY, worst, se / npix, ref);
            fflush(stdout);
        }
        free(want); free(got);
    }
    free(r.tables);
    return 0;
}

/* ---- kernels: GEMM, conv and attention against OpenBLAS's sgemm when it can be dlopen'ed ---- */

typedef void (*bench_sgemm_fn)(int order, int transa, int transb, int m, int n, int k, float alpha,
                               const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
typedef void (*bench_threads_fn)(int);
static bench_sgemm_fn bench_sgemm;
static bench_threads_fn bench_blas_threads;

static void bench_open_blas(void)
{
    static int tried;
    void *h, *f;
    if (tried) return;
    tried = 1;
    if (!(h = dlopen("libopenblas.so.0", RTLD_NOW)) && !(h = dlopen("libopenblas.so", RTLD_NOW))) return;
    if ((f = dlsym(h, "cblas_sgemm"))) memcpy(&bench_sgemm, &f, sizeof f);
    if ((f = dlsym(h, "openblas_set_num_threads"))) memcpy(&bench_blas_threads, &f, sizeof f);
}

static float *bench_floats(size_t n)
{
    float *p = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; p && i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    return p;
}

static sd_tensor bench_weight(sd_dtype dt, int64_t N, int64_t K, const float *src)
{
    sd_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.ndim = 2;
    t.shape[0] = N;
    t.shape[1] = K;
    t.nbytes = dtype_bytes(dt, (uint64_t)(N * K));
    void *p = malloc(t.nbytes);
    if (dt == SD_Q8_0) sd_quantize(dt, src, (size_t)(N * K), p);
    else for (int64_t i = 0; i < N * K; i++) {
        if (dt == SD_F32) ((float *)p)[i] = src[i];
        else if (dt == SD_F16) ((uint16_t *)p)[i] = sd_f32_to_f16(src[i]);
        else { uint32_t b; memcpy(&b, &src[i], 4); ((uint16_t *)p)[i] = (uint16_t)(b >> 16); }
    }
    t.data = p;
    return t;
}

/* Best of `reps` runs: for microkernels the minimum is the least disturbed figure. */
#define BENCH_BEST(reps, secs, stmt) do { secs = 1e30; for (int r_ = 0; r_ < (reps); r_++) { \
    double t0_ = now(); stmt; double t1_ = now() - t0_; if (t1_ < secs) secs = t1_; } } while (0)

/* Softmax over each row of a materialised score matrix (for the OpenBLAS attention baseline). */
static void bench_softmax_rows(float *s, int n, int len, float scale)
{
    for (int i = 0; i < n; i++) {
        float *r = s + (size_t)i * len, mx = -INFINITY, sum = 0;
        for (int j = 0; j < len; j++) if (r[j] * scale > mx) mx = r[j] * scale;
        for (int j = 0; j < len; j++) { r[j] = expf(r[j] * scale - mx); sum += r[j]; }
        for (int j = 0; j < len; j++) r[j] /= sum;
    }
}

/* The float32 FMA peak of the SIMD path sd.h was built for: 12 independent chains per thread
   (enough to cover the FMA latency), 2 FLOPs per lane; the figure the kernels' GFLOPS compare with. */
#define BENCH_PEAK_ITERS 20000000
static void bench_peak_task(void *arg, int task, int thread)
{
    float *out = (float *)arg;
    vfloat a = vf_set1(1.0f), b = vf_set1(0.9999999f);
    vfloat c0 = vf_set1(0), c1 = vf_set1(1), c2 = vf_set1(2), c3 = vf_set1(3), c4 = vf_set1(4), c5 = vf_set1(5);   /* unequal, */
    vfloat c6 = vf_set1(6), c7 = vf_set1(7), c8 = vf_set1(8), c9 = vf_set1(9), c10 = vf_set1(10), c11 = vf_set1(11);   /* not merged */
    (void)thread;
    for (long n = 0; n < BENCH_PEAK_ITERS; n++) {   /* named, not an array: the chains stay in registers */
        c0 = vf_fma(c0, b, a); c1 = vf_fma(c1, b, a); c2 = vf_fma(c2, b, a); c3 = vf_fma(c3, b, a);
        c4 = vf_fma(c4, b, a); c5 = vf_fma(c5, b, a); c6 = vf_fma(c6, b, a); c7 = vf_fma(c7, b, a);
        c8 = vf_fma(c8, b, a); c9 = vf_fma(c9, b, a); c10 = vf_fma(c10, b, a); c11 = vf_fma(c11, b, a);
    }
    c0 = vf_add(vf_add(vf_add(c0, c1), vf_add(c2, c3)), vf_add(vf_add(c4, c5), vf_add(c6, c7)));
    vf_store(out + (size_t)task * VF_WIDTH, vf_add(c0, vf_add(vf_add(c8, c9), vf_add(c10, c11))));
}

static void bench_kernels(int threads)
{
    static const struct { const char *name; int M, N, K; } shapes[] = {
        {"conv3x3_64x64x320", 4096, 320, 2880},
        {"conv3x3_32x32x640", 1024, 640, 5760},
        {"conv3x3_16x16x1280", 256, 1280, 11520},
    };
    static const sd_dtype dts[] = {SD_F32, SD_F16, SD_BF16};
    sd_arena arena;
    sd_pool pool;
    void *mem = bench_arena(&arena, 0, threads, &pool);
    if (!mem) return;
    bench_open_blas();
    if (bench_blas_threads) bench_blas_threads(threads);
    {
        float sink[64 * VF_WIDTH];
        double t;
        int n = pool.threads < 64 ? pool.threads : 64;
        BENCH_BEST(3, t, pool_run(&pool, bench_peak_task, sink, n));
        printf("fma_peak threads=%d gflops=%.1f\n", n, 2.0 * VF_WIDTH * 12 * (double)BENCH_PEAK_ITERS * n / t * 1e-9);
        fflush(stdout);
    }
    for (int si = 0; si < 3; si++) {
        int M = shapes[si].M, N = shapes[si].N, K = shapes[si].K;
        double flops = 2.0 * M * N * K, t, tb = 0;
        float *x = bench_floats((size_t)M * K), *wf = bench_floats((size_t)N * K), *y = (float *)malloc((size_t)M * N * sizeof(float));
        for (int di = 0; di < 3; di++) {
            sd_tensor w = bench_weight(dts[di], N, K, wf);
            matmul(&pool, y, N, x, K, M, N, K, &w, NULL, 0);
            if (di == 0 && bench_sgemm) {   /* f32 runs alternate with OpenBLAS's, so both see the same spells of a shared host */
                struct timespec calm = {0, 250000000};   /* after each OpenBLAS call: its threads spin ~0.1 s in sched_yield */
                t = tb = 1e30;
                for (int r = 0; r < 5; r++) {
                    double t0 = now();
                    bench_sgemm(101, 111, 112, M, N, K, 1.0f, x, K, wf, K, 0.0f, y, N);
                    double t1 = now();
                    nanosleep(&calm, NULL);
                    double t2 = now();
                    matmul(&pool, y, N, x, K, M, N, K, &w, NULL, 0);
                    double t3 = now();
                    if (t1 - t0 < tb) tb = t1 - t0;
                    if (t3 - t2 < t) t = t3 - t2;
                }
            } else
                BENCH_BEST(5, t, matmul(&pool, y, N, x, K, M, N, K, &w, NULL, 0));
            printf("gemm %s M=%d N=%d K=%d w=%s threads=%d gflops=%.1f", shapes[si].name, M, N, K,
                   di == 0 ? "f32" : di == 1 ? "f16" : "bf16", threads, flops / t * 1e-9);
            if (bench_sgemm) printf(" openblas_gflops=%.1f", flops / tb * 1e-9);
            printf("\n");
            fflush(stdout);
            free((void *)w.data);
        }
        free(x); free(wf); free(y);
    }
    {   /* the UNet's 3x3 convolutions at 512x512 (NHWC, pad 1, one image) in the exact mode on f32
           and f16 weights and in the fast mode (int8 products) on f16 and q8_0 weights: "gflops"
           counts 2 per multiply-add in either mode, "speedup" is against the f32 row */
        static const int conv[3][2] = {{64, 320}, {32, 640}, {16, 1280}};
        static const struct { sd_dtype dt; int mode; const char *name; } runs[] = {
            {SD_F32, SD_QUANT_EXACT, "f32"}, {SD_F16, SD_QUANT_EXACT, "f16"}, {SD_F16, SD_QUANT_FAST, "f16"}, {SD_Q8_0, SD_QUANT_FAST, "q8_0"}};
        for (int ci = 0; ci < 3; ci++) {
            int H = conv[ci][0], C = conv[ci][1];
            double flops = 2.0 * H * H * C * C * 9, t, t32 = 0;
            float *x = bench_floats((size_t)H * H * C), *wf = bench_floats((size_t)C * C * 9), *y = (float *)malloc((size_t)H * H * C * sizeof(float));
            for (int ri = 0; ri < 4; ri++) {
                sd_tensor w = bench_weight(runs[ri].dt, C, (int64_t)C * 9, wf);
                sd_pool_set_quant(&pool, runs[ri].mode);
                conv2d(&pool, y, x, 1, H, H, C, &w, NULL, C, 3, 1, 1, 1);
                BENCH_BEST(5, t, conv2d(&pool, y, x, 1, H, H, C, &w, NULL, C, 3, 1, 1, 1));
                if (ri == 0) t32 = t;
                printf("conv2d 3x3 %dx%dx%d->%d w=%s mode=%s threads=%d gflops=%.1f speedup=%.2f\n", H, H, C, C, runs[ri].name,
                       bench_mode_name(runs[ri].mode), threads, flops / t * 1e-9, t32 / t);
                fflush(stdout);
                free((void *)w.data);
            }
            sd_pool_set_quant(&pool, SD_QUANT_EXACT);
            free(x); free(wf); free(y);
        }
    }
    {   /* self-attention at 64x64 latents: N=4096, 8 heads of 40, q/k/v with row stride 320 */
        int N = 4096, heads = 8, d = 40, D = heads * d;
        double flops = 4.0 * N * N * d * heads, t, tb = 0;
        float *q = bench_floats((size_t)N * D), *k = bench_floats((size_t)N * D), *v = bench_floats((size_t)N * D);
        float *out = (float *)malloc((size_t)N * D * sizeof(float));
        attention(&pool, out, D, q, D, k, D, v, D, 1, N, N, heads, d, 0);
        BENCH_BEST(3, t, attention(&pool, out, D, q, D, k, D, v, D, 1, N, N, heads, d, 0));
        printf("attention N=%d d=%d heads=%d threads=%d gflops=%.1f", N, d, heads, threads, flops / t * 1e-9);
        if (bench_sgemm) {
            float *s = (float *)malloc((size_t)N * N * sizeof(float));
            double tp = 0;
            BENCH_BEST(2, tb, for (int h = 0; h < heads; h++) {
                bench_sgemm(101, 111, 112, N, N, d, 1.0f, q + h * d, D, k + h * d, D, 0.0f, s, N);
                bench_sgemm(101, 111, 111, N, d, N, 1.0f, s, N, v + h * d, D, 0.0f, out + h * d, D);
            });
            BENCH_BEST(1, tp, for (int h = 0; h < heads; h++) {
                bench_sgemm(101, 111, 112, N, N, d, 1.0f, q + h * d, D, k + h * d, D, 0.0f, s, N);
                bench_softmax_rows(s, N, N, 1.0f / sqrtf((float)d));
                bench_sgemm(101, 111, 111, N, d, N, 1.0f, s, N, v + h * d, D, 0.0f, out + h * d, D);
            });
            printf(" openblas_gflops=%.1f openblas_with_softmax_gflops=%.1f", flops / tb * 1e-9, flops / tp * 1e-9);
            free(s);
        }
        printf("\n");
        fflush(stdout);
        free(q); free(k); free(v); free(out);
    }
    pool_free(&pool);
    free(mem);
}

/* The machine, for the record: CPU model, online CPUs, SIMD path, compiler. */
static void bench_machine(void)
{
    char line[512], cpu[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            const char *s = strchr(line, ':') + 1;
            while (*s == ' ' || *s == '\t') s++;
            snprintf(cpu, sizeof cpu, "%.*s", (int)strcspn(s, "\n"), s);
            break;
        }
    if (f) fclose(f);
    if ((f = fopen("/proc/loadavg", "r"))) {   /* other work running now makes the figures noisy */
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        fclose(f);
    } else line[0] = 0;
    printf("machine cpu=\"%s\" cpus=%ld load=%.*s simd=%s compiler=\"%s\"\n", cpu, sysconf(_SC_NPROCESSORS_ONLN),
           line[0] ? (int)strcspn(line, " ") : 1, line[0] ? line : "?", SD_SIMD,
#if defined(__clang__)
           "clang " __clang_version__
#elif defined(__GNUC__)
           "gcc " __VERSION__
#else
           "?"
#endif
    );
    fflush(stdout);
}

static void bench_usage(FILE *f)
{
    fprintf(f,
        "usage: ./bench [WHAT] [options]\n"
        "       ./bench --make-random-model sd15|sd21|sdxl|taesd PATH [f16|f32|bf16]   a full-size model of random weights\n"
        "  WHAT   comma list of tokenizer, text (text_encoder), unet, vae (vae_decode), taesd (taesd_decode),\n"
        "         kernels, txt2img, error (--model's UNet at --sizes and txt2img at --txt2img-size in each\n"
        "         mode against --reference in the exact mode), all (all but txt2img, error);\n"
        "         default tokenizer,text,unet,vae,kernels\n"
        "  --model PATH       checkpoint (default weights/bench/KIND-DTYPE.safetensors, made if missing)\n"
        "  --kind sd15|sd21|sdxl  random model to use or make (default sd15)\n"
        "  --dtype f16|f32|bf16  its weight type (default f16)\n"
        "  --tokenizer FILE   merges.txt (default weights/merges.txt)\n"
        "  --sizes LIST       UNet latent sizes (default 32,64)\n"
        "  --vae-sizes LIST   VAE latent sizes; the image is 8x (default: --sizes)\n"
        "  --taesd-sizes LIST TAESD latent sizes (default: --vae-sizes)\n"
        "  --taesd PATH       TAESD file or folder (default weights/bench/taesd-f16.safetensors, random, made if missing)\n"
        "  --batch N          UNet and text batch (default 2: a guided step)\n"
        "  --threads LIST     thread counts, 0 = all CPUs (default 1,0)\n"
        "  --runs N           runs per figure, median reported (default 3)\n"
        "  --txt2img-size N   image side for txt2img (default 512)\n"
        "  --steps N          txt2img steps (default 20; one run)\n"
        "  --vae-tiling N     txt2img: decode in N x N latent tiles (default 0: whole image)\n"
        "  --decoder LIST     txt2img: vae, taesd or vae,taesd (one run each; default vae)\n"
        "  --sampler NAME     txt2img sampler: ddim (default), euler, euler_a, dpm++2m, lcm\n"
        "  --guidance X       txt2img: guidance scale (default 7.5; lcm 1; <= 1: one UNet pass a step)\n"
        "  --lora-rank R      unet: a second line with a random rank-R LoRA on every attention and\n"
        "                     resnet layer, and its cost against the first (default 0: none)\n"
        "  --reference PATH   error: the model the others are compared with (default the random f16 one)\n"
        "  --quant-mode LIST  exact, fast or exact,fast: the multiplication of text, unet and decode runs\n"
        "                     (default: exact, and fast too for block-typed weights; txt2img: the first)\n");
}

static int bench_run(int argc, char **argv)
{
    bench_options o;
    bench_model m;
    char path[512];
    int rc = 0, cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    memset(&o, 0, sizeof o);
    o.what = "tokenizer,text,unet,vae,kernels";
    o.kind = "sd15", o.dtype = "f16", o.merges = "weights/merges.txt";
    o.sizes[0] = 32, o.sizes[1] = 64, o.nsizes = 2;
    o.threads[0] = 1, o.nthreads = 1;
    if (cpus > 1) o.threads[o.nthreads++] = cpus > SD_MAX_THREADS ? SD_MAX_THREADS : cpus;
    o.batch = 2, o.runs = 3, o.image = 512, o.steps = 20, o.decoders = 1, o.guidance = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define BENCH_VALUE() (v ? (i++, v) : (fprintf(stderr, "%s needs a value\n", a), exit(1), ""))
        if (i == 1 && a[0] != '-') o.what = a;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { bench_usage(stdout); return 0; }
        else if (!strcmp(a, "--model")) o.model = BENCH_VALUE();
        else if (!strcmp(a, "--reference")) o.reference = BENCH_VALUE();
        else if (!strcmp(a, "--kind")) o.kind = BENCH_VALUE();
        else if (!strcmp(a, "--dtype")) o.dtype = BENCH_VALUE();
        else if (!strcmp(a, "--tokenizer")) o.merges = BENCH_VALUE();
        else if (!strcmp(a, "--sizes")) o.nsizes = bench_list(BENCH_VALUE(), o.sizes, 16, 1, a);
        else if (!strcmp(a, "--vae-sizes")) o.nvae = bench_list(BENCH_VALUE(), o.vae_sizes, 16, 1, a);
        else if (!strcmp(a, "--threads")) o.nthreads = bench_list(BENCH_VALUE(), o.threads, 16, 0, a);
        else if (!strcmp(a, "--batch")) o.batch = parse_int(BENCH_VALUE(), 1, 64, a);
        else if (!strcmp(a, "--runs")) o.runs = parse_int(BENCH_VALUE(), 1, 64, a);
        else if (!strcmp(a, "--txt2img-size")) o.image = parse_int(BENCH_VALUE(), 8, 8192, a);
        else if (!strcmp(a, "--steps")) o.steps = parse_int(BENCH_VALUE(), 1, 1000, a);
        else if (!strcmp(a, "--vae-tiling")) o.vae_tile = parse_int(BENCH_VALUE(), 8, 4096, a);
        else if (!strcmp(a, "--taesd-sizes")) o.ntaesd = bench_list(BENCH_VALUE(), o.taesd_sizes, 16, 1, a);
        else if (!strcmp(a, "--taesd")) o.taesd = BENCH_VALUE();
        else if (!strcmp(a, "--guidance")) o.guidance = (float)parse_float(BENCH_VALUE(), 0, 100, a);
        else if (!strcmp(a, "--decoder")) {
            const char *d = BENCH_VALUE();
            o.decoders = !strcmp(d, "vae") ? 1 : !strcmp(d, "taesd") ? 2 : !strcmp(d, "vae,taesd") || !strcmp(d, "taesd,vae") ? 3 : 0;
            if (!o.decoders) { fprintf(stderr, "--decoder: '%s' is not vae, taesd or vae,taesd\n", d); return 1; }
        } else if (!strcmp(a, "--sampler")) {
            static const char *const names[5] = {"ddim", "euler", "euler_a", "dpm++2m", "lcm"};
            const char *m = BENCH_VALUE();
            while (o.sampler < 5 && strcmp(m, names[o.sampler])) o.sampler++;
            if (o.sampler == 5) { fprintf(stderr, "--sampler: '%s' is not one of ddim, euler, euler_a, dpm++2m, lcm\n", m); return 1; }
        }
        else if (!strcmp(a, "--lora-rank")) o.lora_rank = parse_int(BENCH_VALUE(), 0, 4096, a);
        else if (!strcmp(a, "--quant-mode")) {
            const char *v2 = BENCH_VALUE();
            for (o.nmodes = 0; *v2 && o.nmodes < 2; v2 += strcspn(v2, ",") + (v2[strcspn(v2, ",")] == ',')) {
                size_t len = strcspn(v2, ",");
                if (len == 5 && !strncmp(v2, "exact", 5)) o.modes[o.nmodes++] = SD_QUANT_EXACT;
                else if (len == 4 && !strncmp(v2, "fast", 4)) o.modes[o.nmodes++] = SD_QUANT_FAST;
                else { fprintf(stderr, "--quant-mode wants exact, fast or exact,fast\n"); return 1; }
            }
        }
        else { fprintf(stderr, "unknown bench option '%s'\n", a); bench_usage(stderr); return 1; }
#undef BENCH_VALUE
    }
    if (!o.nvae) memcpy(o.vae_sizes, o.sizes, sizeof o.sizes), o.nvae = o.nsizes;
    if (!o.ntaesd) memcpy(o.taesd_sizes, o.vae_sizes, sizeof o.vae_sizes), o.ntaesd = o.nvae;
    for (int i = 0; i < o.nthreads; i++) {
        if (!o.threads[i]) o.threads[i] = cpus < 1 ? 1 : cpus > SD_MAX_THREADS ? SD_MAX_THREADS : cpus;   /* 0: every CPU */
        if (o.threads[i] > SD_MAX_THREADS) { fprintf(stderr, "--threads: at most %d\n", SD_MAX_THREADS); return 1; }
    }
    if (o.image % 8) { fprintf(stderr, "--txt2img-size must be a multiple of 8\n"); return 1; }

    for (const char *s = o.what; *s; s += strcspn(s, ",") + (s[strcspn(s, ",")] == ',')) {
        static const char *const known[] = {"tokenizer", "text", "text_encoder", "unet", "vae", "vae_decode", "taesd", "taesd_decode", "kernels", "gemm",
                                            "txt2img", "error", "all"};
        size_t len = strcspn(s, ","), k = 0;
        while (k < sizeof known / sizeof *known && (strlen(known[k]) != len || strncmp(s, known[k], len))) k++;
        if (k == sizeof known / sizeof *known) { fprintf(stderr, "bench: unknown stage '%.*s'\n", (int)len, s); bench_usage(stderr); return 1; }
    }
    bench_machine();
    if (bench_wants(&o, "tokenizer", "tokenizer")) rc |= bench_tokenizer(&o);
    if (bench_wants(&o, "kernels", "gemm"))
        for (int t = 0; t < o.nthreads; t++) bench_kernels(o.threads[t]);
    if (!bench_wants(&o, "text", "text_encoder") && !bench_wants(&o, "unet", "unet") && !bench_wants(&o, "vae", "vae_decode") &&
        !bench_wants(&o, "taesd", "taesd_decode") && !bench_wants(&o, "txt2img", "txt2img") && !bench_wants(&o, "error", "error")) return rc;

    if (!o.model) {   /* the random model, made on first use */
        struct stat sb;
        snprintf(path, sizeof path, "weights/bench/%s-%s.safetensors", o.kind, o.dtype);
        o.model = path;
        if (stat(path, &sb)) {
            fprintf(stderr, "making %s (once)\n", path);
            mkdir("weights", 0777);
            mkdir("weights/bench", 0777);
            if (random_model_write(o.kind, path, o.dtype)) return 1;
        }
    }
    if (bench_model_load(&m, o.model)) return 1;
    m.vae_timed = (bench_times *)mmap(NULL, sizeof(bench_times), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m.vae_timed == (bench_times *)MAP_FAILED) m.vae_timed = NULL;   /* then TAESD's lines lack the VAE's time */
    else m.vae_timed->n = 0;
/* One line of the stages below in a child process of its own: its peak RSS is that stage's (the
   parent mapped the file and read it once, but a child's resident pages are those it reads). */
#define BENCH_ROW(call) do {                                                                              \
        fflush(stdout);                                                                                   \
        pid_t pid_ = fork();                                                                              \
        int st_ = 0;                                                                                      \
        if (pid_ == 0) { int r_ = (call); fflush(stdout); _exit(r_ ? 1 : 0); }                            \
        if (pid_ < 0) rc |= (call);                                                                       \
        else if (waitpid(pid_, &st_, 0) < 0 || !WIFEXITED(st_) || WEXITSTATUS(st_)) rc |= 1;             \
    } while (0)
    if (!o.nmodes) {   /* block-typed weights: both modes; float weights: the exact one */
        o.modes[o.nmodes++] = SD_QUANT_EXACT;
        if (m.w[0] == 'q') o.modes[o.nmodes++] = SD_QUANT_FAST;
    }
    for (int t = 0; t < o.nthreads && !rc; t++)
        for (int q = 0; q < o.nmodes && !rc; q++)
            if (bench_wants(&o, "text", "text_encoder")) BENCH_ROW(bench_text(&o, &m, o.threads[t], o.modes[q]));
    sd_lora_set *lora = NULL;
    unsigned char *lora_file = NULL;
    void *lora_mem = NULL;
    int lora_layers = 0;
    if (o.lora_rank && bench_wants(&o, "unet", "unet")) {   /* the LoRA, once */
        sd_lora l;
        sd_arena la;
        sd_error err;
        memset(&l, 0, sizeof l);
        l.data = lora_file = bench_lora_make(&m, o.lora_rank, &l.size, &lora_layers);
        l.text_scale = l.unet_scale = 1.0f;
        l.name = "random";
        size_t bytes = sd_lora_arena_bytes(&l, 1);
        sd_arena_init(&la, lora_mem = malloc(bytes + SD_ARENA_ALIGN), bytes + SD_ARENA_ALIGN);
        if (sd_lora_load(&lora, m.unet, m.te, m.encoders, &l, 1, &la, &err)) { fprintf(stderr, "bench: %s\n", err.message); return 1; }
        printf("lora rank=%d layers=%d bytes=%zu table_bytes=%zu\n", o.lora_rank, lora_layers, l.size, la.used);
    }
    for (int s = 0; s < o.nsizes && !rc; s++)
        for (int t = 0; t < o.nthreads && !rc; t++)
            for (int q = 0; q < o.nmodes && !rc; q++)
                if (bench_wants(&o, "unet", "unet")) BENCH_ROW(bench_unet(&o, &m, o.sizes[s], o.threads[t], o.modes[q], lora, lora_layers));
    free(lora_mem);
    free(lora_file);
    for (int s = 0; s < o.nvae && !rc; s++)
        for (int t = 0; t < o.nthreads && !rc; t++)
            for (int q = 0; q < o.nmodes && !rc; q++)
                if (bench_wants(&o, "vae", "vae_decode")) BENCH_ROW(bench_decode(&o, &m, o.vae_sizes[s], o.threads[t], o.modes[q], 0));
    if (!rc && (bench_wants(&o, "taesd", "taesd_decode") || (bench_wants(&o, "txt2img", "txt2img") && o.decoders & 2)))
        rc |= bench_taesd_load(&o, &m);
    for (int s = 0; s < o.ntaesd && !rc; s++)
        for (int t = 0; t < o.nthreads && !rc; t++)
            for (int q = 0; q < o.nmodes && !rc; q++)
                if (bench_wants(&o, "taesd", "taesd_decode")) BENCH_ROW(bench_decode(&o, &m, o.taesd_sizes[s], o.threads[t], o.modes[q], 1));
    for (int t = 0; t < o.nthreads && !rc; t++)
        for (int d = 0; d < 2 && !rc; d++)
            if (bench_wants(&o, "txt2img", "txt2img") && o.decoders & (1 << d)) BENCH_ROW(bench_txt2img(&o, &m, o.threads[t], d));
    if (bench_wants(&o, "error", "error") && !rc) rc |= bench_error(&o, &m, o.threads[o.nthreads - 1]);
    free(m.tables);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--make-random-model")) {
        if (argc < 4 || argc > 5) { fprintf(stderr, "usage: %s --make-random-model sd15|sd21|sdxl|taesd PATH [f16|f32|bf16]\n", argv[0]); return 1; }
        return random_model_write(argv[2], argv[3], argc > 4 ? argv[4] : "f16") || random_model_check(argv[2], argv[3]);
    }
    return bench_run(argc, argv);
}
