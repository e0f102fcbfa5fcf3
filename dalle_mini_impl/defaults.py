"""The course's shared default values, in one place that imports nothing (the CLI reads them for ``--help``
without loading torch)."""

# The course tokenizer's special tokens: padding, start and end of a caption.
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]

# The defaults of every sampling entry point (generate, evaluate, the CLI, the playgrounds), chosen for the
# shipped transformer on the val split (data/transformer/README.md): a larger scale over-pushes it.
CONDITION_SCALE = 1.25
TEMPERATURE = 0.9
