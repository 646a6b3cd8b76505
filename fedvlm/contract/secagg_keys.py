"""Names of the secure-aggregation messages, records and protocol payload keys.

Part of the message contract (`fedvlm.contract`): `privacy.secagg` builds and reads the
payloads on both sides (its `messages` module re-exports the payload keys, which its client
and server use as ``messages.STAGE`` etc.), `privacy.secagg.flower` carries them in Flower
Messages, `client.secure_aggregation` serves them and `coordinator.secure_phase` sends them.
"""

# Message types, ``"<category>.<action>"`` (flwr 1.42's ClientApp registers a handler per
# type: ``@app.query("secagg_setup")`` serves ``"query.secagg_setup"``), one per stage.
SETUP_MESSAGE = "query.secagg_setup"
REVEAL_MESSAGE = "query.secagg_reveal"
SHARE_KEYS_MESSAGE = "query.secagg_share_keys"
MASKED_INPUT_MESSAGE = "train.secagg_masked_input"
CONSISTENCY_MESSAGE = "query.secagg_consistency"
UNMASK_MESSAGE = "query.secagg_unmask"

# Records.
SECAGG_CONFIG = "secagg"  # ConfigRecord: every scalar / list value of a payload
SECAGG_ARRAYS = "secagg-arrays"  # ArrayRecord: numpy values (the masked vector)
SECAGG_STATE = "secagg-state"  # ConfigRecord in context.state: the client's secrets
SECAGG_ABORTS = "secagg-aborts"  # ConfigRecord in context.state: rounds aborted after a reveal
ABORTED_ROUNDS = "aborted-rounds"  # its one key: how many in a row

# Payload keys.
STAGE = "stage"
ROUND = "round"
CLIENT_ID = "client-id"
C_PK, S_PK, SIG_PK, SIG, B_COMMIT = "c-pk", "s-pk", "sig-pk", "sig", "b-commit"
PARTICIPANTS = "participants"
SAMPLED = "sampled"  # every node id sampled for the round
# Commit-then-reveal of the graph seed: each site's commitment, the committed set (node ids,
# identity fingerprints, commitments) every site is shown, and the revealed seeds.
SEED_COMMIT, SEED = "seed-commit", "graph-seed"
COMMITTED, COMMITTED_FPS, COMMITTED_SEEDS = "committed", "committed-fps", "committed-seeds"
REVEALS = "reveals"
# A site's identity: its certificate (DER) and its long-term signature of its round key.
ID_CERT, ID_SIG = "id-cert", "id-sig"
PEER_IDS, PEER_C_PK, PEER_S_PK, PEER_B_COMMIT, PEER_SIG = (
    "peer-ids",
    "peer-c-pk",
    "peer-s-pk",
    "peer-b-commit",
    "peer-sig",
)
PEER_SIG_PK, PEER_CERT, PEER_ID_SIG = "peer-sig-pk", "peer-cert", "peer-id-sig"
DST_IDS, SRC_IDS, CIPHERTEXTS = "dst-ids", "src-ids", "ciphertexts"
MASKED, LENGTH = "masked", "length"
SURVIVORS, SIGNER_IDS, SIGNATURES = "survivors", "signer-ids", "signatures"
SIGNER_SIG_PKS, SIGNER_CERTS, SIGNER_ID_SIGS = "signer-sig-pks", "signer-certs", "signer-id-sigs"
ALIVE, DEAD = "alive", "dead"  # peers whose self-mask / pairwise-key shares are requested
B_SHARES, SK_SHARES = "b-shares", "sk-shares"
