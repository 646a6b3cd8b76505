"""Keys of a site's evaluation MetricRecord beyond loss and accuracy.

Part of the message contract (`fedvlm.contract`): a site writes them
(`fedvlm.site_metrics.site_metrics`, `client.app`) and the coordinator reads them back
(`fedvlm.site_metrics.SiteEvaluation.from_metrics`). Per-type and per-group keys carry their
name after the slash.
"""

TYPE_ACC = "eval-acc/type/"
TYPE_N = "eval-n/type/"
GROUP_ACC = "eval-acc/group/"  # + "<field>=<value>", present only when not suppressed
GROUP_N = "eval-n/group/"
PERSONALISED_ACCURACY = "eval-personalised-accuracy"
PERSONALISED_LOSS = "eval-personalised-loss"
PERSONALISED_STEPS = "eval-personalised-steps"
# A site's test split (``split = "test"``): never trained on, scored apart from validation.
TEST_EXAMPLES = "test-num-examples"
TEST_LOSS = "test-loss"
TEST_ACCURACY = "test-accuracy"
