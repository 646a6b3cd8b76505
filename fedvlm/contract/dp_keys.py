"""Names of the DP fields in train messages.

Part of the message contract (`fedvlm.contract`): the sites (`client`, `privacy.site_account`)
write them and the coordinator (`privacy.sample_ledger`) reads them. Values are scalars or
lists of scalars only: accounting parameters, never anything about an example.
"""

# Train reply MetricRecord (site -> coordinator), sample-level DP.
REFUSED = "dp-refused"  # absent or 0: trained; 1: budget would be exceeded; 2: misconfigured
SITE = "dp-site"  # stable site key: partition id in simulation, node id in deployment
EPSILON = "dp-epsilon"  # ε spent after this round (or so far, when refused)
DELTA = "dp-delta"
NOISE_MULTIPLIER = "dp-noise-multiplier"
SAMPLE_RATE = "dp-sample-rate"
STEPS = "dp-steps"  # steps accounted over the whole run so far
PROJECTED_EPSILON = "dp-projected-epsilon"  # ε after every planned round
HISTORY_NOISE = "dp-history-noise"  # the accountant's history, one entry per (z, q) run
HISTORY_RATE = "dp-history-rate"
HISTORY_STEPS = "dp-history-steps"

# Reply ConfigRecord carrying a refusal's reason (text).
REFUSAL = "dp-refusal"
REASON = "reason"
REFUSAL_KEY = "key"  # the setting at fault when misconfigured ("" when none is)

# Codes of REFUSED.
TRAINED = 0
OVER_BUDGET = 1
MISCONFIGURED = 2

# Train ConfigRecord (coordinator -> sites): every site's accounted history as the
# coordinator recorded it, flattened (one entry per release run), so a site whose own state
# was lost (new process, resumed run) continues from it instead of from zero.
KNOWN_SITE = "dp-known-site"
KNOWN_NOISE = "dp-known-noise"
KNOWN_RATE = "dp-known-rate"
KNOWN_STEPS = "dp-known-steps"

# Train ConfigRecord (coordinator -> sites): the federation's id, which names the site's
# account file (`privacy.account_store`) unless the site pins its own.
FEDERATION = "dp-federation"
