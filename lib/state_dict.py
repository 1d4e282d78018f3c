"""What checkpoint_io.py, checkpoint.py and weights.py all need of a state dict, in a module that
imports none of them (so that checkpoint_io.py can use weights.py without an import circle): the
error they raise, the wrapper prefixes and optional BERT buffers, and `strip_prefixes`."""
from collections import OrderedDict

# Wrappers whose keys get a prefix: DistributedDataParallel / DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Hugging Face BERT buffers that some transformers versions save and others do not.
OPTIONAL_BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: refused for safety, truncated/corrupt, or not matching the model."""


def strip_prefixes(state_dict, prefixes=WRAPPER_PREFIXES):
    """A copy of `state_dict` with the wrapper `prefixes` (e.g. DDP's `module.`) removed from every key."""
    stripped = OrderedDict()
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        stripped[key] = value
    return stripped
