// next_token: run llama.cpp on given token ids (optionally with a LoRA adapter GGUF) and print the next-token choice.
// usage: next_token MODEL.gguf LORA.gguf|- ID [ID ...]   ->   prints "<argmax id> <its logit> <runner-up logit>"
// Token ids come from the caller (transformers' tokenizer), so tokenization differences cannot hide in the result.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char * text, void * data) {
    (void) data;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf LORA.gguf|- ID [ID ...]\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model) { fprintf(stderr, "cannot load model %s\n", argv[1]); return 1; }

    int n = argc - 3;
    llama_token * tokens = malloc(sizeof(llama_token) * n);
    for (int i = 0; i < n; i++) tokens[i] = (llama_token) atoi(argv[3 + i]);

    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n + 16;
    cparams.n_batch = n + 16;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }

    if (strcmp(argv[2], "-") != 0) {
        struct llama_adapter_lora * lora = llama_adapter_lora_init(model, argv[2]);
        if (!lora) { fprintf(stderr, "cannot load LoRA %s\n", argv[2]); return 1; }
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx, &lora, 1, &scale) != 0) { fprintf(stderr, "cannot apply LoRA\n"); return 1; }
    }
    if (llama_decode(ctx, llama_batch_get_one(tokens, n)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    const float * logits = llama_get_logits_ith(ctx, -1);
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    int best = 0, second = 1;
    if (logits[second] > logits[best]) { best = 1; second = 0; }
    for (int i = 2; i < n_vocab; i++) {
        if (logits[i] > logits[best]) { second = best; best = i; }
        else if (logits[i] > logits[second]) { second = i; }
    }
    printf("%d %.4f %.4f\n", best, logits[best], logits[second]);
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    return 0;
}
