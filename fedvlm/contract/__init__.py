"""The message contract between coordinator and client nodes: every name on the wire.

`client` and `coordinator` never import each other (`[tool.importlinter]` in pyproject.toml);
both read the names of the records and keys of their Flower Messages from this package, so a
rename cannot silently break one side. This module holds the names of every round; the
submodules hold those of one feature each:

- `dp_keys`: differential privacy (train replies, refusals, the accountant's history);
- `secagg_keys`: secure aggregation (message types, records, protocol payload keys);
- `energy_keys`: the energy scalars of a node's MetricRecord;
- `eval_keys`: the per-type, per-subgroup and personalised evaluation scalars.

Client and coordinator code never spells a record key as a string literal;
`tests/test_contract.py` fails if one does.
"""

# Record names inside a Message's RecordDict (Flower's strategies use the same defaults).
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"  # ConfigRecord of a train / evaluate reply naming the site (text: no MetricRecord)

# Key of the reply's SITE record: the name the site goes by in console, ledger, report, card
# (its `site-name` node config, which `fedvlm node --private-key <site>.key` sets to the name
# it registered under with `fedvlm credentials --site`; `site-<partition>` in simulation).
SITE_NAME = "site-name"

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
