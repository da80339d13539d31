/* Opening the files a model is read from: the GGUF, safetensors shards, config.json,
 * tokenizer.json, tokenizer_config.json, the shard index. Each must be a regular file no larger
 * than a stated bound. The file is opened with O_NONBLOCK before its type is checked: a FIFO or a
 * device given as a model is an error at once, where a plain open() would block forever waiting
 * for a writer. */
#ifndef TSR_MODEL_FILES_H
#define TSR_MODEL_FILES_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Upper bounds on the JSON files of a Hugging Face directory, from the largest real ones:
 * config.json is a few KB (with a quantization section, tens of KB); tokenizer_config.json holds
 * the chat template and added tokens (Llama 3: 50 KB, DeepSeek V3: 160 KB); tokenizer.json grows
 * with the vocabulary (Qwen2: 11 MB, Gemma's 256k tokens: 33 MB); the shard index lists every
 * tensor (DeepSeek V3's 92k tensors: 9 MB). Each bound leaves 4x or more of headroom. */
#define TSR_MAX_CONFIG_JSON_BYTES    (4u << 20)
#define TSR_MAX_TOKCONFIG_JSON_BYTES (16u << 20)
#define TSR_MAX_TOKENIZER_JSON_BYTES (128u << 20)
#define TSR_MAX_INDEX_JSON_BYTES     (64u << 20)

/* Opens path read-only, checks it is a regular file of at most max_bytes (0: no bound), and
 * returns its descriptor (blocking again) and size. what names the file's role in messages
 * ("config.json"). TSR_ENOTFOUND if it does not exist, TSR_EIO if it cannot be opened or is not a
 * regular file, TSR_EINVAL if it is over the bound. Caller closes *fd. */
int tsr_file_open(const char *path, const char *what, uint64_t max_bytes, int *fd, size_t *size);

/* Reads a JSON file through tsr_file_open() and parses it with jansson's flags. TSR_EFORMAT for
 * bad JSON ("path: not valid JSON: why (line L, column C)"). Caller frees *out with json_decref().
 */
int tsr_json_load(const char *path, const char *what, uint64_t max_bytes, size_t flags,
                  json_t **out);

#endif
