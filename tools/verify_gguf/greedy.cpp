// greedy: run llama.cpp greedily from a prompt and print what it did, for `loratune loras verify --greedy`.
// usage: greedy MODEL.gguf LORA.gguf|- N_TOKENS N_MESSAGES [ROLE CONTENT]... [ID ...]
// Renders the N_MESSAGES messages (a conversation ending with a user turn) with the chat template stored in
// MODEL.gguf twice: by llama.cpp's Jinja engine (what llama-server and `llama-cli --jinja` use) and by its built-in
// template matcher (llama_chat_apply_template, used without --jinja); tokenizes the Jinja rendering with llama.cpp's
// tokenizer (BOS as the GGUF says); then decodes up to N_TOKENS greedily from the given token ids (or, without any,
// from that rendering), stopping at an end-of-generation token.
// Prints four lines: the Jinja rendering and the built-in one (JSON strings, null where there is none: no messages,
// no template, or no built-in match), the Jinja rendering's ids, the generated ids.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "chat.h"
#include "llama.h"

static void quiet(ggml_log_level level, const char * text, void * data) {
    (void) data;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static void print_json_string(const char * s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char) *s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    puts("\"");
}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL.gguf LORA.gguf|- N_TOKENS N_MESSAGES [ROLE CONTENT]... [ID ...]\n", argv[0]);
        return 2;
    }
    int n_new = atoi(argv[3]);
    int n_messages = atoi(argv[4]);
    int first_id = 5 + 2 * n_messages;
    if (n_messages < 0 || first_id > argc) { fprintf(stderr, "%d messages need %d arguments\n", n_messages, 2 * n_messages); return 2; }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model) { fprintf(stderr, "cannot load model %s\n", argv[1]); return 1; }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    const char * tmpl = llama_model_chat_template(model, NULL);
    std::string prompt;
    if (!tmpl || n_messages == 0) {
        puts("null");
        puts("null");
    } else {
        common_chat_templates_ptr templates = common_chat_templates_init(model, "");
        common_chat_templates_inputs inputs;
        std::vector<llama_chat_message> plain;
        for (int i = 0; i < n_messages; i++) {
            common_chat_msg message;
            message.role = argv[5 + 2 * i];
            message.content = argv[6 + 2 * i];
            inputs.messages.push_back(message);
            plain.push_back({argv[5 + 2 * i], argv[6 + 2 * i]});
        }
        inputs.add_generation_prompt = true;
        inputs.use_jinja = true;
        prompt = common_chat_templates_apply(templates.get(), inputs).prompt;
        print_json_string(prompt.c_str());
        int size = llama_chat_apply_template(tmpl, plain.data(), plain.size(), true, NULL, 0);
        if (size < 0) {
            puts("null");  // no built-in template matches: only --jinja can render it
        } else {
            char * builtin = (char *) calloc(size + 1, 1);
            llama_chat_apply_template(tmpl, plain.data(), plain.size(), true, builtin, size + 1);
            print_json_string(builtin);
            free(builtin);
        }
    }

    int n_max = (int) prompt.size() + 8 + argc;
    llama_token * tokens = (llama_token *) malloc(sizeof(llama_token) * (n_max + n_new));
    int n = 0;
    if (!prompt.empty()) {
        n = llama_tokenize(vocab, prompt.c_str(), (int) prompt.size(), tokens, n_max, true, true);  // BOS as the GGUF says; specials parsed
        if (n < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
    }
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", tokens[i]);
    putchar('\n');
    if (argc > first_id) {  // the caller's ids (transformers' rendering), so both runtimes start from the same tokens
        n = argc - first_id;
        for (int i = 0; i < n; i++) tokens[i] = (llama_token) atoi(argv[first_id + i]);
    }
    if (n == 0) { fprintf(stderr, "nothing to start from: give messages or token ids\n"); return 2; }

    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n + n_new + 8;
    cparams.n_batch = n + 8;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }
    if (strcmp(argv[2], "-") != 0) {
        llama_adapter_lora * lora = llama_adapter_lora_init(model, argv[2]);
        if (!lora) { fprintf(stderr, "cannot load LoRA %s\n", argv[2]); return 1; }
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx, &lora, 1, &scale) != 0) { fprintf(stderr, "cannot apply LoRA\n"); return 1; }
    }

    int n_vocab = llama_vocab_n_tokens(vocab);
    struct llama_batch batch = llama_batch_get_one(tokens, n);
    for (int generated = 0; generated < n_new; generated++) {
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        const float * logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (llama_token i = 1; i < n_vocab; i++) if (logits[i] > logits[best]) best = i;
        printf(generated ? " %d" : "%d", best);
        if (llama_vocab_is_eog(vocab, best)) break;
        tokens[n + generated] = best;
        batch = llama_batch_get_one(&tokens[n + generated], 1);
    }
    putchar('\n');
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    return 0;
}
