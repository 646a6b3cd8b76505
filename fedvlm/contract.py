"""The message contract between coordinator and client nodes.

`client` and `coordinator` never import each other; both read the names of records and
keys from here, so a rename cannot silently break one side.
"""

# Record names inside a Message's RecordDict (Flower's strategies use the same defaults).
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# Keys of the train / evaluate MetricRecord (scalars only: nothing here may identify an image).
NUM_EXAMPLES = "num-examples"  # Flower's weighting key
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
BYTES_DOWN = "bytes-down"  # adapter bytes the node received this round
BYTES_UP = "bytes-up"  # adapter bytes the node sends back this round
PEAK_GPU_MB = "peak-gpu-mb"  # peak GPU memory of the round's training (MiB), 0 on CPU
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"

# Keys of the train / evaluate ConfigRecord sent by the coordinator.
SERVER_ROUND = "server-round"  # injected by Flower's strategies
LOCAL_STEPS = "local-steps"
LEARNING_RATE = "learning-rate"
BATCH_SIZE = "batch-size"
SEED = "seed"
PROXIMAL_MU = "proximal-mu"  # FedProx: the client adds mu/2 ||w - w_global||^2 (Flower's name)
FREEZE_LORA_A = "freeze-lora-a"  # FFA-LoRA: freeze every LoRA A, send only the exchanged keys
