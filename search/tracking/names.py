"""Names of MLflow tags and artifacts lic-search writes, defined once (readers import them too).

Layout: one MLflow experiment per search (named after the search), one parent run for the
search itself (``ROLE = "search"``) and one child run per Ray Tune trial (``ROLE = "trial"``),
linked with MLflow's own ``mlflow.parentRunId`` tag. Trial params are the flattened config
(``model.auxt.lambda_orth``); metrics are stepped by training iteration.
"""

TAG_ROLE = "lic_search.role"  # "search" | "trial"
ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"
TAG_TRIAL_ID = "lic_search.trial_id"  # Ray Tune trial id, the key that makes resume idempotent
TAG_SEARCH_DIR = "lic_search.experiment_dir"  # Ray Tune experiment folder (what `resume` takes)
TAG_BACKBONE = "lic_search.backbone"
TAG_AUXT = "lic_search.auxt"  # "off" or the placement ("both", "analysis", "synthesis")
TAG_STATUS = "lic_search.status"  # "running" | "completed" | "stopped" | "errored"
TAG_STATUS_DETAIL = "lic_search.status_detail"  # e.g. "stopped by ASHA at iteration 200"
TAG_NODE = "lic_search.node_id"  # Ray node of the trial's latest result
TAG_DAMAGED_CHECKPOINTS = "lic_search.damaged_checkpoints"  # "path: problem" lines of checkpoints a restore skipped
TAG_UNVERIFIED_CHECKPOINT = "lic_search.unverified_checkpoint"  # a restore loaded it without checksums to verify
TAG_PREEMPTED = "lic_search.preempted"  # the latest SIGTERM checkpoint: "iteration N on node X" (not a failure)
TAG_FAMILY = "lic_search.family"  # hash of the config without the R-D λ (rate family)
TAG_FAMILY_NAME = "lic_search.family_name"  # readable: the family's shared distinguishing params
TAG_VARIANT = "lic_search.variant"  # trial run: its variant label (`label:` in the space), when labelled
TAG_BASELINE = "lic_search.baseline"  # parent run: the label of the baseline variant BD-rates are measured against
# Compatibility: searches started before ``search.anchor`` became ``search.baseline`` tagged their parent run
# with this name; readers accept it where the new tag is absent, nothing writes it.
TAG_BASELINE_OLD = "lic_search.anchor"
TAG_VARIANTS = "lic_search.variants"  # parent run: JSON list of the space's variant labels, in file order
TAG_RATE_POINT = "lic_search.rate_point"  # trial run: its rate point (``λ=0.013, distortion=mse``), to group by
TAG_BEST_PREFIX = "lic_search.best."  # parent run: per rate point, the best trial (name, run id, score)
METRIC_BEST_PREFIX = "best/"  # parent run: per rate point, the best trial's final metrics
ARTIFACT_BEST_TABLE = "best_per_rate_point.md"  # parent run: the end-of-search summary table
TAG_PARENT = "mlflow.parentRunId"
TAG_STRATIFY_BY = "lic_search.stratify_by"  # parent run: JSON list of the search's stratify keys (rate points)
TAG_OBJECTIVES = "lic_search.objectives"  # parent run: JSON [[metric, mode], ...] of a multi-objective search
TAG_BRANCH = "lic_search.pbt.branch"  # trial run: JSON of its current PBT branch (generation, cloned from, at)
TAG_GENERATION = "lic_search.pbt.generation"  # trial run: PBT generation (0 = never exploited)
TAG_HPARAM_PREFIX = "lic_search.hparam."  # trial run: current value of a hyperparameter PBT changed
METRIC_GENERATION = "pbt/generation"  # stepped: the PBT branch each logged step belongs to
METRIC_HPARAM_PREFIX = "hparams/"  # stepped: current value of a numeric hyperparameter PBT changed
METRIC_LOF_PREFIX = "lof/"  # trial run: `lof/<setting>/<bpp|psnr|rd_loss|encode_s|..>` from `eval --search`
TAG_LOF_DATA = "lic_search.lof.data"  # trial run: the image folder the LOF sweep evaluated on
TAG_LOF_CHECKPOINT = "lic_search.lof.checkpoint"  # trial run: the checkpoint the LOF sweep loaded
TAG_LOF_SETTINGS = "lic_search.lof.settings"  # trial run: JSON {setting: {iterations, lr, latents, proxy}}
TAG_INIT_FROM = "lic_search.init_from"  # trial run: JSON {checkpoint, start_trial, start_run} of a warm start
TAG_INIT_KEPT = "lic_search.init_from.kept_keys"  # trial run: keys left at initialisation (init_from_partial)
TAG_LADDER = "lic_search.ladder"  # trial run of a ladder search: "start" | "fine_tune"
TAG_LADDER_CHILDREN = "lic_search.ladder.children"  # start-point run: JSON list of its fine-tuned trials' trial ids
LADDER_START = "start"
# Compatibility: ladder searches started before ``ladder.anchor`` became ``ladder.start`` tagged their
# start-point runs "anchor"; readers take either as a start point (a resumed search can hold both).
LADDER_STARTS = (LADDER_START, "anchor")
LADDER_FINE_TUNE = "fine_tune"

ARTIFACT_TRIAL_CONFIG = "trial_config.yaml"
ARTIFACT_SPACE = "space.yaml"

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped"
STATUS_ERRORED = "errored"
