"""kubetune's trainer: runs a FineTuneJob's training inside the trainer image (or locally)."""

import logging

# bitsandbytes warns at import time when its optional CPU kernels package is missing; kubetune never runs
# bitsandbytes on the CPU (QLoRA and 8-bit optimizers need a GPU), so the warning only confuses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
