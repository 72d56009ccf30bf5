"""Early warning and diagnosis (issue 16): say from a run's first steps whether it will fail, and why.

features  per-run signals from the first K% of a run's planned steps, the baselines' scores,
          and the failure-mode rule applied to a whole run (pure functions of a metrics table)
examples  every finished run of one or more results folders as a labelled example
model     the predictor: a standardised logistic regression stored as JSON coefficients
diagnose  `stability diagnose RUN_DIR`: the failure mode with its evidence, and p_fail
"""
